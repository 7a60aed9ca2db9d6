//! The Llama-family configuration, read from a Hugging Face `config.json` or from the
//! metadata of a GGUF file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::Deserialize;

use crate::error::{Result, RunnerError};

/// The architectures the Llama file runs (Llama 2 and 3, Mistral, SmolLM2 share it).
pub const LLAMA_ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM"];

/// RoPE frequency scaling, as in `config.json`'s `rope_scaling`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1 style: low frequencies divided by `factor`, high kept, smooth between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// No scaling (written out by some checkpoints).
    Default,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
}

/// `config.json` as written by transformers; optional fields get transformers' defaults.
#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    vocab_size: Option<usize>,
    tie_word_embeddings: Option<bool>,
}

impl LlamaConfig {
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Reads and checks a `config.json`.
    pub fn from_config_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| RunnerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawConfig = serde_json::from_str(&text)
            .map_err(|e| RunnerError::model_file(path, format!("not valid JSON: {e}")))?;
        if let Some(archs) = &raw.architectures {
            if !archs
                .iter()
                .any(|a| LLAMA_ARCHITECTURES.contains(&a.as_str()))
            {
                return Err(RunnerError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    found: archs.join(", "),
                    supported: LLAMA_ARCHITECTURES.join(", "),
                });
            }
        }
        let need = |v: Option<usize>, name: &str| {
            v.filter(|&x| x > 0)
                .ok_or_else(|| RunnerError::field(path, name, "is required (a positive integer)"))
        };
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let rope_scaling = match raw.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(parse_rope_scaling(v).map_err(|e| {
                RunnerError::field(path, "rope_scaling", format!("is not understood: {e}"))
            })?),
        };
        let config = Self {
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: raw.head_dim.unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        };
        config.check(path)?;
        Ok(config)
    }

    /// Builds the configuration from GGUF metadata (`llama.*` keys).
    pub fn from_gguf(
        path: &Path,
        metadata: &HashMap<String, gguf_file::Value>,
        has_output_weight: bool,
        vocab_from_tokens: Option<usize>,
    ) -> Result<Self> {
        let arch = metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| RunnerError::field(path, "general.architecture", "is required"))?;
        if arch != "llama" && arch != "mistral" {
            return Err(RunnerError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: arch.clone(),
                supported: "llama, mistral".into(),
            });
        }
        let key = |k: &str| format!("{arch}.{k}");
        let get_u = |k: &str| -> Result<usize> {
            let name = key(k);
            let v = metadata
                .get(&name)
                .ok_or_else(|| RunnerError::field(path, &name, "is required"))?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|_| RunnerError::field(path, &name, "must be an unsigned integer"))
        };
        let get_f = |k: &str| -> Option<f64> {
            metadata
                .get(&key(k))
                .and_then(|v| v.to_f32().map(f64::from).ok())
        };
        let hidden_size = get_u("embedding_length")?;
        let num_attention_heads = get_u("attention.head_count")?;
        let num_key_value_heads = get_u("attention.head_count_kv").unwrap_or(num_attention_heads);
        let head_dim = get_u("attention.key_length").unwrap_or(hidden_size / num_attention_heads);
        let vocab_size = get_u("vocab_size")
            .ok()
            .or(vocab_from_tokens)
            .ok_or_else(|| RunnerError::field(path, "tokenizer.ggml.tokens", "is required"))?;
        let config = Self {
            hidden_size,
            intermediate_size: get_u("feed_forward_length")?,
            num_hidden_layers: get_u("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: get_f("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: match get_f("rope.scale_linear") {
                Some(f) if f != 1.0 => Some(RopeScaling::Linear { factor: f }),
                _ => None,
            },
            max_position_embeddings: get_u("context_length")?,
            vocab_size,
            tie_word_embeddings: !has_output_weight,
        };
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return Err(RunnerError::field(
                path,
                "num_key_value_heads",
                format!(
                    "must divide num_attention_heads ({}), found {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            return Err(RunnerError::field(
                path,
                "head_dim",
                "must be even and positive",
            ));
        }
        Ok(())
    }

    /// The `config.json` transformers would read for this configuration.
    pub fn to_config_json(&self) -> serde_json::Value {
        let rope_scaling = match &self.rope_scaling {
            None => serde_json::Value::Null,
            Some(RopeScaling::Default) => serde_json::json!({"rope_type": "default"}),
            Some(RopeScaling::Linear { factor }) => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => serde_json::json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
        })
    }
}

fn parse_rope_scaling(v: serde_json::Value) -> std::result::Result<RopeScaling, String> {
    // Older checkpoints write `type` instead of `rope_type`.
    let mut v = v;
    if let Some(obj) = v.as_object_mut() {
        if !obj.contains_key("rope_type") {
            if let Some(t) = obj.remove("type") {
                obj.insert("rope_type".into(), t);
            }
        }
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}
