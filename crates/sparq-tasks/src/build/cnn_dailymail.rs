//! CNN/DailyMail summarisation of 4,000 to 8,000 character articles (SPEC section 5).

use std::path::Path;

use super::{build_in_order, generated_example, generation_length, BuildSummary};
use crate::decl::TaskDecl;
use crate::error::TaskError;
use crate::example::{Example, TokenCounter};
use crate::jsonl;
use crate::source::Raw;
use crate::text::render;

/// Columns of the hub's `abisee/cnn_dailymail` parquet files.
pub(crate) const HUB_COLUMNS: &[&str] = &["article", "highlights"];

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    /// Position in the published split (the local file's `idx`; the row number for
    /// hub files, which hold one split in order).
    pub idx: String,
    pub article: String,
    pub highlights: String,
}

pub(crate) fn records(raw: &Raw) -> Result<Vec<Record>, TaskError> {
    match raw {
        Raw::Local(path) => local_records(path),
        Raw::Hub(rows) => rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(Record {
                    idx: i.to_string(),
                    article: jsonl::string_field(&r.file, r.row, &r.fields, "article")?,
                    highlights: jsonl::string_field(&r.file, r.row, &r.fields, "highlights")?,
                })
            })
            .collect(),
    }
}

fn local_records(path: &Path) -> Result<Vec<Record>, TaskError> {
    let text = crate::source::read_text(path)?;
    jsonl::lines(&text)
        .map(|(n, line)| {
            let obj = jsonl::parse_object(path, n, line)?;
            Ok(Record {
                idx: jsonl::id_field(path, n, &obj, "idx")?,
                article: jsonl::string_field(path, n, &obj, "article")?,
                highlights: jsonl::string_field(path, n, &obj, "highlights")?,
            })
        })
        .collect()
}

pub(crate) fn build(
    decl: &TaskDecl,
    records: &[Record],
    seed: u64,
    limit: Option<usize>,
    tokens: &dyn TokenCounter,
) -> Result<(Vec<Example>, BuildSummary), TaskError> {
    let Some(c) = &decl.cnn_dailymail else {
        return Err(TaskError::Declaration {
            file: decl.file.clone(),
            message: "missing [cnn_dailymail] section".into(),
        });
    };
    let (lo, hi) = (c.min_article_chars, c.max_article_chars);
    let ids = super::unique_ids(records.iter().map(|r| r.idx.clone()));
    let candidates: Vec<usize> = (0..records.len()).collect();
    build_in_order(decl, seed, limit, &candidates, |&i| {
        let r = &records[i];
        if !(lo..=hi).contains(&r.article.chars().count()) {
            return Err(format!("article not within {lo}-{hi} characters").into());
        }
        let references = vec![r.highlights.clone()];
        let length = generation_length(&decl.generation, tokens, &references)?;
        let input = render(&c.input, &[("article", &r.article)], &decl.file)?;
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

    #[test]
    fn filters_by_length_and_sizes_generation_by_the_reference() {
        let decl = builtin_declarations()
            .unwrap()
            .into_iter()
            .find(|d| d.name == "cnn_dailymail")
            .unwrap();
        let words = |n: usize| vec!["word"; n].join(" ");
        let article = "x".repeat(4000);
        let recs = vec![
            Record {
                idx: "0".into(),
                article: article.clone(),
                highlights: words(10),
            },
            Record {
                idx: "1".into(),
                article: "short".into(),
                highlights: words(3),
            },
            Record {
                idx: "2".into(),
                article: "y".repeat(8000),
                highlights: words(200),
            },
            Record {
                idx: "3".into(),
                article: "z".repeat(8001),
                highlights: words(3),
            },
        ];
        let (ex, summary) = build(&decl, &recs, 1, None, &Words).unwrap();
        assert_eq!(summary.built, 2);
        assert_eq!(
            summary.skipped["article not within 4000-8000 characters"],
            2
        );
        let e0 = ex.iter().find(|e| e.id == "0").unwrap();
        assert_eq!(e0.input, format!("Article: {article}\nSummary:"));
        assert_eq!((e0.max_new_tokens, e0.cut_output_to_tokens), (10, Some(10)));
        let e2 = ex.iter().find(|e| e.id == "2").unwrap();
        // min(128, 200) tokens generated; the output is cut to 200 (a no-op).
        assert_eq!(
            (e2.max_new_tokens, e2.cut_output_to_tokens),
            (128, Some(200))
        );
    }
}
