//! The per-sample log `samples.jsonl`: one JSON object a line, appended as a sweep goes
//! and read back to resume it or to rebuild the report.
//!
//! Crash safety rests on one rule: a record is one `write` of a complete line followed
//! by `fsync`, so after a crash the file holds whole lines plus at most one torn final
//! line without its newline. Readers skip that torn line with a warning; the appender
//! cuts it off before writing, so the next record starts on a line of its own.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sparq_attention::MethodSpec;

use crate::{ReportError, Result};

/// One line of `samples.jsonl`: one (model, task, example, method setting) cell.
/// Fields the reader does not know are ignored, so the engine may add some.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub model: String,
    pub task: String,
    pub task_version: u32,
    pub example_id: String,
    /// The method's name: `dense`, `sparq`, `h2o`, `lminf`, `flexgen` or `oracle`.
    pub method: String,
    /// The setting's spec, e.g. `sparq:r=8,k=128,l=32,realloc=false` or `sparq:ratio=1/8`.
    pub spec: String,
    /// The part of `spec` after `:`, or empty.
    pub params: String,
    /// Prompt length after any truncation.
    pub prompt_tokens: usize,
    /// Tokens cut from the left of an input too long for the model.
    pub truncated_tokens: usize,
    pub prediction: String,
    pub references: Vec<String>,
    pub score: Option<f64>,
    /// Measured mean elements moved per decode step, per layer, per KV head.
    pub transfer_elements: Option<f64>,
    /// Leading generated tokens equal to the dense branch's.
    pub dense_agreement_tokens: Option<u64>,
    pub head_dim: usize,
    pub group: usize,
    pub kv_heads: usize,
    pub layers: usize,
    pub bytes_per_element: usize,
    pub higher_is_better: bool,
    /// Set when the cell failed: the record is kept and counted, not averaged.
    pub error: Option<String>,
}

impl SampleRecord {
    pub fn key(&self) -> SampleKey {
        SampleKey::new(&self.model, &self.task, &self.example_id, &self.spec)
    }
}

/// What identifies a cell of the sweep; a restarted sweep skips the keys already done.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleKey {
    pub model: String,
    pub task: String,
    pub example_id: String,
    /// Canonical form (keys in a fixed order), so `sparq:k=128,r=8` and
    /// `sparq:r=8,k=128` are the same cell; kept as written if it does not parse.
    pub spec: String,
}

impl SampleKey {
    pub fn new(model: &str, task: &str, example_id: &str, spec: &str) -> Self {
        Self {
            model: model.to_string(),
            task: task.to_string(),
            example_id: example_id.to_string(),
            spec: canonical_spec(spec).unwrap_or_else(|_| spec.trim().to_string()),
        }
    }
}

impl fmt::Display for SampleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "(model `{}`, task `{}`, example `{}`, spec `{}`)",
            self.model, self.task, self.example_id, self.spec
        )
    }
}

/// The canonical form of a spec string, or why it does not parse.
pub fn canonical_spec(spec: &str) -> Result<String, String> {
    spec.parse::<MethodSpec>()
        .map(|s| s.to_string())
        .map_err(|e| e.to_string())
}

/// A problem that did not stop reading, with its 1-based line in `samples.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The records of `samples.jsonl`, in file order, one per key.
#[derive(Clone, Debug, Default)]
pub struct SampleSet {
    pub records: Vec<SampleRecord>,
    pub warnings: Vec<Warning>,
}

impl SampleSet {
    /// The keys of every record, errors included: a failed cell is recorded as done, so
    /// a restart does not retry a deterministic failure forever. Delete its line from
    /// `samples.jsonl` to retry it.
    pub fn done_keys(&self) -> HashSet<SampleKey> {
        self.records.iter().map(SampleRecord::key).collect()
    }
}

/// Reads `samples.jsonl`. A missing file is an error (the caller decides whether a
/// fresh sweep is meant). A torn final line (no newline, does not parse) is skipped
/// with a warning; a malformed line anywhere else is an error naming the file and the
/// line. A key seen twice keeps its first record, with a warning.
pub fn read_samples(path: &Path) -> Result<SampleSet> {
    let bytes = fs::read(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })?;
    parse_samples(&bytes, path)
}

fn parse_samples(bytes: &[u8], path: &Path) -> Result<SampleSet> {
    let mut set = SampleSet::default();
    let mut first_line: HashMap<SampleKey, usize> = HashMap::new();
    let terminated = bytes.last().is_none_or(|&b| b == b'\n');
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // `split` yields an empty piece after a final newline; that is not a line.
    let count = if terminated {
        lines.len() - 1
    } else {
        lines.len()
    };
    for (i, line) in lines[..count].iter().enumerate() {
        let number = i + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record = match parse_line(line) {
            Ok(r) => r,
            Err(message) if !terminated && number == count => {
                set.warnings.push(Warning {
                    line: number,
                    message: format!(
                        "ignored a torn final line ({} bytes without a newline, left by an interrupted run): {message}",
                        line.len()
                    ),
                });
                continue;
            }
            Err(message) => {
                return Err(ReportError::Malformed {
                    path: path.to_path_buf(),
                    line: number,
                    message,
                });
            }
        };
        let key = record.key();
        if let Some(&first) = first_line.get(&key) {
            set.warnings.push(Warning {
                line: number,
                message: format!("duplicate of line {first} for {key}; kept line {first}"),
            });
            continue;
        }
        first_line.insert(key, number);
        set.records.push(record);
    }
    Ok(set)
}

