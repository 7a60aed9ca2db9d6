//! LM-Infinite / StreamingLLM-style local attention (Han et al. 2023, arXiv 2308.16137;
//! Xiao et al. 2023, arXiv 2309.17453), SPEC section 3: the first `sinks` positions and
//! the most recent ones, `k` in all, with the softmax renormalised over them.

use crate::cache::KvView;
use crate::dense::check_shapes;
use crate::kernels::{self, multiversion, with_scratch, Scratch};
use crate::method::{AttentionMethod, HeadState, Trace};
use crate::subset::attend_subset_one_pass;
use crate::transfer::Budget;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LmInfinite {
    /// Positions attended in total, sinks and current token included.
    pub k: usize,
    /// Leading "attention sink" positions always attended, `0..k` so that the window
    /// still holds the current token.
    pub sinks: usize,
}

impl LmInfinite {
    pub fn budget(&self) -> Budget {
        Budget::LmInfinite { k: self.k }
    }

    /// The attended positions, ascending: all of them when `k >= S`.
    pub fn positions(&self, s: usize) -> impl Iterator<Item = usize> {
        let (sinks, recent) = if self.k >= s {
            (s, 0)
        } else {
            let sinks = self.sinks.min(self.k.saturating_sub(1));
            (sinks, self.k - sinks)
        };
        (0..sinks).chain(s - recent..s)
    }
}

impl AttentionMethod for LmInfinite {
    fn describe(&self) -> String {
        format!("lminf:k={},sinks={}", self.k, self.sinks)
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
        let s = kv.len();
        with_scratch(|sc| {
            sc.selected.clear();
            sc.selected.extend(self.positions(s).map(|p| p as u32));
            compute(q, kv, out, sc);
        });
        Trace::record(trace, self.positions(s), &[]);
        self.budget().elements(s, kv.head_dim())
    }
}

multiversion! {
    /// Attention over `sc.selected`, or dense attention when it holds every position.
    fn compute(q: &[f32], kv: &KvView<'_>, out: &mut [f32], sc: &mut Scratch) {
        if sc.selected.len() == kv.len() {
            kernels::dense(q, kv, out, sc);
        } else {
            let Scratch { qs, weights, selected, .. } = sc;
            attend_subset_one_pass(q, kv, selected, out, qs, weights);
        }
    }
}
