//! One layer's decode-step attention for every branch, in parallel.
//!
//! Each (branch, KV head) pair goes through its branch's method, except that dense
//! branches that have generated the same number of positions are computed together,
//! one pass over the shared prompt cache for all of them
//! ([`sparq_attention::dense::attend_shared_prompt`], bit-identical to one by one).
//! Eight dense branches would otherwise read the prompt's keys and values eight times
//! per step, more bytes than the weights themselves at a 1,600-token prompt.

use sparq_attention::dense::LogitsHandoff;
use sparq_attention::{AttentionMethod, HeadKv, HeadState, KvView};
use std::collections::BTreeMap;

use crate::llama::Branch;

/// The queries, caches and outputs of one KV head of one branch.
struct Head<'a> {
    branch: usize,
    q: &'a [f32],
    generated: &'a HeadKv,
    out: &'a mut [f32],
}

enum Job<'a> {
    /// One (branch, KV head) through its own method.
    Single {
        method: &'a dyn AttentionMethod,
        state: &'a mut HeadState,
        prompt: &'a HeadKv,
        head: Head<'a>,
    },
    /// Several dense branches of one KV head, one pass over the prompt.
    SharedDense {
        prompt: &'a HeadKv,
        heads: Vec<Head<'a>>,
    },
    /// The first half of a `SharedDense` pass: its logits (reads the keys).
    Logits {
        handoff: &'a LogitsHandoff,
        prompt: &'a HeadKv,
        queries: Vec<&'a [f32]>,
        generated: Vec<&'a HeadKv>,
    },
    /// The second half: the softmax and the weighted values (reads the values).
    Finish {
        handoff: &'a LogitsHandoff,
        prompt: &'a HeadKv,
        heads: Vec<Head<'a>>,
    },
}

impl Job<'_> {
    /// Runs the job; returns (branch, elements moved) for each branch it served.
    fn run(self) -> Vec<(usize, u64)> {
        match self {
            Job::Single {
                method,
                state,
                prompt,
                head,
            } => {
                let view = KvView::new(prompt, head.generated);
                vec![(head.branch, method.attend(state, head.q, &view, head.out))]
            }
            Job::SharedDense { prompt, mut heads } => {
                let queries: Vec<&[f32]> = heads.iter().map(|h| h.q).collect();
                let generated: Vec<&HeadKv> = heads.iter().map(|h| h.generated).collect();
                let mut outs: Vec<&mut [f32]> = heads.iter_mut().map(|h| &mut *h.out).collect();
                let each = sparq_attention::dense::attend_shared_prompt(
                    &queries, prompt, &generated, &mut outs,
                );
                heads.iter().map(|h| (h.branch, each)).collect()
            }
            Job::Logits {
                handoff,
                prompt,
                queries,
                generated,
            } => {
                handoff.compute(&queries, prompt, &generated);
                Vec::new()
            }
            Job::Finish {
                handoff,
                prompt,
                mut heads,
            } => {
                let queries: Vec<&[f32]> = heads.iter().map(|h| h.q).collect();
                let generated: Vec<&HeadKv> = heads.iter().map(|h| h.generated).collect();
                let mut outs: Vec<&mut [f32]> = heads.iter_mut().map(|h| &mut *h.out).collect();
                let each = sparq_attention::dense::attend_shared_prompt_from(
                    handoff, &queries, prompt, &generated, &mut outs,
                );
                heads.iter().map(|h| (h.branch, each)).collect()
            }
        }
    }
}

