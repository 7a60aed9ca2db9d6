//! CPU kernels for the decode path, where a step multiplies a handful of rows (one per
//! branch) by every weight matrix. Reading the weights is the whole cost, so each
//! weight row is read once and used for all branches, and rows are split across
//! threads. Everything is plain `f32`/`bf16` slices.

use half::bf16;
use rayon::prelude::*;

/// Fewest weight rows handed to one rayon task: enough to amortise scheduling.
const MIN_ROWS_PER_TASK: usize = 32;

/// Rows per task so that the tasks come in a multiple of the thread count, all of one
/// size: with a fixed task size, 576 rows in tasks of 64 left one of two threads idle
/// for a ninth of every small projection.
fn rows_per_task(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let mut tasks = threads * 4;
    while tasks > threads && n.div_ceil(tasks) < MIN_ROWS_PER_TASK {
        tasks -= threads;
    }
    n.div_ceil(tasks).max(1)
}

/// A weight matrix `[out, in]` (row-major, as in the checkpoints).
#[derive(Clone, Copy)]
pub enum WeightRows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

/// `out[b, o] = sum_i x[b, i] * w[o, i]` for `m` rows of `x` (`m x k`), `w` `n x k`,
/// `out` `m x n`.
pub fn linear(x: &[f32], m: usize, w: WeightRows<'_>, n: usize, out: &mut [f32]) {
    let k = x.len() / m;
    assert_eq!(x.len(), m * k);
    assert_eq!(out.len(), m * n);
    // Work on the output transposed (`n x m`) so that each task owns contiguous rows.
    let mut out_t = vec![0.0f32; n * m];
    let rows_per_task = rows_per_task(n);
    out_t
        .par_chunks_mut(rows_per_task * m)
        .enumerate()
        .for_each(|(task, chunk)| {
            let first = task * rows_per_task;
            for (j, dst) in chunk.chunks_mut(m).enumerate() {
                let o = first + j;
                match w {
                    WeightRows::F32(w) => dot_rows_f32(&w[o * k..(o + 1) * k], x, k, dst),
                    WeightRows::Bf16(w) => dot_rows_bf16(&w[o * k..(o + 1) * k], x, k, dst),
                }
            }
        });
    for o in 0..n {
        for b in 0..m {
            out[b * n + o] = out_t[o * m + b];
        }
    }
}

/// Lanes of independent accumulators: lets the compiler keep a full vector register of
/// partial sums per branch without reassociating floating-point additions itself.
const LANES: usize = 8;

