//! Results of a sweep on disk and the reports built from them: the per-sample log
//! (`samples.jsonl`, appended crash-safely, read back for resuming), the sweep grid and
//! `run.toml`, and the aggregates (`results.csv`), tables (`report.md`) and charts
//! (`plots/`) that `sparq report DIR` rebuilds without running a model.

pub mod aggregate;
pub mod config;
pub mod engine;
pub mod plots;
pub mod samples;
pub mod tables;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use aggregate::{aggregate, write_results_csv, SettingResult};
pub use config::{
    grid_difference, same_grid, ConfigError, Expansion, RunManifest, SweepConfig, SweepGrid,
};
pub use samples::{read_samples, SampleAppender, SampleKey, SampleRecord, SampleSet, Warning};
pub use tables::{closest_setting, render_report};

/// File names inside a results directory (CLI.md, "Results layout").
pub const SAMPLES_FILE: &str = "samples.jsonl";
pub const RESULTS_FILE: &str = "results.csv";
pub const REPORT_FILE: &str = "report.md";
pub const RUN_FILE: &str = "run.toml";
pub const PLOTS_DIR: &str = "plots";

/// Why reading samples or writing a report failed. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{}: line {line}: {message}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Inconsistent { path: PathBuf, message: String },
    #[error("{}: {what}: {source}", path.display())]
    Polars {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: polars::error::PolarsError,
    },
    #[error("{}: cannot draw the chart: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

pub type Result<T, E = ReportError> = std::result::Result<T, E>;

/// What `rebuild_report` read and wrote, for the CLI to print.
#[derive(Clone, Debug)]
pub struct ReportSummary {
    /// Samples kept after dropping a torn final line and duplicates.
    pub samples: usize,
    /// Samples that recorded an error (kept, excluded from means).
    pub errors: usize,
    /// Rows of `results.csv`: one per (model, task, setting).
    pub settings: usize,
    /// Problems that did not stop the report (torn final line, duplicates), each
    /// naming `samples.jsonl` and the line; the CLI prints them to stderr.
    pub warnings: Vec<String>,
    /// Every file written, `results.csv` first.
    pub written: Vec<PathBuf>,
}

/// Rebuilds `results.csv`, `report.md` and `plots/` in `dir` from `dir/samples.jsonl`;
/// what `sparq report DIR` runs. The CSV and the Markdown are written before the
/// charts, so a chart that cannot be drawn still leaves the tables in place.
pub fn rebuild_report(dir: &Path) -> Result<ReportSummary> {
    let samples_path = dir.join(SAMPLES_FILE);
    let set = read_samples(&samples_path)?;
    let results = aggregate(&set.records, &samples_path)?;

    let mut written = Vec::new();
    let csv_path = dir.join(RESULTS_FILE);
    write_results_csv(&results, &csv_path)?;
    written.push(csv_path);

    let md_path = dir.join(REPORT_FILE);
    let md = render_report(&results, &set);
    write_atomic(&md_path, md.as_bytes())?;
    written.push(md_path);

    written.extend(plots::write_plots(&results, &dir.join(PLOTS_DIR))?);

    Ok(ReportSummary {
        samples: set.records.len(),
        errors: set.records.iter().filter(|r| r.error.is_some()).count(),
        settings: results.len(),
        warnings: set
            .warnings
            .iter()
            .map(|w| format!("{}: {w}", samples_path.display()))
            .collect(),
        written,
    })
}

/// Writes through a temporary file in the same directory and renames it into place,
/// so that a report interrupted half-way never leaves a truncated file behind.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |action| {
        move |source| ReportError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).map_err(io_err("write"))?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        ReportError::Io {
            path: path.to_path_buf(),
            action: "replace",
            source,
        }
    })
}
