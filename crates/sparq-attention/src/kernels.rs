//! Numeric kernels shared by the methods: dot products, a vectorisable `exp`, softmax,
//! exact attention of a head group over all or some positions, and O(n) top-k
//! selection. Written as plain loops over fixed-width chunks so that the compiler
//! vectorises them; every method is "score, then keep the top k" on top of these.

use std::cell::RefCell;

use crate::cache::KvView;

/// Accumulator width of the reductions: wide enough for two SSE or one AVX register, so
/// the compiler can vectorise a sum it may not reassociate on its own.
const LANES: usize = 8;

/// Positions per block when SparQ accumulates approximate logits: the block of each of
/// the `r` key rows and of the `g` logit rows stays in L1 while it is reused.
pub(crate) const BLOCK: usize = 512;

#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += a * x`.
#[inline(always)]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `y += a0*x0 + a1*x1 + a2*x2 + a3*x3`: four rows per pass over `y` halve the loads
/// and stores of the accumulator compared with four `axpy` calls.
#[inline(always)]
pub(crate) fn axpy4(y: &mut [f32], a: [f32; 4], x: [&[f32]; 4]) {
    let n = y.len();
    let (x0, x1, x2, x3) = (&x[0][..n], &x[1][..n], &x[2][..n], &x[3][..n]);
    for i in 0..n {
        y[i] += (a[0] * x0[i] + a[1] * x1[i]) + (a[2] * x2[i] + a[3] * x3[i]);
    }
}

/// `e^x` to within a few f32 ulps, branch-free so that loops over it vectorise (the
/// library `expf` is a scalar call, and SparQ evaluates `g * S` of them per step).
/// `e^x = 2^n * e^t` with `n = round(x / ln 2)`, `|t| <= ln(2)/2`; the degree-7 Taylor
/// polynomial of `e^t` on that interval errs by less than `0.35^8 / 8! < 6e-9`, below
/// f32 rounding. Inputs are clamped to the range where `2^n` is a normal float.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding and removing 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that `n * LN2_HI` is exact for |n| < 2^12 (Cody and Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let t = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * t + 1.0 / 720.0;
    let p = p * t + 1.0 / 120.0;
    let p = p * t + 1.0 / 24.0;
    let p = p * t + 1.0 / 6.0;
    let p = p * t + 0.5;
    let p = p * t + 1.0;
    let p = p * t + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * two_n
}

