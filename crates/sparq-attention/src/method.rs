//! The attention-method interface: one call per decode step, layer and KV head group.

use crate::cache::KvView;

/// The facts about a model that methods need to configure themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    pub head_dim: usize,
    /// Query heads per KV head (1 for multi-head attention).
    pub group: usize,
    pub kv_heads: usize,
    pub layers: usize,
}

impl ModelShape {
    pub fn is_gqa(&self) -> bool {
        self.group > 1
    }
}

/// Per-(branch, layer, KV head) state a method carries from one decode step to the
/// next. Only H2O uses it: the accumulated attention mass of every position, and which
/// positions are still in the cache.
#[derive(Clone, Debug, Default)]
pub struct HeadState {
    /// Accumulated attention weight per logical position (averaged over the group).
    pub mass: Vec<f32>,
    /// `false` for positions evicted for good.
    pub kept: Vec<bool>,
}

/// A configured attention method. `attend` computes, for the `g` query heads of one
/// KV head group (`q` is `g x d`, heads contiguous), the attention output into `out`
/// (`g x d`) over the positions in `kv` (the current token last, already appended),
/// and returns the number of elements moved (SPEC section 4).
pub trait AttentionMethod: Send + Sync + std::fmt::Debug {
    /// The canonical spec string, e.g. `sparq:r=16,k=128,l=32,realloc=false`.
    fn describe(&self) -> String;

    /// Whether this is plain dense attention, which the runner may compute for several
    /// branches in one pass over the shared prompt cache
    /// ([`crate::dense::attend_shared_prompt`]).
    fn is_dense(&self) -> bool {
        false
    }

    /// Whether `init_state` needs the prompt's attention mass (H2O).
    fn needs_prompt_mass(&self) -> bool {
        false
    }

    /// State for one (branch, layer, KV head) after a prefill of `prompt_len`
    /// positions; `prompt_mass` is the attention weight each prompt position received
    /// from all prompt queries (averaged over the group's heads) when requested.
    fn init_state(&self, _prompt_len: usize, _prompt_mass: Option<&[f32]>) -> HeadState {
        HeadState::default()
    }

    fn attend(&self, state: &mut HeadState, q: &[f32], kv: &KvView<'_>, out: &mut [f32]) -> u64 {
        self.attend_traced(state, q, kv, out, None)
    }

    /// `attend`, also reporting in `trace` (when given) what the step selected, so
    /// tests and diagnostics can check a method without re-deriving its internals.
    fn attend_traced(
        &self,
        state: &mut HeadState,
        q: &[f32],
        kv: &KvView<'_>,
        out: &mut [f32],
        trace: Option<&mut Trace>,
    ) -> u64;
}

/// What one `attend_traced` call selected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// Positions whose keys and values entered the exact attention, ascending. One set
    /// for the whole group: GQA heads share their selection. Dense lists every position.
    pub selected: Vec<usize>,
    /// SparQ's coverage `alpha` per query head (1 when every position is selected);
    /// empty for the other methods.
    pub alpha: Vec<f32>,
}

impl Trace {
    pub(crate) fn record(
        trace: Option<&mut Trace>,
        selected: impl IntoIterator<Item = usize>,
        alpha: &[f32],
    ) {
        if let Some(t) = trace {
            t.selected.clear();
            t.selected.extend(selected);
            t.alpha.clear();
            t.alpha.extend_from_slice(alpha);
        }
    }
}
