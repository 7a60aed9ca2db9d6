//! Loading a complete model (weights, configuration, tokenizer) from any source.

use std::path::Path;

use crate::error::{Result, RunnerError};
use crate::llama::{Llama, WeightDtype};
use crate::source::{fetch_from_hub, ModelSource};
use crate::tokenizer::Tokenizer;
use crate::weights::{load_gguf, load_safetensors, SafetensorsDir};

pub struct LoadedModel {
    pub name: String,
    pub model: Llama,
    pub tokenizer: Tokenizer,
}

pub fn load_model(source: &ModelSource, dtype: WeightDtype) -> Result<LoadedModel> {
    let name = source.display_name();
    let (model, tokenizer) = match source {
        ModelSource::Gguf(path) => {
            let gguf = load_gguf(path)?;
            // A tokenizer.json beside the file wins over the GGUF metadata.
            let beside = path.with_file_name("tokenizer.json");
            let tokenizer = if beside.is_file() {
                Tokenizer::from_file(&beside)?
            } else {
                Tokenizer::from_gguf(path, &gguf.metadata)?
            };
            (Llama::new(gguf.weights, dtype, path)?, tokenizer)
        }
        ModelSource::Dir(dir) => load_dir(dir, dtype)?,
        ModelSource::Hub { repo, revision } => {
            let dir = fetch_from_hub(repo, revision.as_deref())?;
            load_dir(&dir, dtype)?
        }
    };
    Ok(LoadedModel {
        name,
        model,
        tokenizer,
    })
}

fn load_dir(dir: &Path, dtype: WeightDtype) -> Result<(Llama, Tokenizer)> {
    let files = SafetensorsDir::locate(dir)?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(RunnerError::model_file(dir, "has no tokenizer.json"));
    }
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    let weights = load_safetensors(&files)?;
    Ok((Llama::new(weights, dtype, dir)?, tokenizer))
}
