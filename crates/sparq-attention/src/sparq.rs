//! SparQ Attention (Ribar et al. 2024, arXiv 2312.04985), SPEC section 2: approximate
//! scores from the `r` largest query components, exact attention over the `k + 1` best
//! positions, and mean-value reallocation of the attention the selection missed.

use crate::cache::KvView;
use crate::dense::check_shapes;
use crate::kernels::{self, multiversion, slots, with_scratch, Scratch};
use crate::method::{AttentionMethod, HeadState, Trace};
use crate::subset::attend_subset_one_pass;
use crate::topk::top_k;
use crate::transfer::Budget;

/// How a GQA group ranks positions for its shared selection (SPEC section 2, step 3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Rank {
    /// Sum over the group's heads of the approximate logits (the research code).
    #[default]
    Logits,
    /// Sum over the group's heads of the approximate probabilities `s_hat`.
    Probs,
}

impl Rank {
    pub fn as_str(&self) -> &'static str {
        match self {
            Rank::Logits => "logits",
            Rank::Probs => "probs",
        }
    }
}

/// SparQ with every setting resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sparq {
    /// Query components used for the approximate scores, `1..=d`.
    pub r: usize,
    /// Positions selected besides the current token (`k + 1` in total).
    pub k: usize,
    /// Positions before the current token always selected, `0..=k`.
    pub l: usize,
    /// Mean-value reallocation (step 6).
    pub realloc: bool,
    pub rank: Rank,
}

/// What one SparQ step did, from [`sparq_step`].
#[derive(Clone, Debug, PartialEq)]
pub struct SparqStep {
    /// Coverage `alpha` per query head: the approximate probability mass selected.
    pub alpha: Vec<f32>,
    /// Selected positions, ascending, shared by the group.
    pub selected: Vec<usize>,
    /// Elements moved (SPEC section 4).
    pub elements: u64,
}

/// One SparQ decode step for one KV head group: `q` is `g x d` (the group's query heads
/// contiguous), `out` receives `g x d`. Pure: reads only its arguments.
pub fn sparq_step(cfg: &Sparq, q: &[f32], kv: &KvView<'_>, out: &mut [f32]) -> SparqStep {
    check_shapes(q, kv, out);
    let mut alpha = vec![1.0; q.len() / kv.head_dim()];
    let selected = with_scratch(|sc| {
        run(cfg, q, kv, out, sc, Some(&mut alpha));
        sc.selected.iter().map(|&p| p as usize).collect()
    });
    SparqStep {
        alpha,
        selected,
        elements: cfg.budget().elements(kv.len(), kv.head_dim()),
    }
}

impl Sparq {
    pub fn budget(&self) -> Budget {
        Budget::Sparq {
            r: self.r,
            k: self.k,
        }
    }
}

