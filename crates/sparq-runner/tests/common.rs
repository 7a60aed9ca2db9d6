//! Shared by the runner's integration tests: the default model, loaded once.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use sparq_runner::{load_model, LoadedModel, ModelSource, WeightDtype};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn default_model_path() -> PathBuf {
    let path = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-model.sh first (README's test command does)",
        path.display()
    );
    path
}

pub fn default_model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        load_model(&ModelSource::Gguf(default_model_path()), WeightDtype::F32)
            .expect("the default model loads")
    })
}
