//! Oracle top-k, SPEC section 3: the `k` positions with the largest exact scores,
//! renormalised. An upper bound for any top-k selection; its ranking is not counted as
//! transfer (see `transfer::oracle_elements`).

use crate::cache::KvView;
use crate::dense::check_shapes;
use crate::kernels::{self, multiversion, slots, with_scratch, Scratch};
use crate::method::{AttentionMethod, HeadState, Trace};
use crate::topk::top_k;
use crate::transfer::Budget;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Oracle {
    /// Positions attended.
    pub k: usize,
}

impl Oracle {
    pub fn budget(&self) -> Budget {
        Budget::Oracle { k: self.k }
    }
}

impl AttentionMethod for Oracle {
    fn describe(&self) -> String {
        format!("oracle:k={}", self.k)
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
    /// The step, leaving the selection in `sc.selected`.
    fn compute(k: usize, q: &[f32], kv: &KvView<'_>, out: &mut [f32], sc: &mut Scratch) {
        let (d, s) = (kv.head_dim(), kv.len());
        if k >= s {
            kernels::dense_all_selected(q, kv, out, sc);
            return;
        }
        let Scratch { qs, logits, rank, weights, selected, top, .. } = sc;
        let qs = kernels::scaled_query(q, d, qs);
        let z = slots(logits, q.len() / d * s);
        kernels::all_logits(qs, kv, z);
        // GQA: one selection for the group, by the sum of its heads' scores.
        top_k(kernels::group_ranking(z, s, rank), k, top, selected);
        let n = selected.len();
        kernels::gather_columns(z, s, selected, weights);
        let w = &mut weights[..z.len() / s * n];
        kernels::softmax_rows(w, n);
        kernels::subset_accumulate(w, kv, selected, out);
    }
}
