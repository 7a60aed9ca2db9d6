//! Dense attention of several branches' query heads over one shared prompt cache: the
//! kernel behind every dense step (one branch is the case of one).
//!
//! Each head's arithmetic is fixed whatever heads are computed beside it, so that
//! branches decoded together get the bits they get alone:
//! - a logit is `fma(q_c, k_c, z)` over the components `c = 0..d` in order, from 0;
//! - a weight is `exp(z - max)`, the maximum taken over every position;
//! - the output is `fma(w_p, v_p, acc)` over the positions in order (the prompt's,
//!   then the branch's own), from 0, and the weights' sum is added in the same order;
//!   the output is then multiplied by the sum's inverse.
//!
//! The logits come a tile of heads and positions at a time ([`crate::tiled_logits`]),
//! which reads each key once for all heads. The weighted values keep a block of heads'
//! outputs (up to 16 registers) in registers over a chunk of 16 KB of value rows,
//! which then serves the next block of heads from the L1 cache: the values, too, are
//! read from memory once.
//!
//! Measured against the previous logits (lanes along heads, the heads padded to a
//! multiple of 16, over the row-major keys) in profiles of eight branches of the
//! default model, three alternated runs each: 4,645 to 5,216 samples in the dense
//! pass instead of 5,180 to 5,706 (`docs/BENCHMARKS.md`).

use crate::cache::HeadKv;
use crate::kernels::{exp, exp_block, max, slots, Scratch, EXP_BLOCK};
use crate::lanes::Lanes;
use crate::tiled_logits::logits;

/// Floats in a 64-byte cache line: the most a start on one can be skipped by.
const LINE: usize = 16;

/// [`slots`] starting on a cache line: the kernels load and store whole registers of
/// these buffers, and from an allocator's 16-byte alignment each such access spans
/// two lines.
#[inline(always)]
fn line_slots(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    let all = slots(buf, n + LINE);
    let skip = all.as_ptr().align_offset(64).min(LINE);
    &mut all[skip..skip + n]
}

/// Dense attention of several branches' head groups over one shared prompt cache and
/// each branch's own generated positions (all of one length): `queries[b]` (`g x d`)
/// into `outs[b]`.
#[inline(always)]
pub(crate) fn dense_shared_prompt(
    queries: &[&[f32]],
    prompt: &HeadKv,
    generated: &[&HeadKv],
    outs: &mut [&mut [f32]],
    sc: &mut Scratch,
) {
    let mut buf = std::mem::take(&mut sc.logits);
    let z = weights_buffer(&mut buf, queries, prompt, generated);
    all_logits(queries, prompt, generated, z, &mut sc.qs);
    softmax_rows(z, positions(prompt, generated));
    weighted_values(z, prompt, generated, outs, sc);
    sc.logits = buf;
}

/// The part of `buf` that holds a pass's logits and then its softmax weights: one row
/// of every position per head, on a cache line.
#[inline(always)]
pub(crate) fn weights_buffer<'a>(
    buf: &'a mut Vec<f32>,
    queries: &[&[f32]],
    prompt: &HeadKv,
    generated: &[&HeadKv],
) -> &'a mut [f32] {
    let d = prompt.head_dim();
    let heads = queries.iter().map(|q| q.len() / d).sum::<usize>();
    line_slots(buf, heads * positions(prompt, generated))
}

/// Positions every head attends: the prompt's, then its branch's own.
pub(crate) fn positions(prompt: &HeadKv, generated: &[&HeadKv]) -> usize {
    prompt.len() + generated.first().map_or(0, |g| g.len())
}

/// Step 1 of the pass: every head's logits over the prompt's positions, then its
/// branch's own, into `z` (head-major rows of all positions). `qs` is scratch.
#[inline(always)]
pub(crate) fn all_logits(
    queries: &[&[f32]],
    prompt: &HeadKv,
    generated: &[&HeadKv],
    z: &mut [f32],
    qs: &mut Vec<f32>,
) {
    let d = prompt.head_dim();
    let sp = prompt.len();
    let s = positions(prompt, generated);
    let g = queries.first().map_or(0, |q| q.len() / d);
    let scale = 1.0 / (d as f32).sqrt();
    qs.clear();
    for q in queries {
        qs.extend(q.iter().map(|x| x * scale));
    }
    let qs = &qs[..];
    // 1. logits of the prompt's positions for every head, then of each branch's own
    logits(prompt, qs, z, s);
    for (b, gen) in generated.iter().enumerate() {
        let heads_b = &qs[b * g * d..(b + 1) * g * d];
        logits(gen, heads_b, &mut z[b * g * s + sp..], s);
    }
}