/// `dst[b] = w . x[b]` for every row `b` of `x`.
fn dot_rows_f32(w: &[f32], x: &[f32], k: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features the function is compiled for were just detected.
            unsafe { dot_rows_f32_avx2(w, x, k, dst) };
            return;
        }
    }
    dot_rows_generic(w, x, k, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_f32_avx2(w: &[f32], x: &[f32], k: usize, dst: &mut [f32]) {
    dot_rows_generic(w, x, k, dst)
}

/// Splits the branches into blocks of 8, 4, 2 and 1 so that each chunk of the weight
/// row, once loaded, feeds every branch of the block from registers.
#[inline(always)]
fn dot_rows_generic(w: &[f32], x: &[f32], k: usize, dst: &mut [f32]) {
    dst.iter_mut().for_each(|d| *d = 0.0);
    dot_rows_add(w, x, k, dst);
}

/// `dst[b] += w . x[b][..w.len()]`, where row `b` of `x` starts at `b * stride`.
#[inline(always)]
fn dot_rows_add(w: &[f32], x: &[f32], stride: usize, dst: &mut [f32]) {
    let mut b = 0;
    let m = dst.len();
    while b < m {
        let left = m - b;
        let xs = &x[b * stride..];
        let out = &mut dst[b..];
        b += if left >= 8 {
            dot_block::<8>(w, xs, stride, out);
            8
        } else if left >= 4 {
            dot_block::<4>(w, xs, stride, out);
            4
        } else if left >= 2 {
            dot_block::<2>(w, xs, stride, out);
            2
        } else {
            dot_block::<1>(w, xs, stride, out);
            1
        };
    }
}

/// `dst[b] += w . x[b]` for a block of `M` branches. Each branch keeps `U` sets of
/// `LANES` partial sums, so that one or two branches still have four or two independent
/// chains of fused multiply-adds in flight instead of waiting on one chain's latency.
#[inline(always)]
fn dot_block<const M: usize>(w: &[f32], x: &[f32], stride: usize, dst: &mut [f32]) {
    match M {
        1 => dot_block_unrolled::<M, 4>(w, x, stride, dst),
        2 => dot_block_unrolled::<M, 2>(w, x, stride, dst),
        _ => dot_block_unrolled::<M, 1>(w, x, stride, dst),
    }
}

#[inline(always)]
fn dot_block_unrolled<const M: usize, const U: usize>(
    w: &[f32],
    x: &[f32],
    stride: usize,
    dst: &mut [f32],
) {
    let n = w.len();
    let mut acc = [[[0.0f32; LANES]; U]; M];
    let step = LANES * U;
    let full = n / step * step;
    let mut i = 0;
    while i < full {
        for u in 0..U {
            let at = i + u * LANES;
            let wl = &w[at..at + LANES];
            for (b, a) in acc.iter_mut().enumerate() {
                let xl = &x[b * stride + at..b * stride + at + LANES];
                for l in 0..LANES {
                    a[u][l] = wl[l].mul_add(xl[l], a[u][l]);
                }
            }
        }
        i += step;
    }
    for (b, a) in acc.iter().enumerate() {
        let mut s = 0.0f32;
        for part in a {
            s += part.iter().sum::<f32>();
        }
        for j in full..n {
            s += w[j] * x[b * stride + j];
        }
        dst[b] += s;
    }
}

fn dot_rows_bf16(w: &[bf16], x: &[f32], k: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features the function is compiled for were just detected.
            unsafe { dot_rows_bf16_avx2(w, x, k, dst) };
            return;
        }
    }
    dot_rows_bf16_generic(w, x, k, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_bf16_avx2(w: &[bf16], x: &[f32], k: usize, dst: &mut [f32]) {
    dot_rows_bf16_generic(w, x, k, dst)
}

/// Widens the row piece by piece (bf16 to f32 is a shift) into a stack buffer and
/// accumulates each piece's dot products with the f32 kernel.
#[inline(always)]
fn dot_rows_bf16_generic(w: &[bf16], x: &[f32], k: usize, dst: &mut [f32]) {
    const PIECE: usize = 1024;
    let mut wf = [0.0f32; PIECE];
    dst.iter_mut().for_each(|d| *d = 0.0);
    let mut start = 0;
    while start < k {
        let len = (k - start).min(PIECE);
        for (d, s) in wf[..len].iter_mut().zip(&w[start..start + len]) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
        dot_rows_add(&wf[..len], &x[start..], k, dst);
        start += len;
    }
}

/// In-place RMS normalisation of each `weight.len()`-long row of `x`.
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    for row in x.chunks_mut(weight.len()) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

/// `gate <- silu(gate) * up`, elementwise.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in xs.iter().enumerate() {
        if v > xs[best] {
            best = i;
        }
    }
    best
}

/// `log_softmax(xs)[target]`, computed in f64 so long sums of NLL stay exact.
pub fn log_prob(xs: &[f32], target: usize) -> f64 {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = xs.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    xs[target] as f64 - lse
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, w: &[f32], n: usize) -> Vec<f32> {
        let k = x.len() / m;
        let mut out = vec![0.0; m * n];
        for b in 0..m {
            for o in 0..n {
                out[b * n + o] = (0..k)
                    .map(|i| x[b * k + i] as f64 * w[o * k + i] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn linear_matches_naive_for_odd_shapes() {
        for &(m, k, n) in &[(1, 576, 130), (3, 77, 5), (8, 1536, 65), (2, 9, 200)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
                .collect();
            let mut out = vec![0.0; m * n];
            linear(&x, m, WeightRows::F32(&w), n, &mut out);
            let expect = naive(&x, m, &w, n);
            for (a, b) in out.iter().zip(&expect) {
                assert!(
                    (a - b).abs() < 1e-3 * (1.0 + b.abs()),
                    "{a} vs {b} for {m}x{k}x{n}"
                );
            }
            // bf16 weights give the product of the rounded weights.
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wr: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            linear(&x, m, WeightRows::Bf16(&wb), n, &mut out);
            let expect = naive(&x, m, &wr, n);
            for (a, b) in out.iter().zip(&expect) {
                assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "bf16 {a} vs {b}");
            }
        }
    }

    #[test]
    fn argmax_takes_first_of_ties_and_log_prob_normalises() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        let xs = [0.5f32, -1.0, 2.0];
        let total: f64 = (0..3).map(|i| log_prob(&xs, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
