//! `rebuild_report` on a fixed, hand-made `samples.jsonl` (2 tasks x dense and 4
//! settings x 5 examples, one failed cell, one duplicate, a torn final line), compared
//! byte for byte with committed `results.csv` and `report.md`. After an intended change
//! of format, regenerate them with `SPARQ_BLESS=1 cargo test -p sparq-report --test report`
//! and check the difference by hand.

use std::fs;
use std::path::{Path, PathBuf};

use sparq_report::{rebuild_report, ReportError, REPORT_FILE, RESULTS_FILE, SAMPLES_FILE};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(fixtures().join(SAMPLES_FILE), dir.path().join(SAMPLES_FILE)).unwrap();
    dir
}

#[test]
fn fixture_report_matches_the_committed_files() {
    let dir = run_dir();
    let summary = rebuild_report(dir.path()).unwrap();
    assert_eq!(
        (summary.samples, summary.errors, summary.settings),
        (50, 1, 10)
    );
    assert_eq!(summary.warnings.len(), 2, "{:?}", summary.warnings);
    assert!(summary.warnings[0].ends_with("line 51: duplicate of line 48 for (model `models/SmolLM2-135M-Instruct.Q4_1.gguf`, task `wikitext`, example `wikitext-2`, spec `lminf:k=256`); kept line 48"), "{}", summary.warnings[0]);
    assert!(
        summary.warnings[1].contains("line 52: ignored a torn final line"),
        "{}",
        summary.warnings[1]
    );

    for name in [RESULTS_FILE, REPORT_FILE] {
        let got = fs::read_to_string(dir.path().join(name)).unwrap();
        let expected_path = fixtures().join("expected").join(name);
        if std::env::var_os("SPARQ_BLESS").is_some() {
            fs::write(&expected_path, &got).unwrap();
        }
        let expected = fs::read_to_string(&expected_path).unwrap();
        assert!(
            got == expected,
            "{name} differs from {}:\n{got}",
            expected_path.display()
        );
    }

    let plots = dir.path().join("plots");
    for stem in ["squad", "wikitext"] {
        let png = fs::read(plots.join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let svg = fs::read_to_string(plots.join(format!("{stem}.svg"))).unwrap();
        for text in [
            "SparQ",
            "H2O",
            "LM-Infinite",
            "1/2",
            "1/8",
            "compression ratio",
        ] {
            assert!(svg.contains(text), "{stem}.svg lacks `{text}`");
        }
    }
    if let Some(out) = std::env::var_os("SPARQ_KEEP_PLOTS") {
        for stem in ["squad", "wikitext"] {
            fs::copy(
                plots.join(format!("{stem}.png")),
                Path::new(&out).join(format!("{stem}.png")),
            )
            .unwrap();
        }
    }
    assert_eq!(summary.written.len(), 6);
}

#[test]
fn rebuilding_twice_gives_the_same_files() {
    let dir = run_dir();
    rebuild_report(dir.path()).unwrap();
    let first = fs::read(dir.path().join(RESULTS_FILE)).unwrap();
    rebuild_report(dir.path()).unwrap();
    assert_eq!(fs::read(dir.path().join(RESULTS_FILE)).unwrap(), first);
}

#[test]
fn missing_samples_and_unwritable_outputs_are_errors() {
    let empty = tempfile::tempdir().unwrap();
    let err = rebuild_report(empty.path()).unwrap_err();
    assert!(matches!(err, ReportError::Io { .. }));
    assert!(
        err.to_string().contains("samples.jsonl: cannot read"),
        "{err}"
    );

    // A directory where a file must go cannot be replaced (file permissions do not
    // stop root, which the tests may run as).
    let dir = run_dir();
    fs::create_dir(dir.path().join(RESULTS_FILE)).unwrap();
    let err = rebuild_report(dir.path()).unwrap_err().to_string();
    assert!(err.contains("results.csv: cannot replace"), "{err}");

    let dir = run_dir();
    fs::write(dir.path().join("plots"), "not a directory").unwrap();
    let err = rebuild_report(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("plots: cannot create the plots directory"),
        "{err}"
    );
    // The tables are written before the charts.
    assert!(dir.path().join(REPORT_FILE).is_file());
}

#[test]
fn an_empty_log_gives_empty_tables_and_no_charts() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(SAMPLES_FILE), "").unwrap();
    let summary = rebuild_report(dir.path()).unwrap();
    assert_eq!(
        (summary.samples, summary.settings, summary.written.len()),
        (0, 0, 2)
    );
    let csv = fs::read_to_string(dir.path().join(RESULTS_FILE)).unwrap();
    assert_eq!(csv.lines().count(), 1, "{csv}");
    assert!(csv.starts_with("model,task,method,params,n,score_mean,score_stderr,mean_prompt_tokens,compression_ratio,kv_bytes_per_step,"));
    let md = fs::read_to_string(dir.path().join(REPORT_FILE)).unwrap();
    assert!(md.contains("No samples yet."), "{md}");
}
