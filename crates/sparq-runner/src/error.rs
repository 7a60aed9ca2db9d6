//! The runner's error type: every message names the file, field or flag at fault and
//! what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("model file {path}: {message}")]
    ModelFile { path: PathBuf, message: String },

    #[error("{path}: field `{field}` {expected}")]
    ConfigField {
        path: PathBuf,
        field: String,
        expected: String,
    },

    #[error("{path}: unsupported architecture `{found}` (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        found: String,
        supported: String,
    },

    #[error("tokenizer from {source_desc}: {message}")]
    Tokenizer {
        source_desc: String,
        message: String,
    },

    #[error("Hugging Face hub: {message}")]
    Hub { message: String },

    #[error("{0}")]
    Invalid(String),

    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = RunnerError> = std::result::Result<T, E>;

impl RunnerError {
    pub(crate) fn model_file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::ModelFile {
            path: path.into(),
            message: message.to_string(),
        }
    }
    pub(crate) fn field(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Self::ConfigField {
            path: path.into(),
            field: field.into(),
            expected: expected.into(),
        }
    }
}
