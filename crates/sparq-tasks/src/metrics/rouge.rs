//! Sentence-level ROUGE-L, matching Google's `rouge_score` 0.1.2
//! (`RougeScorer(["rougeL"], use_stemmer=True)`): the longest common subsequence over
//! the whole token sequences, not the summary-level "Lsum".

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::porter;

/// ROUGE-L precision, recall and F-measure of one prediction against one reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RougeScore {
    /// LCS length / prediction tokens.
    pub precision: f64,
    /// LCS length / reference tokens.
    pub recall: f64,
    /// `2PR / (P + R)`, or 0 when both are 0.
    pub fmeasure: f64,
}

/// `rouge_score`'s tokenizer with stemming: lowercase, every character outside
/// `[a-z0-9]` becomes a separator, and tokens longer than 3 characters are
/// Porter-stemmed.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    // Unicode lowercasing first, as Python's `str.lower()` does: a few non-ASCII
    // capitals lowercase to ASCII (the Kelvin sign becomes "k").
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(|t| {
            if t.len() > 3 {
                porter::stem(t)
            } else {
                t.to_string()
            }
        })
        // rouge_score drops anything that is no longer `[a-z0-9]+` after stemming.
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .collect()
}

/// ROUGE-L of `prediction` against `reference` (the argument order of
/// `rouge_score` is `score(target, prediction)`; here it is prediction first, like
/// every other metric of this crate).
pub fn rouge_l(prediction: &str, reference: &str) -> RougeScore {
    let pred = rouge_tokens(prediction);
    let refr = rouge_tokens(reference);
    if pred.is_empty() || refr.is_empty() {
        return RougeScore {
            precision: 0.0,
            recall: 0.0,
            fmeasure: 0.0,
        };
    }
    let lcs = lcs_len(&pred, &refr);
    // Same operations in the same order as rouge_score, so results agree to the bit.
    let precision = lcs as f64 / pred.len() as f64;
    let recall = lcs as f64 / refr.len() as f64;
    let fmeasure = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    RougeScore {
        precision,
        recall,
        fmeasure,
    }
}

/// Length of the longest common subsequence, with two rolling rows of the usual
/// dynamic programme; tokens are interned so the inner loop compares integers.
fn lcs_len(a: &[String], b: &[String]) -> usize {
    fn intern<'a>(ids: &mut HashMap<&'a str, u32>, s: &'a str) -> u32 {
        let next = ids.len() as u32;
        *ids.entry(s).or_insert(next)
    }
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let a: Vec<u32> = a.iter().map(|s| intern(&mut ids, s)).collect();
    let b: Vec<u32> = b.iter().map(|s| intern(&mut ids, s)).collect();
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for &x in &a {
        for (j, &y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_follows_rouge_score() {
        assert_eq!(
            rouge_tokens("The U.S. isn't RUNNING 3-4 races, generously!"),
            vec!["the", "u", "s", "isn", "t", "run", "3", "4", "race", "gener"]
        );
        assert!(rouge_tokens("¿¡ — …").is_empty());
    }

    #[test]
    fn identical_texts_score_one_and_disjoint_zero() {
        let s = rouge_l("police arrested two men", "Police arrested two men.");
        assert_eq!(s.fmeasure, 1.0);
        let s = rouge_l("apples", "oranges");
        assert_eq!((s.precision, s.recall, s.fmeasure), (0.0, 0.0, 0.0));
        assert_eq!(rouge_l("", "anything").fmeasure, 0.0);
    }

    #[test]
    fn lcs_is_a_subsequence_not_a_substring() {
        // LCS of [a b c d] and [a x c y d] is [a c d].
        let s = rouge_l("a x c y d", "a b c d");
        assert!((s.precision - 3.0 / 5.0).abs() < 1e-15);
        assert!((s.recall - 3.0 / 4.0).abs() < 1e-15);
    }
}