/// The largest entry (`-inf` for an empty slice).
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let c = xs.chunks_exact(LANES);
    let rest = c.remainder();
    for x in c {
        for j in 0..LANES {
            acc[j] = if x[j] > acc[j] { x[j] } else { acc[j] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(rest) {
        m = if x > m { x } else { m };
    }
    m
}

/// `sum_i e^(x_i - m)` without storing the terms.
#[inline(always)]
pub(crate) fn exp_sum(xs: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let c = xs.chunks_exact(LANES);
    let rest = c.remainder();
    for x in c {
        for j in 0..LANES {
            acc[j] += exp(x[j] - m);
        }
    }
    let mut tail = 0.0;
    for &x in rest {
        tail += exp(x - m);
    }
    acc.iter().sum::<f32>() + tail
}

/// `x_i <- e^(x_i - m)`, returning their sum.
#[inline(always)]
pub(crate) fn exp_in_place(xs: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut c = xs.chunks_exact_mut(LANES);
    for x in &mut c {
        for j in 0..LANES {
            x[j] = exp(x[j] - m);
            acc[j] += x[j];
        }
    }
    let mut tail = 0.0;
    for x in c.into_remainder() {
        *x = exp(*x - m);
        tail += *x;
    }
    acc.iter().sum::<f32>() + tail
}

/// Normalises each of the `g` rows of `x` (`g x n`) into a softmax.
pub(crate) fn softmax_rows(x: &mut [f32], n: usize) {
    if n == 0 {
        return;
    }
    for row in x.chunks_exact_mut(n) {
        let m = max(row);
        let inv = 1.0 / exp_in_place(row, m);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// `q / sqrt(d)` in `buf`: folding the scale into the query saves a multiply per score.
pub(crate) fn scaled_query<'b>(q: &[f32], d: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
    let scale = 1.0 / (d as f32).sqrt();
    buf.clear();
    buf.extend(q.iter().map(|x| x * scale));
    buf
}

/// A slice of `n` entries of `buf`, growing it when needed. Contents are unspecified:
/// callers write before they read, so the buffer is not cleared on every step.
pub(crate) fn slots<T: Copy + Default>(buf: &mut Vec<T>, n: usize) -> &mut [T] {
    if buf.len() < n {
        buf.resize(n, T::default());
    }
    &mut buf[..n]
}

/// `logits[h * stride + j] = qs_h . row(j)` for the group's heads and `j < n`.
#[inline(always)]
fn group_logits<'a>(
    qs: &[f32],
    d: usize,
    n: usize,
    row: impl Fn(usize) -> &'a [f32],
    logits: &mut [f32],
    stride: usize,
) {
    let g = qs.len() / d;
    for j in 0..n {
        let k = row(j);
        for h in 0..g {
            logits[h * stride + j] = dot(&qs[h * d..(h + 1) * d], k);
        }
    }
}

/// `out_h += sum_j w[h * stride + j] * row(j)` for the group's heads and `j < n`.
#[inline(always)]
fn group_accumulate<'a>(
    w: &[f32],
    stride: usize,
    d: usize,
    n: usize,
    row: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    let g = out.len() / d;
    let mut j = 0;
    while j + 4 <= n {
        let rows = [row(j), row(j + 1), row(j + 2), row(j + 3)];
        for h in 0..g {
            let wh = &w[h * stride + j..h * stride + j + 4];
            axpy4(&mut out[h * d..(h + 1) * d], [wh[0], wh[1], wh[2], wh[3]], rows);
        }
        j += 4;
    }
    while j < n {
        let v = row(j);
        for h in 0..g {
            axpy(&mut out[h * d..(h + 1) * d], w[h * stride + j], v);
        }
        j += 1;
    }
}

/// Exact logits (scaled query `qs`, `g x d`) of every position into `logits`
/// (`g x S`, head-major). Each key row is read once for the whole group.
pub(crate) fn all_logits(qs: &[f32], kv: &KvView<'_>, logits: &mut [f32]) {
    let (d, s) = (kv.head_dim(), kv.len());
    for (off, seg) in kv.segments() {
        let keys = seg.keys();
        group_logits(qs, d, seg.len(), |j| &keys[j * d..(j + 1) * d], &mut logits[off..], s);
    }
}

/// `out_h = sum_p w[h * S + p] * V[p]` over every position.
pub(crate) fn all_accumulate(w: &[f32], kv: &KvView<'_>, out: &mut [f32]) {
    let (d, s) = (kv.head_dim(), kv.len());
    out.fill(0.0);
    for (off, seg) in kv.segments() {
        let values = seg.values();
        group_accumulate(&w[off..], s, d, seg.len(), |j| &values[j * d..(j + 1) * d], out);
    }
}

/// Exact logits of the positions `sel` into `logits` (`g x sel.len()`).
pub(crate) fn subset_logits(qs: &[f32], kv: &KvView<'_>, sel: &[u32], logits: &mut [f32]) {
    let n = sel.len();
    group_logits(qs, kv.head_dim(), n, |j| kv.key(sel[j] as usize), logits, n);
}

/// `out_h = sum_j w[h * n + j] * V[sel[j]]`.
pub(crate) fn subset_accumulate(w: &[f32], kv: &KvView<'_>, sel: &[u32], out: &mut [f32]) {
    let n = sel.len();
    out.fill(0.0);
    group_accumulate(w, n, kv.head_dim(), n, |j| kv.value(sel[j] as usize), out);
}

/// Dense attention of the group over every position. The softmax is left unnormalised
/// through the value pass and the output divided once at the end, saving a pass.
pub(crate) fn dense(q: &[f32], kv: &KvView<'_>, out: &mut [f32], sc: &mut Scratch) {
    let (d, s) = (kv.head_dim(), kv.len());
    let g = q.len() / d;
    let qs = scaled_query(q, d, &mut sc.qs);
    let logits = slots(&mut sc.logits, g * s);
    all_logits(qs, kv, logits);
    let mut inv = [0.0f32; 64];
    let mut inv_big = Vec::new();
    let inv: &mut [f32] = if g <= inv.len() {
        &mut inv[..g]
    } else {
        inv_big.resize(g, 0.0);
        &mut inv_big
    };
    for (h, row) in logits.chunks_exact_mut(s).enumerate() {
        let m = max(row);
        inv[h] = 1.0 / exp_in_place(row, m);
    }
    all_accumulate(logits, kv, out);
    for (h, o) in out.chunks_exact_mut(d).enumerate() {
        for x in o.iter_mut() {
            *x *= inv[h];
        }
    }
}

/// Renormalised exact attention of the group over the positions `sel` (ascending);
/// the normalised weights stay in `sc.weights` (`g x sel.len()`), for H2O's scores.
pub(crate) fn attend_subset(
    q: &[f32],
    kv: &KvView<'_>,
    sel: &[u32],
    out: &mut [f32],
    qs_buf: &mut Vec<f32>,
    weights: &mut Vec<f32>,
) {
    let d = kv.head_dim();
    let g = q.len() / d;
    let n = sel.len();
    let qs = scaled_query(q, d, qs_buf);
    let w = slots(weights, g * n);
    subset_logits(qs, kv, sel, w);
    softmax_rows(w, n);
    subset_accumulate(w, kv, sel, out);
}

/// Scratch buffers reused across calls on one thread, so a decode step allocates
/// nothing once warm (the runner calls `attend` from rayon workers).
#[derive(Default)]
pub(crate) struct Scratch {
    pub qs: Vec<f32>,
    pub logits: Vec<f32>,
    pub rank: Vec<f32>,
    pub weights: Vec<f32>,
    pub selected: Vec<u32>,
    pub candidates: Vec<u32>,
    pub top: TopK,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers (fresh ones if already borrowed).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut sc) => f(&mut sc),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Buffers of the top-k selection.
#[derive(Default)]
pub(crate) struct TopK {
    keys: Vec<u32>,
    cand: Vec<u32>,
}

/// Maps a float to an unsigned integer with the same order, so selection can bucket on
/// bits: negatives have all bits flipped, non-negatives only the sign bit.
#[inline(always)]
fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    b ^ (((b as i32) >> 31) as u32 | 0x8000_0000)
}

