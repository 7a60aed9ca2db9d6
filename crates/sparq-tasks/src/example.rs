//! What a task hands to the runner: one [`Example`] per prompt, with the metric that
//! scores it and the generation length it needs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::TaskError;
use crate::metrics;

/// Counts the tokens of a text the way the model under test will see it.
///
/// Generation lengths depend on the model's tokenizer ("generate
/// `min(30, 5 + longest answer in tokens)`"), so building examples needs one.
/// Implementations count the tokens of `text` alone, **without** special tokens
/// (no BOS), as the paper's `tok_encode` did.
pub trait TokenCounter {
    /// Number of tokens in `text`, without special tokens.
    fn count_tokens(&self, text: &str) -> usize;
}

/// How an example is scored. The names are the ones the CLI and the custom task
/// files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// 1 if the normalised output starts with any normalised gold answer, else 0.
    PrefixMatch,
    /// ROUGE-L F-measure as Google's `rouge_score` 0.1.2 computes it with stemming.
    RougeL,
    /// Number of leading characters of the output that match the reference.
    MatchChars,
    /// Bits per character of a teacher-forced reference (needs the model's NLL).
    BitsPerChar,
}

impl Metric {
    /// Every metric, in a fixed order (for listings and error messages).
    pub const ALL: [Metric; 4] = [
        Metric::PrefixMatch,
        Metric::RougeL,
        Metric::MatchChars,
        Metric::BitsPerChar,
    ];

    /// The metric's name: `prefix-match`, `rouge-l`, `match-chars`, `bits-per-char`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::PrefixMatch => "prefix-match",
            Metric::RougeL => "rouge-l",
            Metric::MatchChars => "match-chars",
            Metric::BitsPerChar => "bits-per-char",
        }
    }

    /// Parses a metric name, listing the known names on failure.
    pub fn from_name(name: &str) -> Result<Metric, TaskError> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| TaskError::UnknownMetric {
                name: name.to_string(),
                known: Metric::ALL.iter().map(|m| m.name().to_string()).collect(),
            })
    }

    /// Whether a larger score is better (false only for bits per character).
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::BitsPerChar)
    }

    /// Scores a generated text against the references.
    ///
    /// With several references the best one counts (any match for `prefix-match`,
    /// the largest F-measure for `rouge-l` as in `rouge_score`'s `score_multi`, the
    /// longest match for `match-chars`). `bits-per-char` cannot score a text: use
    /// [`metrics::bits_per_char`] with the summed negative log-likelihood.
    pub fn score(self, prediction: &str, references: &[String]) -> Result<f64, TaskError> {
        match self {
            Metric::PrefixMatch => Ok(metrics::prefix_match(prediction, references)),
            Metric::RougeL => Ok(references
                .iter()
                .map(|r| metrics::rouge_l(prediction, r).fmeasure)
                .fold(0.0, f64::max)),
            Metric::MatchChars => Ok(references
                .iter()
                .map(|r| metrics::match_chars(prediction, r))
                .max()
                .unwrap_or(0) as f64),
            Metric::BitsPerChar => Err(TaskError::UnsupportedMetric {
                metric: self.name().to_string(),
                message: "scores the model's log-likelihood of a teacher-forced \
                          reference, not a generated text; use \
                          sparq_tasks::metrics::bits_per_char"
                    .to_string(),
            }),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = TaskError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::from_name(s)
    }
}

/// One prompt of a task, ready for the runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Stable identifier within the task (SQuAD question id, CNN/DM `idx`,
    /// repetition `ctx{i}-{j}`, WikiText `{article index}:{title}`, or the custom
    /// file's `id`), used to pair samples across methods and to resume sweeps.
    pub id: String,
    /// The whole model input (context plus prompt), to be tokenized as one string
    /// with the tokenizer's normal special tokens.
    pub input: String,
    /// Gold references (SQuAD answers, TriviaQA aliases, a summary, a continuation).
    pub references: Vec<String>,
    /// Tokens to generate greedily (for teacher-forced examples: the number of
    /// reference tokens to feed).
    pub max_new_tokens: usize,
    /// Cut the generated tokens to this many before decoding and scoring (CNN/DM and
    /// repetition: the reference's own token count).
    pub cut_output_to_tokens: Option<usize>,
    /// How to score the output.
    pub metric: Metric,
    /// WikiText: the reference text to feed token by token after a dense prefill of
    /// `input`; the score is bits per character of this text.
    pub teacher_forced: Option<String>,
}

impl Example {
    /// SHA-256 of the input, hex encoded: lets sample logs identify the exact prompt
    /// without storing it.
    pub fn input_sha256(&self) -> String {
        hex(&Sha256::digest(self.input.as_bytes()))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(Metric::from_name(m.name()).unwrap(), m);
            assert_eq!(m.to_string().parse::<Metric>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.name()));
        }
    }

    #[test]
    fn unknown_metric_lists_the_known_ones() {
        let err = Metric::from_name("bleu").unwrap_err().to_string();
        assert!(err.contains("bleu"), "{err}");
        for m in Metric::ALL {
            assert!(err.contains(m.name()), "{err}");
        }
    }

    #[test]
    fn multi_reference_scoring_takes_the_best_reference() {
        let refs = vec!["Paris".to_string(), "the city of light".to_string()];
        assert_eq!(
            Metric::PrefixMatch.score("City of light", &refs).unwrap(),
            1.0
        );
        let refs = vec!["abc def".to_string(), "abx".to_string()];
        assert_eq!(Metric::MatchChars.score("abx y", &refs).unwrap(), 3.0);
        let refs = vec!["cats sat".to_string(), "the cat sat on the mat".to_string()];
        let best = Metric::RougeL.score("the cat sat", &refs).unwrap();
        let single = metrics::rouge_l("the cat sat", &refs[1]).fmeasure;
        assert!(best >= single && best > 0.0);
        assert!(Metric::BitsPerChar.score("x", &refs).is_err());
    }
}