/// One record, checked beyond its JSON shape: the spec must parse and name the same
/// method, and a cell without an error must have a score and a model shape.
fn parse_line(line: &[u8]) -> Result<SampleRecord, String> {
    let record: SampleRecord = serde_json::from_slice(line)
        .map_err(|e| format!("expected one JSON sample record: {e}"))?;
    let spec: MethodSpec = record
        .spec
        .parse()
        .map_err(|e| format!("field `spec` = `{}`: {e}", record.spec))?;
    if spec.name() != record.method {
        return Err(format!(
            "field `method` = `{}` but `spec` = `{}` is a `{}` setting",
            record.method,
            record.spec,
            spec.name()
        ));
    }
    if record.error.is_none() && record.score.is_none() {
        return Err(
            "field `score` is null but `error` is null too; a cell that did not fail needs a score"
                .into(),
        );
    }
    // A cell that failed before the model loaded may not know its shape.
    let shapeless =
        record.head_dim == 0 || record.group == 0 || record.kv_heads == 0 || record.layers == 0;
    if record.error.is_none() && shapeless {
        return Err(format!(
            "the model shape needs head_dim, group, kv_heads and layers >= 1, found {}, {}, {}, {}",
            record.head_dim, record.group, record.kv_heads, record.layers
        ));
    }
    Ok(record)
}

/// Appends records to `samples.jsonl` so that a crash loses at most the record being
/// written, and knows which cells are done so a restarted sweep skips them.
#[derive(Debug)]
pub struct SampleAppender {
    file: File,
    path: PathBuf,
    done: HashSet<SampleKey>,
}

