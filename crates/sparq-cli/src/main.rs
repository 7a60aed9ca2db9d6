//! The `sparq` command line: clap definitions and wiring only; the work lives in the
//! library crates.

mod bench;
mod env;
mod generate;
mod run;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sparq",
    version,
    about = "Measure what sparse attention (SparQ and its baselines) costs a language model in accuracy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command that loads a model.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// A GGUF file, a directory with config.json + *.safetensors + tokenizer.json, or a
    /// Hugging Face hub id org/name[@revision].
    #[arg(long, env = env::SPARQ_MODEL, default_value = env::DEFAULT_MODEL)]
    pub model: String,
    /// Numeric format of the weight matrices: f32 (exact; decode steps read a GGUF
    /// file's Q4_1 blocks, which hold exactly the same f32 values), f32-full (the same
    /// values read from full f32 matrices), bf16 (rounded weights) or q4 (f32, but one
    /// branch's decode products factored per Q4_1 block on CPUs with AVX-512, and keys
    /// and values stored as 16-bit floats: rounded differently, faster; reports count 2
    /// bytes per cached element instead of 4).
    #[arg(long, default_value = "f32")]
    pub dtype: sparq_runner::WeightDtype,
}

#[derive(Subcommand)]
enum Command {
    /// Greedy continuation of one prompt (does not stop at end-of-sequence).
    Generate(generate::GenerateArgs),
    /// Throughput benchmarks that print a table.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run tasks on one model for each method (dense always included).
    Eval(run::EvalArgs),
    /// The grid models x tasks x settings, resumable.
    Sweep(run::SweepArgs),
    /// Rebuild results.csv, report.md and plots/ from samples.jsonl.
    Report {
        /// A results directory holding samples.jsonl.
        dir: std::path::PathBuf,
    },
    /// Score prediction/reference pairs with a task metric, one score a line.
    Metric {
        /// prefix-match, rouge-l or match-chars.
        name: String,
        /// JSON lines {"prediction", "references": [..]}.
        #[arg(long)]
        pairs: std::path::PathBuf,
    },
    /// List what the harness knows.
    #[command(subcommand)]
    Ls(LsCommand),
}

#[derive(Subcommand)]
enum LsCommand {
    /// Attention methods and their settings.
    Methods,
    /// Built-in tasks.
    Tasks,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Eval(args) => run::eval(args),
        Command::Sweep(args) => run::sweep(args),
        Command::Report { dir } => run::report(dir),
        Command::Metric { name, pairs } => metric(&name, &pairs),
        Command::Ls(LsCommand::Tasks) => print_tasks(),
        Command::Ls(LsCommand::Methods) => {
            print_methods();
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Loads the model named by `args`, with a hint when the default model is missing.
pub fn load_model(args: &ModelArgs) -> anyhow::Result<sparq_runner::LoadedModel> {
    if args.model == env::DEFAULT_MODEL {
        check_default_model()?;
    }
    let source = sparq_runner::ModelSource::parse(&args.model)?;
    Ok(sparq_runner::load_model(&source, args.dtype)?)
}

/// The default model is fetched by a script; say so when it is missing.
pub fn check_default_model() -> anyhow::Result<()> {
    if !std::path::Path::new(env::DEFAULT_MODEL).exists() {
        anyhow::bail!(
            "the default model {} is not there: run scripts/fetch-model.sh from the repository root, \
             or pass --model (or set {})",
            env::DEFAULT_MODEL,
            env::SPARQ_MODEL
        );
    }
    Ok(())
}

/// Parses `--method` values and builds them for a model and prompt length; all specs
/// are checked before any is built, so a bad one stops the run before model work.
pub fn parse_methods(specs: &[String]) -> anyhow::Result<Vec<sparq_attention::spec::MethodSpec>> {
    specs
        .iter()
        .map(|s| {
            s.parse::<sparq_attention::spec::MethodSpec>()
                .map_err(|e| anyhow::anyhow!("--method {s}: {e}"))
        })
        .collect()
}

fn print_methods() {
    println!("| method | keys (default) | what it does | paper |");
    println!("|---|---|---|---|");
    for m in sparq_attention::registry() {
        let keys: Vec<String> = m.keys.iter().map(|(k, d)| format!("{k} ({d})")).collect();
        println!(
            "| {} | {} | {} | {} |",
            m.name,
            keys.join(", "),
            m.description,
            m.paper
        );
    }
}

fn print_tasks() -> anyhow::Result<()> {
    println!("| task | version | metric | description |");
    println!("|---|---|---|---|");
    for t in sparq_tasks::list_tasks()? {
        println!(
            "| {} | {} | {} | {} |",
            t.name, t.version, t.metric, t.description
        );
    }
    Ok(())
}

fn metric(name: &str, pairs: &std::path::Path) -> anyhow::Result<()> {
    let metric = sparq_tasks::Metric::from_name(name)?;
    for pair in sparq_tasks::metrics::read_pairs(pairs)? {
        println!("{}", metric.score(&pair.prediction, &pair.references)?);
    }
    Ok(())
}
