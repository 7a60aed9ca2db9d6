//! Dense attention: the reference every method is measured against.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::cache::{HeadKv, KvView};
use crate::kernels::{self, multiversion, with_scratch, Scratch};
use crate::method::{AttentionMethod, HeadState, Trace};
use crate::transfer::Budget;

/// Ordinary softmax attention over every cached position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dense;

impl AttentionMethod for Dense {
    fn describe(&self) -> String {
        "dense".to_string()
    }

    fn is_dense(&self) -> bool {
        true
    }

    fn attend_traced(
        &self,
        _state: &mut HeadState,
        q: &[f32],
        kv: &KvView<'_>,
        out: &mut [f32],
        trace: Option<&mut Trace>,
    ) -> u64 {
        check_shapes(q, kv, out);
        with_scratch(|sc| compute(q, kv, out, sc));
        Trace::record(trace, 0..kv.len(), &[]);
        Budget::Dense.elements(kv.len(), kv.head_dim())
    }
}

/// Dense attention for several branches at once that share `prompt` and have
/// generated the same number of positions: `queries[b]` (`g x d`) attends over `prompt`
/// followed by `generated[b]`, into `outs[b]`. The prompt's keys and values are read
/// once for all branches instead of once per branch, which is what makes decoding many
/// dense branches together cheaper than one by one; the results are bit-identical to
/// [`Dense`]'s `attend` per branch. Returns the elements each branch moved (SPEC
/// section 4 counts every branch's full read, as if it ran alone).
pub fn attend_shared_prompt(
    queries: &[&[f32]],
    prompt: &HeadKv,
    generated: &[&HeadKv],
    outs: &mut [&mut [f32]],
) -> u64 {
    run_checked(queries, prompt, generated, outs, |outs| {
        with_scratch(|sc| compute_shared(queries, prompt, generated, outs, sc))
    })
}

/// `pass` into `outs` once the arguments of a shared-prompt pass are checked; the
/// elements each branch moved.
fn run_checked(
    queries: &[&[f32]],
    prompt: &HeadKv,
    generated: &[&HeadKv],
    outs: &mut [&mut [f32]],
    pass: impl FnOnce(&mut [&mut [f32]]),
) -> u64 {
    let Some(first) = check_shared(queries, prompt, generated, outs) else {
        return 0;
    };
    pass(outs);
    Budget::Dense.elements(prompt.len() + first, prompt.head_dim())
}

/// The invariants of a shared-prompt pass's arguments; the branches' generated length,
/// or `None` when there are no branches.
fn check_shared(
    queries: &[&[f32]],
    prompt: &HeadKv,
    generated: &[&HeadKv],
    outs: &mut [&mut [f32]],
) -> Option<usize> {
    assert_eq!(
        queries.len(),
        generated.len(),
        "one generated cache per branch"
    );
    assert_eq!(queries.len(), outs.len(), "one output per branch");
    let first = generated.first()?;
    for ((q, gen), out) in queries.iter().zip(generated).zip(outs.iter_mut()) {
        assert_eq!(
            gen.len(),
            first.len(),
            "branches sharing a prompt pass have generated the same number of positions"
        );
        assert_eq!(
            q.len(),
            queries[0].len(),
            "every branch has the same group size"
        );
        check_shapes(q, &KvView::new(prompt, gen), out);
    }
    Some(first.len())
}

/// The logits of one shared-prompt dense pass, handed from the job that computes them
/// to the job that finishes the pass (softmax and weighted values), so that two
/// threads can share one KV head's pass without either reading all of its keys and
/// values: one reads the keys, the other the values. The softmax runs with the values,
/// on the thread that reads the weights back, so the other core's logits are read
/// once, in order. Each result is the same, bit for bit, as [`attend_shared_prompt`]'s
/// (the same kernels on the same rows, in the same order).
///
/// Whichever job comes first computes the logits; the other finds them done, or waits
/// for them while another thread computes them (it never waits on a thread that has
/// not started, so the jobs may run in any order, on any threads).
pub struct LogitsHandoff {
    state: AtomicU8,
    /// Written only by the thread that moved `state` to `COMPUTING`, then only by the
    /// one that moved it from `READY` to `TAKEN`.
    buf: UnsafeCell<Vec<f32>>,
}

const UNCLAIMED: u8 = 0;
const COMPUTING: u8 = 1;
const READY: u8 = 2;
const TAKEN: u8 = 3;

// SAFETY: `buf` is used by one thread at a time: the one that claimed it through
// `state`, which hands it on only through a Release store that the next one Acquires.
unsafe impl Sync for LogitsHandoff {}

