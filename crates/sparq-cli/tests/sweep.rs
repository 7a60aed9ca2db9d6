//! `sparq sweep` end to end through the binary on the default model: a clean run, a run
//! killed with SIGKILL at a random moment and resumed (it must end with exactly the
//! clean run's rows), a directory holding another grid refused, and `--overwrite`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn default_model() -> String {
    let p = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "run scripts/fetch-model.sh first");
    p.display().to_string()
}

/// Two small custom tasks (short prompts keep the test fast; the built-in tasks are
/// exercised by the eval test).
fn write_tasks(dir: &Path) -> (String, String) {
    let passage =
        "The lighthouse keeper climbed the stairs every evening at dusk, trimmed the wick, \
                   polished the great lens and watched the ships pass the headland. ";
    let repeat = dir.join("repeat.jsonl");
    let mut lines = Vec::new();
    for i in 0..4 {
        let input = format!(
            "{}{passage}{passage}The lighthouse keeper",
            "Story number ".repeat(i + 1)
        );
        lines.push(
            serde_json::json!({
                "id": format!("r{i}"), "input": input,
                "references": [" climbed the stairs every evening at dusk"],
                "metric": "match-chars", "max_new_tokens": 10
            })
            .to_string(),
        );
    }
    std::fs::write(&repeat, lines.join("\n") + "\n").unwrap();
    let qa = dir.join("qa.jsonl");
    let mut lines = Vec::new();
    for (i, (q, a)) in [
        ("What did the keeper polish?", "the great lens"),
        ("When did he climb?", "at dusk"),
        ("What passed the headland?", "ships"),
    ]
    .iter()
    .enumerate()
    {
        lines.push(serde_json::json!({
            "id": format!("q{i}"), "input": format!("{passage}{passage}\nQuestion: {q}\nAnswer:"),
            "references": [a], "metric": "prefix-match", "max_new_tokens": 8
        }).to_string());
    }
    std::fs::write(&qa, lines.join("\n") + "\n").unwrap();
    (repeat.display().to_string(), qa.display().to_string())
}

fn sweep_args(tasks: &(String, String), out: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "sweep".into(),
        "--models".into(),
        default_model(),
        "--tasks".into(),
        format!("{},{}", tasks.0, tasks.1),
    ];
    for m in [
        "sparq:r=8,k=16",
        "sparq:r=32,k=32",
        "h2o:k=16",
        "lminf:k=24",
        "flexgen:k=16",
    ] {
        args.push("--method".into());
        args.push(m.into());
    }
    args.push("--output-dir".into());
    args.push(out.display().to_string());
    args
}

fn run(args: &[String]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sparq"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[test]
fn killed_sweep_resumes_to_the_clean_result() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = write_tasks(tmp.path());

    let clean = tmp.path().join("clean");
    let started = Instant::now();
    let (ok, err) = run(&sweep_args(&tasks, &clean));
    assert!(ok, "{err}");
    let clean_time = started.elapsed();
    let clean_rows = sorted_lines(&clean.join("samples.jsonl"));
    assert_eq!(
        clean_rows.len(),
        (4 + 3) * 6,
        "every (example, setting) once: {err}"
    );
    for f in ["results.csv", "report.md", "run.toml", "plots"] {
        assert!(clean.join(f).exists(), "{f} written");
    }

    // Kill at a random moment inside the run, then resume; repeat to land in
    // different places (before any record, mid-way, near the end).
    let killed = tmp.path().join("killed");
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for attempt in 0..2u64 {
        let frac = ((nanos >> (attempt * 8)) % 90 + 5) as f64 / 100.0;
        let mut child = Command::new(env!("CARGO_BIN_EXE_sparq"))
            .args(sweep_args(&tasks, &killed))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs_f64(clean_time.as_secs_f64() * frac));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let (ok, err) = run(&sweep_args(&tasks, &killed));
    assert!(ok, "resume failed: {err}");
    assert_eq!(
        sorted_lines(&killed.join("samples.jsonl")),
        clean_rows,
        "none lost, none twice"
    );
    assert_eq!(
        std::fs::read_to_string(killed.join("results.csv")).unwrap(),
        std::fs::read_to_string(clean.join("results.csv")).unwrap()
    );

    // A finished directory resumes to no new work. A torn final line (what a kill
    // in the middle of a write leaves) is cut off and reported with its line number.
    let samples = clean.join("samples.jsonl");
    let mut torn = std::fs::read_to_string(&samples).unwrap();
    torn.push_str(&clean_rows[0][..clean_rows[0].len() / 2]);
    std::fs::write(&samples, torn).unwrap();
    let (ok, err) = run(&sweep_args(&tasks, &clean));
    assert!(ok, "{err}");
    assert!(err.contains("0 cells written"), "{err}");
    let torn_line = clean_rows.len() + 1;
    assert!(
        err.contains(&format!(
            "warning: {}: line {torn_line}: ignored a torn final line",
            samples.display()
        )),
        "{err}"
    );
    assert_eq!(sorted_lines(&samples), clean_rows, "the torn line is gone");

    // Another grid on the same directory is refused, before any model work.
    let mut other = sweep_args(&tasks, &clean);
    other.insert(5, "--method".into());
    other.insert(6, "oracle:k=16".into());
    let (ok, err) = run(&other);
    assert!(!ok && err.contains("different grid"), "{err}");
    assert_eq!(
        sorted_lines(&clean.join("samples.jsonl")),
        clean_rows,
        "refusal wrote nothing"
    );

    // --overwrite starts afresh with the new grid.
    other.push("--overwrite".into());
    let (ok, err) = run(&other);
    assert!(ok, "{err}");
    assert_eq!(
        sorted_lines(&clean.join("samples.jsonl")).len(),
        (4 + 3) * 7
    );
}

