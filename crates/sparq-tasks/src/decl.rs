//! Task declarations: the TOML files in `tasks/`, embedded in the binary so that it
//! works from any directory, and checked when they are read (unknown keys, template
//! placeholders, the builder section).

use serde::{Deserialize, Serialize};

use crate::error::TaskError;
use crate::example::Metric;
use crate::text::render;

/// The built-in declarations, in listing order.
const BUILTIN: [(&str, &str); 5] = [
    (
        "tasks/squad.toml",
        include_str!("../../../tasks/squad.toml"),
    ),
    (
        "tasks/triviaqa.toml",
        include_str!("../../../tasks/triviaqa.toml"),
    ),
    (
        "tasks/cnn_dailymail.toml",
        include_str!("../../../tasks/cnn_dailymail.toml"),
    ),
    (
        "tasks/repetition.toml",
        include_str!("../../../tasks/repetition.toml"),
    ),
    (
        "tasks/wikitext.toml",
        include_str!("../../../tasks/wikitext.toml"),
    ),
];

/// What `sparq ls tasks` shows about a built-in task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInfo {
    /// The name used with `--tasks`.
    pub name: String,
    /// Bumped whenever the task's examples or scoring change.
    pub version: u32,
    /// One line on what the task measures.
    pub description: String,
    /// How it is scored.
    pub metric: Metric,
    /// The default seed.
    pub seed: u64,
    /// How many examples the paper evaluated.
    pub paper_samples: usize,
    /// The local file, relative to the data directory.
    pub local_file: String,
    /// The Hugging Face dataset, `repo (config, split[, split...])`.
    pub hub_dataset: String,
}

/// Lists the built-in tasks.
pub fn list_tasks() -> Result<Vec<TaskInfo>, TaskError> {
    builtin_declarations()?
        .into_iter()
        .map(|d| {
            Ok(TaskInfo {
                hub_dataset: format!(
                    "{} ({}, {})",
                    d.data.hub_repo,
                    d.data.hub_config,
                    d.data.hub_splits.join(", ")
                ),
                local_file: d.data.local,
                name: d.name,
                version: d.version,
                description: d.description,
                metric: d.metric,
                seed: d.seed,
                paper_samples: d.paper_samples,
            })
        })
        .collect()
}

/// The names of the built-in tasks.
pub fn builtin_task_names() -> Vec<String> {
    BUILTIN
        .iter()
        .map(|(file, _)| {
            file.trim_start_matches("tasks/")
                .trim_end_matches(".toml")
                .to_string()
        })
        .collect()
}

pub(crate) fn builtin_declarations() -> Result<Vec<TaskDecl>, TaskError> {
    BUILTIN
        .iter()
        .map(|(file, text)| TaskDecl::parse(file, text))
        .collect()
}

/// One declaration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskDecl {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub metric: Metric,
    pub seed: u64,
    pub paper_samples: usize,
    pub data: DataDecl,
    pub generation: GenerationDecl,
    // Exactly one of these names the builder and holds its settings.
    pub squad: Option<SquadDecl>,
    pub triviaqa: Option<TriviaQaDecl>,
    pub cnn_dailymail: Option<CnnDecl>,
    pub repetition: Option<RepetitionDecl>,
    pub wikitext: Option<WikiTextDecl>,
    /// The file it came from, for error messages.
    #[serde(skip)]
    pub file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DataDecl {
    /// Relative to the data directory.
    pub local: String,
    /// Human description of the local file, quoted in "missing data file" errors.
    pub layout: String,
    pub hub_repo: String,
    #[serde(default)]
    pub hub_revision: Option<String>,
    pub hub_config: String,
    /// Read in this order and concatenated.
    pub hub_splits: Vec<String>,
}

