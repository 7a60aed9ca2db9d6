//! TriviaQA (`rc` configuration), zero-shot, with one Wikipedia evidence document of
//! 4,000 to 8,000 characters picked at random (SPEC section 5). Records follow the
//! hub schema of `mandarjoshi/trivia_qa`, whether they come from its parquet files
//! or from a local JSON-lines copy.

use serde_json::{Map, Value};
use std::path::Path;

use super::{build_in_order, generated_example, generation_length, unique_ids, BuildSummary};
use crate::decl::TaskDecl;
use crate::error::TaskError;
use crate::example::{Example, TokenCounter};
use crate::jsonl;
use crate::rng::TaskRng;
use crate::source::Raw;
use crate::text::render;

/// Columns of the hub's parquet files that the task reads (the `search_results`
/// column, the bulk of the files, is left alone).
pub(crate) const HUB_COLUMNS: &[&str] = &["question_id", "question", "answer", "entity_pages"];

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub id: String,
    pub question: String,
    pub aliases: Vec<String>,
    pub wiki_contexts: Vec<String>,
}

/// Records from hub rows or from a local JSON-lines file in the same schema.
pub(crate) fn records(raw: &Raw) -> Result<Vec<Record>, TaskError> {
    match raw {
        Raw::Local(path) => {
            let text = crate::source::read_text(path)?;
            jsonl::lines(&text)
                .map(|(n, line)| record(path, n, &jsonl::parse_object(path, n, line)?))
                .collect()
        }
        Raw::Hub(rows) => rows
            .iter()
            .map(|r| record(&r.file, r.row, &r.fields))
            .collect(),
    }
}

fn record(path: &Path, line: usize, row: &Map<String, Value>) -> Result<Record, TaskError> {
    Ok(Record {
        id: jsonl::id_field(path, line, row, "question_id")?,
        question: jsonl::string_field(path, line, row, "question")?,
        aliases: jsonl::nested_strings(path, line, row, "answer.aliases")?,
        wiki_contexts: jsonl::nested_strings(path, line, row, "entity_pages.wiki_context")?,
    })
}

