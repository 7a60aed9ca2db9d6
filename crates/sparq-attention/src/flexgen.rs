//! FlexGen-style sparse attention (Sheng et al. 2023, arXiv 2303.06865), SPEC section 3:
//! the exact softmax over every position, of which only the `k` largest weights are
//! applied to the values, without renormalising.

use crate::cache::KvView;
use crate::dense::check_shapes;
use crate::kernels::{self, multiversion, slots, with_scratch, Scratch};
use crate::method::{AttentionMethod, HeadState, Trace};
use crate::topk::top_k;
use crate::transfer::Budget;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlexGen {
    /// Weights kept (value rows read).
    pub k: usize,
}

impl FlexGen {
    pub fn budget(&self) -> Budget {
        Budget::FlexGen { k: self.k }
    }
}

impl AttentionMethod for FlexGen {
    fn describe(&self) -> String {
        format!("flexgen:k={}", self.k)
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
        with_scratch(|sc| {
            compute(self.k, q, kv, out, sc);
            Trace::record(trace, sc.selected.iter().map(|&p| p as usize), &[]);
        });
        self.budget().elements(kv.len(), kv.head_dim())
    }
}

multiversion! {
    /// The step, leaving the kept positions in `sc.selected`.
    fn compute(k: usize, q: &[f32], kv: &KvView<'_>, out: &mut [f32], sc: &mut Scratch) {
        let (d, s) = (kv.head_dim(), kv.len());
        if k >= s {
            // All weights kept: a full softmax is dense attention.
            kernels::dense_all_selected(q, kv, out, sc);
            return;
        }
        let Scratch { qs, logits, rank, weights, selected, top, .. } = sc;
        let qs = kernels::scaled_query(q, d, qs);
        let w = slots(logits, q.len() / d * s);
        kernels::all_logits(qs, kv, w);
        kernels::softmax_rows(w, s);
        // GQA: one selection for the group, by the sum of its heads' weights.
        top_k(kernels::group_ranking(w, s, rank), k, top, selected);
        // The kept weights, unnormalised, gathered for the value pass.
        kernels::gather_columns(w, s, selected, weights);
        let kept = &weights[..w.len() / s * selected.len()];
        kernels::subset_accumulate(kept, kv, selected, out);
    }
}
