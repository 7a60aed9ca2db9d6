//! Writes a model as a Hugging Face style directory (config.json, model.safetensors,
//! tokenizer.json), so that a GGUF file can be read back through the safetensors path
//! or by other tools.

use std::path::Path;

use crate::error::{Result, RunnerError};
use crate::tokenizer::Tokenizer;
use crate::weights::LoadedWeights;

pub fn export_safetensors_dir(
    weights: &LoadedWeights,
    tokenizer: &Tokenizer,
    dir: &Path,
) -> Result<()> {
    let io = |source| RunnerError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut config = weights.config.to_config_json();
    if weights.rope_freqs.is_some() {
        return Err(RunnerError::Invalid(
            "models whose GGUF file stores rope_freqs cannot be exported yet".into(),
        ));
    }
    config["tie_word_embeddings"] = (!weights.tensors.contains_key("lm_head.weight")).into();
    let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
    std::fs::write(dir.join("config.json"), text).map_err(io)?;
    candle_core::safetensors::save(&weights.tensors, dir.join("model.safetensors"))?;
    tokenizer
        .hf()
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| RunnerError::Tokenizer {
            source_desc: dir.join("tokenizer.json").display().to_string(),
            message: format!("cannot be written ({e})"),
        })?;
    Ok(())
}
