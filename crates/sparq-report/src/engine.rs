//! The sweep engine: models x tasks x method settings in one resumable process. Each
//! example is prefilled once (dense); dense and every setting not yet done decode from
//! that prefill together as one batch of branches; each finished cell is appended to
//! `samples.jsonl` at once, so a killed sweep resumes where it stopped.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sparq_attention::{AttentionMethod, MethodSpec, ModelShape};
use sparq_runner::{left_truncate, LoadedModel, ModelSource, WeightDtype};
use sparq_tasks::{Example, LoadOptions, TokenCounter};

use crate::config::{ResolvedSettings, RunManifest, SweepGrid};
use crate::samples::{SampleAppender, SampleKey, SampleRecord};
use crate::{grid_difference, RUN_FILE, SAMPLES_FILE};

/// SPEC section 5: inputs longer than the model's positions minus this are cut from
/// the left.
pub const GENERATION_HEADROOM: usize = 256;
/// Bytes of one cached key or value component: what the report turns moved elements
/// into bytes with (SPEC section 4). `q4` stores keys and values as f16.
fn bytes_per_element(dtype: WeightDtype) -> usize {
    if dtype.half_kv() {
        2
    } else {
        4
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Report(#[from] crate::ReportError),
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    // The source is not in the message: the CLI prints the chain, which would
    // repeat it.
    #[error("model {model}")]
    Model {
        model: String,
        #[source]
        source: sparq_runner::RunnerError,
    },
    #[error("task {task}")]
    Task {
        task: String,
        // Boxed: the task error is large and this enum travels on every return.
        #[source]
        source: Box<sparq_tasks::TaskError>,
    },
}

#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub dtype: WeightDtype,
    /// Start afresh: forget what the directory holds.
    pub overwrite: bool,
    /// Draw progress bars (off in tests and when stderr is not a terminal).
    pub progress: bool,
}

#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Cells written by this run.
    pub written: usize,
    /// Cells found done and skipped.
    pub skipped_done: usize,
    /// Cells that failed (recorded with their error).
    pub failed: usize,
    /// Examples the tasks could not build, with the tasks' reasons.
    pub unbuildable: Vec<String>,
    /// Inputs cut from the left to fit the model.
    pub truncated_inputs: usize,
    /// Problems found in the existing `samples.jsonl` that did not stop the run (a
    /// torn final line left by a kill, a duplicated record), each naming its line.
    pub warnings: Vec<String>,
    pub elapsed: Duration,
}

