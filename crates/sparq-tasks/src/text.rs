//! Text helpers with Python's semantics, because the task definitions are Python
//! regular expressions: whitespace as `\s` matches it, character (code point)
//! offsets, and the splits of the repetition and WikiText tasks.
//!
//! The splits are written by hand rather than run through a regex engine: the
//! engines disagree with Python on what `\s` is, and the hand-written scans are linear
//! and explain the match. Tests check them against `fancy-regex` and against offsets
//! that Python's `re` produced on the real files.

use std::ops::Range;

use crate::error::TaskError;

/// Python's `\s` (and `str.isspace`): Unicode White_Space plus the ASCII separators
/// U+001C..U+001F, which Python counts as whitespace and Unicode does not.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Collects a character range back into a string.
pub(crate) fn slice(chars: &[char], range: Range<usize>) -> String {
    chars[range].iter().collect()
}

/// First index `>= from` that is the end of the text or a whitespace character, i.e.
/// where the lookahead `(?=\s|$)` succeeds. (`$` can also match before a final
/// newline, but that newline is whitespace anyway.)
fn next_boundary(chars: &[char], from: usize) -> usize {
    (from..chars.len())
        .find(|&i| is_py_space(chars[i]))
        .unwrap_or(chars.len())
}

/// The matches of `re.finditer(r"(.{L,}?)(?=\s|$)", text, re.DOTALL)` with `L =
/// min_len`, as character ranges: consecutive pieces of at least `min_len`
/// characters, each ending just before a whitespace character (which starts the next
/// piece) or at the end. A final piece shorter than `min_len` is dropped.
pub(crate) fn split_on_whitespace(chars: &[char], min_len: usize) -> Vec<Range<usize>> {
    let min_len = min_len.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start + min_len <= chars.len() {
        let end = next_boundary(chars, start + min_len);
        out.push(start..end);
        start = end;
    }
    out
}

/// The matches of `re.finditer(r"(.{P,}?)(\s.{R-1,}?)(?=\s|$)", text, re.DOTALL)`
/// with `P = prompt_len`, `R = reference_len`: `(prompt, reference)` character ranges.
/// The prompt is at least `P` characters and ends before a whitespace character; the
/// reference starts with that whitespace, is at least `R` characters and ends before
/// the next whitespace or at the end.
pub(crate) fn split_prompt_reference(
    chars: &[char],
    prompt_len: usize,
    reference_len: usize,
) -> Vec<(Range<usize>, Range<usize>)> {
    let reference_len = reference_len.max(1);
    let n = chars.len();
    let mut out = Vec::new();
    let mut start = 0;
    // Lazy group 1: the first whitespace at or after `start + P` that leaves room for
    // the reference. When none exists at `start`, none exists further on either (the
    // candidates only shrink), so finditer would stop too.
    while let Some(split) = (start + prompt_len..n)
        .take_while(|&i| i + reference_len <= n)
        .find(|&i| is_py_space(chars[i]))
    {
        let end = next_boundary(chars, split + reference_len);
        out.push((start..split, split..end));
        start = end;
    }
    out
}

/// The match of `re.search(r"^(.{P}.*?)(\s.{R-1}.*?)(?:\s|$)", text, re.DOTALL)` with
/// `P = prefix_len`, `R = reference_len`: `(prefix, reference)` character ranges, or
/// `None` when the text is too short.
pub(crate) fn split_prefix_reference(
    chars: &[char],
    prefix_len: usize,
    reference_len: usize,
) -> Option<(Range<usize>, Range<usize>)> {
    let reference_len = reference_len.max(1);
    let n = chars.len();
    let split = (prefix_len..n)
        .take_while(|&i| i + reference_len <= n)
        .find(|&i| is_py_space(chars[i]))?;
    let end = next_boundary(chars, split + reference_len);
    Some((0..split, split..end))
}

/// A WikiText article: its index in the file, its title and its text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Article {
    pub index: usize,
    pub title: String,
    pub text: String,
}

/// Is this line (without its newline) a level-1 WikiText heading ` = Title = `?
/// Level-2 headings read ` = = Title = = `.
fn level1_title(line: &str) -> Option<&str> {
    let inner = line.strip_prefix(" = ")?.strip_suffix(" = ")?;
    if inner.is_empty() || inner.starts_with('=') || inner.ends_with('=') {
        return None;
    }
    Some(inner)
}

/// Cuts raw WikiText (`wiki.test.raw`) into articles. An article runs from its
/// level-1 heading line up to the next one, newlines included; text before the first
/// heading belongs to no article.
pub(crate) fn wikitext_articles(raw: &str) -> Vec<Article> {
    let mut articles: Vec<Article> = Vec::new();
    for line in raw.split_inclusive('\n') {
        let bare = line.strip_suffix('\n').unwrap_or(line);
        if let Some(title) = level1_title(bare) {
            articles.push(Article {
                index: articles.len(),
                title: title.to_string(),
                text: String::new(),
            });
        }
        if let Some(article) = articles.last_mut() {
            article.text.push_str(line);
        }
    }
    articles
}

