//! WikiText bits per character (SPEC section 5): each article is split into a prefix
//! of 6,000+ characters, prefilled densely, and a reference of about 400 characters,
//! fed token by token.

use super::{build_in_order, BuildSummary};
use crate::decl::TaskDecl;
use crate::error::TaskError;
use crate::example::{Example, TokenCounter};
use crate::jsonl;
use crate::source::Raw;
use crate::text::{slice, split_prefix_reference, wikitext_articles, Article};

/// Column of the hub's `Salesforce/wikitext` parquet files (one row per line).
pub(crate) const HUB_COLUMNS: &[&str] = &["text"];

/// The raw text. The hub stores one row per line of `wiki.test.raw`, with the blank
/// lines (a single space there) as empty strings; putting ` \n` back rebuilds the
/// raw file exactly, so both sources give the same articles.
pub(crate) fn raw_text(raw: &Raw) -> Result<String, TaskError> {
    match raw {
        Raw::Local(path) => crate::source::read_text(path),
        Raw::Hub(rows) => {
            let mut out = String::new();
            for r in rows {
                let line = jsonl::string_field(&r.file, r.row, &r.fields, "text")?;
                out.push_str(if line.is_empty() { " \n" } else { &line });
            }
            Ok(out)
        }
    }
}

pub(crate) fn build(
    decl: &TaskDecl,
    raw: &str,
    seed: u64,
    limit: Option<usize>,
    tokens: &dyn TokenCounter,
) -> Result<(Vec<Example>, BuildSummary), TaskError> {
    let Some(w) = &decl.wikitext else {
        return Err(TaskError::Declaration {
            file: decl.file.clone(),
            message: "missing [wikitext] section".into(),
        });
    };
    let max_tokens = decl.generation.max_reference_tokens.unwrap_or(usize::MAX);
    let articles: Vec<Article> = wikitext_articles(raw);
    build_in_order(decl, seed, limit, &articles, |a| {
        let chars: Vec<char> = a.text.chars().collect();
        let Some((prefix, reference)) =
            split_prefix_reference(&chars, w.prefix_chars, w.reference_chars)
        else {
            return Err(format!(
                "article too short for a {}-character prefix and a {}-character reference",
                w.prefix_chars, w.reference_chars
            )
            .into());
        };
        let reference = slice(&chars, reference);
        let n = tokens.count_tokens(&reference);
        if n == 0 {
            return Err("reference has no tokens".into());
        }
        // Skipped rather than truncated, so that the score stays the NLL of every
        // reference character divided by their number.
        if n > max_tokens {
            return Err(format!("reference longer than {max_tokens} tokens").into());
        }
        Ok(Example {
            id: format!("{}:{}", a.index, a.title),
            input: slice(&chars, prefix),
            references: vec![reference.clone()],
            max_new_tokens: n,
            cut_output_to_tokens: None,
            metric: decl.metric,
            teacher_forced: Some(reference),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::Words;
    use crate::decl::builtin_declarations;
    use crate::source::HubRow;
    use serde_json::json;

    fn decl() -> TaskDecl {
        builtin_declarations()
            .unwrap()
            .into_iter()
            .find(|d| d.name == "wikitext")
            .unwrap()
    }

    #[test]
    fn splits_articles_and_skips_short_ones() {
        let body: String = (0..1300).map(|i| format!("t{i:03} ")).collect(); // 6,500 chars
        let raw = format!(" \n = Long = \n \n{body}\n = Short = \n \n tiny .\n");
        let (ex, summary) = build(&decl(), &raw, 1, None, &Words).unwrap();
        assert_eq!(summary.built, 1);
        assert_eq!(summary.skipped.values().sum::<usize>(), 1);
        let e = &ex[0];
        assert_eq!(e.id, "0:Long");
        let article = format!(" = Long = \n \n{body}\n");
        // The split, found directly: the first whitespace at or after character
        // 6000, then the first whitespace at least 400 characters further on.
        let chars: Vec<char> = article.chars().collect();
        let split = (6000..).find(|&i| chars[i] == ' ').unwrap();
        let end = (split + 400..)
            .find(|&i| chars[i] == ' ' || chars[i] == '\n')
            .unwrap();
        assert_eq!(e.input, article[..split]);
        assert_eq!(e.teacher_forced.as_deref(), Some(&article[split..end]));
        assert_eq!(e.references, [article[split..end].to_string()]);
        assert_eq!(
            e.max_new_tokens,
            article[split..end].split_whitespace().count()
        );
        assert_eq!(e.metric, crate::Metric::BitsPerChar);
    }

    #[test]
    fn long_references_are_skipped_not_truncated() {
        // 1-character words: a 400-character reference has 200 words, more than
        // `max_reference_tokens` when each word counts double.
        struct Double;
        impl TokenCounter for Double {
            fn count_tokens(&self, text: &str) -> usize {
                2 * text.split_whitespace().count()
            }
        }
        let body = "a ".repeat(3500);
        let raw = format!(" = Dense = \n{body}\n");
        let (ex, summary) = build(&decl(), &raw, 1, None, &Double).unwrap();
        assert!(ex.is_empty());
        assert_eq!(summary.skipped["reference longer than 256 tokens"], 1);
    }

    #[test]
    fn hub_rows_rebuild_the_raw_file() {
        let rows: Vec<HubRow> = ["", " = T = \n", "", " Body .\n"]
            .iter()
            .enumerate()
            .map(|(i, t)| HubRow {
                file: "test.parquet".into(),
                row: i + 1,
                fields: json!({ "text": t }).as_object().unwrap().clone(),
            })
            .collect();
        assert_eq!(
            raw_text(&Raw::Hub(rows)).unwrap(),
            " \n = T = \n \n Body .\n"
        );
    }
}