pub(crate) fn build(
    decl: &TaskDecl,
    records: &[Record],
    seed: u64,
    limit: Option<usize>,
    pythia_prompt: bool,
    tokens: &dyn TokenCounter,
) -> Result<(Vec<Example>, BuildSummary), TaskError> {
    let Some(t) = &decl.triviaqa else {
        return Err(TaskError::Declaration {
            file: decl.file.clone(),
            message: "missing [triviaqa] section".into(),
        });
    };
    let template = if pythia_prompt {
        &t.pythia_input
    } else {
        &t.input
    };
    let (lo, hi) = (t.min_document_chars, t.max_document_chars);
    let ids = unique_ids(records.iter().map(|r| r.id.clone()));
    let candidates: Vec<usize> = (0..records.len()).collect();
    build_in_order(decl, seed, limit, &candidates, |&i| {
        let r = &records[i];
        let documents: Vec<&String> = r
            .wiki_contexts
            .iter()
            .filter(|d| (lo..=hi).contains(&d.chars().count()))
            .collect();
        if documents.is_empty() {
            return Err(format!("no Wikipedia evidence document of {lo}-{hi} characters").into());
        }
        let references: Vec<String> = r
            .aliases
            .iter()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect();
        if references.is_empty() {
            return Err("question has no answer alias".into());
        }
        let mut rng = TaskRng::derive(seed, &[&decl.name, &ids[i]]);
        let document = documents[rng.below(documents.len())];
        let length = generation_length(&decl.generation, tokens, &references)?;
        let input = render(
            template,
            &[("document", document), ("question", &r.question)],
            &decl.file,
        )?;
        Ok(generated_example(
            decl,
            ids[i].clone(),
            input,
            references,
            length,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::Words;
    use crate::decl::builtin_declarations;
    use crate::source::{parquet_rows, Raw};
    use polars::prelude::{JsonFormat, JsonReader, ParquetWriter, SerReader};
    use std::io::Cursor;

    /// Hand-written rows in the hub schema (`tests/fixtures/triviaqa_rc.jsonl`).
    fn fixture_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/triviaqa_rc.jsonl")
    }

    fn decl() -> TaskDecl {
        builtin_declarations()
            .unwrap()
            .into_iter()
            .find(|d| d.name == "triviaqa")
            .unwrap()
    }

    fn check(examples: &[Example], summary: &BuildSummary) {
        assert_eq!(summary.candidates, 5);
        assert_eq!(summary.built, 3);
        assert_eq!(
            summary.skipped["no Wikipedia evidence document of 4000-8000 characters"],
            2
        );
        let mut ids: Vec<&str> = examples.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["tqa_1", "tqa_3", "tqa_3#2"]);
        let e1 = examples.iter().find(|e| e.id == "tqa_1").unwrap();
        // The only document in range is the 4,000-character one.
        assert!(
            e1.input.starts_with("Paris is the capital"),
            "{}",
            &e1.input[..40]
        );
        assert_eq!(
            e1.input.chars().count(),
            4000 + "\nQuestion: What is the capital of France?\nAnswer:".len()
        );
        assert!(e1
            .input
            .ends_with("\nQuestion: What is the capital of France?\nAnswer:"));
        assert_eq!(e1.references, ["Paris", "Paris, France", "City of Light"]);
        // min(30, 5 + 3 words of "City of Light").
        assert_eq!(e1.max_new_tokens, 8);
        assert_eq!(e1.cut_output_to_tokens, None);
    }

    #[test]
    fn hub_schema_rows_become_examples() {
        let raw = Raw::Local(fixture_path());
        let recs = records(&raw).unwrap();
        assert_eq!(recs.len(), 5);
        let (examples, summary) = build(&decl(), &recs, 2751584, None, false, &Words).unwrap();
        check(&examples, &summary);
    }

    #[test]
    fn the_same_rows_through_parquet_give_the_same_examples() {
        // Write the fixture as a parquet file with nested struct/list columns, like
        // the hub's, and read it back through the hub code path.
        let text = std::fs::read(fixture_path()).unwrap();
        let mut df = JsonReader::new(Cursor::new(text))
            .with_json_format(JsonFormat::JsonLines)
            .finish()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validation-00000-of-00001.parquet");
        ParquetWriter::new(std::fs::File::create(&path).unwrap())
            .finish(&mut df)
            .unwrap();
        let rows = parquet_rows(&path, HUB_COLUMNS).unwrap();
        let from_parquet = records(&Raw::Hub(rows)).unwrap();
        let from_json = records(&Raw::Local(fixture_path())).unwrap();
        assert_eq!(from_parquet, from_json);
        let (examples, summary) =
            build(&decl(), &from_parquet, 2751584, None, false, &Words).unwrap();
        check(&examples, &summary);
    }

    #[test]
    fn pythia_wording_and_seeded_document_choice() {
        let recs = records(&Raw::Local(fixture_path())).unwrap();
        let (examples, _) = build(&decl(), &recs, 1, None, true, &Words).unwrap();
        assert!(examples
            .iter()
            .all(|e| e.input.ends_with("\nSingle-word answer:")));
        // tqa_3 has two documents in range; across seeds both get picked.
        let picks: std::collections::BTreeSet<String> = (0..20)
            .map(|seed| {
                let (ex, _) = build(&decl(), &recs, seed, None, false, &Words).unwrap();
                let e = ex.into_iter().find(|e| e.id == "tqa_3").unwrap();
                e.input[..12].to_string()
            })
            .collect();
        assert_eq!(picks.len(), 2, "{picks:?}");
    }

    #[test]
    fn schema_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(
            &path,
            "{\"question_id\": \"a\", \"question\": \"q\", \"answer\": {\"aliases\": [\"x\"]}, \"entity_pages\": {\"wiki_context\": []}}\n\
             {\"question_id\": \"b\", \"question\": \"q\", \"answer\": {\"value\": \"x\"}, \"entity_pages\": {\"wiki_context\": []}}\n",
        )
        .unwrap();
        let err = records(&Raw::Local(path)).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("answer.aliases"),
            "{err}"
        );
    }
}
