//! The crate's error type. Every message names the file, line or field involved and
//! what was expected, so a user can fix their input without reading the code.

use std::path::PathBuf;

/// Everything that can go wrong while declaring, loading, building or scoring a task.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A local data file is absent (and the hub could not stand in for it).
    #[error(
        "missing data file {path} for task `{task}`: expected {layout}{hub}",
        hub = hub_note(.hub_error)
    )]
    MissingDataFile {
        task: String,
        path: PathBuf,
        /// The layout the data directory should have, e.g. `squad_v1.1/dev-v1.1.json (the
        /// official SQuAD v1.1 dev JSON)`.
        layout: String,
        /// Why the Hugging Face hub fallback failed too, when it was tried.
        hub_error: Option<String>,
    },

    /// No data directory was given and the Hugging Face hub could not serve the data.
    #[error(
        "cannot reach the Hugging Face hub for task `{task}` (dataset {repo}): {reason}; \
         point --data-dir (or SPARQ_DATA_DIR) at a local copy laid out as {layout}"
    )]
    HubUnavailable {
        task: String,
        repo: String,
        reason: String,
        layout: String,
    },

    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON document or JSON-lines record did not parse (or had the wrong shape).
    #[error("invalid JSON in {path} at line {line}: {message}")]
    InvalidJson {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// A record lacks a field the task needs.
    #[error("{path} line {line}: missing field `{field}`")]
    MissingField {
        path: PathBuf,
        line: usize,
        field: String,
    },

    /// A record has a field with an unusable value.
    #[error("{path} line {line}: field `{field}`: {message}")]
    InvalidField {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },

    /// A parquet file from the hub could not be read.
    #[error("cannot read parquet file {path}: {message}")]
    Parquet { path: PathBuf, message: String },

    /// A task declaration (TOML) is malformed.
    #[error("task declaration {file}: {message}")]
    Declaration { file: String, message: String },

    /// The data loaded, but not a single example could be built from it.
    #[error("task `{task}`: no usable example in {source_desc} ({details})")]
    NoUsableExample {
        task: String,
        source_desc: String,
        details: String,
    },

    /// The task name is neither a built-in task nor an existing custom task file.
    #[error(
        "unknown task `{name}`: known tasks are {known}, or give the path of a custom \
         task file (JSON lines)",
        known = .known.join(", ")
    )]
    UnknownTask { name: String, known: Vec<String> },

    /// The metric name is not one of the known metrics.
    #[error(
        "unknown metric `{name}`: expected one of {known}",
        known = .known.join(", ")
    )]
    UnknownMetric { name: String, known: Vec<String> },

    /// The metric cannot score a generated text (bits per character needs the
    /// model's log-likelihoods, not a prediction string).
    #[error("metric `{metric}` {message}")]
    UnsupportedMetric { metric: String, message: String },
}

fn hub_note(hub_error: &Option<String>) -> String {
    match hub_error {
        Some(e) => format!("; the Hugging Face hub fallback failed too: {e}"),
        None => String::new(),
    }
}

impl TaskError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TaskError::Io {
            path: path.into(),
            source,
        }
    }
}
