//! `sparq bench`: throughput benchmarks that print a table (medians of several runs).

use std::time::Instant;

use serde_json::json;
use sparq_attention::AttentionMethod;

use crate::{load_model, parse_methods, ModelArgs};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode throughput of a model (tokens per second).
    Model(BenchModelArgs),
    /// One decode-step attention over a synthetic cache per method, beside dense and
    /// the machine's measured copy bandwidth.
    ///
    /// Before every timed step the bench reads twice the last-level cache so that the
    /// caches come from memory, reads one float per 2 MiB page of them (some virtual
    /// machines stall for ~100 µs on the first load from a page left alone for a
    /// while, which is not the method's cost), and runs the method once on a spare
    /// head per thread, warming its code and scratch as the previous layer would.
    Attention(BenchAttentionArgs),
    /// The dense pass's three steps (logits, softmax, weighted values) timed apart on
    /// one thread, over a synthetic shared prompt.
    ///
    /// "cold" passes each read another prompt cache, with a few MiB of other data read
    /// before them, as a decode step's layers do; "warm" passes read one cache again
    /// and again. `read keys` and `read values` are the times to only read the same
    /// cache lines. Medians of `--repeats` passes each. A busy neighbour on a shared
    /// machine slows the warm column too: compare builds in alternated runs.
    DensePhases(BenchDensePhasesArgs),
}

#[derive(clap::Args)]
pub struct BenchDensePhasesArgs {
    /// Prompt positions shared by the branches (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "1600")]
    seq_len: Vec<usize>,
    /// Head dimension d.
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
    /// Query heads per KV head in each branch.
    #[arg(long, default_value_t = 3)]
    group: usize,
    /// Branches attending the prompt together (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    branches: Vec<usize>,
    /// Timed passes, cold and warm each (medians are reported).
    #[arg(long, default_value_t = 201)]
    repeats: usize,
    /// The prompt cache's storage the pass reads (comma-separated for several): `f32`,
    /// or `f16` for the 16-bit copy `--dtype q4` keeps.
    #[arg(long, value_delimiter = ',', default_value = "f32", value_parser = ["f32", "f16"])]
    kv: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct BenchAttentionArgs {
    /// Cached positions S (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "16384")]
    seq_len: Vec<usize>,
    /// Head dimension d (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "128")]
    head_dim: Vec<usize>,
    #[arg(long, default_value_t = 8)]
    kv_heads: usize,
    /// Query heads per KV head (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    group: Vec<usize>,
    /// Method specs (repeatable); dense is always measured as the reference.
    #[arg(long = "method", default_value = "sparq:ratio=1/8")]
    methods: Vec<String>,
    /// Timed steps per method (the median is reported).
    #[arg(long, default_value_t = 9)]
    repeats: usize,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct BenchModelArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 1600)]
    prompt_tokens: usize,
    /// Decode steps per branch.
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Branches decoded together as one batch.
    #[arg(long, default_value_t = 1)]
    branches: usize,
    /// Attention method of every branch.
    #[arg(long, default_value = "dense")]
    method: String,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long)]
    json: bool,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Model(args) => bench_model(args),
        BenchCommand::Attention(args) => bench_attention(args),
        BenchCommand::DensePhases(args) => bench_dense_phases(args),
    }
}

