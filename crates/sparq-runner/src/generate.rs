//! Greedy generation and teacher-forced scoring over several branches that share one
//! dense prefill. The first generated token comes from the prefill logits, so it is the
//! same (dense) for every branch; every later step runs each branch's method.

use std::time::Instant;

use sparq_attention::AttentionMethod;

use crate::error::{Result, RunnerError};
use crate::kernels;
use crate::llama::{Branch, Llama, PromptCache};

/// Cuts `tokens` from the left to at most `max_len`; returns the kept tokens and how
/// many were cut.
pub fn left_truncate(tokens: &[u32], max_len: usize) -> (&[u32], usize) {
    let cut = tokens.len().saturating_sub(max_len);
    (&tokens[cut..], cut)
}

#[derive(Clone, Debug)]
pub struct BranchOutput {
    pub method: String,
    pub tokens: Vec<u32>,
    /// Mean elements moved per decode step, per layer and KV head (SPEC section 4's
    /// unit); `None` when no decode step ran.
    pub elements_per_step: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// Logits of the last prompt position (they pick the first generated token).
    pub first_logits: Vec<f32>,
    pub branches: Vec<BranchOutput>,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

fn needs_mass(methods: &[Box<dyn AttentionMethod>]) -> bool {
    methods.iter().any(|m| m.needs_prompt_mass())
}

fn branch_output(model: &Llama, b: &Branch, tokens: Vec<u32>) -> BranchOutput {
    let shape = model.shape();
    let per_step = (b.steps > 0).then(|| {
        b.elements_moved as f64 / (b.steps as f64 * (shape.layers * shape.kv_heads) as f64)
    });
    BranchOutput {
        method: b.method.describe(),
        tokens,
        elements_per_step: per_step,
    }
}

/// Greedy decoding of `max_new_tokens` tokens (no stop at end-of-sequence) for each
/// method, all branches decoded together as one batch.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    methods: Vec<Box<dyn AttentionMethod>>,
    max_new_tokens: usize,
) -> Result<Generation> {
    if methods.is_empty() {
        return Err(RunnerError::Invalid(
            "no attention method to decode with".into(),
        ));
    }
    let t0 = Instant::now();
    let cache = model.prefill(prompt, needs_mass(&methods))?;
    let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let (branches, tokens) = decode_greedy(model, &cache, methods, max_new_tokens)?;
    let decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(Generation {
        branches: branches
            .iter()
            .zip(tokens)
            .map(|(b, t)| branch_output(model, b, t))
            .collect(),
        first_logits: cache.last_logits,
        prefill_ms,
        decode_ms,
    })
}

/// Greedy decoding from an existing prefill; returns the branches (for their transfer
/// counts) and each branch's tokens.
pub fn decode_greedy(
    model: &Llama,
    cache: &PromptCache,
    methods: Vec<Box<dyn AttentionMethod>>,
    max_new_tokens: usize,
) -> Result<(Vec<Branch>, Vec<Vec<u32>>)> {
    let mut branches = methods
        .into_iter()
        .map(|m| model.branch(cache, m, max_new_tokens))
        .collect::<Result<Vec<_>>>()?;
    let mut tokens: Vec<Vec<u32>> = vec![Vec::with_capacity(max_new_tokens); branches.len()];
    if max_new_tokens == 0 {
        return Ok((branches, tokens));
    }
    let first = kernels::argmax(&cache.last_logits) as u32;
    tokens.iter_mut().for_each(|t| t.push(first));
    for _ in 1..max_new_tokens {
        let inputs: Vec<u32> = tokens.iter().map(|t| *t.last().unwrap()).collect();
        let next = model.decode_step_greedy(cache, &mut branches, &inputs)?;
        for (t, n) in tokens.iter_mut().zip(next) {
            t.push(n);
        }
    }
    Ok((branches, tokens))
}

#[derive(Clone, Debug)]
pub struct ScoredBranch {
    pub method: String,
    /// Sum over target tokens of the negative log-likelihood, in nats.
    pub nll: f64,
    /// Per target token NLL, in nats.
    pub token_nll: Vec<f64>,
    pub elements_per_step: Option<f64>,
}

/// Teacher-forced scoring of `targets` after `prefix`. The prefix minus its last token
/// is prefilled densely; its last token and then every target but the last are fed one
/// at a time, so the method under test predicts every target token.
pub fn score_continuation(
    model: &Llama,
    prefix: &[u32],
    targets: &[u32],
    methods: Vec<Box<dyn AttentionMethod>>,
) -> Result<Vec<ScoredBranch>> {
    if prefix.len() < 2 {
        return Err(RunnerError::Invalid(
            "teacher forcing needs a prefix of at least two tokens".into(),
        ));
    }
    if targets.is_empty() {
        return Err(RunnerError::Invalid(
            "nothing to score: no target tokens".into(),
        ));
    }
    let (head, last) = prefix.split_at(prefix.len() - 1);
    let cache = model.prefill(head, needs_mass(&methods))?;
    let mut branches = methods
        .into_iter()
        .map(|m| model.branch(&cache, m, targets.len()))
        .collect::<Result<Vec<_>>>()?;
    let vocab = model.config().vocab_size;
    let mut token_nll = vec![Vec::with_capacity(targets.len()); branches.len()];
    let mut input = last[0];
    for &target in targets {
        let inputs = vec![input; branches.len()];
        let logits = model.decode_step(&cache, &mut branches, &inputs)?;
        for (nll, row) in token_nll.iter_mut().zip(logits.chunks(vocab)) {
            nll.push(-kernels::log_prob(row, target as usize));
        }
        input = target;
    }
    Ok(branches
        .iter()
        .zip(token_nll)
        .map(|(b, nll)| {
            let out = branch_output(model, b, Vec::new());
            ScoredBranch {
                method: out.method,
                nll: nll.iter().sum(),
                token_nll: nll,
                elements_per_step: out.elements_per_step,
            }
        })
        .collect())
}