/// Checks everything that can be checked before model work: the output directory is
/// writable and holds no other grid, every task exists, every model path exists.
pub fn preflight(grid: &SweepGrid, out_dir: &Path, overwrite: bool) -> Result<(), EngineError> {
    for model in &grid.models {
        ModelSource::parse(model)
            .map_err(|e| EngineError::Refused(format!("model `{model}`: {e}")))?;
    }
    let known = sparq_tasks::builtin_task_names();
    for task in &grid.tasks {
        if !known.contains(task) && !Path::new(task).is_file() {
            return Err(EngineError::Refused(format!(
                "unknown task `{task}`: expected one of {} or a custom task file (JSON lines)",
                known.join(", ")
            )));
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| {
        EngineError::Refused(format!(
            "output directory {}: cannot create it ({e})",
            out_dir.display()
        ))
    })?;
    let probe = out_dir.join(".sparq-write-test");
    std::fs::write(&probe, b"").map_err(|e| {
        EngineError::Refused(format!(
            "output directory {}: not writable ({e})",
            out_dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(&probe);
    let run_file = out_dir.join(RUN_FILE);
    if run_file.is_file() && !overwrite {
        let existing = RunManifest::read(&run_file)?;
        if let Some(diff) = grid_difference(&existing, &grid.manifest()) {
            return Err(EngineError::Refused(format!(
                "{} holds a different grid ({diff}); use another --output-dir, or --overwrite to start afresh",
                out_dir.display()
            )));
        }
    }
    Ok(())
}

struct Counter<'a>(&'a sparq_runner::Tokenizer);

impl TokenCounter for Counter<'_> {
    fn count_tokens(&self, text: &str) -> usize {
        self.0.count_tokens(text).unwrap_or(0)
    }
}

/// Runs the grid into `out_dir` (after [`preflight`]) and rebuilds the report.
pub fn run_grid(
    grid: &SweepGrid,
    out_dir: &Path,
    options: &EngineOptions,
) -> Result<RunSummary, EngineError> {
    preflight(grid, out_dir, options.overwrite)?;
    let started = Instant::now();
    let samples_path = out_dir.join(SAMPLES_FILE);
    let run_file = out_dir.join(RUN_FILE);
    if options.overwrite {
        for f in [&samples_path, &run_file] {
            if f.exists() {
                std::fs::remove_file(f).map_err(|e| {
                    EngineError::Refused(format!(
                        "{}: cannot remove it for --overwrite ({e})",
                        f.display()
                    ))
                })?;
            }
        }
    }
    let mut manifest = if run_file.is_file() {
        RunManifest::read(&run_file)?
    } else {
        grid.manifest()
    };
    manifest.write(&run_file)?;
    let (mut appender, existing) = SampleAppender::open(&samples_path)?;
    let warnings: Vec<String> = existing
        .warnings
        .iter()
        .map(|w| format!("{}: {w}", samples_path.display()))
        .collect();

    let bars = MultiProgress::with_draw_target(if options.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let overall = bars.add(ProgressBar::new(0));
    overall.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {pos}/{len} examples  {per_sec}  eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    overall.set_prefix("sweep");
    let current = bars.add(ProgressBar::new(0));
    current.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );

    let mut summary = RunSummary {
        warnings,
        ..RunSummary::default()
    };
    for model_name in &grid.models {
        let source = ModelSource::parse(model_name).map_err(|source| EngineError::Model {
            model: model_name.clone(),
            source,
        })?;
        current.set_message(format!("loading {model_name}"));
        let loaded = sparq_runner::load_model(&source, options.dtype).map_err(|source| {
            EngineError::Model {
                model: model_name.clone(),
                source,
            }
        })?;
        for task_name in &grid.tasks {
            let task = sparq_tasks::load_task(
                task_name,
                &LoadOptions {
                    data_dir: grid.data_dir.clone(),
                    seed: grid.seed,
                    limit: grid.limit,
                    pythia_prompt: false,
                },
                &Counter(&loaded.tokenizer),
            )
            .map_err(|source| EngineError::Task {
                task: task_name.clone(),
                source: Box::new(source),
            })?;
            for (reason, n) in &task.summary.skipped {
                summary
                    .unbuildable
                    .push(format!("{task_name}: {n} skipped ({reason})"));
            }
            let prepared =
                prepare_inputs(&loaded, &task.examples).map_err(|source| EngineError::Model {
                    model: model_name.clone(),
                    source,
                })?;
            let mean_prompt = prepared.iter().map(|p| p.tokens.len() as f64).sum::<f64>()
                / prepared.len().max(1) as f64;
            let shape = loaded.model.shape();
            let expansion = grid.settings(&shape, mean_prompt);
            record_settings(
                &mut manifest,
                &run_file,
                &loaded.name,
                task_name,
                mean_prompt,
                &expansion,
            )?;

            overall.inc_length(prepared.len() as u64);
            current.set_length(prepared.len() as u64);
            current.set_position(0);
            current.set_prefix(task_name.clone());
            current.set_message(loaded.name.clone());
            let ctx = CellContext {
                model: &loaded,
                task: task_name,
                task_version: task.version.unwrap_or(0),
                shape,
                bytes_per_element: bytes_per_element(options.dtype),
            };
            for (example, input) in task.examples.iter().zip(&prepared) {
                if input.truncated > 0 {
                    summary.truncated_inputs += 1;
                }
                let todo: Vec<&MethodSpec> = expansion
                    .specs
                    .iter()
                    .filter(|s| {
                        !appender.is_done(&SampleKey::new(
                            &loaded.name,
                            task_name,
                            &example.id,
                            &s.to_string(),
                        ))
                    })
                    .collect();
                summary.skipped_done += expansion.specs.len() - todo.len();
                if !todo.is_empty() {
                    for record in run_example(&ctx, example, input, &todo) {
                        if record.error.is_some() {
                            summary.failed += 1;
                        }
                        if appender.append(&record)? {
                            summary.written += 1;
                        }
                    }
                }
                current.inc(1);
                overall.inc(1);
            }
        }
    }
    current.finish_and_clear();
    overall.finish_and_clear();
    crate::rebuild_report(out_dir)?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn record_settings(
    manifest: &mut RunManifest,
    run_file: &Path,
    model: &str,
    task: &str,
    mean_prompt_tokens: f64,
    expansion: &crate::Expansion,
) -> Result<(), EngineError> {
    let entry = ResolvedSettings {
        model: model.to_string(),
        task: task.to_string(),
        mean_prompt_tokens,
        specs: expansion.specs.iter().map(ToString::to_string).collect(),
        skipped: expansion.skipped.clone(),
    };
    manifest
        .settings
        .retain(|s| !(s.model == model && s.task == task));
    manifest.settings.push(entry);
    manifest.write(run_file)?;
    Ok(())
}

/// An example's tokens after left truncation.
struct PreparedInput {
    tokens: Vec<u32>,
    truncated: usize,
    /// Teacher-forced examples: the reference's tokens.
    targets: Vec<u32>,
}

fn prepare_inputs(
    model: &LoadedModel,
    examples: &[Example],
) -> sparq_runner::Result<Vec<PreparedInput>> {
    let max_pos = model.model.config().max_position_embeddings;
    let limit = max_pos.saturating_sub(GENERATION_HEADROOM).max(1);
    examples
        .iter()
        .map(|ex| {
            let all = model.tokenizer.encode(&ex.input)?;
            let (kept, truncated) = left_truncate(&all, limit);
            let targets = match &ex.teacher_forced {
                Some(reference) => model.tokenizer.encode_with(reference, false)?,
                None => Vec::new(),
            };
            Ok(PreparedInput {
                tokens: kept.to_vec(),
                truncated,
                targets,
            })
        })
        .collect()
}

struct CellContext<'a> {
    model: &'a LoadedModel,
    task: &'a str,
    task_version: u32,
    shape: ModelShape,
    bytes_per_element: usize,
}

impl CellContext<'_> {
    fn record(&self, example: &Example, input: &PreparedInput, spec: &MethodSpec) -> SampleRecord {
        let text = spec.to_string();
        let params = text
            .split_once(':')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        SampleRecord {
            model: self.model.name.clone(),
            task: self.task.to_string(),
            task_version: self.task_version,
            example_id: example.id.clone(),
            method: spec.name().to_string(),
            spec: text,
            params,
            prompt_tokens: input.tokens.len(),
            truncated_tokens: input.truncated,
            prediction: String::new(),
            references: example.references.clone(),
            score: None,
            transfer_elements: None,
            dense_agreement_tokens: None,
            head_dim: self.shape.head_dim,
            group: self.shape.group,
            kv_heads: self.shape.kv_heads,
            layers: self.shape.layers,
            bytes_per_element: self.bytes_per_element,
            higher_is_better: example.metric.higher_is_better(),
            error: None,
        }
    }
}

/// Runs dense plus `todo` on one example from a single prefill and returns a record per
/// spec in `todo`. A failure becomes an error record for every cell it touched.
fn run_example(
    ctx: &CellContext<'_>,
    example: &Example,
    input: &PreparedInput,
    todo: &[&MethodSpec],
) -> Vec<SampleRecord> {
    // Dense always decodes too: it is the reference for agreement and the paired diff.
    let mut specs: Vec<&MethodSpec> = vec![&MethodSpec::Dense];
    specs.extend(todo.iter().copied().filter(|s| **s != MethodSpec::Dense));
    let mut built: Vec<Box<dyn AttentionMethod>> = Vec::new();
    let mut records = Vec::new();
    let mut runnable: Vec<&MethodSpec> = Vec::new();
    for spec in specs {
        match spec.build(&ctx.shape, input.tokens.len()) {
            Ok(m) => {
                built.push(m);
                runnable.push(spec);
            }
            Err(e) => {
                if todo.contains(&spec) {
                    let mut r = ctx.record(example, input, spec);
                    r.error = Some(e.to_string());
                    records.push(r);
                }
            }
        }
    }
    let outcome = if example.teacher_forced.is_some() {
        teacher_forced(ctx, example, input, built)
    } else {
        generated(ctx, example, input, built)
    };
    match outcome {
        Ok(cells) => {
            for (spec, cell) in runnable.iter().zip(cells) {
                if !todo.contains(spec) {
                    continue;
                }
                let mut r = ctx.record(example, input, spec);
                r.prediction = cell.prediction;
                r.score = cell.score;
                r.transfer_elements = cell.transfer;
                r.dense_agreement_tokens = cell.agreement;
                r.error = cell.error;
                records.push(r);
            }
        }
        Err(e) => {
            for spec in runnable.iter().filter(|s| todo.contains(s)) {
                let mut r = ctx.record(example, input, spec);
                r.error = Some(e.to_string());
                records.push(r);
            }
        }
    }
    records
}

struct Cell {
    prediction: String,
    score: Option<f64>,
    transfer: Option<f64>,
    agreement: Option<u64>,
    error: Option<String>,
}

fn generated(
    ctx: &CellContext<'_>,
    example: &Example,
    input: &PreparedInput,
    methods: Vec<Box<dyn AttentionMethod>>,
) -> sparq_runner::Result<Vec<Cell>> {
    let out = sparq_runner::generate(
        &ctx.model.model,
        &input.tokens,
        methods,
        example.max_new_tokens,
    )?;
    let keep = example
        .cut_output_to_tokens
        .unwrap_or(example.max_new_tokens);
    let dense: Vec<u32> = out.branches[0].tokens.iter().take(keep).copied().collect();
    out.branches
        .iter()
        .map(|b| {
            let tokens: Vec<u32> = b.tokens.iter().take(keep).copied().collect();
            let agreement = tokens
                .iter()
                .zip(&dense)
                .take_while(|(a, b)| a == b)
                .count() as u64;
            let prediction = ctx.model.tokenizer.decode(&tokens)?;
            let (score, error) = match example.metric.score(&prediction, &example.references) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e.to_string())),
            };
            Ok(Cell {
                prediction,
                score,
                transfer: b.elements_per_step,
                agreement: Some(agreement),
                error,
            })
        })
        .collect()
}

fn teacher_forced(
    ctx: &CellContext<'_>,
    example: &Example,
    input: &PreparedInput,
    methods: Vec<Box<dyn AttentionMethod>>,
) -> sparq_runner::Result<Vec<Cell>> {
    let reference = example.teacher_forced.as_deref().unwrap_or_default();
    let scored =
        sparq_runner::score_continuation(&ctx.model.model, &input.tokens, &input.targets, methods)?;
    Ok(scored
        .into_iter()
        .map(|s| Cell {
            prediction: String::new(),
            score: Some(sparq_tasks::metrics::bits_per_char(s.nll, reference)),
            transfer: s.elements_per_step,
            agreement: None,
            error: None,
        })
        .collect())
}
