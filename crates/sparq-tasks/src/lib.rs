//! The evaluation tasks of SparQ Attention (SPEC section 5): declarations, data
//! loading (a local data directory or the Hugging Face hub), prompt building and the
//! metrics.
//!
//! ```no_run
//! use sparq_tasks::{load_task, LoadOptions, TokenCounter};
//!
//! struct Words;
//! impl TokenCounter for Words {
//!     fn count_tokens(&self, text: &str) -> usize {
//!         text.split_whitespace().count()
//!     }
//! }
//!
//! let options = LoadOptions {
//!     data_dir: Some("../shared/data".into()),
//!     limit: Some(10),
//!     ..LoadOptions::default()
//! };
//! let task = load_task("squad", &options, &Words)?;
//! for ex in &task.examples {
//!     println!("{} needs {} tokens", ex.id, ex.max_new_tokens);
//! }
//! # Ok::<(), sparq_tasks::TaskError>(())
//! ```
//!
//! Determinism: every random choice is drawn from a ChaCha20 stream keyed by the
//! seed and the example's id, so the examples depend only on the data, the seed and
//! the declaration's version, and `limit = N` returns the first N examples of the
//! full run.

mod build;
mod decl;
mod error;
mod example;
mod jsonl;
mod load;
pub mod metrics;
mod rng;
mod source;
mod text;

pub use build::BuildSummary;
pub use decl::{builtin_task_names, list_tasks, TaskInfo};
pub use error::TaskError;
pub use example::{Example, Metric, TokenCounter};
pub use load::{load_custom_task, load_task, LoadOptions, LoadedTask};