/// Generation length. Generative tasks: `min(cap, spare + longest reference in
/// tokens)`, optionally cutting the output to the reference's token count.
/// Teacher-forced tasks: the reference's tokens, at most `max_reference_tokens`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GenerationDecl {
    #[serde(default)]
    pub cap: Option<usize>,
    #[serde(default)]
    pub spare: usize,
    #[serde(default)]
    pub cut_to_reference: bool,
    #[serde(default)]
    pub teacher_forced: bool,
    #[serde(default)]
    pub max_reference_tokens: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SquadDecl {
    pub paragraph: String,
    pub context: String,
    pub input: String,
    pub confusion_paragraphs: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriviaQaDecl {
    pub input: String,
    pub pythia_input: String,
    pub min_document_chars: usize,
    pub max_document_chars: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CnnDecl {
    pub input: String,
    pub min_article_chars: usize,
    pub max_article_chars: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepetitionDecl {
    pub input: String,
    pub context_chars: usize,
    pub prompt_chars: usize,
    pub reference_chars: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WikiTextDecl {
    pub prefix_chars: usize,
    pub reference_chars: usize,
}

/// The builder a declaration selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Squad,
    TriviaQa,
    CnnDailyMail,
    Repetition,
    WikiText,
}

impl TaskDecl {
    /// Parses and checks a declaration; `file` names it in errors.
    pub(crate) fn parse(file: &str, text: &str) -> Result<TaskDecl, TaskError> {
        let mut decl: TaskDecl = toml::from_str(text).map_err(|e| TaskError::Declaration {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        decl.file = file.to_string();
        decl.check()?;
        Ok(decl)
    }

    fn err(&self, message: impl Into<String>) -> TaskError {
        TaskError::Declaration {
            file: self.file.clone(),
            message: message.into(),
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        // `check` guarantees exactly one section; the order here is irrelevant.
        if self.squad.is_some() {
            Kind::Squad
        } else if self.triviaqa.is_some() {
            Kind::TriviaQa
        } else if self.cnn_dailymail.is_some() {
            Kind::CnnDailyMail
        } else if self.repetition.is_some() {
            Kind::Repetition
        } else {
            Kind::WikiText
        }
    }

    fn check(&self) -> Result<(), TaskError> {
        let sections = [
            self.squad.is_some(),
            self.triviaqa.is_some(),
            self.cnn_dailymail.is_some(),
            self.repetition.is_some(),
            self.wikitext.is_some(),
        ];
        if sections.iter().filter(|&&s| s).count() != 1 {
            return Err(self.err(
                "needs exactly one builder section: [squad], [triviaqa], [cnn_dailymail], \
                 [repetition] or [wikitext]",
            ));
        }
        if self.data.hub_splits.is_empty() {
            return Err(self.err("data.hub_splits is empty"));
        }
        let g = &self.generation;
        if g.teacher_forced {
            if self.metric != Metric::BitsPerChar {
                return Err(self.err("generation.teacher_forced needs metric = \"bits-per-char\""));
            }
            if g.max_reference_tokens.is_none() {
                return Err(self.err("generation.teacher_forced needs max_reference_tokens"));
            }
        } else {
            if self.metric == Metric::BitsPerChar {
                return Err(
                    self.err("metric \"bits-per-char\" needs generation.teacher_forced = true")
                );
            }
            if g.cap.is_none_or(|c| c == 0) {
                return Err(self.err("generation.cap must be a positive number of tokens"));
            }
        }
        let file = self.file.as_str();
        if let Some(s) = &self.squad {
            render(&s.paragraph, &[("title", ""), ("paragraph", "")], file)?;
            render(&s.context, &[("paragraphs", ""), ("title", "")], file)?;
            render(
                &s.input,
                &[
                    ("context", ""),
                    ("shot_question", ""),
                    ("shot_answer", ""),
                    ("question", ""),
                ],
                file,
            )?;
        }
        if let Some(t) = &self.triviaqa {
            for tpl in [&t.input, &t.pythia_input] {
                render(tpl, &[("document", ""), ("question", "")], file)?;
            }
            if t.min_document_chars > t.max_document_chars {
                return Err(self.err("triviaqa.min_document_chars exceeds max_document_chars"));
            }
        }
        if let Some(c) = &self.cnn_dailymail {
            render(&c.input, &[("article", "")], file)?;
            if c.min_article_chars > c.max_article_chars {
                return Err(self.err("cnn_dailymail.min_article_chars exceeds max_article_chars"));
            }
        }
        if let Some(r) = &self.repetition {
            render(&r.input, &[("context", ""), ("prompt", "")], file)?;
            if r.context_chars == 0 || r.reference_chars == 0 {
                return Err(
                    self.err("repetition.context_chars and reference_chars must be positive")
                );
            }
        }
        if let Some(w) = &self.wikitext {
            if w.reference_chars == 0 {
                return Err(self.err("wikitext.reference_chars must be positive"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_declarations_parse_and_match_their_file_names() {
        let decls = builtin_declarations().unwrap();
        let names: Vec<_> = decls.iter().map(|d| d.name.clone()).collect();
        assert_eq!(names, builtin_task_names());
        assert_eq!(
            names,
            [
                "squad",
                "triviaqa",
                "cnn_dailymail",
                "repetition",
                "wikitext"
            ]
        );
        let kinds: Vec<_> = decls.iter().map(|d| d.kind()).collect();
        assert_eq!(
            kinds,
            [
                Kind::Squad,
                Kind::TriviaQa,
                Kind::CnnDailyMail,
                Kind::Repetition,
                Kind::WikiText
            ]
        );
    }

    #[test]
    fn listing_shows_the_paper_settings() {
        let tasks = list_tasks().unwrap();
        let get = |n: &str| tasks.iter().find(|t| t.name == n).unwrap();
        assert_eq!(get("squad").metric, Metric::PrefixMatch);
        assert_eq!(get("squad").paper_samples, 4000);
        assert_eq!(get("triviaqa").paper_samples, 2992);
        assert_eq!(get("cnn_dailymail").metric, Metric::RougeL);
        assert_eq!(get("repetition").metric, Metric::MatchChars);
        assert_eq!(get("wikitext").metric, Metric::BitsPerChar);
        assert!(get("wikitext").hub_dataset.contains("Salesforce/wikitext"));
        assert!(tasks
            .iter()
            .all(|t| t.version >= 1 && !t.description.is_empty()));
    }

    #[test]
    fn declarations_are_checked() {
        let base = BUILTIN[2].1; // cnn_dailymail
        let typo = base.replace("cut_to_reference", "cut_to_refrence");
        let err = TaskDecl::parse("x.toml", &typo).unwrap_err().to_string();
        assert!(
            err.contains("x.toml") && err.contains("cut_to_refrence"),
            "{err}"
        );

        let bad_tpl = base.replace("Article: {article}", "Article: {body}");
        let err = TaskDecl::parse("x.toml", &bad_tpl).unwrap_err().to_string();
        assert!(err.contains("{body}") && err.contains("{article}"), "{err}");

        let two = format!("{base}\n[wikitext]\nprefix_chars = 1\nreference_chars = 1\n");
        let err = TaskDecl::parse("x.toml", &two).unwrap_err().to_string();
        assert!(err.contains("exactly one builder section"), "{err}");

        let bpc = base.replace("metric = \"rouge-l\"", "metric = \"bits-per-char\"");
        assert!(TaskDecl::parse("x.toml", &bpc).is_err());
        let bad_metric = base.replace("metric = \"rouge-l\"", "metric = \"bleu\"");
        let err = TaskDecl::parse("x.toml", &bad_metric)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bleu"), "{err}");
    }
}
