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

/// [`slots`] starting on a cache line: the kernels load and store whole registers of
/// these buffers, and from an allocator's 16-byte alignment each such access spans
/// two lines.
#[inline(always)]
fn line_slots(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    let all = slots(buf, n + LANES);
    let skip = all.as_ptr().align_offset(64).min(LANES);
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
    let z = line_slots(&mut sc.logits, grid.len);
    // Every key component, for the logits whose lanes run along positions.
    let every = every_column(d);
    // 1. logits of the prompt's positions, then of each branch's own
    // Each head's largest logit, found with the logits when the lanes run along heads
    // (the other way, the softmax finds them itself).
    let top = slots(
        &mut sc.maxima,
        if grid.along_heads() {
            grid.pos_stride
        } else {
            0
        },
    );
    if grid.along_heads() {
        let lanes = grid.pos_stride;
        let qt = line_slots(&mut sc.weights, d * lanes);
        qt.fill(0.0);
        for (h, q) in qs.chunks_exact(d).enumerate() {
            for (c, &x) in q.iter().enumerate() {
                qt[c * lanes + h] = x;
            }
        }
        top.fill(f32::NEG_INFINITY);
        let job = AlongHeads {
            qt,
            lanes,
            keys: prompt.keys(),
            n: sp,
            d,
        };
        logits_along_heads(job, &mut z[..sp * lanes], top);
        let own = slots(&mut sc.rank, g * sg);
        for (b, gen) in generated.iter().enumerate() {
            logits_along_positions(gen, &every, &qs[b * g * d..(b + 1) * g * d], own, sg);
            for h in 0..g {
                let m = &mut top[b * g + h];
                for j in 0..sg {
                    let x = own[h * sg + j];
                    z[grid.at(b * g + h, sp + j)] = x;
                    *m = if x > *m { x } else { *m };
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
    // 2. unnormalised softmax weights; with the lanes along heads, also their sums,
    //    each a chain over the positions in order (the prompt's, then the branch's
    //    own: the order `accumulate` adds them in when the lanes run along positions)
    let sums = slots(&mut sc.rank, heads.max(grid.pos_stride));
    sums.fill(0.0);
    if grid.along_heads() {
        // The maxima came with the logits; padding lanes hold 0 (zero queries).
        for row in z.chunks_exact_mut(grid.pos_stride) {
            for ((x, &m), sum) in row.iter_mut().zip(&*top).zip(sums.iter_mut()) {
                *x = exp(*x - m);
                *sum += *x;
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
    let acc = line_slots(&mut sc.weights, heads * d);
    acc.fill(0.0);
    let add_sums = !grid.along_heads();
    let values = prompt.values();
    let mut p0 = 0;
    while p0 < sp {
        let p1 = (p0 + chunk).min(sp);
        let rows = ValueRows {
            values: &values[p0 * d..],
            first: p0,
            n: p1 - p0,
            prefetch: true,
        };
        let sums = add_sums.then_some(&mut *sums);
        weigh_in_blocks(z, grid, 0..heads, (per_block, d), rows, acc, sums);
        p0 = p1;
    }
    for (b, (gen, out)) in generated.iter().zip(outs.iter_mut()).enumerate() {
        let (first, last) = (b * g, (b + 1) * g);
        let rows = ValueRows {
            values: gen.values(),
            first: sp,
            n: sg,
            prefetch: true,
        };
        let sums_b = add_sums.then_some(&mut *sums);
        weigh_in_blocks(z, grid, first..last, (per_block, d), rows, acc, sums_b);
        for (h, o) in out.chunks_exact_mut(d).enumerate() {
            let inv = 1.0 / sums[first + h];
            for (y, &a) in o.iter_mut().zip(&acc[(first + h) * d..]) {
                *y = a * inv;
            }
        }
    }
}

/// [`accumulate`] for the heads `heads` (of `acc`, `d` wide each, and of `sums`),
/// `per_block` at a time. The first block reads the rows from memory (prefetching
/// ahead when `rows.prefetch`); the others find them in the L1 cache.
#[inline(always)]
fn weigh_in_blocks(
    z: &[f32],
    grid: Grid,
    heads: std::ops::Range<usize>,
    (per_block, d): (usize, usize),
    rows: ValueRows<'_>,
    acc: &mut [f32],
    mut sums: Option<&mut [f32]>,
) {
    let mut h0 = heads.start;
    while h0 < heads.end {
        let nb = per_block.min(heads.end - h0);
        let rows = ValueRows {
            prefetch: rows.prefetch && h0 == heads.start,
            ..rows
        };
        accumulate(
            |k, p| z[grid.at(h0 + k, p)],
            rows,
            &mut acc[h0 * d..(h0 + nb) * d],
            nb,
            sums.as_deref_mut().map(|s| &mut s[h0..h0 + nb]),
        );
        h0 += nb;
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

/// The logits [`logits_along_heads`] computes: of the first `n` rows of `keys`
/// (`n x d`) for every lane of `qt` (`d x lanes`, the queries transposed).
#[derive(Clone, Copy)]
struct AlongHeads<'a> {
    qt: &'a [f32],
    lanes: usize,
    keys: &'a [f32],
    n: usize,
    d: usize,
}

/// `z[p * lanes + h] = q_h . k_p` with the lanes along heads; `top[h]` becomes the
/// larger of itself and every `z[p * lanes + h]`.
#[inline(always)]
fn logits_along_heads(job: AlongHeads<'_>, z: &mut [f32], top: &mut [f32]) {
    let AlongHeads {
        qt,
        lanes,
        keys,
        n,
        d,
    } = job;
    assert!(qt.len() >= d * lanes && keys.len() >= n * d && z.len() >= n * lanes);
    assert!(lanes.is_multiple_of(LANES) && top.len() == lanes);
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_enabled() && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (just detected); the lengths were checked above.
        unsafe { logits_along_heads_avx512(job, z, top) };
        return;
    }
    for (p, row) in z[..n * lanes].chunks_exact_mut(lanes).enumerate() {
        for (h, (y, m)) in row.iter_mut().zip(top.iter_mut()).enumerate() {
            let mut acc = 0.0f32;
            for (c, &k) in keys[p * d..(p + 1) * d].iter().enumerate() {
                acc = k.mul_add(qt[c * lanes + h], acc);
            }
            *y = acc;
            *m = if acc > *m { acc } else { *m };
        }
    }
}

/// [`logits_along_heads`] with the lanes in registers: eight positions at a time, two
/// registers of heads at once (each broadcast key component then feeds two fused
/// multiply-adds; one register at a time, the broadcasts' loads bound the loop), the
/// maxima kept beside the sums.
///
/// # Safety
/// The CPU must have AVX-512F; the lengths are those `logits_along_heads` asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn logits_along_heads_avx512(job: AlongHeads<'_>, z: &mut [f32], top: &mut [f32]) {
    let AlongHeads {
        qt,
        lanes,
        keys,
        n,
        d,
    } = job;
    // `P` positions from `p`, `C` registers of heads from lane `chunk`.
    // SAFETY (every use): rows `p..p + P` lie in `keys` and `z`, and the lanes in
    // `qt`, `z`'s rows and `top` (the caller's contract).
    macro_rules! rows {
        ($P:expr, $C:expr, $p:expr, $chunk:expr, $ahead:expr) => {
            unsafe {
                rows_along_heads::<{ $P }, { $C }>(
                    qt,
                    lanes,
                    $chunk,
                    &keys[$p * d..],
                    d,
                    &mut z[$p * lanes..],
                    top,
                    $ahead,
                )
            }
        };
    }
    let mut p = 0;
    while p + POSITIONS <= n {
        // The rows four blocks on, prefetched a line every other component while this
        // block is summed (the keys come from memory). All at once, the prefetches
        // queued behind full fill buffers and were a fifth of the kernel.
        let ahead = keys.as_ptr().wrapping_add((p + 4 * POSITIONS) * d);
        let mut chunk = 0;
        while chunk + 2 * LANES <= lanes {
            rows!(POSITIONS, 2, p, chunk, (chunk == 0).then_some(ahead));
            chunk += 2 * LANES;
        }
        if chunk < lanes {
            rows!(POSITIONS, 1, p, chunk, (chunk == 0).then_some(ahead));
        }
        p += POSITIONS;
    }
    while p < n {
        for chunk in (0..lanes).step_by(LANES) {
            rows!(1, 1, p, chunk, None);
        }
        p += 1;
    }
}

/// The logits of `P` consecutive positions for the `C` registers of heads from lane
/// `chunk`, stored in `z`'s rows and folded into `top`; with `ahead`, the `P` rows
/// there are prefetched along the way.
///
/// # Safety
/// The CPU must have AVX-512F; `qt` holds `d x lanes`, `keys` `P` rows of `d`, `z` `P`
/// rows of `lanes`, `top` `lanes`, and `chunk + 16 * C <= lanes`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_along_heads<const P: usize, const C: usize>(
    qt: &[f32],
    lanes: usize,
    chunk: usize,
    keys: &[f32],
    d: usize,
    z: &mut [f32],
    top: &mut [f32],
    ahead: Option<*const f32>,
) {
    use std::arch::x86_64::*;
    // acc[i][r]: position `i`, register `r` of heads.
    let mut acc = [[_mm512_setzero_ps(); C]; P];
    for c in 0..d {
        if let Some(ahead) = ahead {
            if c % 2 == 0 {
                // Line `c / 2` of the `P * d` floats ahead (with P = 8, all of them).
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(c * P).cast());
            }
        }
        // SAFETY: `c < d` and `chunk + 16 * C <= lanes`, inside `qt`; `i < P` rows of
        // `keys`.
        unsafe {
            let mut q = [_mm512_setzero_ps(); C];
            for (r, q) in q.iter_mut().enumerate() {
                *q = _mm512_loadu_ps(qt.as_ptr().add(c * lanes + chunk + r * LANES));
            }
            for (i, regs) in acc.iter_mut().enumerate() {
                let k = _mm512_set1_ps(*keys.get_unchecked(i * d + c));
                for (a, q) in regs.iter_mut().zip(&q) {
                    *a = _mm512_fmadd_ps(k, *q, *a);
                }
            }
        }
    }
    for r in 0..C {
        let at = chunk + r * LANES;
        // SAFETY: lanes `at..at + 16` lie in `top` and in each of the `P` rows of `z`.
        unsafe {
            let mut m = _mm512_loadu_ps(top.as_ptr().add(at));
            for (i, regs) in acc.iter().enumerate() {
                _mm512_storeu_ps(z.as_mut_ptr().add(i * lanes + at), regs[r]);
                // `a > m ? a : m`, as the scalar maxima take it (NaN keeps `m`).
                m = _mm512_max_ps(regs[r], m);
            }
            _mm512_storeu_ps(top.as_mut_ptr().add(at), m);
        }
    }
}

/// The value rows [`accumulate`] weighs: the first `n` rows of `values`, numbered from
/// `first`. Rows past them are only prefetched, and only with `prefetch`.
#[derive(Clone, Copy)]
struct ValueRows<'a> {
    values: &'a [f32],
    first: usize,
    n: usize,
    prefetch: bool,
}

/// `acc_k = fma(w(k, p), v_p, acc_k)` (and, given `sums`, `sums_k += w(k, p)`) over
/// the value rows `v_p` in order, for the heads `k` of `acc` (`d` wide).
#[inline(always)]
fn accumulate(
    weight: impl Fn(usize, usize) -> f32,
    rows: ValueRows<'_>,
    acc: &mut [f32],
    nb: usize,
    mut sums: Option<&mut [f32]>,
) {
    let d = acc.len() / nb;
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_enabled() && std::is_x86_feature_detected!("avx512f") {
        macro_rules! go {
            ($v:literal, $nb:literal) => {
                // SAFETY: the CPU has AVX-512F (just detected); `d == 16 * $v` and
                // there are `$nb` heads.
                unsafe {
                    match sums {
                        Some(sums) => accumulate_avx512::<$v, $nb, true>(&weight, rows, acc, sums),
                        None => accumulate_avx512::<$v, $nb, false>(&weight, rows, acc, &mut []),
                    }
                }
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
    for (j, v) in rows.values[..rows.n * d].chunks_exact(d).enumerate() {
        for (k, a) in acc.chunks_exact_mut(d).enumerate() {
            let w = weight(k, rows.first + j);
            if let Some(sums) = sums.as_deref_mut() {
                sums[k] += w;
            }
            for (y, &x) in a.iter_mut().zip(v) {
                *y = w.mul_add(x, *y);
            }
        }
    }
}

/// [`accumulate`] for `NB` heads of `16 * V` components, held in registers throughout
/// (and, with `SUMS`, the weights' sums).
///
/// # Safety
/// The CPU must have AVX-512F; `acc` holds `NB` heads of `16 * V`, and `sums` `NB`
/// when `SUMS`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate_avx512<const V: usize, const NB: usize, const SUMS: bool>(
    weight: &impl Fn(usize, usize) -> f32,
    rows: ValueRows<'_>,
    acc: &mut [f32],
    sums: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = 16 * V;
    assert!(acc.len() == NB * d && (!SUMS || sums.len() == NB));
    // SAFETY (all loads and stores below): head `k < NB` of `acc` has `d` floats and
    // row `j` of `values` is inside it.
    let mut regs: [[__m512; V]; NB] = std::array::from_fn(|k| {
        std::array::from_fn(|i| unsafe { _mm512_loadu_ps(acc.as_ptr().add(k * d + 16 * i)) })
    });
    let mut total: [f32; NB] = std::array::from_fn(|k| if SUMS { sums[k] } else { 0.0 });
    let values = rows.values;
    assert!(values.len() >= rows.n * d);
    for j in 0..rows.n {
        // One row 16 on at a time: a burst of prefetches every few rows queued behind
        // full fill buffers.
        if rows.prefetch {
            if let Some(ahead) = values.get((j + 16) * d..(j + 17) * d) {
                crate::kernels::prefetch(ahead);
            }
        }
        let v: [__m512; V] = std::array::from_fn(|i| unsafe {
            _mm512_loadu_ps(values.as_ptr().add(j * d + 16 * i))
        });
        for k in 0..NB {
            let w = weight(k, rows.first + j);
            if SUMS {
                total[k] += w;
            }
            let wv = _mm512_set1_ps(w);
            for i in 0..V {
                regs[k][i] = _mm512_fmadd_ps(wv, v[i], regs[k][i]);
            }
        }
    }
    if SUMS {
        sums.copy_from_slice(&total);
    }
    for (k, head) in regs.iter().enumerate() {
        for (i, r) in head.iter().enumerate() {
            unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add(k * d + 16 * i), *r) };
        }
    }
}
