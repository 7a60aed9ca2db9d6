//! The output head for greedy decoding: each branch's next token without reading the
//! whole head.
//!
//! A greedy step needs only the argmax of each branch's logits, but the full product
//! reads every row of the head: 113 MB in f32 for SmolLM2's 49,152 x 576, a fifth of
//! a decode step's bytes. The screen keeps an 8-bit copy of the head (one scale per
//! row, a quarter of the bytes) and, per row, a proven bound on how far the screened
//! logit can lie from the logit [`kernels::linear`] computes, per unit of the input's
//! Euclidean norm. A row can be the argmax only if its upper bound reaches the best
//! lower bound of all rows; those few candidates get their logits from
//! [`kernels::linear_rows`], which are bit for bit the full product's. So the token is
//! exactly the one the full product picks, first index on ties included; the screen
//! changes the bytes read, never the result.
//!
//! The bound, for a weight row `w` (length `k`), its codes `q`, scale `s` and error
//! `e = w - s q`, and an input `x`: the screened logit is `fl(s * fl(q . x))`, the full
//! product's is `fl(w . x)`, and `w . x = s (q . x) + e . x`. A floating-point dot
//! product of `k` terms in any order is within `gamma_k sum |a_i b_i|` of the exact one
//! (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), with
//! `gamma_k = k u / (1 - k u)`, `u = 2^-24`, and Cauchy-Schwarz bounds every sum by
//! norms, so the two logits differ by at most
//! `(|e| + gamma_k (|w| + s |q|) + u s |q| (1 + gamma_k)) |x|`. The radius below doubles
//! every rounding term, and an absolute term covers underflow.

use std::sync::Mutex;

use rayon::prelude::*;

use crate::kernels::{self, WeightRows};
use crate::spread::lock;

/// Screen only when the candidates are at most this share of the rows; beyond it (a
/// nearly flat distribution, or a head too coarse for its 8 bits) the full product is
/// as cheap as reading the candidates' rows one by one.
const MAX_CANDIDATE_SHARE: usize = 8;

/// How many groups of rows ahead the screen kernel prefetches the codes.
const AHEAD: usize = 2;

/// The unit roundoff of f32.
const UNIT: f64 = 1.0 / (1u64 << 24) as f64;

pub struct ScreenedHead {
    rows: usize,
    k: usize,
    /// `rows x k`, row-major: `round(w / scale)`, in -127..=127.
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// Per row: the bound on |screened - full| logit per unit of `|x|`.
    radius: Vec<f64>,
    /// The largest radius.
    widest: f64,
    /// Covers underflow: each of the `k` products and sums can lose at most half of
    /// f32's smallest subnormal.
    absolute: f64,
    /// The last step's screened logits, kept for the next: allocating and zeroing
    /// them (1.5 MB for eight branches) was 0.34-0.37% of eight branches' samples, on
    /// the calling thread while the other waited (0.07-0.08% left, in memset).
    spare: Mutex<Vec<f32>>,
}

