//! Every environment variable the program reads, in one place.

/// The model used when `--model` is not given.
pub const SPARQ_MODEL: &str = "SPARQ_MODEL";
/// Directory of local data sets laid out as `shared/data` (SQuAD, CNN/DailyMail, ...).
pub const SPARQ_DATA_DIR: &str = "SPARQ_DATA_DIR";
/// The project's default model, fetched by `scripts/fetch-model.sh`.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
