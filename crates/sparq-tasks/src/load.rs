//! The entry points the runner and the CLI call: a task by name (built-in or a
//! custom file) to a list of examples with an account of what was skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::build::{self, BuildSummary};
use crate::decl::{builtin_declarations, builtin_task_names, Kind, TaskDecl};
use crate::error::TaskError;
use crate::example::{hex, Example, Metric, TokenCounter};
use crate::jsonl;
use crate::source;

/// How to load a task.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A directory laid out like `../shared/data`. Tasks whose file is missing there,
    /// or all tasks when this is `None`, load from the Hugging Face hub.
    pub data_dir: Option<PathBuf>,
    /// Overrides the task's declared seed.
    pub seed: Option<u64>,
    /// Keep the first N examples of the seeded order (custom tasks: of the file).
    pub limit: Option<usize>,
    /// Use the paper's prompt wording for Pythia models where a task declares one
    /// (TriviaQA: `Single-word answer:` instead of `Answer:`).
    pub pythia_prompt: bool,
}

/// A task's examples, ready for the runner.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedTask {
    /// The built-in name, or the custom file's path as given.
    pub name: String,
    /// The declaration's version; `None` for a custom file.
    pub version: Option<u32>,
    /// The seed used; `None` for a custom file (nothing random happens).
    pub seed: Option<u64>,
    /// Where the data came from (local file, or hub repository at a commit; for a
    /// custom file, its path and SHA-256), for the run record.
    pub source: String,
    /// The examples, in order.
    pub examples: Vec<Example>,
    /// Counts of examined, built and skipped records.
    pub summary: BuildSummary,
}

/// Loads a built-in task by name, or a custom task file when `name` is not a
/// built-in task. `tokens` counts tokens with the model's tokenizer, which sets the
/// generation lengths.
pub fn load_task(
    name: &str,
    options: &LoadOptions,
    tokens: &dyn TokenCounter,
) -> Result<LoadedTask, TaskError> {
    if let Some(decl) = builtin_declarations()?.into_iter().find(|d| d.name == name) {
        return load_declared(&decl, options, tokens);
    }
    let path = Path::new(name);
    let looks_like_path = name.contains('/')
        || name.contains('\\')
        || path
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "json");
    if path.is_file() || looks_like_path {
        return load_custom_task(path, options.limit);
    }
    Err(TaskError::UnknownTask {
        name: name.to_string(),
        known: builtin_task_names(),
    })
}

fn load_declared(
    decl: &TaskDecl,
    options: &LoadOptions,
    tokens: &dyn TokenCounter,
) -> Result<LoadedTask, TaskError> {
    let seed = options.seed.unwrap_or(decl.seed);
    let limit = options.limit;
    let columns = match decl.kind() {
        Kind::Squad => build::squad::HUB_COLUMNS,
        Kind::TriviaQa => build::triviaqa::HUB_COLUMNS,
        Kind::CnnDailyMail => build::cnn_dailymail::HUB_COLUMNS,
        Kind::Repetition => build::repetition::HUB_COLUMNS,
        Kind::WikiText => build::wikitext::HUB_COLUMNS,
    };
    let loaded = source::load(
        decl,
        options.data_dir.as_deref(),
        columns,
        &source::HubEndpoint::FromEnv,
    )?;
    let raw = &loaded.raw;
    let (examples, summary) = match decl.kind() {
        Kind::Squad => {
            build::squad::build(decl, &build::squad::records(raw)?, seed, limit, tokens)?
        }
        Kind::TriviaQa => build::triviaqa::build(
            decl,
            &build::triviaqa::records(raw)?,
            seed,
            limit,
            options.pythia_prompt,
            tokens,
        )?,
        Kind::CnnDailyMail => build::cnn_dailymail::build(
            decl,
            &build::cnn_dailymail::records(raw)?,
            seed,
            limit,
            tokens,
        )?,
        Kind::Repetition => {
            build::repetition::build(decl, &build::repetition::text(raw)?, seed, limit, tokens)?
        }
        Kind::WikiText => {
            build::wikitext::build(decl, &build::wikitext::raw_text(raw)?, seed, limit, tokens)?
        }
    };
    if examples.is_empty() && limit != Some(0) {
        return Err(TaskError::NoUsableExample {
            task: decl.name.clone(),
            source_desc: loaded.description,
            details: describe(&summary),
        });
    }
    Ok(LoadedTask {
        name: decl.name.clone(),
        version: Some(decl.version),
        seed: Some(seed),
        source: loaded.description,
        examples,
        summary,
    })
}