impl ScreenedHead {
    /// The screen of a head `w` (`rows x k`), or `None` when a weight is not finite (no
    /// bound holds then, and the full product is used).
    pub fn new(w: WeightRows<'_>, rows: usize, k: usize) -> Option<Self> {
        let len = rows.checked_mul(k)?;
        if rows == 0 || k == 0 {
            return None;
        }
        let mut codes = vec![0i8; len];
        let mut scales = vec![0.0f32; rows];
        let mut radius = vec![0.0f64; rows];
        let gamma = gamma(k);
        let ok = codes
            .par_chunks_mut(k)
            .zip(scales.par_iter_mut())
            .zip(radius.par_iter_mut())
            .enumerate()
            .all(|(o, ((q, s), r))| {
                let row = w.row_f32(o, k);
                if !row.iter().all(|v| v.is_finite()) {
                    return false;
                }
                let amax = row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                *s = amax / 127.0;
                let (mut e2, mut w2, mut q2) = (0.0f64, 0.0f64, 0.0f64);
                for (c, &v) in q.iter_mut().zip(&row) {
                    let code = if *s > 0.0 {
                        (v / *s).round().clamp(-127.0, 127.0)
                    } else {
                        0.0
                    };
                    *c = code as i8;
                    let err = v as f64 - *s as f64 * code as f64;
                    e2 += err * err;
                    w2 += v as f64 * v as f64;
                    q2 += code as f64 * code as f64;
                }
                let sq = *s as f64 * q2.sqrt();
                // f64 rounding of these norms is below 1e-12 relative: the factor
                // covers it.
                *r = (e2.sqrt() + 2.0 * (gamma * (w2.sqrt() + sq) + UNIT * sq * (1.0 + gamma)))
                    * (1.0 + 1e-9);
                r.is_finite()
            });
        let smallest_subnormal = f32::from_bits(1) as f64;
        let widest = radius.iter().copied().fold(0.0, f64::max);
        ok.then_some(Self {
            rows,
            k,
            codes,
            scales,
            radius,
            widest,
            absolute: 2.0 * (k as f64 + 2.0) * smallest_subnormal,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// The argmax of each of the `m` rows of `x` times the head `w` (the weights this
    /// screen was built from), exactly as `argmax(linear(x, m, w))` gives it.
    pub fn argmax(&self, x: &[f32], m: usize, w: WeightRows<'_>) -> Vec<usize> {
        assert_eq!(
            x.len(),
            m * self.k,
            "one input row of {} per branch",
            self.k
        );
        if m > 1 && !kernels::on_cache_line(x) {
            // The screen loads each branch's inputs once per group of rows, as the
            // weight kernels do: see `kernels::linear`.
            return kernels::with_cache_lines(x, |x| self.argmax(x, m, w));
        }
        self.screened_argmax(x, m, w)
            .unwrap_or_else(|| full_argmax(x, m, w, self.rows))
    }

    /// `None` when the screen cannot decide (non-finite input or logits, or too many
    /// candidates), and the full product must.
    fn screened_argmax(&self, x: &[f32], m: usize, w: WeightRows<'_>) -> Option<Vec<usize>> {
        let mut screened = std::mem::take(&mut *lock(&self.spare));
        let got = self.screened_argmax_in(&mut screened, x, m, w);
        *lock(&self.spare) = screened;
        got
    }

    /// [`ScreenedHead::screened_argmax`] with `screened` for the screened logits.
    fn screened_argmax_in(
        &self,
        screened: &mut Vec<f32>,
        x: &[f32],
        m: usize,
        w: WeightRows<'_>,
    ) -> Option<Vec<usize>> {
        let norms = norms(x, self.k);
        if !norms.iter().all(|n| n.is_finite()) {
            return None;
        }
        let chunks = self.screened_logits(x, m, screened);
        let screened = &screened[..];
        if !chunks.iter().all(|c| c.finite) {
            return None;
        }
        let candidates = self.candidates((screened, m), &chunks, &norms);
        let total: usize = candidates.iter().map(Vec::len).sum();
        if total * MAX_CANDIDATE_SHARE > self.rows * m {
            return None;
        }
        // Every candidate row's logits for all branches, as the full product has them.
        let mut union: Vec<usize> = candidates.iter().flatten().copied().collect();
        union.sort_unstable();
        union.dedup();
        let mut exact = vec![0.0f32; union.len() * m];
        kernels::linear_rows(x, m, w, &union, &mut exact);
        if !exact.iter().all(|v| v.is_finite()) {
            // Overflow, which the bound does not cover: the full product decides.
            return None;
        }
        Some(
            candidates
                .iter()
                .enumerate()
                .map(|(b, rows)| {
                    // Ascending rows, strictly greater wins: the first index on ties,
                    // as `kernels::argmax` over the full row.
                    let mut best = (rows[0], f32::NEG_INFINITY);
                    for &o in rows {
                        let j = union
                            .binary_search(&o)
                            .expect("every candidate is in the union");
                        let v = exact[j * m + b];
                        if v > best.1 {
                            best = (o, v);
                        }
                    }
                    best.0
                })
                .collect(),
        )
    }

    /// `out[o * m + b] = scale[o] * (codes[o] . x[b])` (`out` resized to `rows x m`,
    /// every element written), rows spread across the threads, and each chunk's top
    /// logit per branch, found while the chunk is still in the thread's cache: reading
    /// every logit again afterwards took a seventh of the screen's time.
    fn screened_logits(&self, x: &[f32], m: usize, out: &mut Vec<f32>) -> Vec<ChunkTop> {
        out.resize(self.rows * m, 0.0);
        let chunks = Mutex::new(Vec::new());
        kernels::fill_rows(self.rows, m, out, &|rows, part| {
            let mut b0 = 0;
            while b0 < m {
                let group = (m - b0).min(8);
                screen_rows(self, x, m, (b0, group), rows.clone(), part);
                b0 += group;
            }
            let top = ChunkTop::of(part, m);
            lock(&chunks).push(top);
        });
        chunks.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// The rows that can hold each branch's argmax, ascending, from the screened logits
    /// (`rows x m`) and their chunks' tops: among the rows near the branch's top
    /// screened logit, the best lower bound (which is the best of all rows), then the
    /// rows whose upper bound reaches it. A row that can be the argmax screens within
    /// twice the widest half-width of the top: its upper bound reaches the best lower
    /// bound, which is at least the top row's, `top - widest`.
    fn candidates(
        &self,
        (screened, m): (&[f32], usize),
        chunks: &[ChunkTop],
        norms: &[f64],
    ) -> Vec<Vec<usize>> {
        let mut out = Vec::with_capacity(m);
        let mut b0 = 0;
        while b0 < m {
            let group = (m - b0).min(GROUP);
            let lane = |j: usize| {
                let b = b0 + j;
                let top = chunks
                    .iter()
                    .map(|c| c.top[b])
                    .fold(f32::NEG_INFINITY, f32::max) as f64;
                (top - 2.0 * self.widest_half_width(norms[b]), norms[b])
            };
            macro_rules! scan {
                ($($g:literal),*) => {
                    match group {
                        $($g => out.extend(scan_rows::<$g>(self, (screened, m, b0), std::array::from_fn(lane))),)*
                        _ => unreachable!("a group has 1 to {GROUP} branches"),
                    }
                };
            }
            scan!(1, 2, 3, 4, 5, 6, 7, 8);
            b0 += group;
        }
        out
    }

    /// The largest half-width of any row for an input of norm `norm`.
    fn widest_half_width(&self, norm: f64) -> f64 {
        self.widest * norm + self.absolute
    }
}

/// A chunk of rows' top screened logit per branch.
struct ChunkTop {
    top: Vec<f32>,
    /// Every screened logit in the chunk is finite.
    finite: bool,
}

impl ChunkTop {
    fn of(part: &[f32], m: usize) -> Self {
        let mut top = vec![f32::NEG_INFINITY; m];
        let mut finite = true;
        for logits in part.chunks_exact(m) {
            for (t, &c) in top.iter_mut().zip(logits) {
                finite &= c.is_finite();
                *t = t.max(c);
            }
        }
        Self { top, finite }
    }
}

/// Branches whose candidates [`scan_rows`] finds in one pass over the rows: eight f64
/// lanes, one AVX-512 register.
const GROUP: usize = 8;

/// The candidates of the `G` branches from `b0` (`lanes[j]`: branch `b0 + j`'s floor
/// and input norm), ascending, from the screened logits (`rows x m`): the best lower
/// bound of the rows at or above each branch's floor, and those rows whose upper
/// bound reaches it. The branches side by side, so that one pass reads the logits
/// once for all of them and vectorises; each lane's f64 arithmetic is that branch's
/// own, unfused, so the rows are those each branch finds alone (a test compares).
///
/// The rows at or above the floor are most of them (23,000 to 44,000 of 49,152 in
/// steps of the default model). Each branch scanning them on its own, twice, took
/// 1.8 to 2.3 ms of a step of eight branches (of about 27 ms) and 0.32 to 0.50 ms of
/// a step of one; this takes 0.42 to 0.43 and 0.30 to 0.32 (medians over a decode's
/// steps, builds alternated; `docs/BENCHMARKS.md`).
fn scan_rows<const G: usize>(
    head: &ScreenedHead,
    logits: (&[f32], usize, usize),
    lanes: [(f64, f64); G],
) -> [Vec<usize>; G] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (just detected).
        return unsafe { scan_rows_avx512(head, logits, lanes) };
    }
    scan_rows_body(head, logits, lanes)
}

/// [`scan_rows`] compiled with AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scan_rows_avx512<const G: usize>(
    head: &ScreenedHead,
    logits: (&[f32], usize, usize),
    lanes: [(f64, f64); G],
) -> [Vec<usize>; G] {
    scan_rows_body(head, logits, lanes)
}

#[inline(always)]
fn scan_rows_body<const G: usize>(
    head: &ScreenedHead,
    (screened, m, b0): (&[f32], usize, usize),
    lanes: [(f64, f64); G],
) -> [Vec<usize>; G] {
    let floor: [f64; G] = lanes.map(|(f, _)| f);
    let norm: [f64; G] = lanes.map(|(_, n)| n);
    let row = |o: usize| -> &[f32; G] {
        screened[o * m + b0..o * m + b0 + G]
            .try_into()
            .expect("G logits")
    };
    let bounds = |o: usize, j: usize| {
        let v = row(o)[j] as f64;
        let half_width = head.radius[o] * norm[j] + head.absolute;
        (v >= floor[j], v - half_width, v + half_width)
    };
    // One pass: the best lower bound so far only grows, so a row whose upper bound
    // falls short of it now never reaches the final one. The rows left are few and
    // are tested against the final bound after the pass. Rows go in blocks of four,
    // their lower bounds first, so that the running maximum is one chain per block.
    let mut best_low = [f64::NEG_INFINITY; G];
    let mut maybe: Vec<(usize, u32)> = Vec::new();
    let mut o0 = 0;
    while o0 < head.rows {
        let block = o0..(o0 + 4).min(head.rows);
        let mut low = [f64::NEG_INFINITY; G];
        for o in block.clone() {
            for (j, low) in low.iter_mut().enumerate() {
                let (near, l, _) = bounds(o, j);
                let l = if near { l } else { f64::NEG_INFINITY };
                *low = if l > *low { l } else { *low };
            }
        }
        for (best, &l) in best_low.iter_mut().zip(&low) {
            *best = if l > *best { l } else { *best };
        }
        for o in block {
            // Whether any branch keeps the row first (one vector comparison), and
            // which ones only for the few that do.
            let mut any = false;
            for (j, &best) in best_low.iter().enumerate() {
                let (near, _, high) = bounds(o, j);
                any |= near & (high >= best);
            }
            if any {
                let mut hits = 0u32;
                for (j, &best) in best_low.iter().enumerate() {
                    let (near, _, high) = bounds(o, j);
                    hits |= u32::from(near && high >= best) << j;
                }
                maybe.push((o, hits));
            }
        }
        o0 += 4;
    }
    let mut rows: [Vec<usize>; G] = std::array::from_fn(|_| Vec::new());
    for (o, mut hits) in maybe {
        while hits != 0 {
            let j = hits.trailing_zeros() as usize;
            if bounds(o, j).2 >= best_low[j] {
                rows[j].push(o);
            }
            hits &= hits - 1;
        }
    }
    rows
}

/// The Euclidean norm of each `k`-long row of `x`, rounded up past f64's own
/// rounding.
fn norms(x: &[f32], k: usize) -> Vec<f64> {
    x.chunks(k)
        .map(|row| row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() * (1.0 + 1e-12))
        .collect()
}

fn gamma(k: usize) -> f64 {
    let ku = (k as f64 + 1.0) * UNIT;
    ku / (1.0 - ku)
}

/// Each branch's argmax of the full product `x . w^T` (`rows` logits per branch).
pub(crate) fn full_argmax(x: &[f32], m: usize, w: WeightRows<'_>, rows: usize) -> Vec<usize> {
    let mut logits = vec![0.0f32; m * rows];
    kernels::linear(x, m, w, rows, &mut logits);
    logits.chunks(rows).map(kernels::argmax).collect()
}

/// The screened logits of `rows` for the branches `b0..b0 + group` (at most 8) into
/// `part` (`rows.len() x m`).
fn screen_rows(
    head: &ScreenedHead,
    x: &[f32],
    m: usize,
    (b0, group): (usize, usize),
    rows: std::ops::Range<usize>,
    part: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature the kernels are compiled for was just detected.
        unsafe {
            match group {
                1 => screen_avx512::<1, 4>(head, x, m, b0, rows, part),
                2 => screen_avx512::<2, 2>(head, x, m, b0, rows, part),
                3 => screen_avx512::<3, 2>(head, x, m, b0, rows, part),
                4 => screen_avx512::<4, 2>(head, x, m, b0, rows, part),
                5 => screen_avx512::<5, 2>(head, x, m, b0, rows, part),
                6 => screen_avx512::<6, 2>(head, x, m, b0, rows, part),
                7 => screen_avx512::<7, 2>(head, x, m, b0, rows, part),
                _ => screen_avx512::<8, 2>(head, x, m, b0, rows, part),
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features the kernels are compiled for were just detected.
        unsafe {
            match group {
                1 => screen_avx2::<1, 4>(head, x, m, b0, rows, part),
                2 => screen_avx2::<2, 2>(head, x, m, b0, rows, part),
                3 => screen_avx2::<3, 2>(head, x, m, b0, rows, part),
                4 => screen_avx2::<4, 2>(head, x, m, b0, rows, part),
                // Four branches by two rows, twice, rather than all by one row: each
                // widened code then serves four products instead of one load of an
                // input per product.
                _ => {
                    screen_avx2::<4, 2>(head, x, m, b0, rows.clone(), part);
                    return screen_rows(head, x, m, (b0 + 4, group - 4), rows, part);
                }
            }
        }
        return;
    }
    let k = head.k;
    for (j, o) in rows.enumerate() {
        let codes = &head.codes[o * k..(o + 1) * k];
        for b in b0..b0 + group {
            let xb = &x[b * k..(b + 1) * k];
            let dot: f32 = codes.iter().zip(xb).map(|(&c, &v)| c as f32 * v).sum();
            part[j * m + b] = head.scales[o] * dot;
        }
    }
}

/// `M` branches and `R` rows at a time: each 16 codes are widened once (sign-extend,
/// convert) and multiplied into all `M` branches' accumulators.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn screen_avx512<const M: usize, const R: usize>(
    head: &ScreenedHead,
    x: &[f32],
    m: usize,
    b0: usize,
    rows: std::ops::Range<usize>,
    part: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k = head.k;
    assert!(rows.end <= head.rows && b0 + M <= m && x.len() >= m * k);
    assert!(part.len() >= rows.len() * m);
    let full = k / 16 * 16;
    let widen = |o: usize, i: usize| {
        // SAFETY: `o < head.rows` and `i + 16 <= k` at every call below.
        unsafe {
            let bytes = _mm_loadu_si128(head.codes.as_ptr().add(o * k + i) as *const __m128i);
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))
        }
    };
    // SAFETY: `b < M`, `b0 + M <= m` and `i + 16 <= k`, inside `x` (asserted above).
    let input = |b: usize, i: usize| unsafe { _mm512_loadu_ps(x.as_ptr().add((b0 + b) * k + i)) };
    let finish = |o: usize, b: usize, sum: f32| head.logit(o, &x[(b0 + b) * k..], full, sum);
    let first = rows.start;
    let mut o = first;
    while o + R <= rows.end {
        let mut acc = [[_mm512_setzero_ps(); M]; R];
        // The rows AHEAD groups on, as far into them as this group is into its own:
        // without it the codes streamed at half the f32 kernel's bytes per second.
        let ahead = head.codes.as_ptr().wrapping_add((o + AHEAD * R) * k);
        for i in (0..full).step_by(16) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(R * i));
            for (r, a) in acc.iter_mut().enumerate() {
                let wv = widen(o + r, i);
                for (b, ab) in a.iter_mut().enumerate() {
                    *ab = _mm512_fmadd_ps(wv, input(b, i), *ab);
                }
            }
        }
        // SAFETY: the CPU has AVX-512F (this function's contract).
        let sums = unsafe { crate::kernels::reduce_rows(&acc) };
        for (r, row) in sums.iter().enumerate() {
            for (b, &sum) in row.iter().enumerate() {
                part[(o + r - first) * m + b0 + b] = finish(o + r, b, sum);
            }
        }
        o += R;
    }
    while o < rows.end {
        let mut acc = [_mm512_setzero_ps(); M];
        for i in (0..full).step_by(16) {
            let wv = widen(o, i);
            for (b, ab) in acc.iter_mut().enumerate() {
                *ab = _mm512_fmadd_ps(wv, input(b, i), *ab);
            }
        }
        for (b, &ab) in acc.iter().enumerate() {
            part[(o - first) * m + b0 + b] = finish(o, b, _mm512_reduce_add_ps(ab));
        }
        o += 1;
    }
}

