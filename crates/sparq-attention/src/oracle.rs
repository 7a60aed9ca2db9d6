//! Oracle top-k, SPEC section 3: the `k` positions with the largest exact scores,
//! renormalised. An upper bound for any top-k selection; its ranking is not counted as
//! transfer (see `transfer::oracle_elements`).

use crate::cache::KvView;
use crate::dense::check_shapes;
use crate::kernels::{self, multiversion, slots, top_k, with_scratch, Scratch};
use crate::method::{AttentionMethod, HeadState, Trace};
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
        let g = q.len() / d;
        if k >= s {
            kernels::dense(q, kv, out, sc);
            sc.selected.clear();
            sc.selected.extend(0..s as u32);
            return;
        }
        let Scratch { qs, logits, rank, weights, selected, top, .. } = sc;
        let qs = kernels::scaled_query(q, d, qs);
        let z = slots(logits, g * s);
        kernels::all_logits(qs, kv, z);
        // GQA: one selection for the group, by the sum of its heads' scores.
        let ranking: &[f32] = if g == 1 {
            z
        } else {
            let rk = slots(rank, s);
            rk.fill(0.0);
            for zh in z.chunks_exact(s) {
                for (a, &x) in rk.iter_mut().zip(zh) {
                    *a += x;
                }
            }
            rk
        };
        top_k(ranking, k, top, selected);
        let n = selected.len();
        let w = slots(weights, g * n);
        for h in 0..g {
            for (j, &p) in selected.iter().enumerate() {
                w[h * n + j] = z[h * s + p as usize];
            }
        }
        kernels::softmax_rows(w, n);
        kernels::subset_accumulate(w, kv, selected, out);
    }
}