/// Step 2: each row of `s` logits of `z` into unnormalised softmax weights.
#[inline(always)]
pub(crate) fn softmax_rows(z: &mut [f32], s: usize) {
    for row in z.chunks_exact_mut(s) {
        let m = max(row);
        let mut blocks = row.chunks_exact_mut(EXP_BLOCK);
        for block in &mut blocks {
            block.copy_from_slice(&exp_block(block, m));
        }
        for x in blocks.into_remainder() {
            *x = exp(*x - m);
        }
    }
}

/// Step 3 of the pass: the weighted values and the weights' sums (each a chain over
/// the positions in order) from [`softmax_rows`]' `z`, normalised into `outs`: the
/// prompt's positions for every head, a block of heads at a time over a chunk of value
/// rows that stays in cache (from the values' 16-bit copy when the prompt keeps one);
/// then each branch's own.
#[inline(always)]
pub(crate) fn weighted_values(
    z: &[f32],
    prompt: &HeadKv,
    generated: &[&HeadKv],
    outs: &mut [&mut [f32]],
    sc: &mut Scratch,
) {
    let d = prompt.head_dim();
    let sp = prompt.len();
    let sg = generated.first().map_or(0, |g| g.len());
    let s = sp + sg;
    let heads = z.len() / s;
    let g = heads / generated.len().max(1);
    let per_block = (256 / d).clamp(1, 4);
    let chunk = (16 * 1024 / (4 * d)).max(1);
    let acc = line_slots(&mut sc.weights, heads * d);
    acc.fill(0.0);
    let sums = slots(&mut sc.rank, heads);
    sums.fill(0.0);
    let mut p0 = 0;
    while p0 < sp {
        let p1 = (p0 + chunk).min(sp);
        let (first, n) = (p0, p1 - p0);
        let blocks = (per_block, d);
        match prompt.half().filter(|_| crate::lanes::half_kernels()) {
            Some(half) => {
                let rows = ValueRows::new(&half.values()[p0 * d..], first, n);
                let widened = Some(&mut sc.widened);
                weigh_in_blocks((z, s), 0..heads, blocks, rows, (acc, sums), widened);
            }
            None => {
                let rows = ValueRows::new(&prompt.values()[p0 * d..], first, n);
                weigh_in_blocks((z, s), 0..heads, blocks, rows, (acc, sums), None);
            }
        }
        p0 = p1;
    }
    for (b, (gen, out)) in generated.iter().zip(outs.iter_mut()).enumerate() {
        let (first, last) = (b * g, (b + 1) * g);
        let rows = ValueRows::new(gen.values(), sp, sg);
        weigh_in_blocks((z, s), first..last, (per_block, d), rows, (acc, sums), None);
        for (h, o) in out.chunks_exact_mut(d).enumerate() {
            let inv = 1.0 / sums[first + h];
            for (y, &a) in o.iter_mut().zip(&acc[(first + h) * d..]) {
                *y = a * inv;
            }
        }
    }
}

/// [`accumulate`] for the heads `heads` (of `acc`, `d` wide each, and of `sums`),
/// `per_block` at a time, with the weights `z` (head-major rows of `s`). The first
/// block reads the rows from memory (prefetching ahead when `rows.prefetch`); the
/// others find them in the L1 cache.
///
/// With `widened` and more than one block, the first block also keeps the rows it
/// widened there, and the others read those: 16-bit rows are then widened once, not
/// once per block (with 24 heads the widening took a third of the pass's arithmetic).
#[inline(always)]
fn weigh_in_blocks<T: Lanes>(
    (z, s): (&[f32], usize),
    heads: std::ops::Range<usize>,
    (per_block, d): (usize, usize),
    rows: ValueRows<'_, T>,
    (acc, sums): (&mut [f32], &mut [f32]),
    widened: Option<&mut Vec<f32>>,
) {
    let mut h0 = heads.start;
    if let Some(buf) = widened.filter(|_| heads.len() > per_block) {
        let keep = line_slots(buf, rows.n * d);
        let nb = per_block;
        accumulate(
            |k, p| z[(h0 + k) * s + p],
            rows,
            (&mut acc[h0 * d..(h0 + nb) * d], &mut sums[h0..h0 + nb]),
            nb,
            Some(&mut *keep),
        );
        let rows = ValueRows {
            values: &*keep,
            first: rows.first,
            n: rows.n,
            prefetch: false,
        };
        let rest = h0 + nb..heads.end;
        weigh_in_blocks((z, s), rest, (per_block, d), rows, (acc, sums), None);
        return;
    }
    while h0 < heads.end {
        let nb = per_block.min(heads.end - h0);
        let rows = ValueRows {
            prefetch: rows.prefetch && h0 == heads.start,
            ..rows
        };
        accumulate(
            |k, p| z[(h0 + k) * s + p],
            rows,
            (&mut acc[h0 * d..(h0 + nb) * d], &mut sums[h0..h0 + nb]),
            nb,
            None,
        );
        h0 += nb;
    }
}