fn describe(summary: &BuildSummary) -> String {
    if summary.candidates == 0 {
        return "the data holds no records".to_string();
    }
    let reasons: Vec<String> = summary
        .skipped
        .iter()
        .map(|(reason, n)| format!("{n} skipped: {reason}"))
        .collect();
    format!("{} records; {}", summary.candidates, reasons.join("; "))
}

/// Loads a custom task: a JSON-lines file with one example a line,
/// `{"id", "input", "references": [..], "metric", "max_new_tokens"}`. The input is
/// used verbatim. `limit` keeps the first N lines. Errors name the file and line.
pub fn load_custom_task(path: &Path, limit: Option<usize>) -> Result<LoadedTask, TaskError> {
    let bytes = std::fs::read(path).map_err(|e| TaskError::io(path, e))?;
    let text = String::from_utf8(bytes.clone()).map_err(|e| TaskError::InvalidJson {
        path: path.to_path_buf(),
        line: 1 + bytes[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not valid UTF-8".to_string(),
    })?;
    let mut examples = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (n, line) in jsonl::lines(&text) {
        let obj = jsonl::parse_object(path, n, line)?;
        let id = jsonl::id_field(path, n, &obj, "id")?;
        let input = jsonl::string_field(path, n, &obj, "input")?;
        let references = jsonl::string_list_field(path, n, &obj, "references")?;
        let metric_name = jsonl::string_field(path, n, &obj, "metric")?;
        let max_new_tokens = jsonl::usize_field(path, n, &obj, "max_new_tokens")?;
        let invalid = |field: &str, message: String| TaskError::InvalidField {
            path: path.to_path_buf(),
            line: n,
            field: field.to_string(),
            message,
        };
        let metric =
            Metric::from_name(&metric_name).map_err(|e| invalid("metric", e.to_string()))?;
        if metric == Metric::BitsPerChar {
            return Err(invalid(
                "metric",
                "bits-per-char scores a teacher-forced reference and is not available \
                 for custom tasks; use prefix-match, rouge-l or match-chars"
                    .to_string(),
            ));
        }
        if max_new_tokens == 0 {
            return Err(invalid("max_new_tokens", "must be at least 1".to_string()));
        }
        if let Some(first) = first_line.insert(id.clone(), n) {
            return Err(invalid(
                "id",
                format!("duplicate id `{id}` (first on line {first})"),
            ));
        }
        examples.push(Example {
            id,
            input,
            references,
            max_new_tokens,
            cut_output_to_tokens: None,
            metric,
            teacher_forced: None,
        });
    }
    let candidates = examples.len();
    if candidates == 0 {
        return Err(TaskError::NoUsableExample {
            task: path.display().to_string(),
            source_desc: format!("custom task file {}", path.display()),
            details: "the file holds no example lines".to_string(),
        });
    }
    if let Some(limit) = limit {
        examples.truncate(limit);
    }
    let summary = BuildSummary {
        candidates,
        examined: examples.len(),
        built: examples.len(),
        skipped: Default::default(),
    };
    Ok(LoadedTask {
        name: path.display().to_string(),
        version: None,
        seed: None,
        source: format!(
            "custom task file {} (sha256 {})",
            path.display(),
            hex(&Sha256::digest(&bytes))
        ),
        examples,
        summary,
    })
}
