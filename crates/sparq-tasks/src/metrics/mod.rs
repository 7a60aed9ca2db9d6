//! The task metrics of SPEC section 5, the mean-and-standard-error helper the report
//! uses, and the reader for `sparq metric --pairs FILE`.

mod porter;
mod rouge;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::TaskError;
use crate::jsonl;
use crate::text::is_py_space;

pub use porter::stem as porter_stem;
pub use rouge::{rouge_l, rouge_tokens, RougeScore};

/// SQuAD/TriviaQA normalisation: lowercase; strip a leading run of whitespace,
/// quotes, `_`, `.`, `,` followed by an optional `the `/`a `/`an `; strip a trailing
/// run of the same characters.
pub fn normalise_answer(text: &str) -> String {
    fn strippable(c: char) -> bool {
        is_py_space(c) || matches!(c, '"' | '\'' | '_' | '.' | ',')
    }
    let lower = text.to_lowercase();
    let mut rest = lower.trim_start_matches(strippable);
    for article in ["the ", "a ", "an "] {
        if let Some(r) = rest.strip_prefix(article) {
            rest = r;
            break;
        }
    }
    rest.trim_end_matches(strippable).to_string()
}

/// 1.0 if the normalised prediction starts with any non-empty normalised reference,
/// else 0.0.
pub fn prefix_match(prediction: &str, references: &[String]) -> f64 {
    let out = normalise_answer(prediction);
    let hit = references.iter().any(|r| {
        let r = normalise_answer(r);
        !r.is_empty() && out.starts_with(&r)
    });
    if hit {
        1.0
    } else {
        0.0
    }
}

/// Repetition score: strip leading whitespace from both strings and count the
/// leading characters that match. As in the paper's code, when no position of the
/// two strings disagrees the score is the full reference length, even if the
/// prediction is the shorter one.
pub fn match_chars(prediction: &str, reference: &str) -> usize {
    let p = prediction.trim_start_matches(is_py_space);
    let r = reference.trim_start_matches(is_py_space);
    p.chars()
        .zip(r.chars())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| r.chars().count())
}

/// Bits per character: `nll_nats * log2(e) / characters of the reference`, where
/// `nll_nats` is the summed negative log-likelihood (natural log) of the reference's
/// tokens. Characters are Unicode scalar values, like Python's `len`.
pub fn bits_per_char(nll_nats: f64, reference: &str) -> f64 {
    nll_nats * std::f64::consts::LOG2_E / reference.chars().count() as f64
}

/// One line of a `sparq metric --pairs FILE` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    /// The generated text.
    pub prediction: String,
    /// The gold references (at least one).
    pub references: Vec<String>,
}

/// Reads a JSON-lines file of `{"prediction", "references": [..]}` objects. Blank
/// lines are skipped; errors name the file and the line.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>, TaskError> {
    let text = std::fs::read_to_string(path).map_err(|e| TaskError::io(path, e))?;
    let mut pairs = Vec::new();
    for (line_no, line) in jsonl::lines(&text) {
        let obj = jsonl::parse_object(path, line_no, line)?;
        let prediction = jsonl::string_field(path, line_no, &obj, "prediction")?;
        let references = jsonl::string_list_field(path, line_no, &obj, "references")?;
        pairs.push(Pair {
            prediction,
            references,
        });
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefix_match_normalisation() {
        assert_eq!(
            normalise_answer("  \"The Denver Broncos.\" "),
            "denver broncos"
        );
        assert_eq!(normalise_answer("an apple"), "apple");
        assert_eq!(normalise_answer("a"), "a");
        assert_eq!(normalise_answer("the"), "the");
        assert_eq!(normalise_answer("., the "), "");
        // Only one article goes.
        assert_eq!(normalise_answer("the a team"), "a team");
        // The article needs its space.
        assert_eq!(normalise_answer("theory"), "theory");
        assert_eq!(
            prefix_match(" Denver Broncos won", &refs(&["Denver Broncos"])),
            1.0
        );
        assert_eq!(prefix_match("the Broncos", &refs(&["Denver Broncos"])), 0.0);
        assert_eq!(prefix_match("1978.", &refs(&["1979", "1978"])), 1.0);
        // An answer that normalises to nothing never matches.
        assert_eq!(prefix_match("anything", &refs(&["\"..\""])), 0.0);
    }

    #[test]
    fn match_chars_counts_leading_agreement() {
        assert_eq!(match_chars("  To be, or not", "\nTo be, or not to be"), 19);
        assert_eq!(match_chars("To be, or nat", "To be, or not"), 11);
        assert_eq!(match_chars("x", "y"), 0);
        assert_eq!(match_chars("", "abc"), 3);
        assert_eq!(match_chars("abcdef", "abc"), 3);
    }

    #[test]
    fn bits_per_char_uses_characters_not_bytes() {
        let nll = 4.0 * std::f64::consts::LN_2; // 4 bits
        assert_eq!(bits_per_char(nll, "éé"), 2.0);
    }
}
