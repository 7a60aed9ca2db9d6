//! Renormalised exact attention of a head group over a selection of positions, in one
//! pass over the selected key and value rows (SparQ's step 5, LM-Infinite).
//!
//! The rows are scattered through the cache, so the pass is bound by how many cache
//! lines are in flight, not by arithmetic. Two things keep it near that bound:
//! - each value row is read while its line is still in L1, right after its key row,
//!   instead of in a second pass once the softmax is known; the softmax is kept online
//!   (Milakov and Gimelshein, 2018): every chunk of [`CHUNK`] rows updates each head's
//!   running maximum, rescales its accumulator and sum when the maximum grows, and adds
//!   its weighted values;
//! - the per-row work is a few instructions: with AVX-512 and `d` a multiple of 16, a
//!   key row's dot product stays in one register and is reduced by a fixed tree. Fewer
//!   instructions per row let the processor run further ahead to the next rows' loads.
//!
//! A whole SparQ step at 1/8 on one thread, caches evicted, median of 24 (with alpha's
//! `exp` vectorised in the same change): 137 -> 131 µs a head at S = 16,384, d = 64,
//! and 573 -> 509 µs at S = 65,536; 239 -> 224 µs at S = 16,384, d = 128.
//!
//! The AVX-512 and the portable row kernels add in the same order and never fuse a
//! multiply with an add, so every build gives bit-identical results.

use crate::cache::KvView;
use crate::kernels::{exp, exp_in_place, max, prefetch_ahead, scaled_query, slots, EXP_LANES};

/// Rows per chunk of the online softmax: one register of logits per head.
const CHUNK: usize = EXP_LANES;

/// Lanes of the row kernels' accumulators (one AVX-512 register).
const LANES: usize = 16;

/// `out_h = sum_j softmax_j(qs_h . K[sel_j] / sqrt(d)) V[sel_j]` for the `g` heads of
/// `q` (`g x d`), over the positions `sel`; `chunk_buf` is scratch.
#[inline(always)]
pub(crate) fn attend_subset_one_pass(
    q: &[f32],
    kv: &KvView<'_>,
    sel: &[u32],
    out: &mut [f32],
    qs_buf: &mut Vec<f32>,
    chunk_buf: &mut Vec<f32>,
) {
    let d = kv.head_dim();
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(LANES)
        && crate::kernels::simd_enabled()
        && std::is_x86_feature_detected!("avx512f")
    {
        // SAFETY: the CPU has AVX-512F, and `d` is a multiple of 16 as the kernel needs.
        unsafe { one_pass_avx512(q, kv, sel, out, qs_buf, chunk_buf) };
        return;
    }
    one_pass::<Portable>(q, kv, sel, out, qs_buf, chunk_buf);
}

/// # Safety
/// The CPU must have AVX-512F and `kv.head_dim()` must be a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2")]
unsafe fn one_pass_avx512(
    q: &[f32],
    kv: &KvView<'_>,
    sel: &[u32],
    out: &mut [f32],
    qs_buf: &mut Vec<f32>,
    chunk_buf: &mut Vec<f32>,
) {
    one_pass::<Avx512>(q, kv, sel, out, qs_buf, chunk_buf);
}

/// A key row's dot product and a value row's weighted add, the per-row work.
trait RowKernel {
    /// `q . k` summed as [`Portable::dot`] does.
    fn dot(q: &[f32], k: &[f32]) -> f32;
    /// `out += w * v`, each element rounded after the product and after the sum.
    fn axpy(out: &mut [f32], w: f32, v: &[f32]);
}

#[inline(always)]
fn one_pass<R: RowKernel>(
    q: &[f32],
    kv: &KvView<'_>,
    sel: &[u32],
    out: &mut [f32],
    qs_buf: &mut Vec<f32>,
    chunk_buf: &mut Vec<f32>,
) {
    let d = kv.head_dim();
    let g = q.len() / d;
    let qs = scaled_query(q, d, qs_buf);
    // Per head: the chunk's logits (then weights), the running maximum and sum.
    let (w, running) = slots(chunk_buf, g * (CHUNK + 2)).split_at_mut(g * CHUNK);
    let (m, sum) = running.split_at_mut(g);
    m.fill(f32::NEG_INFINITY);
    sum.fill(0.0);
    out.fill(0.0);
    for (c, chunk) in sel.chunks(CHUNK).enumerate() {
        let n = chunk.len();
        for (jj, &p) in chunk.iter().enumerate() {
            prefetch_ahead(kv, sel, c * CHUNK + jj);
            let k = kv.key(p as usize);
            for h in 0..g {
                w[h * CHUNK + jj] = R::dot(&qs[h * d..(h + 1) * d], k);
            }
        }
        for h in 0..g {
            let wh = &mut w[h * CHUNK..h * CHUNK + n];
            let cm = max(wh);
            if cm > m[h] {
                // Nothing is accumulated before the first chunk, whose scale is moot.
                let scale = if m[h] == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp(m[h] - cm)
                };
                for y in &mut out[h * d..(h + 1) * d] {
                    *y *= scale;
                }
                sum[h] *= scale;
                m[h] = cm;
            }
            sum[h] += exp_in_place(wh, m[h]);
        }
        for (jj, &p) in chunk.iter().enumerate() {
            let v = kv.value(p as usize);
            for h in 0..g {
                R::axpy(&mut out[h * d..(h + 1) * d], w[h * CHUNK + jj], v);
            }
        }
    }
    for h in 0..g {
        let inv = 1.0 / sum[h];
        for y in &mut out[h * d..(h + 1) * d] {
            *y *= inv;
        }
    }
}

/// Plain loops, for any `d`.
struct Portable;

