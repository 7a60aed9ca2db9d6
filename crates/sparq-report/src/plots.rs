//! `plots/`: one chart per task (per model and task when a sweep holds several
//! models), as SVG and PNG: score against compression ratio on a log axis, a line per
//! method with ± standard-error bars, dense as a horizontal line.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use sparq_attention::registry;

use crate::aggregate::SettingResult;
use crate::{write_atomic, ReportError, Result};

const SIZE: (u32, u32) = (960, 640);

/// One chart: the settings of one model and task.
#[derive(Debug)]
struct Chart<'a> {
    model: &'a str,
    task: &'a str,
    /// File name without extension.
    stem: String,
    higher_is_better: bool,
    dense: Option<&'a SettingResult>,
    /// Method -> its plotted settings, by ratio ascending.
    lines: Vec<(&'a str, Vec<&'a SettingResult>)>,
}

/// Writes `<stem>.svg` and `<stem>.png` into `dir` for every (model, task) with a
/// scored setting, and returns the paths written. The stem is the task's name (the
/// file stem of a custom task file); with several models, `<model>--<task>`.
pub fn write_plots(results: &[SettingResult], dir: &Path) -> Result<Vec<PathBuf>> {
    let charts = charts(results);
    if charts.is_empty() {
        return Ok(Vec::new());
    }
    fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        action: "create the plots directory",
        source,
    })?;
    let mut written = Vec::new();
    for chart in &charts {
        let svg_path = dir.join(format!("{}.svg", chart.stem));
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            draw(&root, chart).map_err(|e| plot_err(&svg_path, e))?;
            root.present().map_err(|e| plot_err(&svg_path, e))?;
        }
        write_atomic(&svg_path, svg.as_bytes())?;
        written.push(svg_path);

        let png_path = dir.join(format!("{}.png", chart.stem));
        // The PNG encoder picks the format by extension, so the temporary file keeps it.
        let tmp = dir.join(format!("{}.tmp.png", chart.stem));
        {
            let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
            draw(&root, chart).map_err(|e| plot_err(&png_path, e))?;
            root.present().map_err(|e| plot_err(&png_path, e))?;
        }
        fs::rename(&tmp, &png_path).map_err(|source| ReportError::Io {
            path: png_path.clone(),
            action: "replace",
            source,
        })?;
        written.push(png_path);
    }
    Ok(written)
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Keeps letters, digits, `.`, `_` and `-`, so any model or task name is a file name.
fn slug(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_matches('.').to_string()
}

/// Short file-name parts: the last path component, without a `.gguf` or `.jsonl`
/// extension; the whole name when two short forms would collide.
fn short_names<'a>(names: &BTreeSet<&'a str>) -> BTreeMap<&'a str, String> {
    let short = |n: &str| {
        let last = n.trim_end_matches('/').rsplit('/').next().unwrap_or(n);
        let last = last
            .strip_suffix(".gguf")
            .or_else(|| last.strip_suffix(".jsonl"))
            .unwrap_or(last);
        slug(last)
    };
    let shorts: Vec<String> = names.iter().map(|n| short(n)).collect();
    let unique = shorts.iter().collect::<BTreeSet<_>>().len() == shorts.len()
        && shorts.iter().all(|s| !s.is_empty());
    names
        .iter()
        .zip(shorts)
        .map(|(n, s)| (*n, if unique { s } else { slug(n) }))
        .collect()
}

fn charts(results: &[SettingResult]) -> Vec<Chart<'_>> {
    let models: BTreeSet<&str> = results.iter().map(|r| r.model.as_str()).collect();
    let tasks: BTreeSet<&str> = results.iter().map(|r| r.task.as_str()).collect();
    let (model_names, task_names) = (short_names(&models), short_names(&tasks));
    let mut charts = Vec::new();
    for &model in &models {
        for &task in &tasks {
            let rows: Vec<&SettingResult> = results
                .iter()
                .filter(|r| r.model == model && r.task == task)
                .collect();
            let plotted =
                |r: &&SettingResult| r.score_mean.is_some() && r.compression_ratio.is_some();
            let dense = rows
                .iter()
                .copied()
                .filter(plotted)
                .find(|r| r.method == "dense");
            let mut by_method: BTreeMap<(usize, &str), Vec<&SettingResult>> = BTreeMap::new();
            for r in rows
                .iter()
                .copied()
                .filter(plotted)
                .filter(|r| r.method != "dense")
            {
                let rank = registry()
                    .iter()
                    .position(|m| m.name == r.method)
                    .unwrap_or(usize::MAX);
                by_method
                    .entry((rank, r.method.as_str()))
                    .or_default()
                    .push(r);
            }
            if dense.is_none() && by_method.is_empty() {
                continue;
            }
            let lines = by_method
                .into_iter()
                .map(|((_, m), mut rs)| {
                    rs.sort_by(|a, b| {
                        a.compression_ratio
                            .unwrap()
                            .total_cmp(&b.compression_ratio.unwrap())
                    });
                    (m, rs)
                })
                .collect();
            let stem = if models.len() > 1 {
                format!("{}--{}", model_names[model], task_names[task])
            } else {
                task_names[task].clone()
            };
            charts.push(Chart {
                model,
                task,
                stem,
                higher_is_better: rows[0].higher_is_better,
                dense,
                lines,
            });
        }
    }
    charts
}

