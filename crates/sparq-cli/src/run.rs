//! `sparq eval`, `sparq sweep` and `sparq report`: the grid runs through the engine of
//! `sparq-report`; these commands only assemble it from flags or a config file.

use std::io::IsTerminal;
use std::path::PathBuf;

use sparq_report::engine::{run_grid, EngineOptions, RunSummary};
use sparq_report::SweepConfig;

use crate::env;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: crate::ModelArgs,
    /// Comma-separated task names or custom task files (JSON lines).
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Attention method spec (repeatable); dense always runs as the reference.
    #[arg(long = "method")]
    methods: Vec<String>,
    /// Examples per task (the first N of the task's seeded order).
    #[arg(long)]
    limit: Option<usize>,
    /// Overrides each task's declared seed (tasks/*.toml).
    #[arg(long)]
    seed: Option<u64>,
    /// Local data sets laid out as shared/data; without it tasks load from the hub.
    #[arg(long, env = env::SPARQ_DATA_DIR)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    output_dir: PathBuf,
    /// Start afresh instead of resuming what the output directory holds.
    #[arg(long)]
    overwrite: bool,
}

#[derive(clap::Args)]
pub struct SweepArgs {
    /// A TOML sweep file (see configs/paper.toml); the flags below then must not be given.
    #[arg(long, conflicts_with_all = ["models", "tasks", "methods", "ratios"])]
    config: Option<PathBuf>,
    /// Comma-separated models (paths or hub ids).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Comma-separated task names or custom task files.
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Attention method spec (repeatable); dense always runs as the reference.
    #[arg(long = "method")]
    methods: Vec<String>,
    /// Comma-separated target compression ratios (e.g. 1/2,1/4,1/8), each expanded into
    /// a setting of every method.
    #[arg(long, value_delimiter = ',')]
    ratios: Vec<String>,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, env = env::SPARQ_DATA_DIR)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    output_dir: PathBuf,
    #[arg(long)]
    overwrite: bool,
    /// Numeric format of the weight matrices.
    #[arg(long, default_value = "f32")]
    dtype: sparq_runner::WeightDtype,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let config = SweepConfig {
        models: vec![args.model.model.clone()],
        tasks: args.tasks,
        methods: args.methods,
        ratios: Vec::new(),
        ratio_methods: None,
        limit: args.limit,
        seed: args.seed,
        data_dir: args.data_dir,
    };
    let grid = config.validate("flags")?;
    if args.model.model == env::DEFAULT_MODEL {
        crate::check_default_model()?;
    }
    let options = EngineOptions {
        dtype: args.model.dtype,
        overwrite: args.overwrite,
        progress: progress(),
    };
    let summary = run_grid(&grid, &args.output_dir, &options)?;
    print_summary(&args.output_dir, &summary);
    Ok(())
}

pub fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let (config, origin) = match &args.config {
        Some(path) => {
            let mut c = SweepConfig::from_file(path)?;
            if let Some(l) = args.limit {
                c.limit = Some(l);
            }
            if args.seed.is_some() {
                c.seed = args.seed;
            }
            if args.data_dir.is_some() {
                c.data_dir = args.data_dir.clone();
            }
            (c, path.display().to_string())
        }
        None => (
            SweepConfig {
                models: args.models,
                tasks: args.tasks,
                methods: args.methods,
                ratios: args.ratios,
                ratio_methods: None,
                limit: args.limit,
                seed: args.seed,
                data_dir: args.data_dir.clone(),
            },
            "flags".to_string(),
        ),
    };
    let grid = config.validate(&origin)?;
    let options = EngineOptions {
        dtype: args.dtype,
        overwrite: args.overwrite,
        progress: progress(),
    };
    let summary = run_grid(&grid, &args.output_dir, &options)?;
    print_summary(&args.output_dir, &summary);
    Ok(())
}

pub fn report(dir: PathBuf) -> anyhow::Result<()> {
    let summary = sparq_report::rebuild_report(&dir)?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "{} samples ({} with errors), {} settings",
        summary.samples, summary.errors, summary.settings
    );
    for f in &summary.written {
        println!("{}", f.display());
    }
    Ok(())
}

fn progress() -> bool {
    std::io::stderr().is_terminal()
}

fn print_summary(dir: &std::path::Path, s: &RunSummary) {
    eprintln!(
        "done in {:.1}s: {} cells written, {} already done, {} failed, {} inputs cut from the left",
        s.elapsed.as_secs_f64(),
        s.written,
        s.skipped_done,
        s.failed,
        s.truncated_inputs
    );
    for u in &s.unbuildable {
        eprintln!("  examples not built: {u}");
    }
    for w in &s.warnings {
        eprintln!("  warning: {w}");
    }
    let report = dir.join(sparq_report::REPORT_FILE);
    if let Ok(text) = std::fs::read_to_string(&report) {
        println!("{text}");
    }
}
