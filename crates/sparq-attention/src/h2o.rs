//! H2O, heavy-hitter eviction (Zhang et al. 2023, arXiv 2306.14048), SPEC section 3:
//! every position carries the attention mass it has received; each step keeps the
//! `k + 1` heaviest (the local window always), evicts the rest for good, and attends
//! densely over what is kept.

use crate::cache::KvView;
use crate::dense::check_shapes;
use crate::kernels::{self, multiversion, slots, with_scratch, Scratch};
use crate::method::{AttentionMethod, HeadState, Trace};
use crate::topk::top_k;
use crate::transfer::Budget;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct H2o {
    /// Positions kept besides the current token (`k + 1` in total).
    pub k: usize,
    /// Most recent positions before the current token that are never evicted, `0..=k`.
    pub l: usize,
}

impl H2o {
    pub fn budget(&self) -> Budget {
        Budget::H2o { k: self.k }
    }
}

impl AttentionMethod for H2o {
    fn describe(&self) -> String {
        format!("h2o:k={},l={}", self.k, self.l)
    }

    fn needs_prompt_mass(&self) -> bool {
        true
    }

    /// Without a prompt mass (a runner that did not compute it) every prompt position
    /// starts at zero, so the first eviction falls back to keeping the earliest ones.
    fn init_state(&self, prompt_len: usize, prompt_mass: Option<&[f32]>) -> HeadState {
        let mass = match prompt_mass {
            Some(m) => {
                assert_eq!(
                    m.len(),
                    prompt_len,
                    "prompt mass has {} entries for {prompt_len} positions",
                    m.len()
                );
                m.to_vec()
            }
            None => vec![0.0; prompt_len],
        };
        HeadState {
            mass,
            kept: vec![true; prompt_len],
        }
    }

    fn attend_traced(
        &self,
        state: &mut HeadState,
        q: &[f32],
        kv: &KvView<'_>,
        out: &mut [f32],
        trace: Option<&mut Trace>,
    ) -> u64 {
        check_shapes(q, kv, out);
        with_scratch(|sc| {
            step(self, state, q, kv, out, sc);
            Trace::record(trace, sc.selected.iter().map(|&p| p as usize), &[]);
        });
        self.budget().elements(kv.len(), kv.head_dim())
    }
}

multiversion! {
    /// Brings `state` up to the cache's positions (new ones arrive with no mass), evicts
    /// down to `k + 1` kept positions, attends over them (left in `sc.selected`) and adds
    /// the weights, averaged over the group's heads, to their mass.
    fn step(
        cfg: &H2o,
        state: &mut HeadState,
        q: &[f32],
        kv: &KvView<'_>,
        out: &mut [f32],
        sc: &mut Scratch,
    ) {
        let (d, s) = (kv.head_dim(), kv.len());
        let g = q.len() / d;
        evict(cfg, state, s, sc);
        let Scratch { qs, weights, selected, .. } = sc;
        selected.clear();
        selected.extend((0..s as u32).filter(|&p| state.kept[p as usize]));
        kernels::attend_subset(q, kv, selected, out, qs, weights);
        let n = selected.len();
        let inv_g = 1.0 / g as f32;
        for (j, &p) in selected.iter().enumerate() {
            let w: f32 = (0..g).map(|h| weights[h * n + j]).sum();
            state.mass[p as usize] += w * inv_g;
        }
    }
}

#[inline(always)]
fn evict(cfg: &H2o, state: &mut HeadState, s: usize, sc: &mut Scratch) {
    assert!(
        state.mass.len() <= s && state.kept.len() <= s,
        "H2O state covers {} positions but the cache has only {s}",
        state.mass.len().max(state.kept.len())
    );
    state.mass.resize(s, 0.0);
    state.kept.resize(s, true);
    let budget = cfg.k + 1;
    let kept = state.kept.iter().filter(|&&k| k).count();
    if kept <= budget {
        return;
    }
    // The window cannot have been evicted: its positions were in the window at every
    // earlier step too.
    let window_start = s - (cfg.l.min(cfg.k) + 1);
    let Scratch {
        rank,
        candidates,
        selected,
        top,
        ..
    } = sc;
    candidates.clear();
    candidates.extend((0..window_start as u32).filter(|&p| state.kept[p as usize]));
    let masses = slots(rank, candidates.len());
    for (m, &p) in masses.iter_mut().zip(candidates.iter()) {
        *m = state.mass[p as usize];
    }
    let keep = budget - (s - window_start);
    top_k(masses, keep, top, selected);
    // `selected` indexes `candidates`, both ascending: walk them together.
    let mut next = selected.iter().peekable();
    for (j, &p) in candidates.iter().enumerate() {
        if next.peek() == Some(&&(j as u32)) {
            next.next();
        } else {
            state.kept[p as usize] = false;
        }
    }
}
