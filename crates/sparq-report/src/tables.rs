//! `report.md`: a summary in the shape of the paper's Table 2 (each method at the
//! settings closest to compression 1/2, 1/4 and 1/8), then one table per model and
//! task with every setting, its cost, its score and its paired difference from dense.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use sparq_attention::registry;

use crate::aggregate::SettingResult;
use crate::samples::SampleSet;
use crate::SAMPLES_FILE;

/// The compression targets of the summary, as the paper reports them.
pub const SUMMARY_TARGETS: [f64; 3] = [1.0 / 2.0, 1.0 / 4.0, 1.0 / 8.0];

/// How far (in powers of two) a setting may sit from a target and still stand for it
/// in the summary: half-way to the neighbouring targets, so no setting is shown for a
/// target it is nearer another target than this one (FlexGen never gets below about
/// 1/2, and must not appear as a "1/8" result).
pub const MAX_LOG2_DISTANCE: f64 = 0.5;

/// Among `rows` (one method, model and task), the scored setting whose compression
/// ratio is closest to `target` on a log scale, if one is within
/// [`MAX_LOG2_DISTANCE`]. Ties go to the larger ratio, then the spec, so the choice
/// does not depend on row order.
pub fn closest_setting<'a>(rows: &[&'a SettingResult], target: f64) -> Option<&'a SettingResult> {
    let distance = |r: &SettingResult| r.compression_ratio.map(|c| (c / target).log2().abs());
    rows.iter()
        .copied()
        .filter(|r| r.score_mean.is_some())
        .filter_map(|r| distance(r).map(|d| (d, r)))
        .filter(|(d, _)| *d <= MAX_LOG2_DISTANCE)
        .min_by(|(da, a), (db, b)| {
            da.total_cmp(db)
                .then(
                    b.compression_ratio
                        .unwrap_or(0.0)
                        .total_cmp(&a.compression_ratio.unwrap_or(0.0)),
                )
                .then_with(|| a.spec.cmp(&b.spec))
        })
        .map(|(_, r)| r)
}

/// A compression ratio as the paper writes it: `1/7.94`.
pub fn one_over(ratio: f64) -> String {
    format!("1/{:.2}", 1.0 / ratio)
}

fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "—".to_string(), f)
}

fn direction(higher_is_better: bool) -> &'static str {
    if higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    }
}

fn score(r: &SettingResult) -> String {
    match (r.score_mean, r.score_stderr) {
        (Some(m), Some(e)) => format!("{m:.3} ± {e:.3}"),
        (Some(m), None) => format!("{m:.3}"),
        _ => "—".to_string(),
    }
}

fn paired(r: &SettingResult) -> String {
    if r.method == "dense" {
        return "reference".to_string();
    }
    match (r.paired_diff, r.paired_ci95, r.n_paired) {
        (Some(d), Some(ci), _) => format!("{d:+.3} [{:+.3}, {:+.3}]", d - ci, d + ci),
        (Some(d), None, Some(n)) => format!("{d:+.3} (n = {n}, no interval)"),
        _ => "—".to_string(),
    }
}

/// Methods in registry order, so tables list them the same way `sparq ls methods` does.
fn method_rank(method: &str) -> usize {
    registry()
        .iter()
        .position(|m| m.name == method)
        .unwrap_or(usize::MAX)
}

/// The whole `report.md`. `results` must be sorted as `aggregate` returns them.
pub fn render_report(results: &[SettingResult], samples: &SampleSet) -> String {
    let mut out = String::new();
    let failed = samples.records.iter().filter(|r| r.error.is_some()).count();
    let models: BTreeSet<&str> = results.iter().map(|r| r.model.as_str()).collect();
    let tasks: BTreeSet<&str> = results.iter().map(|r| r.task.as_str()).collect();
    let _ = writeln!(out, "# Accuracy versus data transfer\n");
    let _ = writeln!(
        out,
        "Rebuilt from `{SAMPLES_FILE}`: {} ({failed} failed), {}, {}, {}.\n",
        count(samples.records.len(), "sample"),
        count(results.len(), "setting"),
        count(tasks.len(), "task"),
        count(models.len(), "model"),
    );
    out.push_str(LEGEND);

    if results.is_empty() {
        out.push_str("\nNo samples yet.\n");
    } else {
        summary(&mut out, results, &models);
        for (model, task) in group_keys(results) {
            task_table(&mut out, results, model, task);
        }
    }

    if !samples.warnings.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for w in &samples.warnings {
            let _ = writeln!(out, "- `{SAMPLES_FILE}` {w}");
        }
    }
    out
}

