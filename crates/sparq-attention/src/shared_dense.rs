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
//! What changes with the number of heads is which way the vector lanes run for the
//! logits. With few heads they run along positions (the transposed keys, every head in
//! turn). With many (several branches) they run along heads: each key component,
//! broadcast, serves every head in one fused multiply-add, and eight positions' sums
//! stay in registers for the whole row instead of being stored and reloaded every four
//! components. The weighted values keep a block of heads' outputs (up to 16
//! registers) in registers over a chunk of 16 KB of value rows, which then serves the
//! next block of heads from the L1 cache: the values are read from memory once.
//!
//! Measured with `sparq bench attention --seq-len 1600 --head-dim 64 --kv-heads 2
//! --group 24` (the default model's heads, eight branches): 193-210 µs against
//! 271-322 µs for the previous kernel; eight branches of the model decode 6 to 12%
//! faster, one branch no slower (`docs/BENCHMARKS.md`).

use crate::cache::HeadKv;
use crate::kernels::{column_blocks, every_column, exp, max, slots, Scratch};

/// From this many heads the logits run along heads (see the module doc).
const LANES_ALONG_HEADS_FROM: usize = 8;
/// Lanes of one AVX-512 register; heads are padded to a multiple of it.
const LANES: usize = 16;
/// Positions whose logits are summed together when lanes run along heads.
const POSITIONS: usize = 8;

/// Where logit `(head, position)` lives in the scratch buffer: head-major rows when the
/// lanes run along positions, position-major rows (heads padded to `LANES`) when they
/// run along heads.
#[derive(Clone, Copy)]
struct Grid {
    along_heads: bool,
    head_stride: usize,
    pos_stride: usize,
    len: usize,
}

impl Grid {
    fn new(heads: usize, s: usize) -> Self {
        if heads >= LANES_ALONG_HEADS_FROM {
            let lanes = heads.next_multiple_of(LANES);
            Self {
                along_heads: true,
                head_stride: 1,
                pos_stride: lanes,
                len: s * lanes,
            }
        } else {
            Self {
                along_heads: false,
                head_stride: s,
                pos_stride: 1,
                len: heads * s,
            }
        }
    }

    fn along_heads(self) -> bool {
        self.along_heads
    }

    #[inline(always)]
    fn at(self, h: usize, p: usize) -> usize {
        h * self.head_stride + p * self.pos_stride
    }
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
    let d = prompt.head_dim();
    let sp = prompt.len();
    let sg = generated.first().map_or(0, |g| g.len());
    let s = sp + sg;
    let g = queries.first().map_or(0, |q| q.len() / d);
    let heads = g * queries.len();
    let scale = 1.0 / (d as f32).sqrt();
    sc.qs.clear();
    for q in queries {
        sc.qs.extend(q.iter().map(|x| x * scale));
    }
    let qs = &sc.qs[..];
    let grid = Grid::new(heads, s);
    let z = slots(&mut sc.logits, grid.len);
    // Every key component, for the logits whose lanes run along positions.
    let every = every_column(d);
    // 1. logits of the prompt's positions, then of each branch's own
    if grid.along_heads() {
        let lanes = grid.pos_stride;
        let qt = slots(&mut sc.weights, d * lanes);
        qt.fill(0.0);
        for (h, q) in qs.chunks_exact(d).enumerate() {
            for (c, &x) in q.iter().enumerate() {
                qt[c * lanes + h] = x;
            }
        }
        logits_along_heads(qt, lanes, prompt.keys(), sp, d, &mut z[..sp * lanes]);
        let own = slots(&mut sc.rank, g * sg);
        for (b, gen) in generated.iter().enumerate() {
            logits_along_positions(gen, &every, &qs[b * g * d..(b + 1) * g * d], own, sg);
            for h in 0..g {
                for j in 0..sg {
                    z[grid.at(b * g + h, sp + j)] = own[h * sg + j];
                }
            }
        }
    } else {
        logits_along_positions(prompt, &every, qs, z, s);
        for (b, gen) in generated.iter().enumerate() {
            let heads_b = &qs[b * g * d..(b + 1) * g * d];
            logits_along_positions(gen, &every, heads_b, &mut z[b * g * s + sp..], s);
        }
    }
    // 2. unnormalised softmax weights
    if grid.along_heads() {
        let lanes = grid.pos_stride;
        for l0 in (0..heads).step_by(LANES) {
            // One register's worth of heads at a time, its maxima kept in a register.
            let mut top = [f32::NEG_INFINITY; LANES];
            for row in z.chunks_exact(lanes) {
                for (m, &x) in top.iter_mut().zip(&row[l0..l0 + LANES]) {
                    *m = if x > *m { x } else { *m };
                }
            }
            for row in z.chunks_exact_mut(lanes) {
                for (x, &m) in row[l0..l0 + LANES].iter_mut().zip(&top) {
                    *x = exp(*x - m);
                }
            }
        }
    } else {
        for row in z.chunks_exact_mut(s) {
            let m = max(row);
            for x in row.iter_mut() {
                *x = exp(*x - m);
            }
        }
    }
    // 3. weighted values: the prompt's positions for every head, a block of heads at
    //    a time over a chunk of value rows that stays in cache; then each branch's own
    let z = &*z;
    let per_block = (256 / d).clamp(1, 4);
    let chunk = (16 * 1024 / (4 * d)).max(1);
    let acc = slots(&mut sc.weights, heads * d);
    acc.fill(0.0);
    let sums = slots(&mut sc.rank, heads);
    sums.fill(0.0);
    let values = prompt.values();
    let mut p0 = 0;
    while p0 < sp {
        let p1 = (p0 + chunk).min(sp);
        let mut h0 = 0;
        while h0 < heads {
            let nb = per_block.min(heads - h0);
            accumulate(
                |k, p| z[grid.at(h0 + k, p)],
                &values[p0 * d..p1 * d],
                p0,
                &mut acc[h0 * d..(h0 + nb) * d],
                &mut sums[h0..h0 + nb],
            );
            h0 += nb;
        }
        p0 = p1;
    }
    for (b, (gen, out)) in generated.iter().zip(outs.iter_mut()).enumerate() {
        let (first, last) = (b * g, (b + 1) * g);
        let mut h0 = first;
        while h0 < last {
            let nb = per_block.min(last - h0);
            accumulate(
                |k, p| z[grid.at(h0 + k, p)],
                gen.values(),
                sp,
                &mut acc[h0 * d..(h0 + nb) * d],
                &mut sums[h0..h0 + nb],
            );
            h0 += nb;
        }
        for (h, o) in out.chunks_exact_mut(d).enumerate() {
            let inv = 1.0 / sums[first + h];
            for (y, &a) in o.iter_mut().zip(&acc[(first + h) * d..]) {
                *y = a * inv;
            }
        }
    }
}