/// Layer `l`'s attention: `qkv` holds each branch's projected row (`qkv_dim` long,
/// query heads first), `attn` receives each branch's `nh * d` outputs. Adds every
/// branch's moved elements to its count. `buffers` holds the logits handed between
/// threads (kept for the next layer).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_layer(
    buffers: &mut Vec<Vec<f32>>,
    branches: &mut [Branch],
    prompt: &[HeadKv],
    l: usize,
    qkv: &[f32],
    qkv_dim: usize,
    (nh, nkv, d): (usize, usize, usize),
    attn: &mut [f32],
) {
    let g = nh / nkv;
    let mut jobs: Vec<Job<'_>> = Vec::new();
    // Dense heads waiting to be grouped, by (generated length, KV head).
    let mut dense: BTreeMap<(usize, usize), Vec<Head<'_>>> = BTreeMap::new();
    for (b, ((branch, out), row)) in branches
        .iter_mut()
        .zip(attn.chunks_mut(nh * d))
        .zip(qkv.chunks(qkv_dim))
        .enumerate()
    {
        let is_dense = branch.method.is_dense();
        let Branch {
            method,
            generated,
            states,
            ..
        } = branch;
        let method: &dyn AttentionMethod = &**method;
        let heads = generated[l * nkv..(l + 1) * nkv]
            .iter()
            .zip(states[l * nkv..(l + 1) * nkv].iter_mut())
            .zip(out.chunks_mut(g * d))
            .enumerate();
        for (kvh, ((gen, state), out_g)) in heads {
            let head = Head {
                branch: b,
                q: &row[kvh * g * d..(kvh + 1) * g * d],
                generated: gen,
                out: out_g,
            };
            if is_dense {
                dense.entry((gen.len(), kvh)).or_default().push(head);
            } else {
                jobs.push(Job::Single {
                    method,
                    state,
                    prompt: &prompt[kvh],
                    head,
                });
            }
        }
    }
    // Each dense group is one job that reads its KV head's prompt once, except the
    // groups left over after sharing them out evenly among the threads. A leftover
    // group of several branches is split by branches into one piece per thread, each
    // piece rereading the prompt: with 3 KV heads on 2 threads, two whole heads and two
    // halves of the third, so each thread reads two heads' prompts instead of three.
    // A leftover group of one branch cannot be split so; its pass is split into the
    // logits (reading the keys), which go first, and the softmax and weighted values
    // (reading the values), which go last, so that with 3 KV heads neither thread idles
    // through a third of the pass. (Eight branches' passes measured slower split so,
    // 416 against 453 tok/s, and split by positions too: docs/BENCHMARKS.md, session
    // 15.)
    let threads = rayon::current_num_threads().max(1);
    let whole = dense.len() - dense.len() % threads;
    let by_phase = |i: usize, branches: usize| i >= whole && whole > 0 && branches < threads;
    let handoffs: Vec<LogitsHandoff> = dense
        .iter()
        .enumerate()
        .filter(|(i, (_, heads))| by_phase(*i, heads.len()))
        .map(|_| LogitsHandoff::new(buffers.pop().unwrap_or_default()))
        .collect();
    let mut handoff = handoffs.iter();
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for (i, ((_, kvh), heads)) in dense.into_iter().enumerate() {
        let prompt = &prompt[kvh];
        if by_phase(i, heads.len()) {
            let handoff = handoff
                .next()
                .expect("one handoff per group split by phase");
            first.push(Job::Logits {
                handoff,
                prompt,
                queries: heads.iter().map(|h| h.q).collect(),
                generated: heads.iter().map(|h| h.generated).collect(),
            });
            last.push(Job::Finish {
                handoff,
                prompt,
                heads,
            });
            continue;
        }
        let pieces = if i < whole { 1 } else { threads };
        let per_piece = heads.len().div_ceil(pieces).max(1);
        let mut heads = heads.into_iter().peekable();
        while heads.peek().is_some() {
            let piece: Vec<Head<'_>> = heads.by_ref().take(per_piece).collect();
            jobs.push(Job::SharedDense {
                prompt,
                heads: piece,
            });
        }
    }
    first.append(&mut jobs);
    first.append(&mut last);
    let moved = crate::spread::run_each(first, Job::run);
    for (b, n) in moved.into_iter().flatten() {
        branches[b].elements_moved += n;
    }
    buffers.extend(handoffs.into_iter().map(LogitsHandoff::into_buffer));
}