const LEGEND: &str = "\
How to read the tables:

- **ratio**: elements moved per decode step, per KV head and layer, divided by dense's, \
by the formulas of SPEC section 4 at S = the mean prompt length over the distinct \
examples of the model and task (shown as 1/x).
- **KV bytes/step**: those elements for the whole model (times KV heads, layers and \
bytes per element).
- **score**: mean ± standard error, sqrt(population variance / n), over the samples that \
did not fail; **n** counts them, **failed** the cells that recorded an error, **cut** \
the inputs shortened to fit the model.
- **Δ vs dense [95% CI]**: mean of (setting − dense) over the examples both scored, \
with mean ± 1.96 · sample sd / sqrt(pairs).
- **agree**: mean number of leading generated tokens equal to dense's.
- **measured**: mean measured elements moved over dense's (1/x).
";

/// (model, task) in the order of the sorted results.
fn group_keys(results: &[SettingResult]) -> Vec<(&str, &str)> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in results {
        let key = (r.model.as_str(), r.task.as_str());
        if keys.last() != Some(&key) {
            keys.push(key);
        }
    }
    keys
}

fn summary(out: &mut String, results: &[SettingResult], models: &BTreeSet<&str>) {
    let _ = writeln!(out, "\n## Summary\n");
    let targets: Vec<String> = SUMMARY_TARGETS
        .iter()
        .map(|&t| format!("1/{}", 1.0 / t))
        .collect();
    let _ = writeln!(
        out,
        "As the paper's Table 2: dense's score, and for every other method the scores of its \
settings closest to compression {} (each within a factor of sqrt(2) of its target, else —), \
with the ratio each setting has in brackets.",
        targets.join("; ")
    );
    for &model in models {
        let rows: Vec<&SettingResult> = results.iter().filter(|r| r.model == model).collect();
        let tasks: Vec<&str> = group_keys(results)
            .into_iter()
            .filter(|(m, _)| *m == model)
            .map(|(_, t)| t)
            .collect();
        let mut methods: Vec<&str> = rows
            .iter()
            .map(|r| r.method.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        methods.sort_by_key(|m| (method_rank(m), m.to_string()));

        let _ = writeln!(out, "\n### Model `{model}`\n");
        let header: Vec<String> = tasks
            .iter()
            .map(|t| {
                let higher = rows
                    .iter()
                    .find(|r| r.task == *t)
                    .is_none_or(|r| r.higher_is_better);
                format!("{t} ({})", direction(higher))
            })
            .collect();
        let _ = writeln!(out, "| method | {} |", header.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(tasks.len()));
        for method in methods {
            let cells: Vec<String> = tasks
                .iter()
                .map(|task| {
                    let candidates: Vec<&SettingResult> = rows
                        .iter()
                        .copied()
                        .filter(|r| r.task == *task && r.method == method)
                        .collect();
                    if method == "dense" {
                        return candidates
                            .first()
                            .map_or_else(|| "—".to_string(), |r| score(r));
                    }
                    SUMMARY_TARGETS
                        .iter()
                        .map(|&t| match closest_setting(&candidates, t) {
                            Some(r) => format!(
                                "{:.3} ({})",
                                r.score_mean.unwrap_or(f64::NAN),
                                one_over(r.compression_ratio.unwrap_or(f64::NAN))
                            ),
                            None => "—".to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .collect();
            let _ = writeln!(out, "| {method} | {} |", cells.join(" | "));
        }
    }
}

fn task_table(out: &mut String, results: &[SettingResult], model: &str, task: &str) {
    let rows: Vec<&SettingResult> = results
        .iter()
        .filter(|r| r.model == model && r.task == task)
        .collect();
    let first = rows[0];
    let _ = writeln!(
        out,
        "\n## `{task}` on `{model}` ({})\n",
        direction(first.higher_is_better)
    );
    match first.cost_prompt_tokens {
        Some(s) => {
            let _ = writeln!(out, "Ratios and bytes at S = {s} tokens.\n");
        }
        None => {
            let _ = writeln!(
                out,
                "No sample succeeded, so there is no prompt length to cost the settings at.\n"
            );
        }
    }
    let _ = writeln!(out, "| setting | ratio | KV bytes/step | n | failed | cut | score | Δ vs dense [95% CI] | agree | measured |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.spec,
            opt(r.compression_ratio, one_over),
            opt(r.kv_bytes_per_step, bytes),
            r.n,
            r.errors,
            r.n_truncated,
            score(r),
            paired(r),
            opt(r.mean_agreement_tokens, |a| format!("{a:.1}")),
            opt(r.measured_transfer_ratio, one_over),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(spec: &str, ratio: Option<f64>, score: Option<f64>) -> SettingResult {
        SettingResult {
            model: "m".into(),
            task: "t".into(),
            method: spec.split(':').next().unwrap().into(),
            params: String::new(),
            spec: spec.into(),
            n: 1,
            errors: 0,
            score_mean: score,
            score_stderr: None,
            mean_prompt_tokens: None,
            n_truncated: 0,
            cost_prompt_tokens: None,
            transfer_elements: None,
            compression_ratio: ratio,
            kv_bytes_per_step: None,
            measured_transfer_ratio: None,
            paired_diff: None,
            paired_ci95: None,
            n_paired: None,
            mean_agreement_tokens: None,
            higher_is_better: true,
        }
    }

    #[test]
    fn closest_ratio_is_chosen_on_a_log_scale() {
        let a = row("h2o:k=1", Some(1.0 / 3.0), Some(1.0));
        let b = row("h2o:k=2", Some(0.6), Some(1.0));
        let c = row("h2o:k=3", Some(1.0 / 7.0), Some(1.0));
        let rows = [&a, &b, &c];
        // For 1/4: |log2(4/3)| = 0.415 beats |log2(4/7)| = 0.807 (linearly 1/7 is nearer).
        assert_eq!(closest_setting(&rows, 0.25).unwrap().spec, "h2o:k=1");
        assert_eq!(closest_setting(&rows, 0.5).unwrap().spec, "h2o:k=2");
        assert_eq!(closest_setting(&rows, 0.125).unwrap().spec, "h2o:k=3");
        // Nothing within a factor sqrt(2) of 1/16.
        assert!(closest_setting(&rows, 1.0 / 16.0).is_none());
    }

    #[test]
    fn closest_ratio_skips_unscored_and_breaks_ties_by_spec() {
        let unscored = row("h2o:k=1", Some(0.25), None);
        let b = row("h2o:k=2", Some(0.3), Some(1.0));
        let c = row("h2o:k=3", Some(0.3), Some(0.0));
        assert_eq!(
            closest_setting(&[&unscored, &c, &b], 0.25).unwrap().spec,
            "h2o:k=2"
        );
        assert_eq!(closest_setting(&[&b, &c], 0.25).unwrap().spec, "h2o:k=2");
        assert_eq!(closest_setting(&[&unscored], 0.25), None);
        assert_eq!(
            closest_setting(&[&row("dense", None, Some(1.0))], 1.0),
            None
        );
    }

    #[test]
    fn formats() {
        assert_eq!(one_over(24640.0 / 128128.0), "1/5.20");
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.50 MiB");
        let mut r = row("sparq:r=8,k=1", Some(0.5), Some(0.5));
        r.paired_diff = Some(-0.25);
        r.paired_ci95 = Some(0.49);
        assert_eq!(paired(&r), "-0.250 [-0.740, +0.240]");
    }
}
