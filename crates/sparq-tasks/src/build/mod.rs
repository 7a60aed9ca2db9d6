//! Turning records into examples: the shared seeded order, the limit, the skip
//! accounting and the generation-length rule. One file per task does the rest.

pub(crate) mod cnn_dailymail;
pub(crate) mod repetition;
pub(crate) mod squad;
pub(crate) mod triviaqa;
pub(crate) mod wikitext;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::decl::{GenerationDecl, TaskDecl};
use crate::error::TaskError;
use crate::example::{Example, TokenCounter};
use crate::rng::TaskRng;

/// What happened while building a task's examples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildSummary {
    /// Records (questions, articles, passages) in the data.
    pub candidates: usize,
    /// Records looked at, in the seeded order, before the limit was reached.
    pub examined: usize,
    /// Examples built.
    pub built: usize,
    /// Records examined but not usable, counted by reason.
    pub skipped: BTreeMap<String, usize>,
}

impl BuildSummary {
    /// Total number of skipped records.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }
}

/// Why a record gave no example.
#[derive(Debug)]
pub(crate) enum Skip {
    /// The record is not usable (a short reason shared by many records); it is
    /// counted in the summary and building goes on.
    Unusable(String),
    /// Something is wrong with the task itself (its template): building stops.
    Fatal(TaskError),
}

impl From<String> for Skip {
    fn from(reason: String) -> Self {
        Skip::Unusable(reason)
    }
}

impl From<&str> for Skip {
    fn from(reason: &str) -> Self {
        Skip::Unusable(reason.to_string())
    }
}

impl From<TaskError> for Skip {
    fn from(e: TaskError) -> Self {
        Skip::Fatal(e)
    }
}

/// A generated-text example of `decl` (not teacher-forced), with its generation
/// length from [`generation_length`].
pub(crate) fn generated_example(
    decl: &TaskDecl,
    id: String,
    input: String,
    references: Vec<String>,
    (max_new_tokens, cut_output_to_tokens): (usize, Option<usize>),
) -> Example {
    Example {
        id,
        input,
        references,
        max_new_tokens,
        cut_output_to_tokens,
        metric: decl.metric,
        teacher_forced: None,
    }
}

/// Builds examples from `candidates` in a seeded random order until `limit` examples
/// exist. The order is a shuffle keyed by the task and seed only, so `limit = N`
/// gives the first N examples of the full run; `build` is called lazily, so a small
/// limit does not tokenize the whole data set. A [`Skip::Fatal`] stops and is
/// returned.
pub(crate) fn build_in_order<C>(
    decl: &TaskDecl,
    seed: u64,
    limit: Option<usize>,
    candidates: &[C],
    mut build: impl FnMut(&C) -> Result<Example, Skip>,
) -> Result<(Vec<Example>, BuildSummary), TaskError> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    TaskRng::derive(seed, &[&decl.name, "order"]).shuffle(&mut order);
    let mut summary = BuildSummary {
        candidates: candidates.len(),
        ..BuildSummary::default()
    };
    let mut examples = Vec::new();
    for i in order {
        if limit.is_some_and(|l| examples.len() >= l) {
            break;
        }
        summary.examined += 1;
        match build(&candidates[i]) {
            Ok(ex) => examples.push(ex),
            Err(Skip::Unusable(reason)) => *summary.skipped.entry(reason).or_default() += 1,
            Err(Skip::Fatal(e)) => return Err(e),
        }
    }
    summary.built = examples.len();
    Ok((examples, summary))
}

/// The generation length of a generative example: `min(cap, spare + longest
/// reference in tokens)`, and the cut to the reference's token count when declared.
/// `Err` when a reference has no tokens (nothing to generate or compare).
pub(crate) fn generation_length(
    g: &GenerationDecl,
    tokens: &dyn TokenCounter,
    references: &[String],
) -> Result<(usize, Option<usize>), Skip> {
    let counts: Vec<usize> = references.iter().map(|r| tokens.count_tokens(r)).collect();
    let longest = counts.iter().copied().max().unwrap_or(0);
    if longest == 0 {
        return Err("reference has no tokens".into());
    }
    let cap = g.cap.unwrap_or(usize::MAX);
    let max_new = cap.min(g.spare + longest);
    // Cutting only makes sense against a single reference (CNN/DM, repetition).
    let cut = g.cut_to_reference.then_some(longest);
    Ok((max_new, cut))
}

/// Makes ids unique in data order: the second record with id `x` becomes `x#2`, the
/// third `x#3`, so that ids stay stable for a given data set.
pub(crate) fn unique_ids(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    ids.into_iter()
        .map(|id| {
            let n = seen.entry(id.clone()).or_default();
            *n += 1;
            if *n == 1 {
                id
            } else {
                format!("{id}#{n}")
            }
        })
        .collect()
}

/// Removes repeated references, keeping the first occurrence of each (SQuAD lists
/// the same answer once per annotator); the order, and so the first shortest
/// answer, is unchanged.
pub(crate) fn dedup_keep_order(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::example::TokenCounter;

    /// Whitespace-separated words: a stand-in tokenizer with an obvious count.
    pub(crate) struct Words;
    impl TokenCounter for Words {
        fn count_tokens(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_suffix_repeats() {
        let ids = unique_ids(["a", "b", "a", "a"].map(String::from));
        assert_eq!(ids, ["a", "b", "a#2", "a#3"]);
    }

    #[test]
    fn dedup_keeps_first_occurrences() {
        let v = dedup_keep_order(["x", "y", "x", "z", "y"].map(String::from).to_vec());
        assert_eq!(v, ["x", "y", "z"]);
    }
}
