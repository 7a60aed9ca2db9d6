//! SQuAD v1.1, one-shot, with confusion paragraphs (SPEC section 5).
//!
//! For each question: its paragraph plus 7 paragraphs drawn with replacement from all
//! distinct dev paragraphs, shuffled together; then one solved example ("shot"): a
//! random other question on the same paragraph, or a random question from anywhere
//! when the paragraph has no other, answered with its shortest gold answer.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::{
    build_in_order, dedup_keep_order, generated_example, generation_length, unique_ids,
    BuildSummary,
};
use crate::decl::TaskDecl;
use crate::error::TaskError;
use crate::example::{Example, TokenCounter};
use crate::jsonl;
use crate::rng::TaskRng;
use crate::source::Raw;
use crate::text::render;

/// Columns of the hub's `rajpurkar/squad` parquet files.
pub(crate) const HUB_COLUMNS: &[&str] = &["id", "title", "context", "question", "answers"];

/// One question, flattened like the hub's rows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub id: String,
    pub title: String,
    pub context: String,
    pub question: String,
    pub answers: Vec<String>,
}

#[derive(Deserialize)]
struct File {
    data: Vec<Article>,
}
#[derive(Deserialize)]
struct Article {
    title: String,
    paragraphs: Vec<Paragraph>,
}
#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Qa>,
}
#[derive(Deserialize)]
struct Qa {
    id: String,
    question: String,
    answers: Vec<Answer>,
}
#[derive(Deserialize)]
struct Answer {
    text: String,
}

/// Records in data order (article, paragraph, question), from the official JSON or
/// from hub rows; both orders agree.
pub(crate) fn records(raw: &Raw) -> Result<Vec<Record>, TaskError> {
    match raw {
        Raw::Local(path) => local_records(path),
        Raw::Hub(rows) => rows
            .iter()
            .map(|r| {
                let (p, n, f) = (&r.file, r.row, &r.fields);
                Ok(Record {
                    id: jsonl::id_field(p, n, f, "id")?,
                    title: jsonl::string_field(p, n, f, "title")?,
                    context: jsonl::string_field(p, n, f, "context")?,
                    question: jsonl::string_field(p, n, f, "question")?,
                    answers: jsonl::nested_strings(p, n, f, "answers.text")?,
                })
            })
            .collect(),
    }
}