fn method_color(method: &str) -> RGBColor {
    match method {
        "dense" => RGBColor(0, 0, 0),
        "sparq" => RGBColor(31, 119, 180),
        "h2o" => RGBColor(255, 127, 14),
        "lminf" => RGBColor(44, 160, 44),
        "flexgen" => RGBColor(214, 39, 40),
        "oracle" => RGBColor(148, 103, 189),
        _ => RGBColor(127, 127, 127),
    }
}

fn method_label(method: &str) -> &str {
    match method {
        "sparq" => "SparQ",
        "h2o" => "H2O",
        "lminf" => "LM-Infinite",
        "flexgen" => "FlexGen top-k",
        "oracle" => "oracle top-k",
        other => other,
    }
}

/// What the y axis measures for the built-in tasks (SPEC section 5).
fn score_label(task: &str, higher_is_better: bool) -> String {
    let what = match task {
        "squad" | "triviaqa" => "accuracy",
        "cnn_dailymail" => "ROUGE-L F",
        "repetition" => "matched characters",
        "wikitext" => "bits per character",
        _ => "score",
    };
    let dir = if higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    };
    format!("{what} ({dir})")
}

/// "1/8" for the powers of two the axis is ticked at, "1" for dense.
fn ratio_tick(x: &f64) -> String {
    let inv = 1.0 / x;
    if (inv - 1.0).abs() < 1e-9 {
        "1".to_string()
    } else {
        format!("1/{}", inv.round())
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart<'_>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let points: Vec<&SettingResult> = chart
        .lines
        .iter()
        .flat_map(|(_, rs)| rs.iter().copied())
        .collect();
    let ratios: Vec<f64> = points
        .iter()
        .chain(chart.dense.iter())
        .filter_map(|r| r.compression_ratio)
        .collect();
    let x_min = ratios.iter().copied().fold(1.0f64, f64::min) / 1.25;
    let x_max = ratios.iter().copied().fold(1.0f64, f64::max) * 1.25;
    let mut ticks = Vec::new();
    let mut t = 1.0f64;
    while t >= x_min {
        if t <= x_max {
            ticks.push(t);
        }
        t /= 2.0;
    }
    ticks.reverse();

    let mut y_lo = f64::INFINITY;
    let mut y_hi = f64::NEG_INFINITY;
    for r in points.iter().chain(chart.dense.iter()) {
        let (m, e) = (r.score_mean.unwrap_or(0.0), r.score_stderr.unwrap_or(0.0));
        y_lo = y_lo.min(m - e);
        y_hi = y_hi.max(m + e);
    }
    // Room above the data for the legend, and a visible range when every score is equal.
    let span = (y_hi - y_lo).max(0.05 * y_hi.abs().max(1e-3));
    let (y_lo, y_hi) = (y_lo - 0.08 * span, y_hi + 0.35 * span);

    let title = format!("{} · {}", chart.task, chart.model);
    let mut ctx = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (x_min..x_max).log_scale().with_key_points(ticks),
            y_lo..y_hi,
        )?;
    ctx.configure_mesh()
        .x_desc("compression ratio (data moved per decode step / dense), log scale")
        .y_desc(score_label(chart.task, chart.higher_is_better))
        .x_label_formatter(&ratio_tick)
        .y_label_formatter(&|y: &f64| format!("{y:.3}"))
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;

    if let Some(d) = chart.dense {
        let y = d.score_mean.unwrap_or(0.0);
        ctx.draw_series(DashedLineSeries::new(
            vec![(x_min, y), (x_max, y)],
            10,
            6,
            ShapeStyle::from(&BLACK).stroke_width(2),
        ))?
        .label(format!("dense ({y:.3})"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(2)));
    }

    for (method, rows) in &chart.lines {
        let color = method_color(method);
        let xy: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| {
                (
                    r.compression_ratio.unwrap_or(1.0),
                    r.score_mean.unwrap_or(0.0),
                )
            })
            .collect();
        ctx.draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))?
            .label(method_label(method))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
        ctx.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        // ± one standard error, with caps a few percent wide on the log axis.
        for (r, &(x, y)) in rows.iter().zip(&xy) {
            let Some(e) = r.score_stderr.filter(|e| *e > 0.0) else {
                continue;
            };
            let style = color.stroke_width(1);
            ctx.draw_series([
                PathElement::new(vec![(x, y - e), (x, y + e)], style),
                PathElement::new(vec![(x / 1.03, y - e), (x * 1.03, y - e)], style),
                PathElement::new(vec![(x / 1.03, y + e), (x * 1.03, y + e)], style),
            ])?;
        }
    }

    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_short_unless_they_collide() {
        let names: BTreeSet<&str> = ["models/a/x.gguf", "org/y", "squad", "my tasks/q&a.jsonl"]
            .into_iter()
            .collect();
        let short = short_names(&names);
        assert_eq!(short["models/a/x.gguf"], "x");
        assert_eq!(short["org/y"], "y");
        assert_eq!(short["my tasks/q&a.jsonl"], "q_a");
        let clash: BTreeSet<&str> = ["a/x.gguf", "b/x.gguf"].into_iter().collect();
        let short = short_names(&clash);
        assert_eq!(
            (short["a/x.gguf"].as_str(), short["b/x.gguf"].as_str()),
            ("a_x.gguf", "b_x.gguf")
        );
    }

    #[test]
    fn ticks_read_as_fractions() {
        assert_eq!(ratio_tick(&1.0), "1");
        assert_eq!(ratio_tick(&0.125), "1/8");
        assert_eq!(ratio_tick(&0.5), "1/2");
    }
}