impl SampleAppender {
    /// Opens (or creates) `path` for appending and returns what it already holds. A torn
    /// final line is cut off first (its cell is not done and will run again), and a
    /// final line that is complete but lost its newline gets one, so every record
    /// written from here starts on a line of its own.
    pub fn open(path: &Path) -> Result<(Self, SampleSet)> {
        let io_err = |action| {
            move |source| ReportError::Io {
                path: path.to_path_buf(),
                action,
                source,
            }
        };
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read")(e)),
        };
        let set = parse_samples(&bytes, path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err("open for appending"))?;
        if bytes.last().is_some_and(|&b| b != b'\n') {
            let start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            if parse_line(&bytes[start..]).is_ok() {
                (&file)
                    .write_all(b"\n")
                    .map_err(io_err("append a newline to"))?;
            } else {
                file.set_len(start as u64)
                    .map_err(io_err("cut the torn final line from"))?;
            }
            file.sync_all().map_err(io_err("sync"))?;
        }
        let done = set.done_keys();
        Ok((
            Self {
                file,
                path: path.to_path_buf(),
                done,
            },
            set,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_done(&self, key: &SampleKey) -> bool {
        self.done.contains(key)
    }

    pub fn done_keys(&self) -> &HashSet<SampleKey> {
        &self.done
    }

    /// Writes `record` as one line and syncs it to disk. Returns `false`, writing
    /// nothing, when its key is already done (the first record of a key is the one
    /// that counts, as when reading).
    pub fn append(&mut self, record: &SampleRecord) -> Result<bool> {
        let key = record.key();
        if self.done.contains(&key) {
            return Ok(false);
        }
        let mut line = serde_json::to_string(record).map_err(|e| ReportError::Inconsistent {
            path: self.path.clone(),
            message: format!("cannot encode the record for {key}: {e}"),
        })?;
        line.push('\n');
        let io_err = |action| {
            let path = self.path.clone();
            move |source| ReportError::Io {
                path,
                action,
                source,
            }
        };
        // One write of the whole line: a crash leaves a prefix of it, which readers
        // recognise as a torn final line.
        self.file
            .write_all(line.as_bytes())
            .map_err(io_err("append to"))?;
        self.file.flush().map_err(io_err("flush"))?;
        self.file.sync_data().map_err(io_err("sync"))?;
        self.done.insert(key);
        Ok(true)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(
        task: &str,
        example: &str,
        spec: &str,
        score: Option<f64>,
    ) -> SampleRecord {
        let parsed: MethodSpec = spec.parse().unwrap();
        SampleRecord {
            model: "m.gguf".into(),
            task: task.into(),
            task_version: 1,
            example_id: example.into(),
            method: parsed.name().into(),
            spec: spec.into(),
            params: spec.split_once(':').map_or("", |(_, p)| p).into(),
            prompt_tokens: 1000,
            truncated_tokens: 0,
            prediction: "x".into(),
            references: vec!["x".into()],
            score,
            transfer_elements: None,
            dense_agreement_tokens: None,
            head_dim: 64,
            group: 3,
            kv_heads: 3,
            layers: 30,
            bytes_per_element: 4,
            higher_is_better: true,
            error: None,
        }
    }

    fn line(r: &SampleRecord) -> String {
        serde_json::to_string(r).unwrap() + "\n"
    }

    #[test]
    fn torn_final_line_is_skipped_with_a_warning() {
        let a = line(&record("squad", "1", "dense", Some(1.0)));
        let b = line(&record("squad", "2", "dense", Some(0.0)));
        let torn = &b[..b.len() / 2];
        let set = parse_samples(format!("{a}{torn}").as_bytes(), Path::new("s.jsonl")).unwrap();
        assert_eq!(set.records.len(), 1);
        assert_eq!(set.warnings.len(), 1);
        assert_eq!(set.warnings[0].line, 2);
        assert!(
            set.warnings[0].message.contains("torn final line"),
            "{}",
            set.warnings[0]
        );

        // A complete final line that only lost its newline is kept.
        let set = parse_samples(
            format!("{a}{}", b.trim_end()).as_bytes(),
            Path::new("s.jsonl"),
        )
        .unwrap();
        assert_eq!(set.records.len(), 2);
        assert!(set.warnings.is_empty());
    }

    #[test]
    fn malformed_line_elsewhere_is_an_error_naming_file_and_line() {
        let a = line(&record("squad", "1", "dense", Some(1.0)));
        let b = line(&record("squad", "2", "dense", Some(0.0)));
        let torn = &b[..b.len() / 2];
        // Torn but followed by a newline and more records: corruption, not a crash tail.
        let err = parse_samples(
            format!("{a}{torn}\n{b}").as_bytes(),
            Path::new("dir/s.jsonl"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("dir/s.jsonl: line 2: expected one JSON sample record"),
            "{msg}"
        );
        // A final line with its newline is complete, so it cannot be torn.
        let err =
            parse_samples(format!("{a}{torn}\n").as_bytes(), Path::new("s.jsonl")).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");

        let mut bad = record("squad", "3", "dense", None);
        let err = parse_samples(line(&bad).as_bytes(), Path::new("s.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1: field `score` is null"), "{err}");
        bad.score = Some(1.0);
        bad.method = "sparq".into();
        let err = parse_samples(line(&bad).as_bytes(), Path::new("s.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`method` = `sparq` but `spec` = `dense`"),
            "{err}"
        );
        bad.spec = "sparq:r=8".into();
        let err = parse_samples(line(&bad).as_bytes(), Path::new("s.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("field `spec` = `sparq:r=8`: method `sparq` needs key `k`"),
            "{err}"
        );
    }

    #[test]
    fn duplicates_keep_the_first_record() {
        let first = record("squad", "1", "sparq:r=8,k=128", Some(1.0));
        // The same cell with its keys in another order is the same key.
        let second = record("squad", "1", "sparq:k=128,r=8", Some(0.0));
        let other = record("squad", "2", "sparq:r=8,k=128", Some(0.0));
        let text = format!(
            "{}\n{}{}{}",
            line(&first),
            line(&second),
            line(&other),
            line(&second)
        );
        let set = parse_samples(text.as_bytes(), Path::new("s.jsonl")).unwrap();
        assert_eq!(set.records, vec![first, other]);
        let lines: Vec<usize> = set.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, [3, 5]);
        assert!(
            set.warnings[0].message.contains("duplicate of line 1"),
            "{}",
            set.warnings[0]
        );
    }

    #[test]
    fn appender_repairs_a_torn_tail_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.jsonl");
        let a = record("squad", "1", "dense", Some(1.0));
        let b = record("squad", "2", "dense", Some(0.0));
        let b_line = line(&b);
        fs::write(&path, format!("{}{}", line(&a), &b_line[..10])).unwrap();

        let (mut app, set) = SampleAppender::open(&path).unwrap();
        assert_eq!(set.records, vec![a.clone()]);
        assert_eq!(set.warnings.len(), 1);
        assert!(app.is_done(&a.key()));
        assert!(!app.is_done(&b.key()), "the torn cell must run again");
        assert!(app.append(&b).unwrap());
        assert!(!app.append(&b).unwrap(), "a done key is not written twice");
        drop(app);

        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}{}", line(&a), b_line));
        let set = read_samples(&path).unwrap();
        assert_eq!(set.records, vec![a.clone(), b.clone()]);
        assert!(set.warnings.is_empty());

        // A complete last record without its newline gets one before the next append.
        fs::write(&path, line(&a).trim_end()).unwrap();
        let (mut app, set) = SampleAppender::open(&path).unwrap();
        assert_eq!(set.records.len(), 1);
        app.append(&b).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}{}", line(&a), b_line)
        );
    }

    #[test]
    fn appender_creates_a_missing_file_and_reading_it_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.jsonl");
        let err = read_samples(&path).unwrap_err().to_string();
        assert!(err.contains("samples.jsonl: cannot read"), "{err}");
        let (app, set) = SampleAppender::open(&path).unwrap();
        assert!(set.records.is_empty() && app.done_keys().is_empty());
        assert!(path.exists());
    }
}