impl LogitsHandoff {
    /// A handoff whose logits will live in `buf` (reused, so that a decode step does
    /// not allocate it per layer).
    pub fn new(buf: Vec<f32>) -> Self {
        Self {
            state: AtomicU8::new(UNCLAIMED),
            buf: UnsafeCell::new(buf),
        }
    }

    /// The buffer, for the next handoff.
    pub fn into_buffer(self) -> Vec<f32> {
        self.buf.into_inner()
    }

    /// The logits of `queries` over `prompt` and `generated` (as
    /// [`attend_shared_prompt`] takes them), unless another job has started them.
    pub fn compute(&self, queries: &[&[f32]], prompt: &HeadKv, generated: &[&HeadKv]) {
        if self
            .state
            .compare_exchange(UNCLAIMED, COMPUTING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            // SAFETY: this thread claimed the buffer.
            let buf = unsafe { &mut *self.buf.get() };
            with_scratch(|sc| compute_logits(queries, prompt, generated, buf, &mut sc.qs));
            self.state.store(READY, Ordering::Release);
        }
    }

    /// The logits, computed here if no job has started them; for one taker only.
    #[allow(clippy::mut_from_ref)]
    fn take(&self, queries: &[&[f32]], prompt: &HeadKv, generated: &[&HeadKv]) -> &mut [f32] {
        self.compute(queries, prompt, generated);
        loop {
            match self.state.compare_exchange_weak(
                READY,
                TAKEN,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(TAKEN) => panic!("a handoff's logits were taken twice"),
                Err(_) => std::hint::spin_loop(),
            }
        }
        // SAFETY: this thread moved the state to `TAKEN`, once: nobody else uses the
        // buffer from now on.
        let buf = unsafe { &mut *self.buf.get() };
        crate::shared_dense::weights_buffer(buf, queries, prompt, generated)
    }
}

/// The second half of [`attend_shared_prompt`] from the logits of `logits` (waiting
/// for them, or computing them if no job has): the softmax and the weighted values,
/// for the same arguments. Returns what `attend_shared_prompt` returns.
pub fn attend_shared_prompt_from(
    logits: &LogitsHandoff,
    queries: &[&[f32]],
    prompt: &HeadKv,
    generated: &[&HeadKv],
    outs: &mut [&mut [f32]],
) -> u64 {
    run_checked(queries, prompt, generated, outs, |outs| {
        let z = logits.take(queries, prompt, generated);
        with_scratch(|sc| compute_finish(z, prompt, generated, outs, sc))
    })
}

multiversion! {
    fn compute_logits(
        queries: &[&[f32]],
        prompt: &HeadKv,
        generated: &[&HeadKv],
        buf: &mut Vec<f32>,
        qs: &mut Vec<f32>,
    ) {
        let z = crate::shared_dense::weights_buffer(buf, queries, prompt, generated);
        crate::shared_dense::all_logits(queries, prompt, generated, z, qs)
    }
}

multiversion! {
    fn compute_finish(
        z: &mut [f32],
        prompt: &HeadKv,
        generated: &[&HeadKv],
        outs: &mut [&mut [f32]],
        sc: &mut Scratch,
    ) {
        crate::shared_dense::softmax_rows(z, crate::shared_dense::positions(prompt, generated));
        crate::shared_dense::weighted_values(z, prompt, generated, outs, sc)
    }
}

multiversion! {
    fn compute_shared(
        queries: &[&[f32]],
        prompt: &HeadKv,
        generated: &[&HeadKv],
        outs: &mut [&mut [f32]],
        sc: &mut Scratch,
    ) {
        crate::shared_dense::dense_shared_prompt(queries, prompt, generated, outs, sc)
    }
}

multiversion! {
    fn compute(q: &[f32], kv: &KvView<'_>, out: &mut [f32], sc: &mut Scratch) {
        kernels::dense(q, kv, out, sc)
    }
}

/// The invariants of `attend`'s arguments every method relies on.
pub(crate) fn check_shapes(q: &[f32], kv: &KvView<'_>, out: &mut [f32]) {
    let d = kv.head_dim();
    assert!(d > 0, "attention over a zero-width head");
    assert!(
        !kv.is_empty(),
        "attention over an empty cache (the current token is missing)"
    );
    assert!(
        !q.is_empty() && q.len().checked_rem(d) == Some(0),
        "query length {} is not a positive multiple of the head dimension {d}",
        q.len()
    );
    assert_eq!(out.len(), q.len(), "output and query lengths differ");
}
