//! Numeric kernels shared by the methods: dot products, a vectorisable `exp`, softmax,
//! exact attention of a head group over all or some positions, and O(n) top-k
//! selection. Written as plain loops over fixed-width chunks so that the compiler
//! vectorises them; every method is "score, then keep the top k" on top of these.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cache::{HeadKv, KvView};

/// Compiles a function three times, for the baseline target, with AVX2 and with
/// AVX-512, and runs the widest build the CPU has. The kernels are plain loops left to
/// the auto-vectoriser, which then uses 8- or 16-wide registers instead of SSE2's 4;
/// everything the body calls is `#[inline(always)]` so that it is compiled into every
/// build. The AVX-512 build made the prefill 2 to 4% faster (its causal softmax),
/// measured back to back twice on the 2-core development machine.
macro_rules! multiversion {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                // With `fma`: `mul_add` is then one instruction, not a libm call.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if $crate::kernels::simd_enabled()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx2")
                {
                    // SAFETY: `avx512` requires no more than the CPU features just detected.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::kernels::simd_enabled()
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: `avx2` requires no more than the CPU features just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

static SIMD: AtomicBool = AtomicBool::new(true);

/// Whether kernels may use the AVX2 and AVX-512 builds (see [`set_simd`]).
#[inline]
pub fn simd_enabled() -> bool {
    SIMD.load(Ordering::Relaxed)
}

/// Process-wide: `false` makes every kernel run its baseline build even on a CPU with
/// AVX2 or AVX-512, so tests can compare the builds and benchmarks time them. The
/// builds give bit-identical results: every reduction has a fixed order in the source,
/// and floating-point operations are never reassociated or fused.
pub fn set_simd(enabled: bool) {
    SIMD.store(enabled, Ordering::Relaxed);
}

/// Accumulator width of the reductions: wide enough for two SSE or one AVX register, so
/// the compiler can vectorise a sum it may not reassociate on its own.
pub(crate) const LANES: usize = 8;

/// Lanes of the elementwise `exp` passes (and their max and sum): one AVX-512 register.
/// `exp` is some 20 operations an element, so these passes are bound by arithmetic
/// and gain from the wider registers, where the dot products are bound by loads.
pub(crate) const EXP_LANES: usize = 16;

/// Positions per block when [`column_logits`] accumulates logits (SparQ's approximate
/// ones, and exact ones): the block of each key row read and of the `g` logit rows
/// stays in cache while it is reused.
pub(crate) const BLOCK: usize = 512;

/// `a . b` for slices of equal length. Eight running sums, added up in order at the
/// end: that shape (unlike a pairwise final reduction) is what the compiler turns into
/// one full-width vector accumulator.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        let x: &[f32; LANES] = x.try_into().expect("chunk of LANES");
        let y: &[f32; LANES] = y.try_into().expect("chunk of LANES");
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    let mut sum = 0.0;
    for v in acc {
        sum += v;
    }
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
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
    let mut xs = [x];
    exp_each(&mut xs);
    xs[0]
}

/// [`exp`] of every entry of `xs`, in place, with the same bits. Each step is taken for
/// all `N` entries before the next, so that a block of 64 becomes four AVX-512
/// registers worked side by side: one register alone waits on its twenty-odd dependent
/// steps (on a Zen 5 core the dense pass's softmax took 16 cycles a register so).
#[inline(always)]
pub(crate) fn exp_each<const N: usize>(xs: &mut [f32; N]) {
    // Adding 1.5 * 2^23 rounds to an integer, which then sits in the low mantissa bits:
    // `n` both as a float and, with no float-to-int conversion, as bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that `n * LN2_HI` is exact for |n| < 2^12 (Cody and Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const TAYLOR: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    for x in xs.iter_mut() {
        let clamped = if *x > -87.0 { *x } else { -87.0 };
        *x = if clamped < 88.0 { clamped } else { 88.0 };
    }
    let shifted: [f32; N] = std::array::from_fn(|j| xs[j] * std::f32::consts::LOG2_E + ROUND);
    let mut t = [0.0f32; N];
    for j in 0..N {
        let n = shifted[j] - ROUND;
        t[j] = (xs[j] - n * LN2_HI) - n * LN2_LO;
    }
    let mut p = [1.0f32 / 5040.0; N];
    for c in TAYLOR {
        for j in 0..N {
            p[j] = p[j] * t[j] + c;
        }
    }
    for j in 0..N {
        // The low 9 bits of `shifted` are `n` (two's complement, |n| <= 127); adding
        // the exponent bias and shifting them into the exponent field gives 2^n.
        let two_n = f32::from_bits(shifted[j].to_bits().wrapping_add(127) << 23);
        xs[j] = p[j] * two_n;
    }
}

