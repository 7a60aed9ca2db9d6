//! The `sparq` command line: clap definitions and wiring only; the work lives in the
//! library crates.

mod bench;
mod env;
mod generate;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sparq", version, about = "Measure what sparse attention (SparQ and its baselines) costs a language model in accuracy")]
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
    /// Numeric format of the weight matrices (f32 is exact; bf16 reads half the bytes).
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
    /// List what the harness knows.
    #[command(subcommand)]
    Ls(LsCommand),
}

#[derive(Subcommand)]
enum LsCommand {
    /// Attention methods and their settings.
    Methods,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Ls(LsCommand::Methods) => {
            print!("{}", sparq_attention::spec::registry_table());
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
    if args.model == env::DEFAULT_MODEL && !std::path::Path::new(&args.model).exists() {
        anyhow::bail!(
            "the default model {} is not there: run scripts/fetch-model.sh from the repository root, \
             or pass --model (or set {})",
            env::DEFAULT_MODEL,
            env::SPARQ_MODEL
        );
    }
    let source = sparq_runner::ModelSource::parse(&args.model)?;
    Ok(sparq_runner::load_model(&source, args.dtype)?)
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