fn bench_model(args: BenchModelArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.branches >= 1, "--branches must be at least 1");
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    anyhow::ensure!(
        args.prompt_tokens >= 1,
        "--prompt-tokens must be at least 1"
    );
    let spec = parse_methods(std::slice::from_ref(&args.method))?.remove(0);
    let loaded = load_model(&args.model)?;
    let model = &loaded.model;
    let shape = model.shape();
    spec.validate(&shape)
        .map_err(|e| anyhow::anyhow!("--method {}: {e}", args.method))?;
    let max_pos = model.config().max_position_embeddings;
    anyhow::ensure!(
        args.prompt_tokens + args.new_tokens <= max_pos,
        "--prompt-tokens + --new-tokens must fit in the model's {max_pos} positions"
    );
    // A fixed pseudo-random prompt: throughput does not depend on the text.
    let vocab = model.config().vocab_size as u64;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let prompt: Vec<u32> = (0..args.prompt_tokens)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab) as u32
        })
        .collect();
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..args.repeats {
        let t0 = Instant::now();
        let needs_mass = spec.build(&shape, prompt.len())?.needs_prompt_mass();
        let cache = model.prefill(&prompt, needs_mass)?;
        prefill.push(args.prompt_tokens as f64 / t0.elapsed().as_secs_f64());
        let methods: Vec<Box<dyn AttentionMethod>> = (0..args.branches)
            .map(|_| spec.build(&shape, prompt.len()))
            .collect::<Result<_, _>>()?;
        let mut branches = methods
            .into_iter()
            .map(|m| model.branch(&cache, m, args.new_tokens))
            .collect::<Result<Vec<_>, _>>()?;
        let first = sparq_runner::kernels::argmax(&cache.last_logits) as u32;
        let mut inputs = vec![first; args.branches];
        let t1 = Instant::now();
        for _ in 0..args.new_tokens {
            inputs = model.decode_step_greedy(&cache, &mut branches, &inputs)?;
        }
        decode.push((args.branches * args.new_tokens) as f64 / t1.elapsed().as_secs_f64());
    }
    let (p, d) = (median(prefill), median(decode));
    let (weight_bytes, _) = model.decode_weight_bytes();
    if args.json {
        println!(
            "{}",
            json!({
                "model": loaded.name, "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens, "branches": args.branches,
                "method": spec.to_string(), "dtype": args.model.dtype.to_string(),
                "decode_weight_bytes": weight_bytes,
                "prefill_tokens_per_s": p, "decode_tokens_per_s": d,
            })
        );
    } else {
        println!("| model | dtype | decode weight MB | method | prompt tokens | new tokens | branches | prefill tok/s | decode tok/s |");
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {:.1} | {} | {} | {} | {} | {:.1} | {:.1} |",
            loaded.name,
            args.model.dtype,
            weight_bytes as f64 / 1e6,
            spec,
            args.prompt_tokens,
            args.new_tokens,
            args.branches,
            p,
            d
        );
    }
    Ok(())
}

fn bench_attention(args: BenchAttentionArgs) -> anyhow::Result<()> {
    let specs = parse_methods(&args.methods)?;
    let mut rows = Vec::new();
    for &seq_len in &args.seq_len {
        for &head_dim in &args.head_dim {
            for &group in &args.group {
                let cfg = sparq_attention::BenchConfig {
                    seq_len,
                    head_dim,
                    kv_heads: args.kv_heads,
                    group,
                    repeats: args.repeats,
                    ..Default::default()
                };
                rows.extend(sparq_attention::bench_attention(&cfg, &specs)?);
            }
        }
    }
    let to_json = |r: &sparq_attention::BenchRow| {
        json!({
            "method": r.method, "seq_len": r.seq_len, "head_dim": r.head_dim,
            "kv_heads": r.kv_heads, "group": r.group, "time_us": r.time_us,
            "speedup": r.speedup, "predicted_speedup": r.predicted_speedup,
            "bytes_per_s": r.bytes_per_s,
        })
    };
    print_rows(&rows, args.json, to_json, sparq_attention::bench::table);
    Ok(())
}

/// A bench's rows as a JSON array (`--json`) or as its plain-text table.
fn print_rows<R>(
    rows: &[R],
    json: bool,
    to_json: impl Fn(&R) -> serde_json::Value,
    table: impl Fn(&[R]) -> String,
) {
    if json {
        let list: Vec<serde_json::Value> = rows.iter().map(to_json).collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        print!("{}", table(rows));
    }
}

fn bench_dense_phases(args: BenchDensePhasesArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &seq_len in &args.seq_len {
        for &branches in &args.branches {
            for kv in &args.kv {
                let cfg = sparq_attention::PhaseConfig {
                    seq_len,
                    head_dim: args.head_dim,
                    group: args.group,
                    branches,
                    repeats: args.repeats,
                    seed: 0,
                    half_kv: kv == "f16",
                };
                rows.extend(sparq_attention::bench_dense_phases(&cfg)?);
            }
        }
    }
    let to_json = |r: &sparq_attention::PhaseRow| {
        json!({
            "seq_len": r.seq_len, "head_dim": r.head_dim, "heads": r.heads, "kv": r.kv,
            "phase": r.phase, "cold_us": r.cold_us, "warm_us": r.warm_us,
        })
    };
    print_rows(
        &rows,
        args.json,
        to_json,
        sparq_attention::phase_bench::phase_table,
    );
    Ok(())
}