/// Counts of `bucket(x)` for `x` in `xs`, with four interleaved tables so that runs of
/// equal buckets (common: nearby scores share their top bits) do not serialise on one
/// counter.
#[inline(always)]
fn histogram(xs: impl Iterator<Item = u32>, bucket: impl Fn(u32) -> usize) -> [u32; 2048] {
    let mut t = [[0u32; 2048]; 4];
    let mut i = 0usize;
    for x in xs {
        t[i & 3][bucket(x) & 2047] += 1;
        i = i.wrapping_add(1);
    }
    let mut h = [0u32; 2048];
    for (b, c) in h.iter_mut().enumerate() {
        *c = t[0][b] + t[1][b] + t[2][b] + t[3][b];
    }
    h
}

/// The bucket holding the `want`-th largest entry (1-based) and how many entries lie
/// in higher buckets.
fn find_bucket(h: &[u32; 2048], want: usize) -> (usize, usize) {
    let mut above = 0usize;
    for b in (0..2048).rev() {
        let c = h[b] as usize;
        if above + c >= want {
            return (b, above);
        }
        above += c;
    }
    unreachable!("top-k asked for more entries than it was given")
}

/// Indices (ascending) of the `k` largest entries of `scores` into `out`; among equal
/// scores at the cut the lower indices are taken. Radix selection on order-preserving
/// integer keys (11, 11 and 10 bits): O(n) and branch-free in the passes over all
/// entries, unlike a comparison-based select whose partition branches mispredict.
pub(crate) fn top_k(scores: &[f32], k: usize, buf: &mut TopK, out: &mut Vec<u32>) {
    let n = scores.len();
    out.clear();
    if k >= n {
        out.extend(0..n as u32);
        return;
    }
    if k == 0 {
        return;
    }
    let keys = slots(&mut buf.keys, n);
    for (key, &x) in keys.iter_mut().zip(scores) {
        *key = order_key(x);
    }
    let keys = &*keys;

    // Level 1: the top 11 bits over all entries, then keep only the entries of the
    // bucket holding the cut.
    let h = histogram(keys.iter().copied(), |x| (x >> 21) as usize);
    let (b1, above1) = find_bucket(&h, k);
    let mut want = k - above1;
    let cand = slots(&mut buf.cand, n + 1);
    let mut m = 0;
    for (i, &x) in keys.iter().enumerate() {
        cand[m] = i as u32;
        m += ((x >> 21) as usize == b1) as usize;
    }
    // Levels 2 and 3 on the few survivors: the middle 11 bits, then the low 10.
    let h = histogram(cand[..m].iter().map(|&i| keys[i as usize]), |x| ((x >> 10) & 2047) as usize);
    let (b2, above2) = find_bucket(&h, want);
    want -= above2;
    let mut m2 = 0;
    for t in 0..m {
        let i = cand[t];
        cand[m2] = i;
        m2 += (((keys[i as usize] >> 10) & 2047) as usize == b2) as usize;
    }
    let h = histogram(cand[..m2].iter().map(|&i| keys[i as usize]), |x| (x & 1023) as usize);
    let (b3, above3) = find_bucket(&h, want);
    want -= above3;
    let cut = ((b1 as u32) << 21) | ((b2 as u32) << 10) | b3 as u32;

    // Everything above the cut, then the first `want` entries equal to it.
    out.resize(k + 1, 0);
    let mut taken = 0;
    let mut ties = want;
    for (i, &x) in keys.iter().enumerate() {
        let tie = x == cut;
        let take = x > cut || (tie && ties > 0);
        out[taken] = i as u32;
        taken += take as usize;
        ties -= (take && tie) as usize;
    }
    debug_assert_eq!(taken, k);
    out.truncate(k);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_top_k(scores: &[f32], k: usize) -> Vec<u32> {
        let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
        idx.sort_by(|&a, &b| {
            scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b))
        });
        idx.truncate(k);
        idx.sort_unstable();
        idx
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn top_k_matches_a_sort_including_ties_and_signs() {
        let mut seed = 7;
        let mut buf = TopK::default();
        let mut out = Vec::new();
        for n in [1usize, 2, 5, 33, 1000, 5000] {
            // Continuous scores, coarse scores with many ties, and mixed signs with zeros.
            let sets: Vec<Vec<f32>> = vec![
                (0..n).map(|_| lcg(&mut seed) * 10.0).collect(),
                (0..n).map(|_| (lcg(&mut seed) * 3.0).round()).collect(),
                (0..n).map(|i| if i % 3 == 0 { 0.0 } else { lcg(&mut seed) * 1e-30 }).collect(),
                (0..n).map(|_| 1.0 + lcg(&mut seed) * 1e-6).collect(),
            ];
            for scores in &sets {
                for k in [0, 1, n / 3, n.saturating_sub(1), n, n + 2] {
                    top_k(scores, k, &mut buf, &mut out);
                    assert_eq!(out, naive_top_k(scores, k), "n={n} k={k}");
                }
            }
        }
    }

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        let mut x = -87.0f32;
        let mut worst = 0.0f64;
        while x <= 10.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
    }

    #[test]
    fn order_key_preserves_order() {
        let xs = [f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) <= order_key(w[1]), "{} {}", w[0], w[1]);
        }
    }
}