impl RowKernel for Portable {
    /// Sixteen running sums over the full chunks of 16, added by halves (8, 4, 2, 1),
    /// then the remainder one element at a time.
    #[inline(always)]
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let (cq, ck) = (q.chunks_exact(LANES), k.chunks_exact(LANES));
        let (rq, rk) = (cq.remainder(), ck.remainder());
        for (x, y) in cq.zip(ck) {
            for l in 0..LANES {
                acc[l] += x[l] * y[l];
            }
        }
        let mut sum = halves(acc);
        for (x, y) in rq.iter().zip(rk) {
            sum += x * y;
        }
        sum
    }

    #[inline(always)]
    fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
        for (y, x) in out.iter_mut().zip(v) {
            *y += w * x;
        }
    }
}

/// The sum of 16 lanes by halves: the order of an AVX-512 register's reduction.
#[inline(always)]
fn halves(a: [f32; LANES]) -> f32 {
    let mut b = [0.0f32; 8];
    for l in 0..8 {
        b[l] = a[l] + a[l + 8];
    }
    let c = [b[0] + b[4], b[1] + b[5], b[2] + b[6], b[3] + b[7]];
    let e = [c[0] + c[2], c[1] + c[3]];
    e[0] + e[1]
}

/// AVX-512 registers; `d` a multiple of 16.
#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl RowKernel for Avx512 {
    #[inline(always)]
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        debug_assert!(q.len() == k.len() && q.len().is_multiple_of(LANES));
        // SAFETY: only reached from `one_pass_avx512` (AVX-512F present), and every
        // load reads 16 floats at `i + 16 <= len` of slices of equal length.
        unsafe {
            let mut acc = _mm512_setzero_ps();
            let mut i = 0;
            while i < q.len() {
                let prod = _mm512_mul_ps(
                    _mm512_loadu_ps(q.as_ptr().add(i)),
                    _mm512_loadu_ps(k.as_ptr().add(i)),
                );
                acc = _mm512_add_ps(acc, prod);
                i += LANES;
            }
            // By halves, as `halves` adds: 8 + 8, 4 + 4, 2 + 2, 1 + 1.
            let bits = _mm512_castps_pd(acc);
            let b = _mm256_add_ps(
                _mm512_castps512_ps256(acc),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(bits)),
            );
            let c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps::<1>(b));
            let e = _mm_add_ps(c, _mm_movehl_ps(c, c));
            _mm_cvtss_f32(_mm_add_ss(e, _mm_movehdup_ps(e)))
        }
    }

    #[inline(always)]
    fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
        use std::arch::x86_64::*;
        debug_assert!(out.len() == v.len() && v.len().is_multiple_of(LANES));
        // SAFETY: as in `dot`; `out` and `v` have equal lengths, a multiple of 16.
        unsafe {
            let wv = _mm512_set1_ps(w);
            let mut i = 0;
            while i < v.len() {
                let y = out.as_mut_ptr().add(i);
                let prod = _mm512_mul_ps(wv, _mm512_loadu_ps(v.as_ptr().add(i)));
                _mm512_storeu_ps(y, _mm512_add_ps(_mm512_loadu_ps(y), prod));
                i += LANES;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::HeadKv;

    /// Softmax attention over `sel` in f64, two passes, for comparison.
    fn reference(q: &[f32], kv: &KvView<'_>, sel: &[u32]) -> Vec<f64> {
        let d = kv.head_dim();
        let mut out = Vec::new();
        for qh in q.chunks_exact(d) {
            let logits: Vec<f64> = sel
                .iter()
                .map(|&p| {
                    let k = kv.key(p as usize);
                    qh.iter()
                        .zip(k)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
            let total: f64 = w.iter().sum();
            for i in 0..d {
                let y: f64 = sel
                    .iter()
                    .zip(&w)
                    .map(|(&p, wj)| wj * f64::from(kv.value(p as usize)[i]))
                    .sum();
                out.push(y / total);
            }
        }
        out
    }

    #[test]
    fn matches_two_pass_softmax_when_the_maximum_grows_late() {
        for (d, g, n) in [(64, 1, 200), (64, 3, 37), (20, 2, 50), (16, 1, 1)] {
            let len = 300;
            let mut prompt = HeadKv::with_capacity(d, len);
            for p in 0..len {
                // Keys grow with the position, so later chunks raise each head's maximum
                // and the accumulated sums must be rescaled.
                let key: Vec<f32> = (0..d)
                    .map(|i| 0.02 * p as f32 + ((i * 7 + p) % 5) as f32 * 0.1)
                    .collect();
                let value: Vec<f32> = (0..d).map(|i| ((i + 3 * p) % 11) as f32 - 5.0).collect();
                prompt.push(&key, &value);
            }
            let generated = HeadKv::with_capacity(d, 1);
            let kv = KvView::new(&prompt, &generated);
            let sel: Vec<u32> = (0..n as u32)
                .map(|j| (j * 7 + 3) % len as u32)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let q: Vec<f32> = (0..g * d).map(|i| ((i % 9) as f32 - 3.0) * 0.3).collect();
            let mut out = vec![0.0; g * d];
            attend_subset_one_pass(&q, &kv, &sel, &mut out, &mut Vec::new(), &mut Vec::new());
            let want = reference(&q, &kv, &sel);
            for (i, (&got, &w)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(got) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "d={d} g={g} n={n} [{i}]: {got} vs {w}"
                );
            }
            // The portable build gives the same bits as whichever build ran above.
            let mut portable = vec![0.0; g * d];
            one_pass::<Portable>(
                &q,
                &kv,
                &sel,
                &mut portable,
                &mut Vec::new(),
                &mut Vec::new(),
            );
            assert_eq!(out, portable, "d={d} g={g} n={n}");
        }
    }
}