/// Fills `{name}` placeholders of a declared template. `{{` and `}}` stand for
/// literal braces. An unknown or unclosed placeholder is an error naming the
/// template, so a broken declaration fails when it loads, not mid-run.
pub(crate) fn render(
    template: &str,
    values: &[(&str, &str)],
    what: &str,
) -> Result<String, TaskError> {
    let bad = |message: String| TaskError::Declaration {
        file: what.to_string(),
        message,
    };
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(bad(format!("unmatched `}}` in template {template:?}")));
        } else {
            let close = tail
                .find('}')
                .ok_or_else(|| bad(format!("unclosed `{{` in template {template:?}")))?;
            let name = &tail[1..close];
            let value = values
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let known: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
                    bad(format!(
                        "unknown placeholder {{{name}}} in template {template:?}; \
                         this template can use {}",
                        known
                            .iter()
                            .map(|k| format!("{{{k}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            out.push_str(value);
            rest = &tail[close + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fancy_regex::Regex;
    use proptest::prelude::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    /// Byte offset -> character offset, for comparing with the regex engine.
    fn char_pos(s: &str, byte: usize) -> usize {
        s[..byte].chars().count()
    }

    fn regex_contexts(text: &str, l: usize) -> Vec<Range<usize>> {
        let re = Regex::new(&format!(r"(?s)(.{{{l},}}?)(?=\s|$)")).unwrap();
        re.find_iter(text)
            .map(|m| m.unwrap())
            .map(|m| char_pos(text, m.start())..char_pos(text, m.end()))
            .collect()
    }

    fn regex_prompts(text: &str, p: usize, r: usize) -> Vec<(Range<usize>, Range<usize>)> {
        let re = Regex::new(&format!(r"(?s)(.{{{p},}}?)(\s.{{{},}}?)(?=\s|$)", r - 1)).unwrap();
        re.captures_iter(text)
            .map(|c| c.unwrap())
            .map(|c| {
                let (g1, g2) = (c.get(1).unwrap(), c.get(2).unwrap());
                (
                    char_pos(text, g1.start())..char_pos(text, g1.end()),
                    char_pos(text, g2.start())..char_pos(text, g2.end()),
                )
            })
            .collect()
    }

    fn regex_prefix(text: &str, p: usize, r: usize) -> Option<(Range<usize>, Range<usize>)> {
        let re = Regex::new(&format!(r"(?s)^(.{{{p}}}.*?)(\s.{{{}}}.*?)(?:\s|$)", r - 1)).unwrap();
        re.captures(text).unwrap().map(|c| {
            let (g1, g2) = (c.get(1).unwrap(), c.get(2).unwrap());
            (
                char_pos(text, g1.start())..char_pos(text, g1.end()),
                char_pos(text, g2.start())..char_pos(text, g2.end()),
            )
        })
    }

    /// Texts over a small alphabet with plenty of whitespace and a non-ASCII letter,
    /// so that boundaries land everywhere. (No U+001C..U+001F: there the regex
    /// engine and Python disagree, and Python is the reference.)
    fn text_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just('a'), Just('é'), Just(' '), Just('\n'), Just('b')],
            0..120,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn contexts_match_the_regex(text in text_strategy(), l in 1usize..30) {
            prop_assert_eq!(split_on_whitespace(&chars(&text), l), regex_contexts(&text, l));
        }

        #[test]
        fn prompts_match_the_regex(text in text_strategy(), p in 0usize..20, r in 1usize..20) {
            prop_assert_eq!(split_prompt_reference(&chars(&text), p, r), regex_prompts(&text, p, r));
        }

        #[test]
        fn prefix_matches_the_regex(text in text_strategy(), p in 0usize..40, r in 1usize..30) {
            prop_assert_eq!(split_prefix_reference(&chars(&text), p, r), regex_prefix(&text, p, r));
        }
    }

    #[test]
    fn python_whitespace_includes_the_ascii_separators() {
        for c in [
            ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{1c}', '\u{1f}', '\u{85}', '\u{a0}',
            '\u{3000}',
        ] {
            assert!(is_py_space(c), "{c:?}");
        }
        for c in ['a', '\u{200b}', '_', '\u{0}'] {
            assert!(!is_py_space(c), "{c:?}");
        }
    }

    #[test]
    fn articles_start_at_level1_headings() {
        let raw = " \n = One = \n \n Text one .\n \n = = Section = = \n More .\n = Two = \n Body\n";
        let a = wikitext_articles(raw);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].title, "One");
        assert_eq!(
            a[0].text,
            " = One = \n \n Text one .\n \n = = Section = = \n More .\n"
        );
        assert_eq!((a[1].index, a[1].title.as_str()), (1, "Two"));
        assert_eq!(a[1].text, " = Two = \n Body\n");
    }

    #[test]
    fn render_fills_placeholders_and_rejects_unknown_ones() {
        let v = [("a", "x"), ("b", "{y}")];
        assert_eq!(render("{a}-{b} {{lit}}", &v, "t").unwrap(), "x-{y} {lit}");
        let err = render("{a} {c}", &v, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains("{c}") && err.contains("{a}, {b}") && err.contains("t.toml"),
            "{err}"
        );
        assert!(render("{a", &v, "t").is_err());
        assert!(render("a}", &v, "t").is_err());
    }
}
