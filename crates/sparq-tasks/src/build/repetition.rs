//! Repetition on tiny Shakespeare (SPEC section 5): the model reads a context of
//! 6,000+ characters, is given a passage from it and must repeat what followed.

use std::ops::Range;

use super::{build_in_order, generated_example, generation_length, BuildSummary};
use crate::decl::TaskDecl;
use crate::error::TaskError;
use crate::example::{Example, TokenCounter};
use crate::jsonl;
use crate::source::Raw;
use crate::text::{render, slice, split_on_whitespace, split_prompt_reference};

/// Column of the hub's parquet conversion of `karpathy/tiny_shakespeare` (one row
/// per split holding the split's whole text).
pub(crate) const HUB_COLUMNS: &[&str] = &["text"];

/// The whole text: the local file, or the hub's splits concatenated in the declared
/// order (train, validation, test), which reproduces the local file.
pub(crate) fn text(raw: &Raw) -> Result<String, TaskError> {
    match raw {
        Raw::Local(path) => crate::source::read_text(path),
        Raw::Hub(rows) => rows
            .iter()
            .map(|r| jsonl::string_field(&r.file, r.row, &r.fields, "text"))
            .collect(),
    }
}

/// One prompt: its context, and its prompt and reference inside that context.
pub(crate) struct Candidate {
    pub context_index: usize,
    pub pair_index: usize,
    pub context: Range<usize>,
    pub prompt: Range<usize>,
    pub reference: Range<usize>,
}

/// All (context, prompt, reference) splits of the text, as character ranges into
/// the whole text.
pub(crate) fn candidates(chars: &[char], decl: &TaskDecl) -> Vec<Candidate> {
    let Some(r) = &decl.repetition else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, ctx) in split_on_whitespace(chars, r.context_chars)
        .into_iter()
        .enumerate()
    {
        let offset = ctx.start;
        let pairs = split_prompt_reference(&chars[ctx.clone()], r.prompt_chars, r.reference_chars);
        for (j, (p, q)) in pairs.into_iter().enumerate() {
            out.push(Candidate {
                context_index: i,
                pair_index: j,
                context: ctx.clone(),
                prompt: p.start + offset..p.end + offset,
                reference: q.start + offset..q.end + offset,
            });
        }
    }
    out
}

pub(crate) fn build(
    decl: &TaskDecl,
    text: &str,
    seed: u64,
    limit: Option<usize>,
    tokens: &dyn TokenCounter,
) -> Result<(Vec<Example>, BuildSummary), TaskError> {
    let Some(r) = &decl.repetition else {
        return Err(TaskError::Declaration {
            file: decl.file.clone(),
            message: "missing [repetition] section".into(),
        });
    };
    let chars: Vec<char> = text.chars().collect();
    let cands = candidates(&chars, decl);
    build_in_order(decl, seed, limit, &cands, |c| {
        let reference = slice(&chars, c.reference.clone());
        let references = vec![reference];
        let length = generation_length(&decl.generation, tokens, &references)?;
        let input = render(
            &r.input,
            &[
                ("context", &slice(&chars, c.context.clone())),
                ("prompt", &slice(&chars, c.prompt.clone())),
            ],
            &decl.file,
        )?;
        let id = format!("ctx{}-{}", c.context_index, c.pair_index);
        Ok(generated_example(decl, id, input, references, length))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::Words;
    use crate::decl::builtin_declarations;

    #[test]
    fn prompt_is_context_newline_passage_and_reference_follows_it() {
        let decl = builtin_declarations()
            .unwrap()
            .into_iter()
            .find(|d| d.name == "repetition")
            .unwrap();
        // 1,000 numbered words of 6 characters ("w0000 "), then a newline: exactly one
        // context of 6,000 characters, ending before that newline.
        let text: String = (0..1000).map(|i| format!("w{i:04} ")).collect::<String>() + "\nTHE END";
        let (ex, summary) = build(&decl, &text, 3, None, &Words).unwrap();
        assert_eq!(summary.skipped_total(), 0);
        assert!(summary.built > 10);
        let e = ex.iter().find(|e| e.id == "ctx0-0").unwrap();
        let context: String = text.chars().take(6000).collect();
        assert!(ex.iter().all(|e| e.id.starts_with("ctx0-")));
        // Prompt: the first 128+ characters, ending before a whitespace (the space
        // at 131, after "w0021").
        assert_eq!(e.input, format!("{context}\n{}", &text[..131]));
        // Reference: from that space, 256+ characters up to the next whitespace
        // (389): the 43 words " w0022 ... w0064".
        assert_eq!(e.references, [text[131..389].to_string()]);
        assert_eq!(e.max_new_tokens, 43);
        assert_eq!(e.cut_output_to_tokens, Some(43));
        // Second pair of the first context starts where the first reference ended.
        let e1 = ex.iter().find(|e| e.id == "ctx0-1").unwrap();
        assert!(e1.input.ends_with(&format!("\n{}", &text[389..521])));
    }
}
