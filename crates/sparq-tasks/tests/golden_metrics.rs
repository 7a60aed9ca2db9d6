//! ROUGE-L and the Porter stemmer against goldens made by Google's `rouge_score`
//! 0.1.2 and NLTK (`scripts/goldens/make_rouge_goldens.py`), and the metrics'
//! robustness on arbitrary text.

use std::path::Path;

use proptest::prelude::*;
use sparq_tasks::metrics::{match_chars, porter_stem, prefix_match, rouge_l};

fn golden(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn rouge_l_matches_rouge_score_on_every_golden_pair() {
    let text = golden("rouge_l.jsonl");
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let prediction = v["prediction"].as_str().unwrap();
        let reference = v["reference"].as_str().unwrap();
        let got = rouge_l(prediction, reference);
        for (field, value) in [
            ("precision", got.precision),
            ("recall", got.recall),
            ("fmeasure", got.fmeasure),
        ] {
            let want = v[field].as_f64().unwrap();
            assert!(
                (value - want).abs() <= 1e-9,
                "line {}: {field} {value} != {want}\nprediction: {prediction:?}\nreference: {reference:?}",
                i + 1
            );
        }
        n += 1;
    }
    assert!(n >= 300, "only {n} golden pairs");
}

#[test]
fn porter_stemmer_matches_nltk() {
    let text = golden("porter_stems.tsv");
    let mut wrong = Vec::new();
    let mut n = 0;
    for line in text.lines() {
        let (word, stem) = line.split_once('\t').unwrap();
        let got = porter_stem(word);
        if got != stem {
            wrong.push(format!("{word}: got {got}, NLTK {stem}"));
        }
        n += 1;
    }
    assert!(n > 2000);
    assert!(
        wrong.is_empty(),
        "{} of {n} stems differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

proptest! {
    #[test]
    fn metrics_never_panic_and_stay_in_range(p in "\\PC{0,80}", r in "\\PC{0,80}") {
        let s = rouge_l(&p, &r);
        prop_assert!((0.0..=1.0).contains(&s.fmeasure));
        prop_assert!((0.0..=1.0).contains(&s.precision) && (0.0..=1.0).contains(&s.recall));
        let refs = vec![r.clone()];
        let m = prefix_match(&p, &refs);
        prop_assert!(m == 0.0 || m == 1.0);
        prop_assert!(match_chars(&p, &r) <= r.chars().count());
    }

    #[test]
    fn a_text_matches_itself(t in "[a-zA-Z0-9 ,.'-]{1,80}") {
        let refs = vec![t.clone()];
        if !sparq_tasks::metrics::normalise_answer(&t).is_empty() {
            prop_assert_eq!(prefix_match(&t, &refs), 1.0);
        }
        if !sparq_tasks::metrics::rouge_tokens(&t).is_empty() {
            prop_assert_eq!(rouge_l(&t, &t).fmeasure, 1.0);
        }
        let trimmed = t.trim_start();
        prop_assert_eq!(match_chars(&t, &t), trimmed.chars().count());
    }
}
