//! From samples to one row per (model, task, setting): the mean score and its standard
//! error, the setting's cost by the SPEC section 4 formulas and as measured, and its
//! paired difference from dense on the same examples. Written to `results.csv`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use polars::prelude::*;
use sparq_attention::transfer::{self, dense_elements};
use sparq_attention::{MethodSpec, ModelShape};

use crate::samples::{canonical_spec, SampleRecord};
use crate::{write_atomic, ReportError, Result};

/// The z value of a two-sided 95% normal interval.
const Z95: f64 = 1.96;

/// One (model, task, setting) of the sweep, aggregated over its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingResult {
    pub model: String,
    pub task: String,
    pub method: String,
    /// The part of `spec` after `:` (empty for dense).
    pub params: String,
    /// Canonical spec, e.g. `sparq:r=8,k=128,l=32`.
    pub spec: String,
    /// Samples that did not fail, the ones every mean is taken over.
    pub n: usize,
    /// Samples that recorded an error.
    pub errors: usize,
    pub score_mean: Option<f64>,
    /// `sqrt(population variance / n)`, as SPEC section 5 asks.
    pub score_stderr: Option<f64>,
    /// Mean prompt length over this setting's `n` samples.
    pub mean_prompt_tokens: Option<f64>,
    /// Samples (among `n`) whose input was cut to fit the model.
    pub n_truncated: usize,
    /// The `S` the cost formulas use: the mean prompt length over the distinct
    /// examples of this model and task, rounded, shared by all its settings so their
    /// ratios compare on one footing.
    pub cost_prompt_tokens: Option<usize>,
    /// Elements moved per decode step per KV head per layer, by formula at that `S`.
    pub transfer_elements: Option<u64>,
    /// `transfer_elements` over dense's at the same `S`.
    pub compression_ratio: Option<f64>,
    /// `transfer_elements * kv_heads * layers * bytes_per_element`.
    pub kv_bytes_per_step: Option<u64>,
    /// Mean measured `transfer_elements` of the samples over dense's mean.
    pub measured_transfer_ratio: Option<f64>,
    /// Mean of (score - dense score) over the examples both scored; none for dense.
    pub paired_diff: Option<f64>,
    /// Half-width of its 95% interval, `1.96 * sd / sqrt(n_paired)` with the sample
    /// standard deviation (ddof 1) of the differences; needs `n_paired >= 2`.
    pub paired_ci95: Option<f64>,
    pub n_paired: Option<usize>,
    /// Mean leading generated tokens equal to dense's.
    pub mean_agreement_tokens: Option<f64>,
    pub higher_is_better: bool,
}

/// The shape and element size a model's records agree on.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ModelCost {
    shape: ModelShape,
    bytes_per_element: usize,
}

