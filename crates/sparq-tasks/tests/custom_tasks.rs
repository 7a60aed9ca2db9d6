//! Custom task files, `sparq metric` pair files, task lookup and their errors.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sparq_tasks::{
    list_tasks, load_custom_task, load_task, metrics::read_pairs, LoadOptions, Metric, TaskError,
    TokenCounter,
};

struct Words;
impl TokenCounter for Words {
    fn count_tokens(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = r#"{"id": "a", "input": "Q: 2+2?\nA:", "references": ["4", "four"], "metric": "prefix-match", "max_new_tokens": 4}

{"id": 7, "input": "Summarise: x", "references": ["x"], "metric": "rouge-l", "max_new_tokens": 32}
{"id": "c", "input": "Repeat: abc", "references": ["abc"], "metric": "match-chars", "max_new_tokens": 8}
"#;

#[test]
fn custom_file_loads_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mine.jsonl", GOOD);
    let task = load_custom_task(&path, None).unwrap();
    assert_eq!(task.examples.len(), 3);
    assert_eq!(task.version, None);
    assert!(task.source.contains("sha256"));
    let a = &task.examples[0];
    assert_eq!(a.id, "a");
    assert_eq!(a.input, "Q: 2+2?\nA:");
    assert_eq!(a.references, ["4", "four"]);
    assert_eq!(a.metric, Metric::PrefixMatch);
    assert_eq!(a.max_new_tokens, 4);
    assert_eq!(
        (a.cut_output_to_tokens, a.teacher_forced.clone()),
        (None, None)
    );
    // Integer ids are accepted as text.
    assert_eq!(task.examples[1].id, "7");
    assert_eq!(task.examples[2].metric, Metric::MatchChars);

    // Through load_task, by path, with a limit keeping the first lines.
    let opts = LoadOptions {
        limit: Some(2),
        ..LoadOptions::default()
    };
    let task = load_task(path.to_str().unwrap(), &opts, &Words).unwrap();
    assert_eq!(task.examples.len(), 2);
    assert_eq!(task.summary.candidates, 3);
}

fn custom_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.jsonl", text);
    load_custom_task(&path, None).unwrap_err().to_string()
}

#[test]
fn custom_file_errors_name_file_line_and_field() {
    let first = GOOD.lines().next().unwrap();
    let err = custom_error(&format!("{first}\n{{\"id\": \"b\", \"input\": \n"));
    assert!(
        err.contains("bad.jsonl") && err.contains("line 2") && err.contains("invalid JSON"),
        "{err}"
    );

    let err = custom_error(
        r#"{"id": "b", "references": ["x"], "metric": "rouge-l", "max_new_tokens": 3}"#,
    );
    assert!(
        err.contains("line 1") && err.contains("missing field `input`"),
        "{err}"
    );

    let err = custom_error(
        r#"{"id": "b", "input": "i", "references": ["x"], "metric": "bleu", "max_new_tokens": 3}"#,
    );
    assert!(
        err.contains("`metric`")
            && err.contains("unknown metric `bleu`")
            && err.contains("rouge-l"),
        "{err}"
    );

    let err = custom_error(
        r#"{"id": "b", "input": "i", "references": ["x"], "metric": "bits-per-char", "max_new_tokens": 3}"#,
    );
    assert!(err.contains("not available for custom tasks"), "{err}");

    let err = custom_error(
        r#"{"id": "b", "input": "i", "references": [], "metric": "rouge-l", "max_new_tokens": 3}"#,
    );
    assert!(
        err.contains("`references`") && err.contains("empty"),
        "{err}"
    );

    let err = custom_error(
        r#"{"id": "b", "input": "i", "references": ["x"], "metric": "rouge-l", "max_new_tokens": -1}"#,
    );
    assert!(
        err.contains("`max_new_tokens`") && err.contains("non-negative integer"),
        "{err}"
    );

    let err = custom_error(&format!("{first}\n{first}\n"));
    assert!(
        err.contains("line 2") && err.contains("duplicate id `a` (first on line 1)"),
        "{err}"
    );

    let err = custom_error("\n\n");
    assert!(err.contains("no usable example"), "{err}");

    let err = custom_error("[1, 2]\n");
    assert!(err.contains("expected a JSON object"), "{err}");
}

#[test]
fn unknown_names_and_missing_files() {
    let err = load_task("squadd", &LoadOptions::default(), &Words).unwrap_err();
    assert!(matches!(err, TaskError::UnknownTask { .. }));
    let msg = err.to_string();
    for name in [
        "squad",
        "triviaqa",
        "cnn_dailymail",
        "repetition",
        "wikitext",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
    let err = load_task("no/such/file.jsonl", &LoadOptions::default(), &Words).unwrap_err();
    assert!(matches!(err, TaskError::Io { .. }), "{err}");
    assert!(err.to_string().contains("no/such/file.jsonl"));
}

#[test]
fn pairs_file_for_sparq_metric() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "pairs.jsonl",
        "{\"prediction\": \" The Eiffel Tower.\", \"references\": [\"Eiffel Tower\"]}\n\
         {\"prediction\": \"police said\", \"references\": [\"Police said on Monday\"]}\n",
    );
    let pairs = read_pairs(&path).unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!(
        Metric::PrefixMatch
            .score(&pairs[0].prediction, &pairs[0].references)
            .unwrap(),
        1.0
    );
    let f = Metric::RougeL
        .score(&pairs[1].prediction, &pairs[1].references)
        .unwrap();
    assert!((f - 2.0 * (1.0 * 0.5) / 1.5).abs() < 1e-12, "{f}");

    let bad = write(dir.path(), "bad.jsonl", "{\"prediction\": \"x\"}\n");
    let err = read_pairs(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad.jsonl") && err.contains("missing field `references`"),
        "{err}"
    );
}

#[test]
fn listing_names_every_builtin_task() {
    let tasks = list_tasks().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "squad",
            "triviaqa",
            "cnn_dailymail",
            "repetition",
            "wikitext"
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Arbitrary bytes never make the loader panic: it returns examples or an error.
    #[test]
    fn custom_loader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        let _ = load_custom_task(&path, None);
    }

    /// Near-valid lines (fields dropped or retyped) give errors, not panics.
    #[test]
    fn custom_loader_handles_mangled_lines(drop in 0usize..6, value in prop_oneof![
        Just("null"), Just("1.5"), Just("[]"), Just("{}"), Just("\"s\""), Just("[1]")
    ]) {
        let keys = ["id", "input", "references", "metric", "max_new_tokens", "extra"];
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(GOOD.lines().next().unwrap()).unwrap();
        obj.insert(keys[drop].to_string(), serde_json::from_str(value).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, serde_json::to_string(&obj).unwrap()).unwrap();
        let _ = load_custom_task(&path, None);
    }
}