impl ScreenedHead {
    /// Row `o`'s screened logit for the input row `x` (`k` long at least), given
    /// `sum`, its codes' first `full` products: the rest added one by one, then the
    /// row's scale applied.
    #[inline(always)]
    fn logit(&self, o: usize, x: &[f32], full: usize, sum: f32) -> f32 {
        let k = self.k;
        let codes = &self.codes[o * k + full..(o + 1) * k];
        let tail: f32 = codes
            .iter()
            .zip(&x[full..k])
            .map(|(&c, &v)| c as f32 * v)
            .sum();
        self.scales[o] * (sum + tail)
    }
}

/// [`screen_avx512`] for CPUs with AVX2 but not AVX-512: 8 codes at a time, `M * R`
/// accumulators of 8 lanes (at most 8 of AVX2's 16 registers). The bound holds for
/// any order of the sums, so these need not match the AVX-512 kernel's bits. On a
/// Zen 1 EPYC the scalar loop it replaces was a sixth of a one-branch decode step.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn screen_avx2<const M: usize, const R: usize>(
    head: &ScreenedHead,
    x: &[f32],
    m: usize,
    b0: usize,
    rows: std::ops::Range<usize>,
    part: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k = head.k;
    assert!(rows.end <= head.rows && b0 + M <= m && x.len() >= m * k);
    assert!(part.len() >= rows.len() * m);
    let full = k / 8 * 8;
    let widen = |o: usize, i: usize| {
        // SAFETY: `o < head.rows` and `i + 8 <= k` at every call below.
        unsafe {
            let bytes = _mm_loadl_epi64(head.codes.as_ptr().add(o * k + i) as *const __m128i);
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
        }
    };
    // SAFETY: `b < M`, `b0 + M <= m` and `i + 8 <= k`, inside `x` (asserted above).
    let input = |b: usize, i: usize| unsafe { _mm256_loadu_ps(x.as_ptr().add((b0 + b) * k + i)) };
    let finish = |o: usize, b: usize, acc: __m256| -> f32 {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        head.logit(o, &x[(b0 + b) * k..], full, lanes.iter().sum())
    };
    let first = rows.start;
    let mut o = first;
    while o < rows.end {
        // The last group of a chunk may be short: its rows go one at a time.
        let group = if o + R <= rows.end { R } else { 1 };
        let mut acc = [[_mm256_setzero_ps(); M]; R];
        let ahead = head.codes.as_ptr().wrapping_add((o + AHEAD * R) * k);
        for i in (0..full).step_by(8) {
            if i % 64 == 0 {
                // The R lines the group AHEAD on reads over these 64 columns.
                for line in 0..R {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(R * i + 64 * line));
                }
            }
            for (r, a) in acc.iter_mut().enumerate().take(group) {
                let wv = widen(o + r, i);
                for (b, ab) in a.iter_mut().enumerate() {
                    *ab = _mm256_fmadd_ps(wv, input(b, i), *ab);
                }
            }
        }
        for (r, a) in acc.iter().enumerate().take(group) {
            for (b, &ab) in a.iter().enumerate() {
                part[(o + r - first) * m + b0 + b] = finish(o + r, b, ab);
            }
        }
        o += group;
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::pattern::{inputs, weights};

    fn full(x: &[f32], m: usize, w: WeightRows<'_>, rows: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * rows];
        kernels::linear(x, m, w, rows, &mut out);
        out
    }

    /// |screened - full| <= radius |x| + absolute for every row and branch.
    fn assert_bound_holds(head: &ScreenedHead, x: &[f32], m: usize, w: WeightRows<'_>) {
        let (rows, k) = (head.rows, head.k);
        // A reused buffer, longer than needed and all NaN: every logit is written.
        let mut screened = vec![f32::NAN; rows * m + 5];
        head.screened_logits(x, m, &mut screened);
        let exact = full(x, m, w, rows);
        for b in 0..m {
            let norm = x[b * k..(b + 1) * k]
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum::<f64>()
                .sqrt();
            for o in 0..rows {
                let gap = (screened[o * m + b] as f64 - exact[b * rows + o] as f64).abs();
                let bound = head.radius[o] * norm + head.absolute;
                assert!(gap <= bound, "row {o} branch {b}: {gap} > {bound}");
            }
        }
    }

    fn head_and_inputs() -> impl Strategy<Value = (usize, usize, usize, Vec<f32>, Vec<f32>)> {
        (
            1usize..12,
            1usize..80,
            prop::sample::select(vec![1usize, 15, 16, 37, 64, 100]),
        )
            .prop_flat_map(|(m, rows, k)| {
                (
                    Just(m),
                    Just(rows),
                    Just(k),
                    prop::collection::vec(-2.0f32..2.0, rows * k),
                    prop::collection::vec(-30.0f32..30.0, m * k),
                )
            })
    }

    /// Branch `b`'s candidates by their definition alone: every row scanned, in f64.
    fn candidates_of_one(
        head: &ScreenedHead,
        screened: &[f32],
        m: usize,
        b: usize,
        norm: f64,
    ) -> Vec<usize> {
        let logit = |o: usize| screened[o * m + b] as f64;
        let half_width = |o: usize| head.radius[o] * norm + head.absolute;
        let top = (0..head.rows).map(logit).fold(f64::NEG_INFINITY, f64::max);
        let floor = top - 2.0 * (head.widest * norm + head.absolute);
        let near: Vec<usize> = (0..head.rows).filter(|&o| logit(o) >= floor).collect();
        let best_low = near
            .iter()
            .map(|&o| logit(o) - half_width(o))
            .fold(f64::NEG_INFINITY, f64::max);
        near.into_iter()
            .filter(|&o| logit(o) + half_width(o) >= best_low)
            .collect()
    }

    proptest! {
        #[test]
        fn candidates_found_together_are_each_branchs_own((m, rows, k, w, x) in head_and_inputs()) {
            let head = ScreenedHead::new(WeightRows::F32(&w), rows, k).unwrap();
            let mut screened = Vec::new();
            let chunks = head.screened_logits(&x, m, &mut screened);
            let norms = norms(&x, k);
            let got = head.candidates((&screened, m), &chunks, &norms);
            for (b, rows_b) in got.iter().enumerate() {
                prop_assert_eq!(rows_b, &candidates_of_one(&head, &screened, m, b, norms[b]));
            }
        }

        #[test]
        fn the_bound_holds_and_the_token_is_the_full_products((m, rows, k, w, x) in head_and_inputs()) {
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            for weights in [WeightRows::F32(&w), WeightRows::Bf16(&wb)] {
                let head = ScreenedHead::new(weights, rows, k).unwrap();
                assert_bound_holds(&head, &x, m, weights);
                let want: Vec<usize> = full(&x, m, weights, rows).chunks(rows).map(kernels::argmax).collect();
                prop_assert_eq!(head.argmax(&x, m, weights), want);
            }
        }
    }

    /// Rows 0 and 1 are built so that the screen ranks them the wrong way round and
    /// only the full radius keeps the true argmax (row 0) among the candidates: with
    /// `x` all ones and scale 2^-10, row 0's weights sit 0.49 of a step above their
    /// codes and row 1's 0.49 below, so each error is as large as the bound allows
    /// (Cauchy-Schwarz is tight when the error is parallel to `x`).
    #[test]
    fn an_argmax_that_screens_below_a_rival_is_still_found() {
        let (k, rows) = (64, 64);
        let s = 1.0f32 / 1024.0;
        let mut w = vec![0.0f32; rows * k];
        for o in 0..rows {
            w[o * k] = 127.0 * s;
        }
        for i in 1..k {
            w[i] = (10.0 + 0.49) * s;
            w[k + i] = if i <= 48 { 11.0 - 0.49 } else { 10.0 - 0.49 } * s;
        }
        // Rows 2.. hold only their first weight: far below both.
        let x = vec![1.0f32; k];
        let weights = WeightRows::F32(&w);
        let head = ScreenedHead::new(weights, rows, k).unwrap();
        let mut screened = Vec::new();
        head.screened_logits(&x, 1, &mut screened);
        let exact = full(&x, 1, weights, rows);
        assert!(screened[1] > screened[0] + 40.0 * s, "row 1 screens higher");
        assert!(exact[0] > exact[1] + 10.0 * s, "row 0 is the argmax");
        // The screen decides it (two candidates of 64 rows), and decides it right.
        assert_eq!(head.screened_argmax(&x, 1, weights), Some(vec![0]));
        // The bound is nearly tight here: the error is over 90% of it.
        let gap = (exact[0] - screened[0]) as f64;
        assert!(
            gap > 0.9 * head.radius[0] * 8.0,
            "{gap} vs radius {}",
            head.radius[0] * 8.0
        );
    }

    #[test]
    fn ties_go_to_the_first_row_and_flat_heads_fall_back_to_the_full_product() {
        let (k, rows) = (40, 200);
        let mut w: Vec<f32> = weights(rows * k, 90.0);
        let x: Vec<f32> = inputs(2 * k, 10.0);
        let best = kernels::argmax(&full(&x[..k], 1, WeightRows::F32(&w), rows));
        // The argmax row copied to an earlier and a later row: three exact ties.
        let row: Vec<f32> = w[best * k..(best + 1) * k].to_vec();
        let (early, late) = (best / 2, (best + rows) / 2 + 1);
        w[early * k..(early + 1) * k].copy_from_slice(&row);
        w[late * k..(late + 1) * k].copy_from_slice(&row);
        let head = ScreenedHead::new(WeightRows::F32(&w), rows, k).unwrap();
        let got = head
            .screened_argmax(&x, 2, WeightRows::F32(&w))
            .expect("decided by the screen");
        assert_eq!(got[0], early.min(best));
        // Every row the same: all are candidates, so the full product decides.
        let flat: Vec<f32> = row.iter().cycle().take(rows * k).copied().collect();
        let head = ScreenedHead::new(WeightRows::F32(&flat), rows, k).unwrap();
        assert_eq!(head.screened_argmax(&x, 2, WeightRows::F32(&flat)), None);
        assert_eq!(head.argmax(&x, 2, WeightRows::F32(&flat)), vec![0, 0]);
    }

    #[test]
    fn non_finite_weights_or_inputs_leave_it_to_the_full_product() {
        let (k, rows) = (16, 64);
        let mut w: Vec<f32> = weights(rows * k, 90.0);
        let mut x: Vec<f32> = (0..k).map(|i| i as f32 / 7.0).collect();
        x[3] = f32::NAN;
        let head = ScreenedHead::new(WeightRows::F32(&w), rows, k).unwrap();
        assert_eq!(head.screened_argmax(&x, 1, WeightRows::F32(&w)), None);
        let want = kernels::argmax(&full(&x, 1, WeightRows::F32(&w), rows));
        assert_eq!(head.argmax(&x, 1, WeightRows::F32(&w)), vec![want]);
        w[5] = f32::INFINITY;
        assert!(ScreenedHead::new(WeightRows::F32(&w), rows, k).is_none());
    }
}
