//! The step FlexGen and the oracle share: exact logits at every position, one top-k
//! selection for the GQA group, and the values of the selection weighted. They differ
//! only in what ranks the positions and what weighs the values (SPEC section 3).

use crate::cache::KvView;
use crate::kernels::{self, multiversion, slots, with_scratch, Scratch};
use crate::method::Trace;
use crate::topk::top_k;

/// How the kept positions' values are weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    /// FlexGen: ranked by the softmax over every position (summed over the group), and
    /// weighted by those same weights, not renormalised.
    Unnormalised,
    /// Oracle: ranked by the exact scores (summed over the group), and weighted by a
    /// softmax over the selection alone.
    Renormalised,
}

/// One step of `k` positions kept, recorded in `trace` when given.
pub(crate) fn attend(
    k: usize,
    kept: Kept,
    q: &[f32],
    kv: &KvView<'_>,
    out: &mut [f32],
    trace: Option<&mut Trace>,
) {
    with_scratch(|sc| {
        compute(k, kept, q, kv, out, sc);
        Trace::record(trace, sc.selected.iter().map(|&p| p as usize), &[]);
    });
}

multiversion! {
    /// The step, leaving the kept positions in `sc.selected`.
    fn compute(
        k: usize,
        kept: Kept,
        q: &[f32],
        kv: &KvView<'_>,
        out: &mut [f32],
        sc: &mut Scratch,
    ) {
        let (d, s) = (kv.head_dim(), kv.len());
        if k >= s {
            // Everything kept: either way that is dense attention.
            kernels::dense_all_selected(q, kv, out, sc);
            return;
        }
        let Scratch { qs, logits, rank, weights, selected, top, .. } = sc;
        let qs = kernels::scaled_query(q, d, qs);
        let z = slots(logits, q.len() / d * s);
        kernels::all_logits(qs, kv, z);
        if kept == Kept::Unnormalised {
            kernels::softmax_rows(z, s);
        }
        // GQA: one selection for the group, by the sum of its heads' rows.
        top_k(kernels::group_ranking(z, s, rank), k, top, selected);
        let n = selected.len();
        kernels::gather_columns(z, s, selected, weights);
        let w = &mut weights[..z.len() / s * n];
        if kept == Kept::Renormalised {
            kernels::softmax_rows(w, n);
        }
        kernels::subset_accumulate(w, kv, selected, out);
    }
}
