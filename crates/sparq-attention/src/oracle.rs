//! Oracle top-k, SPEC section 3: the `k` positions with the largest exact scores,
//! renormalised. An upper bound for any top-k selection; its ranking is not counted as
//! transfer (see `transfer::oracle_elements`).

use crate::cache::KvView;
use crate::dense::check_shapes;
use crate::exact_topk::{self, Kept};
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
        exact_topk::attend(self.k, Kept::Renormalised, q, kv, out, trace);
        self.budget().elements(kv.len(), kv.head_dim())
    }
}