/// The largest entry (`-inf` for an empty slice).
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; EXP_LANES];
    let c = xs.chunks_exact(EXP_LANES);
    let rest = c.remainder();
    for x in c {
        for j in 0..EXP_LANES {
            acc[j] = if x[j] > acc[j] { x[j] } else { acc[j] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(rest) {
        m = if x > m { x } else { m };
    }
    m
}

/// Entries the exponential loops take at a time through [`exp_each`]: four registers.
pub(crate) const EXP_BLOCK: usize = 4 * EXP_LANES;

/// `e^(x_i - m)` of the first [`EXP_BLOCK`] entries of `xs`, each with [`exp`]'s bits.
#[inline(always)]
pub(crate) fn exp_block(xs: &[f32], m: f32) -> [f32; EXP_BLOCK] {
    let mut e: [f32; EXP_BLOCK] = std::array::from_fn(|i| xs[i] - m);
    exp_each(&mut e);
    e
}

/// `sum_i e^(x_i - m)` without storing the terms.
#[inline(always)]
pub(crate) fn exp_sum(xs: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; EXP_LANES];
    // Blocks of four registers, then single registers: lane `j` of `acc` adds the
    // same terms in the same order either way.
    let mut blocks = xs.chunks_exact(EXP_BLOCK);
    for b in &mut blocks {
        for x in exp_block(b, m).chunks_exact(EXP_LANES) {
            for j in 0..EXP_LANES {
                acc[j] += x[j];
            }
        }
    }
    let c = blocks.remainder().chunks_exact(EXP_LANES);
    let rest = c.remainder();
    for x in c {
        for j in 0..EXP_LANES {
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
    let mut acc = [0.0f32; EXP_LANES];
    // As in `exp_sum`: blocks, then registers, each lane's terms in order.
    let mut blocks = xs.chunks_exact_mut(EXP_BLOCK);
    for b in &mut blocks {
        b.copy_from_slice(&exp_block(b, m));
        for x in b.chunks_exact(EXP_LANES) {
            for j in 0..EXP_LANES {
                acc[j] += x[j];
            }
        }
    }
    let mut c = blocks.into_remainder().chunks_exact_mut(EXP_LANES);
    for x in &mut c {
        for j in 0..EXP_LANES {
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
#[inline(always)]
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
#[inline(always)]
pub(crate) fn scaled_query<'b>(q: &[f32], d: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
    let scale = 1.0 / (d as f32).sqrt();
    buf.clear();
    buf.extend(q.iter().map(|x| x * scale));
    buf
}

/// A slice of `n` entries of `buf`, growing it when needed. Contents are unspecified:
/// callers write before they read, so the buffer is not cleared on every step.
#[inline(always)]
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
    ahead: impl Fn(usize),
    logits: &mut [f32],
    stride: usize,
) {
    let g = qs.len() / d;
    for j in 0..n {
        ahead(j);
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
    ahead: impl Fn(usize),
    out: &mut [f32],
) {
    let g = out.len() / d;
    let mut j = 0;
    while j + 4 <= n {
        ahead(j);
        ahead(j + 1);
        ahead(j + 2);
        ahead(j + 3);
        let rows = [row(j), row(j + 1), row(j + 2), row(j + 3)];
        for h in 0..g {
            let wh = &w[h * stride + j..h * stride + j + 4];
            axpy4(
                &mut out[h * d..(h + 1) * d],
                [wh[0], wh[1], wh[2], wh[3]],
                rows,
            );
        }
        j += 4;
    }
    while j < n {
        ahead(j);
        let v = row(j);
        for h in 0..g {
            axpy(&mut out[h * d..(h + 1) * d], w[h * stride + j], v);
        }
        j += 1;
    }
}

/// `z[h * stride + p] = sum_j coef[h * r + j] * K[p, cols[j]]` for the positions `p`
/// of `seg`: logits from the key components `cols` (SparQ's approximate logits, or
/// all `d` of them for exact ones), reading `seg`'s transposed keys block by block so
/// each block of each key row is fetched once for all `g` heads. Positions run along
/// the vectors, so no dot product ends in a horizontal sum.
#[inline(always)]
pub(crate) fn column_logits(
    seg: &HeadKv,
    cols: &[u32],
    coef: &[f32],
    g: usize,
    z: &mut [f32],
    stride: usize,
) {
    column_blocks(seg, cols, coef, (g, stride), z, axpy4, axpy);
}

/// [`column_logits`] with the ways four columns (`four`) or one (`one`) are added
/// into a block of a head's sums given: dense attention adds them with fused
/// multiply-adds, in order.
#[inline(always)]
pub(crate) fn column_blocks(
    seg: &HeadKv,
    cols: &[u32],
    coef: &[f32],
    (g, stride): (usize, usize),
    z: &mut [f32],
    four: impl Fn(&mut [f32], [f32; 4], [&[f32]; 4]),
    one: impl Fn(&mut [f32], f32, &[f32]),
) {
    let n = seg.len();
    let r = cols.len();
    let col = |j: usize, b0: usize, b1: usize| &seg.key_column(cols[j] as usize)[b0..b1];
    let mut b0 = 0;
    while b0 < n {
        let b1 = (b0 + BLOCK).min(n);
        for h in 0..g {
            z[h * stride + b0..h * stride + b1].fill(0.0);
        }
        let mut j = 0;
        while j + 4 <= r {
            let rows = [
                col(j, b0, b1),
                col(j + 1, b0, b1),
                col(j + 2, b0, b1),
                col(j + 3, b0, b1),
            ];
            for h in 0..g {
                let c = &coef[h * r + j..h * r + j + 4];
                four(
                    &mut z[h * stride + b0..h * stride + b1],
                    [c[0], c[1], c[2], c[3]],
                    rows,
                );
            }
            j += 4;
        }
        while j < r {
            let row = col(j, b0, b1);
            for h in 0..g {
                one(
                    &mut z[h * stride + b0..h * stride + b1],
                    coef[h * r + j],
                    row,
                );
            }
            j += 1;
        }
        b0 = b1;
    }
}

/// `0, 1, .., d - 1`: every key component, for exact logits through [`column_logits`].
pub(crate) fn every_column(d: usize) -> Vec<u32> {
    (0..d as u32).collect()
}

/// Exact logits (scaled query `qs`, `g x d`) of every position into `logits`
/// (`g x S`, head-major). Each key row is read once for the whole group.
#[inline(always)]
pub(crate) fn all_logits(qs: &[f32], kv: &KvView<'_>, logits: &mut [f32]) {
    let (d, s) = (kv.head_dim(), kv.len());
    let cols = every_column(d);
    for (off, seg) in kv.segments() {
        column_logits(seg, &cols, qs, qs.len() / d, &mut logits[off..], s);
    }
}

/// Rows fetched ahead into L1 when gathering selected positions: scattered rows defeat
/// the hardware prefetcher, and without a hint each row costs a full memory latency.
const AHEAD: usize = 8;

/// Rows fetched ahead into L2 only, further on. A request into L1 holds one of the
/// core's few line fill buffers until its line arrives; one into L2 is, we take it,
/// tracked by L2's deeper queue instead, so more rows are on their way at once, and
/// the near request later finds its row in L2. One thread, caches evicted, the gather and exact attention of
/// a SparQ step at 1/8: 66-69 -> 63-64 µs a head at S = 16,384, d = 64; 127 -> 116 at
/// d = 128; 283 -> 263 at S = 65,536, d = 64. (32 rows was slower than none, 75 µs;
/// 96 to 192 measured alike.)
const FAR_AHEAD: usize = 128;

/// `_MM_HINT_T0` and `_MM_HINT_T1`: into L1 (and L2), into L2 only.
const TO_L1: i32 = 3;
const TO_L2: i32 = 2;

/// Asks for every cache line of `row` to be loaded into L1; only a hint.
#[inline(always)]
pub(crate) fn prefetch<T>(row: &[T]) {
    prefetch_into::<TO_L1, T>(row);
}

/// Asks for every cache line of `row` to be loaded, into the level `HINT` names.
#[inline(always)]
fn prefetch_into<const HINT: i32, T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::_mm_prefetch;
        // An element every cache line, and the last: a row need not start on a line.
        let per_line = (64 / std::mem::size_of::<T>().max(1)).max(1);
        let n = row.len();
        let mut i = 0;
        while i < n {
            // SAFETY: `i < n`, so the pointer stays inside the row; a prefetch never
            // faults whatever the address.
            unsafe {
                _mm_prefetch::<HINT>(row.as_ptr().add(i).cast());
            }
            i += per_line;
        }
        if n > 0 {
            // SAFETY: as above, `n - 1` is the last element.
            unsafe {
                _mm_prefetch::<HINT>(row.as_ptr().add(n - 1).cast());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// While row `sel[j]` is read, asks for the key and value rows `AHEAD` positions on
/// into L1 and those `FAR_AHEAD` on into L2: the value rows too, which the weighted
/// sum reads next, so that twice the loads are in flight during the key gather and
/// the values are then found in cache.
#[inline(always)]
pub(crate) fn prefetch_ahead(kv: &KvView<'_>, sel: &[u32], j: usize) {
    if let Some(&p) = sel.get(j + FAR_AHEAD) {
        prefetch_into::<TO_L2, f32>(kv.key(p as usize));
        prefetch_into::<TO_L2, f32>(kv.value(p as usize));
    }
    if let Some(&p) = sel.get(j + AHEAD) {
        prefetch(kv.key(p as usize));
        prefetch(kv.value(p as usize));
    }
}

/// Exact logits of the positions `sel` into `logits` (`g x sel.len()`).
#[inline(always)]
pub(crate) fn subset_logits(qs: &[f32], kv: &KvView<'_>, sel: &[u32], logits: &mut [f32]) {
    let n = sel.len();
    let ahead = |j: usize| prefetch_ahead(kv, sel, j);
    group_logits(
        qs,
        kv.head_dim(),
        n,
        |j| kv.key(sel[j] as usize),
        ahead,
        logits,
        n,
    );
}

/// `out_h = sum_j w[h * n + j] * V[sel[j]]`.
#[inline(always)]
pub(crate) fn subset_accumulate(w: &[f32], kv: &KvView<'_>, sel: &[u32], out: &mut [f32]) {
    let n = sel.len();
    out.fill(0.0);
    let ahead = |j: usize| {
        if let Some(&p) = sel.get(j + AHEAD) {
            prefetch(kv.value(p as usize));
        }
    };
    group_accumulate(
        w,
        n,
        kv.head_dim(),
        n,
        |j| kv.value(sel[j] as usize),
        ahead,
        out,
    );
}

/// Dense attention of the group over every position: the one-branch case of
/// [`crate::shared_dense::dense_shared_prompt`].
#[inline(always)]
pub(crate) fn dense(q: &[f32], kv: &KvView<'_>, out: &mut [f32], sc: &mut Scratch) {
    crate::shared_dense::dense_shared_prompt(&[q], kv.prompt, &[kv.generated], &mut [out], sc);
}

/// The group's ranking of `s` positions from its heads' rows of `scores` (`g x s`): the
/// row itself for one head, else the heads' sum in `buf` (GQA heads share one
/// selection, SPEC section 2).
#[inline(always)]
pub(crate) fn group_ranking<'a>(scores: &'a [f32], s: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    if scores.len() == s {
        return scores;
    }
    let rk = slots(buf, s);
    rk.fill(0.0);
    for row in scores.chunks_exact(s) {
        for (a, &x) in rk.iter_mut().zip(row) {
            *a += x;
        }
    }
    rk
}

/// `dst[h * n + j] = src[h * s + sel[j]]`: the selected columns of every head's row.
#[inline(always)]
pub(crate) fn gather_columns(src: &[f32], s: usize, sel: &[u32], dst: &mut Vec<f32>) {
    let g = src.len() / s;
    let n = sel.len();
    let out = slots(dst, g * n);
    for h in 0..g {
        for (j, &p) in sel.iter().enumerate() {
            out[h * n + j] = src[h * s + p as usize];
        }
    }
}

/// Dense attention, recording every position as selected: what a top-k method does
/// when its budget covers the whole cache.
#[inline(always)]
pub(crate) fn dense_all_selected(q: &[f32], kv: &KvView<'_>, out: &mut [f32], sc: &mut Scratch) {
    dense(q, kv, out, sc);
    sc.selected.clear();
    sc.selected.extend(0..kv.len() as u32);
}

/// Renormalised exact attention of the group over the positions `sel` (ascending);
/// the normalised weights stay in `sc.weights` (`g x sel.len()`), for H2O's scores.
#[inline(always)]
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
    /// A chunk of 16-bit value rows widened to f32 (`shared_dense`).
    pub widened: Vec<f32>,
    pub selected: Vec<u32>,
    pub candidates: Vec<u32>,
    pub top: crate::topk::TopK,
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Inputs of every kind: the softmax range, both clamps, zeros, subnormals,
    /// infinities and NaN.
    fn awkward(n: usize) -> Vec<f32> {
        let special = [
            0.0,
            -0.0,
            -100.0,
            100.0,
            -87.5,
            88.5,
            1e-40,
            -1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        (0..n)
            .map(|i| match i % 13 {
                0 => special[(i / 13) % special.len()],
                _ => ((i * 7919) % 2003) as f32 * 0.05 - 60.0,
            })
            .collect()
    }

    fn same_bits(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn blocks_of_exponentials_have_the_bits_of_one_at_a_time() {
        for n in [0, 1, 15, 16, 17, 63, 64, 65, 130, 1607] {
            let xs = awkward(n);
            let m = 3.25;
            // One at a time, each lane's terms summed in order, then the tail.
            let each: Vec<f32> = xs.iter().map(|&x| exp(x - m)).collect();
            let mut lanes = [0.0f32; EXP_LANES];
            let full = n / EXP_LANES * EXP_LANES;
            for (i, &e) in each[..full].iter().enumerate() {
                lanes[i % EXP_LANES] += e;
            }
            let tail: f32 = each[full..].iter().sum();
            let want_sum = lanes.iter().sum::<f32>() + tail;
            assert!(same_bits(exp_sum(&xs, m), want_sum), "exp_sum, n = {n}");
            let mut got = xs.clone();
            assert!(
                same_bits(exp_in_place(&mut got, m), want_sum),
                "sum, n = {n}"
            );
            for (i, (&g, &w)) in got.iter().zip(&each).enumerate() {
                assert!(
                    same_bits(g, w),
                    "n = {n}, entry {i} ({}): {g} vs {w}",
                    xs[i]
                );
            }
        }
        // Through a `multiversion!` build, which takes the widest vectors the CPU has.
        let xs = awkward(1607);
        let m = max(&xs);
        let mut got = xs.clone();
        let sum = exp_shifted_in_place(&mut got);
        let mut want = xs.clone();
        assert!(same_bits(sum, exp_in_place(&mut want, m)));
        assert!(got.iter().zip(&want).all(|(&g, &w)| same_bits(g, w)));
    }
}

multiversion! {
    /// Softmax of `xs` in place with the fast `exp` above: the dense prefill of the
    /// runner uses it for its causal score rows.
    pub fn softmax_in_place(xs: &mut [f32]) {
        softmax_rows(xs, xs.len())
    }
}

multiversion! {
    /// `gate_i <- silu(gate_i) * up_i`, the gated MLP activation of the runner, with the
    /// fast `exp` above: the library `expf` is a scalar call and made this a tenth of a
    /// 1,600-token prefill.
    pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let up = &up[..gate.len()];
        for (g, &u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + exp(-*g)) * u;
        }
    }
}

multiversion! {
    /// `x_i <- e^(x_i - max_j x_j)` in place, returning the sum: a softmax that leaves
    /// the division to the caller (the prefill divides its `d`-wide output rows instead
    /// of its `S`-wide probability rows).
    pub fn exp_shifted_in_place(xs: &mut [f32]) -> f32 {
        let m = max(xs);
        exp_in_place(xs, m)
    }
}

#[cfg(test)]
mod activation_tests {
    use super::*;

    #[test]
    fn silu_mul_matches_f64_including_saturated_inputs() {
        let gate: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 1.37).collect();
        let up: Vec<f32> = (0..203).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let mut got = gate.clone();
        silu_mul(&mut got, &up);
        for ((&x, &u), &y) in gate.iter().zip(&up).zip(&got) {
            let want = x as f64 / (1.0 + (-x as f64).exp()) * u as f64;
            // `exp` saturates at e^88: below about -88 the product is a tiny
            // nonzero number instead of one that underflows f32 anyway.
            assert!(
                (y as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "silu({x}) * {u}: {y} vs {want}"
            );
        }
    }

    #[test]
    fn exp_shifted_in_place_gives_the_softmax_numerators_and_their_sum() {
        let xs: Vec<f32> = (0..37)
            .map(|i| ((i * 17) % 23) as f32 * 0.9 - 5.0)
            .collect();
        let mut got = xs.clone();
        let sum = exp_shifted_in_place(&mut got);
        let m = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let want: Vec<f64> = xs.iter().map(|&x| (x as f64 - m).exp()).collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 1e-6 * w, "{g} vs {w}");
        }
        let want_sum: f64 = want.iter().sum();
        assert!((sum as f64 - want_sum).abs() <= 1e-6 * want_sum);
        let mut probs = xs.clone();
        softmax_in_place(&mut probs);
        for (p, g) in probs.iter().zip(&got) {
            assert!((p - g / sum).abs() <= 1e-6);
        }
    }
}