/// `z[h * stride + p] = q_h . k_p` for the positions of `seg` and the heads of `qs`
/// (`g x d`) over the components `every` (`0..d`), with the lanes along positions: the transposed keys are read a block of
/// positions and four components at a time, for every head.
#[inline(always)]
fn logits_along_positions(seg: &HeadKv, every: &[u32], qs: &[f32], z: &mut [f32], stride: usize) {
    let d = seg.head_dim();
    column_blocks(seg, every, qs, (qs.len() / d, stride), z, fma4, fma1);
}

/// `y = fma(a, x, y)`: one component of each logit.
#[inline(always)]
fn fma1(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = a.mul_add(x, *y);
    }
}

/// `y = fma(a3, x3, fma(a2, x2, fma(a1, x1, fma(a0, x0, y))))`: four components of
/// each logit, in order.
#[inline(always)]
fn fma4(y: &mut [f32], a: [f32; 4], x: [&[f32]; 4]) {
    let n = y.len();
    let (x0, x1, x2, x3) = (&x[0][..n], &x[1][..n], &x[2][..n], &x[3][..n]);
    for i in 0..n {
        let t = a[0].mul_add(x0[i], y[i]);
        let t = a[1].mul_add(x1[i], t);
        let t = a[2].mul_add(x2[i], t);
        y[i] = a[3].mul_add(x3[i], t);
    }
}

/// `z[p * lanes + h] = q_h . k_p` for the first `n` rows of `keys` (`n x d`) and every
/// lane of `qt` (`d x lanes`, the queries transposed), with the lanes along heads.
#[inline(always)]
fn logits_along_heads(qt: &[f32], lanes: usize, keys: &[f32], n: usize, d: usize, z: &mut [f32]) {
    assert!(qt.len() >= d * lanes && keys.len() >= n * d && z.len() >= n * lanes);
    assert_eq!(lanes % LANES, 0);
    let mut p = 0;
    while p + POSITIONS <= n {
        // The rows four blocks on stream in while this block is summed: with the sums
        // now cheap, waiting on memory was most of this loop (`bench attention`, g =
        // 24: 230-249 µs without the prefetches, 193-211 with them).
        if let Some(ahead) = keys.get((p + 4 * POSITIONS) * d..(p + 5 * POSITIONS) * d) {
            crate::kernels::prefetch(ahead);
        }
        rows_along_heads::<POSITIONS>(qt, lanes, &keys[p * d..], d, &mut z[p * lanes..]);
        p += POSITIONS;
    }
    while p < n {
        rows_along_heads::<1>(qt, lanes, &keys[p * d..], d, &mut z[p * lanes..]);
        p += 1;
    }
}