/// Aggregates `records` (one per key, as `read_samples` returns them). `source` names
/// the file in errors. Rows are sorted by model, task, compression ratio (largest
/// first; settings without one last) and spec.
pub fn aggregate(records: &[SampleRecord], source: &Path) -> Result<Vec<SettingResult>> {
    let costs = model_costs(records, source)?;
    let directions = task_directions(records, source)?;
    let specs = records
        .iter()
        .map(|r| {
            canonical_spec(&r.spec).map_err(|e| ReportError::Inconsistent {
                path: source.to_path_buf(),
                message: format!(
                    "sample `{}` of task `{}`: spec `{}`: {e}",
                    r.example_id, r.task, r.spec
                ),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let polars_err = |what| {
        move |source_err| ReportError::Polars {
            path: source.to_path_buf(),
            what,
            source: source_err,
        }
    };
    let frame = sample_frame(records, &specs).map_err(polars_err("building the sample table"))?;
    let table = settings_table(frame).map_err(polars_err("aggregating the samples"))?;
    let mut rows = extract(&table).map_err(polars_err("reading the aggregates"))?;

    // Dense's measured transfer per (model, task), the denominator of the measured ratio.
    let dense_transfer: HashMap<(String, String), f64> = rows
        .iter()
        .filter(|r| r.row.method == "dense")
        .filter_map(|r| Some(((r.row.model.clone(), r.row.task.clone()), r.transfer_mean?)))
        .collect();

    let mut out = Vec::with_capacity(rows.len());
    for raw in rows.drain(..) {
        let mut row = raw.row;
        let cost = costs[&row.model];
        row.higher_is_better = directions[&(row.model.clone(), row.task.clone())];
        row.measured_transfer_ratio = match (
            raw.transfer_mean,
            dense_transfer.get(&(row.model.clone(), row.task.clone())),
        ) {
            (Some(t), Some(&d)) if d > 0.0 => Some(t / d),
            _ => None,
        };
        if let Some(s_mean) = raw.task_prompt_tokens {
            // Budget::elements counts whole positions; at least the current token exists.
            let s = (s_mean.round() as usize).max(1);
            let spec: MethodSpec = row.spec.parse().expect("canonical specs parse");
            let config = spec
                .resolve(&cost.shape, s)
                .map_err(|e| ReportError::Inconsistent {
                    path: source.to_path_buf(),
                    message: format!(
                        "model `{}`: setting `{}` does not fit its shape: {e}",
                        row.model, row.spec
                    ),
                })?;
            let elements = config.budget().elements(s, cost.shape.head_dim);
            row.cost_prompt_tokens = Some(s);
            row.transfer_elements = Some(elements);
            row.compression_ratio =
                Some(elements as f64 / dense_elements(s, cost.shape.head_dim) as f64);
            row.kv_bytes_per_step = Some(transfer::model_bytes(
                elements,
                &cost.shape,
                cost.bytes_per_element,
            ));
        }
        out.push(row);
    }
    out.sort_by(compare_rows);
    Ok(out)
}

/// Model, task, compression ratio descending (unknown last), spec.
fn compare_rows(a: &SettingResult, b: &SettingResult) -> Ordering {
    let ratio = match (a.compression_ratio, b.compression_ratio) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    (a.model.as_str(), a.task.as_str())
        .cmp(&(b.model.as_str(), b.task.as_str()))
        .then(ratio)
        .then_with(|| a.spec.cmp(&b.spec))
}

/// Every model's shape and element size, which all its successful samples must share.
/// Failed cells may not know the shape, so they only count when nothing else does.
fn model_costs(records: &[SampleRecord], source: &Path) -> Result<BTreeMap<String, ModelCost>> {
    let mut costs: BTreeMap<String, (ModelCost, bool)> = BTreeMap::new();
    for r in records {
        let cost = ModelCost {
            shape: ModelShape {
                head_dim: r.head_dim,
                group: r.group,
                kv_heads: r.kv_heads,
                layers: r.layers,
            },
            bytes_per_element: r.bytes_per_element,
        };
        let ok = r.error.is_none();
        match costs.get(&r.model) {
            Some(&(known, true)) if ok && known != cost => {
                return Err(ReportError::Inconsistent {
                    path: source.to_path_buf(),
                    message: format!(
                        "model `{}`: samples disagree on the model shape ({:?}, {} bytes per element vs {:?}, {} bytes per element at example `{}` of task `{}`); expected one shape per model",
                        r.model, known.shape, known.bytes_per_element, cost.shape, cost.bytes_per_element, r.example_id, r.task
                    ),
                });
            }
            Some(&(_, true)) => {}
            Some(&(_, false)) if !ok => {}
            _ => {
                costs.insert(r.model.clone(), (cost, ok));
            }
        }
    }
    Ok(costs.into_iter().map(|(m, (c, _))| (m, c)).collect())
}

/// Whether a higher score is better, per (model, task); its samples must agree.
fn task_directions(
    records: &[SampleRecord],
    source: &Path,
) -> Result<HashMap<(String, String), bool>> {
    let mut out: HashMap<(String, String), bool> = HashMap::new();
    for r in records {
        let key = (r.model.clone(), r.task.clone());
        match out.get(&key) {
            Some(&h) if h != r.higher_is_better => {
                return Err(ReportError::Inconsistent {
                    path: source.to_path_buf(),
                    message: format!(
                        "task `{}`: samples disagree on `higher_is_better` (example `{}` of `{}` says {}); expected one value per task",
                        r.task, r.example_id, r.spec, r.higher_is_better
                    ),
                });
            }
            Some(_) => {}
            None => {
                out.insert(key, r.higher_is_better);
            }
        }
    }
    Ok(out)
}

/// One row per sample. Measurements of failed cells are nulled here, so every mean
/// below is over the successful samples only.
fn sample_frame(records: &[SampleRecord], specs: &[String]) -> PolarsResult<DataFrame> {
    let ok = |r: &SampleRecord| r.error.is_none();
    df!(
        "model" => records.iter().map(|r| r.model.as_str()).collect::<Vec<_>>(),
        "task" => records.iter().map(|r| r.task.as_str()).collect::<Vec<_>>(),
        "spec" => specs.iter().map(String::as_str).collect::<Vec<_>>(),
        "example_id" => records.iter().map(|r| r.example_id.as_str()).collect::<Vec<_>>(),
        "failed" => records.iter().map(|r| i64::from(!ok(r))).collect::<Vec<_>>(),
        "score" => records.iter().map(|r| r.score.filter(|_| ok(r))).collect::<Vec<_>>(),
        "prompt_tokens" => records.iter().map(|r| ok(r).then_some(r.prompt_tokens as f64)).collect::<Vec<_>>(),
        "cut" => records.iter().map(|r| i64::from(ok(r) && r.truncated_tokens > 0)).collect::<Vec<_>>(),
        "transfer" => records.iter().map(|r| r.transfer_elements.filter(|_| ok(r))).collect::<Vec<_>>(),
        "agreement" => records
            .iter()
            .map(|r| r.dense_agreement_tokens.filter(|_| ok(r)).map(|t| t as f64))
            .collect::<Vec<_>>(),
    )
}

/// Per-setting statistics, joined with the paired differences against dense and the
/// task's mean prompt length over distinct examples.
fn settings_table(samples: DataFrame) -> PolarsResult<DataFrame> {
    let setting = [col("model"), col("task"), col("spec")];
    let example = [col("model"), col("task"), col("example_id")];
    let task = [col("model"), col("task")];

    let stats = samples.clone().lazy().group_by(setting.clone()).agg([
        col("score").count().cast(DataType::Int64).alias("n"),
        col("failed").sum().alias("errors"),
        col("score").mean().alias("score_mean"),
        // Population variance (ddof 0): SPEC section 5's `sqrt(variance / N)`.
        col("score").var(0).alias("score_var"),
        col("prompt_tokens").mean().alias("mean_prompt_tokens"),
        col("cut").sum().alias("n_truncated"),
        col("transfer").mean().alias("transfer_mean"),
        col("agreement").mean().alias("agreement_mean"),
    ]);

    let scored = samples.clone().lazy().filter(col("score").is_not_null());
    let dense = scored.clone().filter(col("spec").eq(lit("dense"))).select([
        col("model"),
        col("task"),
        col("example_id"),
        col("score").alias("dense_score"),
    ]);
    let paired = scored
        .filter(col("spec").neq(lit("dense")))
        .join(
            dense,
            example.clone(),
            example.clone(),
            JoinArgs::new(JoinType::Inner),
        )
        .with_column((col("score") - col("dense_score")).alias("diff"))
        .group_by(setting.clone())
        .agg([
            col("diff").count().cast(DataType::Int64).alias("n_paired"),
            col("diff").mean().alias("paired_diff"),
            // Sample standard deviation (ddof 1) for the interval of a mean.
            col("diff").std(1).alias("paired_sd"),
        ]);

    // An example's prompt is the same for every setting; the mean guards against a
    // mismatch without depending on row order.
    let task_len = samples
        .lazy()
        .filter(col("prompt_tokens").is_not_null())
        .group_by(example)
        .agg([col("prompt_tokens").mean()])
        .group_by(task.clone())
        .agg([col("prompt_tokens").mean().alias("task_prompt_tokens")]);

    stats
        .join(
            paired,
            setting.clone(),
            setting,
            JoinArgs::new(JoinType::Left),
        )
        .join(task_len, task.clone(), task, JoinArgs::new(JoinType::Left))
        .collect()
}

/// A result row before the cost columns, with what computing them needs.
struct RawRow {
    row: SettingResult,
    transfer_mean: Option<f64>,
    task_prompt_tokens: Option<f64>,
}

fn extract(df: &DataFrame) -> PolarsResult<Vec<RawRow>> {
    let s = |name: &str| df.column(name).and_then(|c| c.str().cloned());
    let f = |name: &str| {
        df.column(name)
            .and_then(|c| c.cast(&DataType::Float64))
            .and_then(|c| c.f64().cloned())
    };
    let i = |name: &str| {
        df.column(name)
            .and_then(|c| c.cast(&DataType::Int64))
            .and_then(|c| c.i64().cloned())
    };
    let (model, task, spec) = (s("model")?, s("task")?, s("spec")?);
    let (n, errors, n_truncated, n_paired) =
        (i("n")?, i("errors")?, i("n_truncated")?, i("n_paired")?);
    let (mean, var, prompt) = (f("score_mean")?, f("score_var")?, f("mean_prompt_tokens")?);
    let (transfer, agreement) = (f("transfer_mean")?, f("agreement_mean")?);
    let (diff, sd, task_len) = (f("paired_diff")?, f("paired_sd")?, f("task_prompt_tokens")?);

    let mut rows = Vec::with_capacity(df.height());
    for idx in 0..df.height() {
        let spec = spec.get(idx).unwrap_or_default().to_string();
        let (method, params) = match spec.split_once(':') {
            Some((m, p)) => (m.to_string(), p.to_string()),
            None => (spec.clone(), String::new()),
        };
        let n_ok = n.get(idx).unwrap_or(0) as usize;
        let n_paired = n_paired.get(idx).map(|v| v as usize);
        let score_stderr = match (var.get(idx), n_ok) {
            (Some(v), n) if n > 0 => Some((v / n as f64).sqrt()),
            _ => None,
        };
        let paired_ci95 = match (sd.get(idx), n_paired) {
            (Some(sd), Some(np)) if np >= 2 => Some(Z95 * sd / (np as f64).sqrt()),
            _ => None,
        };
        rows.push(RawRow {
            row: SettingResult {
                model: model.get(idx).unwrap_or_default().to_string(),
                task: task.get(idx).unwrap_or_default().to_string(),
                method,
                params,
                spec,
                n: n_ok,
                errors: errors.get(idx).unwrap_or(0) as usize,
                score_mean: mean.get(idx),
                score_stderr,
                mean_prompt_tokens: prompt.get(idx),
                n_truncated: n_truncated.get(idx).unwrap_or(0) as usize,
                cost_prompt_tokens: None,
                transfer_elements: None,
                compression_ratio: None,
                kv_bytes_per_step: None,
                measured_transfer_ratio: None,
                paired_diff: diff.get(idx),
                paired_ci95,
                n_paired,
                mean_agreement_tokens: agreement.get(idx),
                higher_is_better: true,
            },
            transfer_mean: transfer.get(idx),
            task_prompt_tokens: task_len.get(idx),
        });
    }
    Ok(rows)
}

/// The columns of `results.csv`: CLI.md's contract first, then the extras.
pub const CSV_COLUMNS: [&str; 21] = [
    "model",
    "task",
    "method",
    "params",
    "n",
    "score_mean",
    "score_stderr",
    "mean_prompt_tokens",
    "compression_ratio",
    "kv_bytes_per_step",
    "spec",
    "errors",
    "n_truncated",
    "higher_is_better",
    "cost_prompt_tokens",
    "transfer_elements",
    "measured_transfer_ratio",
    "paired_diff",
    "paired_ci95",
    "n_paired",
    "mean_agreement_tokens",
];

/// The results as a table with the columns of [`CSV_COLUMNS`], in that order.
pub fn results_frame(rows: &[SettingResult]) -> PolarsResult<DataFrame> {
    let strs = |f: fn(&SettingResult) -> &str| rows.iter().map(f).collect::<Vec<_>>();
    let floats = |f: fn(&SettingResult) -> Option<f64>| rows.iter().map(f).collect::<Vec<_>>();
    let counts = |f: fn(&SettingResult) -> Option<u64>| rows.iter().map(f).collect::<Vec<_>>();
    let df = df!(
        "model" => strs(|r| &r.model),
        "task" => strs(|r| &r.task),
        "method" => strs(|r| &r.method),
        "params" => strs(|r| &r.params),
        "n" => counts(|r| Some(r.n as u64)),
        "score_mean" => floats(|r| r.score_mean),
        "score_stderr" => floats(|r| r.score_stderr),
        "mean_prompt_tokens" => floats(|r| r.mean_prompt_tokens),
        "compression_ratio" => floats(|r| r.compression_ratio),
        "kv_bytes_per_step" => counts(|r| r.kv_bytes_per_step),
        "spec" => strs(|r| &r.spec),
        "errors" => counts(|r| Some(r.errors as u64)),
        "n_truncated" => counts(|r| Some(r.n_truncated as u64)),
        "higher_is_better" => rows.iter().map(|r| r.higher_is_better).collect::<Vec<_>>(),
        "cost_prompt_tokens" => counts(|r| r.cost_prompt_tokens.map(|s| s as u64)),
        "transfer_elements" => counts(|r| r.transfer_elements),
        "measured_transfer_ratio" => floats(|r| r.measured_transfer_ratio),
        "paired_diff" => floats(|r| r.paired_diff),
        "paired_ci95" => floats(|r| r.paired_ci95),
        "n_paired" => counts(|r| r.n_paired.map(|n| n as u64)),
        "mean_agreement_tokens" => floats(|r| r.mean_agreement_tokens),
    )?;
    debug_assert!(df
        .get_column_names()
        .iter()
        .map(|c| c.as_str())
        .eq(CSV_COLUMNS));
    Ok(df)
}

/// Writes `results.csv`: floats with six decimals (so the file does not change with
/// the last bit of a sum), empty fields for values that do not apply.
pub fn write_results_csv(rows: &[SettingResult], path: &Path) -> Result<()> {
    let polars_err = |what| {
        move |source| ReportError::Polars {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let mut df = results_frame(rows).map_err(polars_err("building the results table"))?;
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf)
        .include_header(true)
        .with_float_precision(Some(6))
        .finish(&mut df)
        .map_err(polars_err("writing CSV"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| ReportError::Io {
            path: dir.to_path_buf(),
            action: "create the output directory",
            source,
        })?;
    }
    write_atomic(path, &buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::tests::record;

    fn approx(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn statistics_follow_their_definitions() {
        let dense = [1.0, 0.0, 1.0, 1.0];
        let sparq = [1.0, 0.0, 0.0, 1.0];
        let mut records = Vec::new();
        for (i, (&d, &s)) in dense.iter().zip(&sparq).enumerate() {
            let id = i.to_string();
            records.push(record("squad", &id, "dense", Some(d)));
            records.push(record("squad", &id, "sparq:r=8,k=128", Some(s)));
        }
        let mut failed = record("squad", "9", "sparq:r=8,k=128", None);
        failed.error = Some("boom".into());
        records.push(failed);

        let rows = aggregate(&records, Path::new("s.jsonl")).unwrap();
        assert_eq!(rows.len(), 2);
        let (d, s) = (&rows[0], &rows[1]);
        assert_eq!(
            (d.spec.as_str(), s.spec.as_str()),
            ("dense", "sparq:r=8,k=128")
        );
        assert_eq!(
            (s.n, s.errors, s.method.as_str(), s.params.as_str()),
            (4, 1, "sparq", "r=8,k=128")
        );
        // Mean 0.5, population variance 0.25, stderr sqrt(0.25 / 4) = 0.25.
        assert!(approx(s.score_mean, 0.5) && approx(s.score_stderr, 0.25));
        // Dense: mean 0.75, population variance 0.1875.
        assert!(approx(d.score_stderr, (0.1875f64 / 4.0).sqrt()));
        // Differences 0, 0, -1, 0: mean -0.25, sample sd 0.5, CI 1.96 * 0.5 / 2.
        assert!(approx(s.paired_diff, -0.25) && approx(s.paired_ci95, 0.49));
        assert_eq!(
            (s.n_paired, d.n_paired, d.paired_diff),
            (Some(4), None, None)
        );
        // S = 1000, d = 64: (1000*8 + 2*128*64 + 4*64) / (2*1000*64 + 2*64).
        assert!(approx(s.compression_ratio, 24640.0 / 128128.0));
        assert_eq!(s.kv_bytes_per_step, Some(24640 * 3 * 30 * 4));
        assert!(approx(d.compression_ratio, 1.0));
    }

    #[test]
    fn ratio_specs_resolve_at_the_mean_prompt_length() {
        let mut records = Vec::new();
        for (i, len) in [1000, 3000].into_iter().enumerate() {
            for spec in ["dense", "sparq:ratio=1/8"] {
                let mut r = record("squad", &i.to_string(), spec, Some(1.0));
                r.prompt_tokens = len;
                records.push(r);
            }
        }
        let rows = aggregate(&records, Path::new("s.jsonl")).unwrap();
        let s = &rows[1];
        // S = 2000: r = round(64/8) = 8, k = round(2000/16) = 125.
        assert_eq!(s.cost_prompt_tokens, Some(2000));
        assert_eq!(s.transfer_elements, Some(2000 * 8 + 2 * 125 * 64 + 4 * 64));
    }

    #[test]
    fn shapes_must_agree_within_a_model() {
        let a = record("squad", "1", "dense", Some(1.0));
        let mut b = record("squad", "2", "dense", Some(1.0));
        b.head_dim = 128;
        let err = aggregate(&[a.clone(), b.clone()], Path::new("s.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.jsonl: model `m.gguf`: samples disagree on the model shape"),
            "{err}"
        );
        // A failed cell's shape does not count against the others.
        b.error = Some("failed before loading".into());
        assert!(aggregate(&[a, b], Path::new("s.jsonl")).is_ok());
    }
}
