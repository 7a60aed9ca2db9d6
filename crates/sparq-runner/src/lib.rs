//! The model runner: model families, weight loading (GGUF, safetensors, Hugging Face
//! hub), the tokenizer, dense prefill, batched greedy decoding over branches that each
//! carry their own attention method, and teacher-forced scoring.

mod activation;
mod attend;
mod causal;
pub mod config;
pub mod error;
pub mod export;
mod flash;
pub mod generate;
pub mod kernels;
pub mod llama;
pub mod model;
pub mod q4;
pub mod rope;
mod screen;
pub mod source;
mod spread;
pub mod tokenizer;
pub mod weights;

pub use config::LlamaConfig;
pub use error::{Result, RunnerError};
pub use generate::{generate, left_truncate, score_continuation, Generation};
pub use llama::{Branch, Llama, PromptCache, WeightDtype};
pub use model::{load_model, LoadedModel};
pub use source::ModelSource;
pub use tokenizer::Tokenizer;