multiversion! {
    /// The step, leaving the selection in `sc.selected`; `alpha` (one per head) is
    /// computed only when asked for or needed by reallocation, since it costs a pass
    /// of `exp` over all `S` approximate logits per head.
    fn run(
        cfg: &Sparq,
        q: &[f32],
        kv: &KvView<'_>,
        out: &mut [f32],
        sc: &mut Scratch,
        alpha: Option<&mut [f32]>,
    ) {
        let (d, s) = (kv.head_dim(), kv.len());
        let g = q.len() / d;
        if cfg.k + 1 >= s {
            // Everything selected: alpha = 1 and the result is dense attention.
            kernels::dense_all_selected(q, kv, out, sc);
            if let Some(a) = alpha {
                a.fill(1.0);
            }
            return;
        }
        let Scratch { qs, logits, rank, weights, selected, candidates, top, .. } = sc;

        // 1. The r largest components of |q|, summed over the group's heads.
        let absq = slots(weights, d);
        absq.fill(0.0);
        for qh in q.chunks_exact(d) {
            for (a, x) in absq.iter_mut().zip(qh) {
                *a += x.abs();
            }
        }
        let r = cfg.r.clamp(1, d);
        top_k(absq, r, top, candidates);
        let i1: &[u32] = candidates;

        // 2. Per head, q[i1] / tau with tau = sqrt(d * |q[i1]|_1 / |q|_1), then the
        //    approximate logits from r rows of the transposed keys.
        let coef = slots(qs, g * r);
        for (h, qh) in q.chunks_exact(d).enumerate() {
            let total: f32 = qh.iter().map(|x| x.abs()).sum();
            let part: f32 = i1.iter().map(|&i| qh[i as usize].abs()).sum();
            // A head with q[i1] = 0 has all-zero approximate logits whatever tau is.
            let inv_tau = if part > 0.0 { 1.0 / (d as f32 * part / total).sqrt() } else { 0.0 };
            for (c, &i) in coef[h * r..(h + 1) * r].iter_mut().zip(i1) {
                *c = qh[i as usize] * inv_tau;
            }
        }
        // The softmax normalisers of s_hat, when anything needs probabilities.
        let need_alpha = alpha.is_some() || cfg.realloc;
        // A group ranked by summed logits gets the sum in one pass from summed
        // coefficients, sum_h coef_h . K[p, i1] = (sum_h coef_h) . K[p, i1], instead of
        // g passes and a pass adding them up; the heads' own logits are computed only
        // for alpha. Traced or not, the ranking is the same.
        let summed = g > 1 && cfg.rank == Rank::Logits;
        let z = slots(logits, g * s);
        if !summed || need_alpha {
            approx_logits(kv, i1, coef, g, z);
        }
        // Plain loops, not iterator closures, here and below: a closure the compiler
        // does not inline is compiled without AVX2 and runs `exp` at half the width.
        let mut norm = Vec::new();
        if need_alpha || cfg.rank == Rank::Probs {
            for zh in z.chunks_exact(s) {
                let m = kernels::max(zh);
                norm.push((m, 1.0 / kernels::exp_sum(zh, m)));
            }
        }
        // 3. Local window (the current token and the l before it), then the best of
        //    the rest until k + 1 positions are selected.
        let l = cfg.l.min(cfg.k);
        let n_cand = s - (l + 1);
        let ranking: &[f32] = match cfg.rank {
            Rank::Logits if g == 1 => &z[..n_cand],
            Rank::Logits => {
                let coef_sum = slots(weights, r);
                coef_sum.fill(0.0);
                for ch in coef.chunks_exact(r) {
                    for (a, &c) in coef_sum.iter_mut().zip(ch) {
                        *a += c;
                    }
                }
                let rk = slots(rank, s);
                approx_logits(kv, i1, coef_sum, 1, rk);
                &rk[..n_cand]
            }
            Rank::Probs => {
                let rk = slots(rank, n_cand);
                rk.fill(0.0);
                for (h, zh) in z.chunks_exact(s).enumerate() {
                    let (m, inv) = norm[h];
                    for (a, &x) in rk.iter_mut().zip(zh) {
                        *a += kernels::exp(x - m) * inv;
                    }
                }
                rk
            }
        };
        top_k(ranking, cfg.k - l, top, selected);
        selected.extend(n_cand as u32..s as u32);

        // 4. alpha per head: the approximate probability of the selection.
        let mut alpha_buf = Vec::new();
        let alpha: Option<&mut [f32]> = match alpha {
            Some(a) => Some(a),
            None if cfg.realloc => {
                alpha_buf.resize(g, 0.0);
                Some(&mut alpha_buf)
            }
            None => None,
        };
        if let Some(a) = alpha {
            // The selected logits are gathered first so that `exp` runs vectorised.
            let picked = slots(weights, selected.len());
            for (h, zh) in z.chunks_exact(s).enumerate() {
                let (m, inv) = norm[h];
                for (x, &p) in picked.iter_mut().zip(selected.iter()) {
                    *x = zh[p as usize];
                }
                a[h] = (kernels::exp_sum(picked, m) * inv).min(1.0);
            }
            // 5. Exact attention over the selection, then 6. mean-value reallocation.
            attend_subset_one_pass(q, kv, selected, out, qs, weights);
            if cfg.realloc {
                let mut v_mean = vec![0.0; d];
                kv.value_mean(&mut v_mean);
                for (o, &ah) in out.chunks_exact_mut(d).zip(a.iter()) {
                    for (y, &v) in o.iter_mut().zip(&v_mean) {
                        *y = ah * *y + (1.0 - ah) * v;
                    }
                }
            }
        } else {
            attend_subset_one_pass(q, kv, selected, out, qs, weights);
        }
    }
}

/// `z[h * S + p] = sum_j coef[h * r + j] * K[p, i1[j]]`, reading the `r` rows of the
/// transposed keys block by block so each block is fetched once for the whole group.
#[inline(always)]
fn approx_logits(kv: &KvView<'_>, i1: &[u32], coef: &[f32], g: usize, z: &mut [f32]) {
    let s = kv.len();
    for (off, seg) in kv.segments() {
        kernels::column_logits(seg, i1, coef, g, &mut z[off..], s);
    }
}

impl AttentionMethod for Sparq {
    fn describe(&self) -> String {
        let mut s = format!(
            "sparq:r={},k={},l={},realloc={}",
            self.r, self.k, self.l, self.realloc
        );
        if self.rank != Rank::Logits {
            s.push_str(",rank=");
            s.push_str(self.rank.as_str());
        }
        s
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
        match trace {
            Some(t) => {
                let step = sparq_step(self, q, kv, out);
                t.selected = step.selected;
                t.alpha = step.alpha;
            }
            None => with_scratch(|sc| run(self, q, kv, out, sc, None)),
        }
        self.budget().elements(kv.len(), kv.head_dim())
    }
}