/// The value rows [`accumulate`] weighs: the first `n` rows of `values`, numbered from
/// `first`. Rows past them are only prefetched, and only with `prefetch`.
#[derive(Clone, Copy)]
struct ValueRows<'a, T> {
    values: &'a [T],
    first: usize,
    n: usize,
    prefetch: bool,
}

impl<'a, T> ValueRows<'a, T> {
    /// The rows, prefetching ahead.
    #[inline(always)]
    fn new(values: &'a [T], first: usize, n: usize) -> Self {
        Self {
            values,
            first,
            n,
            prefetch: true,
        }
    }
}

/// `acc_k = fma(w(k, p), v_p, acc_k)` and `sums_k += w(k, p)` over
/// the value rows `v_p` in order, for the heads `k` of `acc` (`d` wide); each row
/// widened to f32 is also written to `keep` when given.
#[inline(always)]
fn accumulate<T: Lanes>(
    weight: impl Fn(usize, usize) -> f32,
    rows: ValueRows<'_, T>,
    (acc, sums): (&mut [f32], &mut [f32]),
    nb: usize,
    keep: Option<&mut [f32]>,
) {
    let d = acc.len() / nb;
    if let Some(keep) = &keep {
        assert!(keep.len() >= rows.n * d);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_enabled() && std::is_x86_feature_detected!("avx512f") {
        macro_rules! go {
            ($v:literal, $nb:literal) => {
                // SAFETY: the CPU has AVX-512F (just detected); `d == 16 * $v`, there
                // are `$nb` heads, and `keep` holds the rows (asserted above).
                unsafe { accumulate_avx512::<$v, $nb, T>(&weight, rows, acc, sums, keep) }
            };
        }
        match (d, nb) {
            (64, 1) => return go!(4, 1),
            (64, 2) => return go!(4, 2),
            (64, 3) => return go!(4, 3),
            (64, 4) => return go!(4, 4),
            (128, 1) => return go!(8, 1),
            (128, 2) => return go!(8, 2),
            (256, 1) => return go!(16, 1),
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_enabled()
        && d.is_multiple_of(64)
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the features were just detected; `acc` holds `nb` heads of `d`, a
        // multiple of 64, and `keep` the rows (asserted above).
        unsafe { accumulate_avx2(&weight, rows, (acc, sums), nb, keep) };
        return;
    }
    let mut keep = keep;
    for (j, v) in rows.values[..rows.n * d].chunks_exact(d).enumerate() {
        if let Some(keep) = keep.as_deref_mut() {
            for (y, x) in keep[j * d..(j + 1) * d].iter_mut().zip(v) {
                *y = x.to_f32();
            }
        }
        for (k, a) in acc.chunks_exact_mut(d).enumerate() {
            let w = weight(k, rows.first + j);
            sums[k] += w;
            for (y, &x) in a.iter_mut().zip(v) {
                *y = w.mul_add(x.to_f32(), *y);
            }
        }
    }
}

/// [`accumulate`] for CPUs with AVX2 but not AVX-512: one head and 64 components at
/// a time in 8 registers over all the rows (AVX2's 16 registers hold no more), each
/// component's sum the same chain as the portable loop's, so the same bits. The
/// portable loop loaded and stored the sums for every row: on a Zen 1 EPYC it was an
/// eighth of an eight-branch decode step.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `acc` holds `nb` heads of `d`, a multiple of
/// 64, `sums` `nb`, and `keep` (if any) the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_avx2<T: Lanes>(
    weight: &impl Fn(usize, usize) -> f32,
    rows: ValueRows<'_, T>,
    (acc, sums): (&mut [f32], &mut [f32]),
    nb: usize,
    keep: Option<&mut [f32]>,
) {
    use std::arch::x86_64::*;
    let d = acc.len() / nb;
    let values = rows.values;
    assert!(d.is_multiple_of(64) && acc.len() == nb * d && sums.len() == nb);
    assert!(values.len() >= rows.n * d);
    if let Some(keep) = keep {
        for (out, v) in keep
            .chunks_exact_mut(d)
            .zip(values.chunks_exact(d))
            .take(rows.n)
        {
            for (y, x) in out.iter_mut().zip(v) {
                *y = x.to_f32();
            }
        }
    }
    for (k, (head, sum)) in acc.chunks_exact_mut(d).zip(sums.iter_mut()).enumerate() {
        let mut total = *sum;
        for c0 in (0..d).step_by(64) {
            let at = head[c0..c0 + 64].as_mut_ptr();
            // SAFETY (loads and stores of `at`): the head's components `c0..c0 + 64`.
            let mut regs: [__m256; 8] = [_mm256_setzero_ps(); 8];
            for (i, r) in regs.iter_mut().enumerate() {
                *r = unsafe { _mm256_loadu_ps(at.add(8 * i)) };
            }
            for j in 0..rows.n {
                if rows.prefetch && k == 0 && c0 == 0 {
                    if let Some(ahead) = values.get((j + 16) * d..(j + 17) * d) {
                        crate::kernels::prefetch(ahead);
                    }
                }
                let w = weight(k, rows.first + j);
                if c0 == 0 {
                    total += w;
                }
                let wv = _mm256_set1_ps(w);
                let row = values[j * d + c0..j * d + c0 + 64].as_ptr();
                for (i, r) in regs.iter_mut().enumerate() {
                    // SAFETY: the row's components `c0 + 8i..c0 + 8i + 8` (sliced above).
                    *r = _mm256_fmadd_ps(wv, unsafe { T::load8(row.add(8 * i)) }, *r);
                }
            }
            for (i, r) in regs.iter().enumerate() {
                unsafe { _mm256_storeu_ps(at.add(8 * i), *r) };
            }
        }
        *sum = total;
    }
}

/// [`accumulate`] for `NB` heads of `16 * V` components, held in registers throughout
/// and the weights' sums.
///
/// # Safety
/// The CPU must have AVX-512F; `acc` holds `NB` heads of `16 * V`, `sums` `NB`, and
/// `keep` (if any) the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate_avx512<const V: usize, const NB: usize, T: Lanes>(
    weight: &impl Fn(usize, usize) -> f32,
    rows: ValueRows<'_, T>,
    acc: &mut [f32],
    sums: &mut [f32],
    keep: Option<&mut [f32]>,
) {
    use std::arch::x86_64::*;
    let d = 16 * V;
    assert!(acc.len() == NB * d && sums.len() == NB);
    // SAFETY (all loads and stores below): head `k < NB` of `acc` has `d` floats and
    // row `j` of `values` is inside it.
    let mut regs: [[__m512; V]; NB] = std::array::from_fn(|k| {
        std::array::from_fn(|i| unsafe { _mm512_loadu_ps(acc.as_ptr().add(k * d + 16 * i)) })
    });
    let mut total: [f32; NB] = std::array::from_fn(|k| sums[k]);
    let values = rows.values;
    assert!(values.len() >= rows.n * d);
    let keep_at = keep.map(|k| k.as_mut_ptr());
    for j in 0..rows.n {
        // One row 16 on at a time: a burst of prefetches every few rows queued behind
        // full fill buffers.
        if rows.prefetch {
            if let Some(ahead) = values.get((j + 16) * d..(j + 17) * d) {
                crate::kernels::prefetch(ahead);
            }
        }
        let v: [__m512; V] =
            std::array::from_fn(|i| unsafe { T::load16(values.as_ptr().add(j * d + 16 * i)) });
        if let Some(keep) = keep_at {
            for (i, v) in v.iter().enumerate() {
                // SAFETY: `keep` holds `n` rows of `d` (the caller's contract).
                unsafe { _mm512_storeu_ps(keep.add(j * d + 16 * i), *v) };
            }
        }
        for k in 0..NB {
            let w = weight(k, rows.first + j);
            total[k] += w;
            let wv = _mm512_set1_ps(w);
            for i in 0..V {
                regs[k][i] = _mm512_fmadd_ps(wv, v[i], regs[k][i]);
            }
        }
    }
    sums.copy_from_slice(&total);
    for (k, head) in regs.iter().enumerate() {
        for (i, r) in head.iter().enumerate() {
            unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add(k * d + 16 * i), *r) };
        }
    }
}