/// [`logits_along_heads`] for `P` consecutive positions.
#[inline(always)]
fn rows_along_heads<const P: usize>(
    qt: &[f32],
    lanes: usize,
    keys: &[f32],
    d: usize,
    z: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_enabled() && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (just detected); the slices' lengths were
        // checked by `logits_along_heads` for these rows.
        unsafe { rows_along_heads_avx512::<P>(qt, lanes, keys, d, z) };
        return;
    }
    for chunk in (0..lanes).step_by(LANES) {
        let mut acc = [[0.0f32; LANES]; P];
        for c in 0..d {
            let q = &qt[c * lanes + chunk..c * lanes + chunk + LANES];
            for (i, a) in acc.iter_mut().enumerate() {
                let k = keys[i * d + c];
                for (y, &x) in a.iter_mut().zip(q) {
                    *y = k.mul_add(x, *y);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            z[i * lanes + chunk..i * lanes + chunk + LANES].copy_from_slice(a);
        }
    }
}

/// # Safety
/// The CPU must have AVX-512F; `qt` holds `d x lanes`, `keys` `P` rows of `d` and `z`
/// `P` rows of `lanes`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_along_heads_avx512<const P: usize>(
    qt: &[f32],
    lanes: usize,
    keys: &[f32],
    d: usize,
    z: &mut [f32],
) {
    use std::arch::x86_64::*;
    for chunk in (0..lanes).step_by(LANES) {
        let mut acc = [_mm512_setzero_ps(); P];
        for c in 0..d {
            // SAFETY: `c < d` and `chunk + 16 <= lanes`, inside `qt`; `i < P` rows of
            // `keys`.
            unsafe {
                let q = _mm512_loadu_ps(qt.as_ptr().add(c * lanes + chunk));
                for (i, a) in acc.iter_mut().enumerate() {
                    let k = _mm512_set1_ps(*keys.get_unchecked(i * d + c));
                    *a = _mm512_fmadd_ps(k, q, *a);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: row `i < P` of `z` has `lanes` floats.
            unsafe { _mm512_storeu_ps(z.as_mut_ptr().add(i * lanes + chunk), *a) };
        }
    }
}

/// `acc_k = fma(w(k, p), v_p, acc_k)` and `sums_k += w(k, p)` over the rows `v_p` of
/// `values` in order (numbered from `first`), for the heads `k` of `sums`.
#[inline(always)]
fn accumulate(
    weight: impl Fn(usize, usize) -> f32,
    values: &[f32],
    first: usize,
    acc: &mut [f32],
    sums: &mut [f32],
) {
    let nb = sums.len();
    let d = acc.len() / nb;
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_enabled() && std::is_x86_feature_detected!("avx512f") {
        macro_rules! go {
            ($v:literal, $nb:literal) => {
                // SAFETY: the CPU has AVX-512F (just detected); `d == 16 * $v` and
                // there are `$nb` heads.
                unsafe { accumulate_avx512::<$v, $nb>(&weight, values, first, acc, sums) }
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
    for (j, v) in values.chunks_exact(d).enumerate() {
        for (k, (a, sum)) in acc.chunks_exact_mut(d).zip(sums.iter_mut()).enumerate() {
            let w = weight(k, first + j);
            *sum += w;
            for (y, &x) in a.iter_mut().zip(v) {
                *y = w.mul_add(x, *y);
            }
        }
    }
}

/// [`accumulate`] for `NB` heads of `16 * V` components, held in registers throughout.
///
/// # Safety
/// The CPU must have AVX-512F; `acc` holds `NB` heads of `16 * V` and `sums` `NB`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate_avx512<const V: usize, const NB: usize>(
    weight: &impl Fn(usize, usize) -> f32,
    values: &[f32],
    first: usize,
    acc: &mut [f32],
    sums: &mut [f32],
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
    for j in 0..values.len() / d {
        // The first block of heads over a chunk reads its rows from memory; the
        // others find them in cache.
        if j % 4 == 0 {
            if let Some(ahead) = values.get((j + 16) * d..(j + 20) * d) {
                crate::kernels::prefetch(ahead);
            }
        }
        let v: [__m512; V] = std::array::from_fn(|i| unsafe {
            _mm512_loadu_ps(values.as_ptr().add(j * d + 16 * i))
        });
        for k in 0..NB {
            let w = weight(k, first + j);
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
