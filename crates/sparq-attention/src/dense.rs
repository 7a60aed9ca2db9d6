//! Dense attention: the reference every method is measured against.

use crate::cache::KvView;
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