fn local_records(path: &Path) -> Result<Vec<Record>, TaskError> {
    let text = crate::source::read_text(path)?;
    let file: File = serde_json::from_str(&text).map_err(|e| TaskError::InvalidJson {
        path: path.to_path_buf(),
        line: e.line(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for article in file.data {
        for paragraph in article.paragraphs {
            for qa in paragraph.qas {
                out.push(Record {
                    id: qa.id,
                    title: article.title.clone(),
                    context: paragraph.context.clone(),
                    question: qa.question,
                    answers: qa.answers.into_iter().map(|a| a.text).collect(),
                });
            }
        }
    }
    Ok(out)
}

/// Builds the examples. Records without a gold answer are skipped (and never used
/// as a shot).
pub(crate) fn build(
    decl: &TaskDecl,
    records: &[Record],
    seed: u64,
    limit: Option<usize>,
    tokens: &dyn TokenCounter,
) -> Result<(Vec<Example>, BuildSummary), TaskError> {
    let Some(s) = &decl.squad else {
        return Err(TaskError::Declaration {
            file: decl.file.clone(),
            message: "missing [squad] section".into(),
        });
    };
    let file = decl.file.as_str();
    // The paragraph as it appears in the prompt, per record.
    let formatted: Vec<String> = records
        .iter()
        .map(|r| {
            render(
                &s.paragraph,
                &[
                    ("title", &display_title(&r.title)),
                    ("paragraph", &r.context),
                ],
                file,
            )
        })
        .collect::<Result<_, _>>()?;
    // Sorted, so that the draws do not depend on the data's order.
    let distinct: Vec<&str> = formatted
        .iter()
        .map(String::as_str)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let answered: Vec<usize> = (0..records.len())
        .filter(|&i| !records[i].answers.is_empty())
        .collect();
    let mut by_paragraph: HashMap<&str, Vec<usize>> = HashMap::new();
    for &i in &answered {
        by_paragraph.entry(&formatted[i]).or_default().push(i);
    }
    let ids = unique_ids(records.iter().map(|r| r.id.clone()));
    let candidates: Vec<usize> = (0..records.len()).collect();

    build_in_order(decl, seed, limit, &candidates, |&i| {
        let r = &records[i];
        if r.answers.is_empty() {
            return Err("question has no gold answer".into());
        }
        let mut rng = TaskRng::derive(seed, &[&decl.name, &ids[i]]);

        let mut paragraphs: Vec<&str> = vec![&formatted[i]];
        for _ in 0..s.confusion_paragraphs {
            paragraphs.push(distinct[rng.below(distinct.len())]);
        }
        rng.shuffle(&mut paragraphs);

        let same: Vec<usize> = by_paragraph[formatted[i].as_str()]
            .iter()
            .copied()
            .filter(|&j| j != i)
            .collect();
        let shot = if !same.is_empty() {
            same[rng.below(same.len())]
        } else if answered.len() > 1 {
            // Redraw until another question comes up; terminates since one exists.
            loop {
                let j = answered[rng.below(answered.len())];
                if j != i {
                    break j;
                }
            }
        } else {
            return Err("no other answered question for the one-shot example".into());
        };
        let shot_answer = shortest(&records[shot].answers);

        let references = dedup_keep_order(r.answers.clone());
        let length = generation_length(&decl.generation, tokens, &references)?;
        let title = display_title(&r.title);
        let input = render(
            &s.context,
            &[("paragraphs", &paragraphs.join("\n")), ("title", &title)],
            file,
        )
        .and_then(|context| {
            render(
                &s.input,
                &[
                    ("context", &context),
                    ("shot_question", &records[shot].question),
                    ("shot_answer", shot_answer),
                    ("question", &r.question),
                ],
                file,
            )
        })?;
        Ok(generated_example(
            decl,
            ids[i].clone(),
            input,
            references,
            length,
        ))
    })
}

/// Titles are stored with underscores (`Super_Bowl_50`); the prompt shows spaces.
fn display_title(title: &str) -> String {
    title.replace('_', " ")
}

/// The first of the shortest answers (in characters), like Python's
/// `min(answers, key=len)`.
fn shortest(answers: &[String]) -> &str {
    answers
        .iter()
        .min_by_key(|a| a.chars().count())
        .map(String::as_str)
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::Words;
    use crate::decl::builtin_declarations;

    fn rec(id: &str, title: &str, context: &str, q: &str, answers: &[&str]) -> Record {
        Record {
            id: id.into(),
            title: title.into(),
            context: context.into(),
            question: q.into(),
            answers: answers.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn fixture() -> Vec<Record> {
        vec![
            rec(
                "q1",
                "Blue_Whale",
                "Blue whales are huge.",
                "What is huge?",
                &["Blue whales", "whales"],
            ),
            rec(
                "q2",
                "Blue_Whale",
                "Blue whales are huge.",
                "Are they small?",
                &["no"],
            ),
            rec(
                "q3",
                "Moon",
                "The Moon orbits Earth.",
                "What does the Moon orbit?",
                &["Earth", "the Earth", "Earth"],
            ),
            rec("q4", "Tea", "Tea is a drink.", "What is tea?", &[]),
        ]
    }

    #[test]
    fn prompt_has_the_documented_shape() {
        let decl = &builtin_declarations().unwrap()[0];
        let recs = fixture();
        let (examples, summary) = build(decl, &recs, 11, None, &Words).unwrap();
        assert_eq!(summary.built, 3);
        assert_eq!(summary.skipped["question has no gold answer"], 1);
        let q1 = examples.iter().find(|e| e.id == "q1").unwrap();
        // The shot is the other question on the same paragraph, with its answer.
        assert!(q1.input.ends_with(
            "\nFrom what you've just read about Blue Whale, please answer the following questions.\
             \nQuestion: Are they small?\nAnswer: no\nQuestion: What is huge?\nAnswer:"
        ), "{}", q1.input);
        let paragraphs: Vec<&str> = q1
            .input
            .split("\nFrom what")
            .next()
            .unwrap()
            .split('\n')
            .collect();
        assert_eq!(paragraphs.len(), 8);
        assert!(paragraphs.contains(&"Title: Blue Whale. Background: Blue whales are huge."));
        // min(30, 5 + 2 words).
        assert_eq!(q1.max_new_tokens, 7);
        // q3 is alone on its paragraph: the shot is a random answered question, with
        // its shortest answer.
        let q3 = examples.iter().find(|e| e.id == "q3").unwrap();
        assert_eq!(q3.references, ["Earth", "the Earth"]);
        let shot = q3.input.split("\nQuestion: ").nth(1).unwrap();
        assert!(
            shot == "What is huge?\nAnswer: whales" || shot == "Are they small?\nAnswer: no",
            "{shot}"
        );
    }

    #[test]
    fn examples_do_not_depend_on_the_limit() {
        let decl = &builtin_declarations().unwrap()[0];
        let recs = fixture();
        let (all, _) = build(decl, &recs, 5, None, &Words).unwrap();
        let (two, summary) = build(decl, &recs, 5, Some(2), &Words).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(summary.built, 2);
        assert_eq!(&all[..2], &two[..]);
        let (other_seed, _) = build(decl, &recs, 6, None, &Words).unwrap();
        assert_ne!(all, other_seed);
    }
}