#[test]
fn bad_grids_are_refused_before_model_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = default_model();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--models", "/nonexistent/m.gguf", "--tasks", "squad"],
            "/nonexistent/m.gguf",
        ),
        (
            vec!["--models", &model, "--tasks", "no_such_task"],
            "no_such_task",
        ),
        (
            vec![
                "--models",
                &model,
                "--tasks",
                "squad",
                "--method",
                "sparq:q=1",
            ],
            "`q`",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec!["sweep"];
        full.extend(args);
        full.extend(["--output-dir", out.to_str().unwrap()]);
        let full: Vec<String> = full.into_iter().map(String::from).collect();
        let (ok, err) = run(&full);
        assert!(!ok, "{full:?} should fail");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{full:?}: {err}"
        );
    }
    let bad_config = tmp.path().join("grid.toml");
    std::fs::write(&bad_config, "models = [\"a\"]\ntasks = 3\n").unwrap();
    let (ok, err) = run(&[
        "sweep".into(),
        "--config".into(),
        bad_config.display().to_string(),
        "--output-dir".into(),
        out.display().to_string(),
    ]);
    assert!(!ok && err.contains("grid.toml"), "{err}");
    // An output directory that cannot be written.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let (ok, err) = run(&[
        "sweep".into(),
        "--models".into(),
        default_model(),
        "--tasks".into(),
        "squad".into(),
        "--output-dir".into(),
        blocker.join("sub").display().to_string(),
    ]);
    assert!(!ok && err.contains("output directory"), "{err}");
}

/// `--dtype q4` stores keys and values at 16 bits: the report counts 2 bytes per
/// cached element (4 with f32), so its bytes per step are half of f32's for the same
/// elements moved.
#[test]
fn q4_reports_two_bytes_per_cached_element() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = write_tasks(tmp.path());
    let mut bytes = Vec::new();
    for dtype in ["f32", "q4"] {
        let out = tmp.path().join(dtype);
        let args: Vec<String> = [
            "eval",
            "--model",
            &default_model(),
            "--tasks",
            &tasks.1,
            "--limit",
            "1",
            "--method",
            "sparq:r=8,k=16",
            "--dtype",
            dtype,
            "--output-dir",
            &out.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (ok, err) = run(&args);
        assert!(ok, "{dtype}: {err}");
        let samples = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
        for line in samples.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let want = if dtype == "q4" { 2 } else { 4 };
            assert_eq!(record["bytes_per_element"], want, "{dtype}: {line}");
        }
        let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
        let mut lines = csv.lines();
        let header = csv_fields(lines.next().unwrap());
        let column = header
            .iter()
            .position(|h| h == "kv_bytes_per_step")
            .unwrap();
        let elements = header
            .iter()
            .position(|h| h == "transfer_elements")
            .unwrap();
        // (elements, bytes) of each row.
        let rows: Vec<(u64, u64)> = lines
            .map(|l| {
                let f = csv_fields(l);
                (f[elements].parse().unwrap(), f[column].parse().unwrap())
            })
            .collect();
        assert_eq!(rows.len(), 2, "{csv}");
        bytes.push(rows);
    }
    for (f32_row, q4_row) in bytes[0].iter().zip(&bytes[1]) {
        assert_eq!(f32_row.0, q4_row.0, "the same elements moved");
        assert_eq!(f32_row.1, 2 * q4_row.1, "f32 {f32_row:?}, q4 {q4_row:?}");
    }
}

/// The fields of one CSV line: commas inside double quotes belong to the field (the
/// `params` column quotes `r=8,k=16`; no field here holds a quote itself).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            _ => fields.last_mut().unwrap().push(ch),
        }
    }
    fields
}
