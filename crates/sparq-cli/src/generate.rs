//! `sparq generate`: greedy continuation of one prompt with one or more methods.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use sparq_runner::{generate, left_truncate};

use crate::{load_model, parse_methods, ModelArgs};

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text (special tokens written in it are recognised).
    #[arg(
        long,
        conflicts_with = "prompt_file",
        required_unless_present = "prompt_file"
    )]
    prompt: Option<String>,
    /// A file holding the prompt text.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Tokens to generate (greedy; no stop at end-of-sequence).
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Attention method spec (repeatable; all decode together from one prefill).
    #[arg(long = "method", default_value = "dense")]
    methods: Vec<String>,
    /// Print one JSON object per method instead of the text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let specs = parse_methods(&args.methods)?;
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("--prompt-file {}: cannot read it", f.display()))?,
        (None, None) => anyhow::bail!("give --prompt or --prompt-file"),
    };
    let loaded = load_model(&args.model)?;
    let shape = loaded.model.shape();
    for s in &specs {
        s.validate(&shape)
            .map_err(|e| anyhow::anyhow!("--method {s}: {e}"))?;
    }
    let max_pos = loaded.model.config().max_position_embeddings;
    if args.max_new_tokens >= max_pos {
        anyhow::bail!(
            "--max-new-tokens {} leaves no room for a prompt in the model's {max_pos} positions",
            args.max_new_tokens
        );
    }
    let tokens = loaded.tokenizer.encode(&prompt)?;
    let (tokens, cut) = left_truncate(&tokens, max_pos - args.max_new_tokens);
    if cut > 0 {
        eprintln!(
            "note: the prompt has {} tokens; cut {cut} from the left to fit {} new tokens in {max_pos} positions",
            tokens.len() + cut,
            args.max_new_tokens
        );
    }
    let methods = specs
        .iter()
        .map(|s| s.build(&shape, tokens.len()))
        .collect::<Result<Vec<_>, _>>()?;
    let out = generate(&loaded.model, tokens, methods, args.max_new_tokens)?;
    let mut top: Vec<(usize, f32)> = out.first_logits.iter().copied().enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(5);
    for branch in &out.branches {
        let text = loaded.tokenizer.decode(&branch.tokens)?;
        if args.json {
            let obj = json!({
                "model": loaded.name,
                "method": branch.method,
                "prompt_tokens": tokens,
                "truncated_tokens": cut,
                "output_tokens": branch.tokens,
                "text": text,
                "first_step_top5": top.iter().map(|(i, l)| json!([i, l])).collect::<Vec<_>>(),
                "prefill_ms": out.prefill_ms,
                "decode_ms": out.decode_ms,
                "elements_per_step": branch.elements_per_step,
            });
            println!("{obj}");
        } else {
            if out.branches.len() > 1 {
                println!("=== {} ===", branch.method);
            }
            println!("{text}");
        }
    }
    Ok(())
}
