//! FlexGen-style sparse attention (Sheng et al. 2023, arXiv 2303.06865), SPEC section 3:
//! the exact softmax over every position, of which only the `k` largest weights are
//! applied to the values, without renormalising.

use crate::cache::KvView;
use crate::dense::check_shapes;
use crate::exact_topk::{self, Kept};
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
        exact_topk::attend(self.k, Kept::Unnormalised, q, kv, out, trace);
        self.budget().elements(kv.len(), kv.head_dim())
    }
}
