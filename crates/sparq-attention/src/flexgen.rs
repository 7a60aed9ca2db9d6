//! FlexGen-style sparse attention (Sheng et al. 2023, arXiv 2303.06865), SPEC section 3:
//! the exact softmax over every position, of which only the `k` largest weights are
//! applied to the values, without renormalising.

use crate::cache::KvView;
use crate::dense::check_shapes;
use crate::kernels::{self, multiversion, slots, top_k, with_scratch, Scratch};
use crate::method::{AttentionMethod, HeadState, Trace};
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
        let g = q.len() / d;
        if k >= s {
            // All weights kept: a full softmax is dense attention.
            kernels::dense(q, kv, out, sc);
            sc.selected.clear();
            sc.selected.extend(0..s as u32);
            return;
        }
        let Scratch { qs, logits, rank, weights, selected, top, .. } = sc;
        let qs = kernels::scaled_query(q, d, qs);
        let w = slots(logits, g * s);
        kernels::all_logits(qs, kv, w);
        kernels::softmax_rows(w, s);
        // GQA: one selection for the group, by the sum of its heads' weights.
        let ranking: &[f32] = if g == 1 {
            w
        } else {
            let rk = slots(rank, s);
            rk.fill(0.0);
            for wh in w.chunks_exact(s) {
                for (a, &x) in rk.iter_mut().zip(wh) {
                    *a += x;
                }
            }
            rk
        };
        top_k(ranking, k, top, selected);
        // The kept weights, unnormalised, gathered for the value pass.
        let n = selected.len();
        let kept = slots(weights, g * n);
        for h in 0..g {
            for (j, &p) in selected.iter().enumerate() {
                kept[h * n + j] = w[h * s + p as usize];
            }
        }
        kernels::subset_accumulate(kept, kv, selected, out);
    }
}
