//! Dense attention: the reference every method is measured against.

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
    assert_eq!(
        queries.len(),
        generated.len(),
        "one generated cache per branch"
    );
    assert_eq!(queries.len(), outs.len(), "one output per branch");
    let Some(first) = generated.first() else {
        return 0;
    };
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
    with_scratch(|sc| compute_shared(queries, prompt, generated, outs, sc));
    Budget::Dense.elements(prompt.len() + first.len(), prompt.head_dim())
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
