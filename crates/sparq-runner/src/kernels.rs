//! CPU kernels for the decode path, where a step multiplies a handful of rows (one per
//! branch) by every weight matrix. Reading the weights is the whole cost, so each
//! weight row is read once and used for all branches, and rows are split across
//! threads. Everything is plain `f32`/`bf16` slices.

use half::bf16;
use rayon::prelude::*;

use sparq_attention::team::{Chunks, Team};

use crate::q4::Q4Rows;

/// Fewest weight rows handed to one rayon task: enough to amortise scheduling.
const MIN_ROWS_PER_TASK: usize = 32;

/// The decode kernels hand out their rows in guided chunks: a quarter of what is left
/// at a time, down to four rows. Fixed chunks of 32 left one thread waiting for the
/// other's last chunk at the end of each of a step's ~150 phases (a chunk of the down
/// projection is 197 KB); see BENCHMARKS.md, session 9.
const GUIDED_PARTS: usize = 4;
const GUIDED_MIN_ROWS: usize = 4;

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
    /// f32 values kept as a GGUF file's Q4_1 blocks (`q4.rs`): every product equals
    /// the f32 matrix's bit for bit.
    Q4(&'a Q4Rows),
    /// The same blocks, one branch's products factored per block
    /// ([`Q4Rows::factored_products`]) on CPUs where that is faster (see
    /// [`factoring_pays`]): rounded differently. Several branches' products, and one
    /// branch's elsewhere, are the exact ones.
    Q4Factored(&'a Q4Rows),
}

impl WeightRows<'_> {
    /// Row `o` (`k` long) as f32.
    pub fn row_f32(&self, o: usize, k: usize) -> Vec<f32> {
        match self {
            WeightRows::F32(w) => w[o * k..(o + 1) * k].to_vec(),
            WeightRows::Bf16(w) => w[o * k..(o + 1) * k].iter().map(|v| v.to_f32()).collect(),
            WeightRows::Q4(w) | WeightRows::Q4Factored(w) => {
                let mut row = vec![0.0; k];
                w.expand_row(o, &mut row);
                row
            }
        }
    }
}

/// `out[b, o] = sum_i x[b, i] * w[o, i]` for `m` rows of `x` (`m x k`), `w` `n x k`,
/// `out` `m x n`.
pub fn linear(x: &[f32], m: usize, w: WeightRows<'_>, n: usize, out: &mut [f32]) {
    let k = x.len() / m;
    assert_eq!(x.len(), m * k);
    assert_eq!(out.len(), m * n);
    if m > 1 && !on_cache_line(x) {
        // Several branches load each 16 inputs once per pair of weight rows; from an
        // allocator's 16-byte-aligned buffer every such load spans two cache lines.
        // Measured on the Q4_1 pair kernel, eight branches, weights in L2: 2.54 G
        // fused multiply-adds a second with the inputs 4 bytes past a line, 3.09 on
        // lines; eight branches of the model decode about 5% faster.
        return with_cache_lines(x, |x| linear(x, m, w, n, out));
    }
    if m == 1 {
        return fill_rows(n, 1, out, &|rows, part| {
            products(x, 1, w, k, rows.start, part)
        });
    }
    // The kernels write a chunk of output features for every branch (`rows x m`);
    // the thread that computed a chunk moves it into its columns of `out`. (A
    // transposition of the whole output afterwards was serial: the other thread waited
    // through it, 2.6% of a step of eight branches.)
    let dst = DisjointRows::new(out, n);
    spread_rows(n, &|rows| {
        with_part(rows.len() * m, |part| {
            products(x, m, w, k, rows.start, part);
            // SAFETY: `spread_rows` hands out every range once, so no two threads
            // write the same columns.
            unsafe { dst.scatter(rows, part) };
        })
    });
}

thread_local! {
    /// Each thread's chunk of [`linear`]'s products before they move into place.
    static PART: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` of this thread's buffer of `len` floats (a fresh one if it is in use).
fn with_part<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let run = |buf: &mut Vec<f32>| {
        buf.resize(len, 0.0);
        f(&mut buf[..len])
    };
    PART.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(&mut buf),
        Err(_) => run(&mut Vec::new()),
    })
}

/// What [`linear`] gives for the weight rows `rows` alone, bit for bit, transposed:
/// `out[j * m + b] = w[rows[j]] . x[b]`. The output head's screen (`screen.rs`)
/// computes its few candidate logits with it, so they equal the full product's.
pub fn linear_rows(x: &[f32], m: usize, w: WeightRows<'_>, rows: &[usize], out: &mut [f32]) {
    let k = x.len() / m;
    assert_eq!(x.len(), m * k);
    assert_eq!(out.len(), rows.len() * m);
    for (&o, dst) in rows.iter().zip(out.chunks_mut(m)) {
        products(x, m, w, k, o, dst);
    }
}

/// `dst` (`rows x m`, row-major) = the weight rows from `first` times every row of `x`.
/// Every row's products come out the same whether it is computed alone or with its
/// neighbours (tests below), which [`linear_rows`] relies on.
fn products(x: &[f32], m: usize, w: WeightRows<'_>, k: usize, first: usize, dst: &mut [f32]) {
    match w {
        WeightRows::F32(w) if m == 1 => dot_f32_single(w, x, k, first, dst),
        WeightRows::Bf16(w) if m == 1 => dot_bf16_single(w, x, k, first, dst),
        WeightRows::F32(w) => dot_f32_many(w, x, k, first, m, dst),
        WeightRows::Bf16(w) => {
            for (o, d) in (first..).zip(dst.chunks_mut(m)) {
                dot_rows_bf16(&w[o * k..(o + 1) * k], x, k, d);
            }
        }
        WeightRows::Q4Factored(w) if m == 1 && factoring_pays() => {
            w.factored_products(x, first, dst)
        }
        WeightRows::Q4(w) | WeightRows::Q4Factored(w) => expanded_products(x, m, w, k, first, dst),
    }
}

/// Whether one branch's products go faster factored per Q4_1 block than expanded
/// exactly: with AVX-512, or without AVX2 (both kernels portable). With AVX2 alone
/// the exact kernel has 8-lane code and the factored one has none: on a Zen 1 EPYC,
/// `--dtype q4` decoded one branch at 18.9 tok/s factored and the exact f32 path at
/// 41.6 (alternated, `docs/BENCHMARKS.md`).
fn factoring_pays() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            || !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// Bytes of a cache line.
const CACHE_LINE: usize = 64;

/// Whether `x` starts on a cache line.
pub(crate) fn on_cache_line(x: &[f32]) -> bool {
    (x.as_ptr() as usize).is_multiple_of(CACHE_LINE)
}

/// `f` of a copy of `x` that starts on a cache line (this thread's buffer, reused).
pub(crate) fn with_cache_lines<R>(x: &[f32], f: impl FnOnce(&[f32]) -> R) -> R {
    let on_lines = |buf: &mut Vec<Line>| {
        let lines = x.len().div_ceil(16);
        if buf.len() < lines {
            buf.resize(lines, Line([0.0; 16]));
        }
        // SAFETY: `lines` lines of 16 floats, contiguous (`Line` is exactly 16 floats,
        // aligned to 64 bytes).
        let copy =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<f32>(), lines * 16) };
        copy[..x.len()].copy_from_slice(x);
        f(&copy[..x.len()])
    };
    // A thread waiting in rayon may run another caller's work meanwhile: that gets a
    // buffer of its own.
    ALIGNED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => on_lines(&mut buf),
        Err(_) => on_lines(&mut Vec::new()),
    })
}

/// 16 floats on a cache line of their own.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    /// The calling thread's copy of [`linear`]'s inputs, on cache lines.
    static ALIGNED: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

thread_local! {
    /// Each thread's buffer of expanded weight rows (a few rows: stays in L1).
    static EXPANDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`products`] for rows kept in Q4_1 blocks: a few rows at a time are expanded to
/// their f32 values and multiplied by the f32 kernels, so every product has the f32
/// matrix's bits while the step reads 0.75 bytes per weight instead of 4. One branch
/// expands four rows (the f32 kernel's group); several branches two (a row pair).
fn expanded_products(x: &[f32], m: usize, w: &Q4Rows, k: usize, first: usize, dst: &mut [f32]) {
    assert_eq!(w.cols(), k);
    #[cfg(target_arch = "x86_64")]
    if m >= 8
        && dst.len() >= 2 * m
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
    {
        // Pairs of rows expand in registers; an odd last row goes through the buffer.
        let pairs = dst.len() / m / 2 * 2;
        let (paired, rest) = dst.split_at_mut(pairs * m);
        // SAFETY: the features were just detected; `x` holds `m` rows of `k` and the
        // rows `first..first + pairs` lie in `w` (they are the caller's rows).
        unsafe { dot_q4_pairs_avx512(w, x, k, first, m, paired) };
        if rest.is_empty() {
            return;
        }
        return expanded_products(x, m, w, k, first + pairs, rest);
    }
    #[cfg(target_arch = "x86_64")]
    if m == 1 && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected; the rows are the caller's, in `w`.
        unsafe { dot_q4_single_avx512(w, x, first, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if m == 1 && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected; the rows are the caller's, in `w`.
        unsafe { dot_q4_single_avx2(w, x, first, dst) };
        return;
    }
    let at_once = if m == 1 { 4 } else { 2 };
    EXPANDED.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.resize(at_once * k, 0.0);
        for (i, d) in dst.chunks_mut(at_once * m).enumerate() {
            let o = first + i * at_once;
            let n = d.len() / m;
            for (j, row) in buf.chunks_exact_mut(k).take(n).enumerate() {
                w.expand_row(o + j, row);
            }
            products(x, m, WeightRows::F32(&buf[..n * k]), k, 0, d);
        }
    })
}

/// Fills `out` (`n` rows of `width`) by `fill(rows, part)` over chunks of rows spread
/// across the threads (see [`spread_rows`]).
pub(crate) fn fill_rows(
    n: usize,
    width: usize,
    out: &mut [f32],
    fill: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync),
) {
    assert_eq!(out.len(), n * width);
    if width == 0 {
        return;
    }
    let dst = DisjointRows::new(out, width);
    spread_rows(n, &|rows| {
        // SAFETY: `spread_rows` hands out every range once, so no two threads write
        // the same rows.
        let part = unsafe { dst.rows(rows.clone()) };
        fill(rows, part)
    });
}

/// `task(rows)` over chunks of `0..n`, each handed out once, spread across the
/// threads: on the decode team when it is free, otherwise on rayon's pool.
fn spread_rows(n: usize, task: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    if n == 0 {
        return;
    }
    let on_team = Team::with(|team| {
        let chunks = Chunks::guided(n, GUIDED_MIN_ROWS, GUIDED_PARTS);
        team.run(&|_| {
            while let Some(rows) = chunks.next() {
                task(rows);
            }
        });
    });
    if on_team.is_none() {
        let rows_per_task = rows_per_task(n);
        (0..n.div_ceil(rows_per_task))
            .into_par_iter()
            .for_each(|t| task(t * rows_per_task..((t + 1) * rows_per_task).min(n)));
    }
}

/// A buffer of `width`-long rows that several threads fill, each its own rows (or,
/// through [`DisjointRows::scatter`], its own columns).
struct DisjointRows<'a> {
    ptr: *mut f32,
    rows: usize,
    width: usize,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: the callers of `rows` and `scatter` guarantee that no two threads take the
// same rows, or columns.
unsafe impl Sync for DisjointRows<'_> {}

impl<'a> DisjointRows<'a> {
    fn new(buf: &'a mut [f32], width: usize) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            rows: buf.len() / width,
            width,
            _buf: std::marker::PhantomData,
        }
    }

    /// The rows `r`, mutably.
    ///
    /// # Safety
    /// No other live reference may cover any of these rows.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows(&self, r: std::ops::Range<usize>) -> &mut [f32] {
        assert!(r.start <= r.end && r.end <= self.rows);
        // SAFETY: in bounds (checked above); exclusive by the caller's promise.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(r.start * self.width), r.len() * self.width)
        }
    }

    /// Column `cols.start + j` of row `b` becomes `part[j * rows + b]` (`part` holds
    /// the columns one after another, each a value per row).
    ///
    /// # Safety
    /// No other thread may write or read these columns meanwhile.
    unsafe fn scatter(&self, cols: std::ops::Range<usize>, part: &[f32]) {
        assert!(cols.start <= cols.end && cols.end <= self.width);
        assert_eq!(part.len(), cols.len() * self.rows);
        for b in 0..self.rows {
            // SAFETY: row `b`'s columns `cols` are in bounds (checked above) and
            // exclusive by the caller's promise.
            let row = unsafe {
                std::slice::from_raw_parts_mut(
                    self.ptr.add(b * self.width + cols.start),
                    cols.len(),
                )
            };
            for (y, p) in row.iter_mut().zip(part.chunks_exact(self.rows)) {
                *y = p[b];
            }
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

/// Several branches, f32 weights: `dst[j * m + b] = w[first + j] . x[b]`. With
/// AVX-512 and eight branches or more, rows go in pairs so that each load of an input
/// serves two rows (the eight-branch block was bound by those loads); every (row,
/// branch) product is summed exactly as [`dot_rows_f32`] sums it alone.
fn dot_f32_many(w: &[f32], x: &[f32], k: usize, first: usize, m: usize, dst: &mut [f32]) {
    let rows = dst.len() / m;
    let mut j = 0;
    #[cfg(target_arch = "x86_64")]
    if m >= 8
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
    {
        assert!(x.len() >= m * k && w.len() >= (first + rows) * k);
        j = rows / 2 * 2;
        // SAFETY: the features were just detected; the sizes were checked above.
        unsafe { dot_f32_pairs_avx512(w, x, k, first, m, &mut dst[..j * m]) };
    } else if m >= 4
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
    {
        assert!(x.len() >= m * k && w.len() >= (first + rows) * k);
        j = rows / 2 * 2;
        // SAFETY: the features were just detected; the sizes were checked above.
        unsafe { dot_f32_pairs_avx2(w, x, k, first, m, &mut dst[..j * m]) };
    }
    for (o, d) in (first + j..).zip(dst[j * m..].chunks_mut(m)) {
        dot_rows_f32(&w[o * k..(o + 1) * k], x, k, d);
    }
}

/// The row pairs of [`dot_f32_many`] (`dst` holds an even number of rows).
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA; `x` holds `m >= 8` rows of `k` and `w`
/// the rows `first..first + dst.len() / m`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_f32_pairs_avx512(
    w: &[f32],
    x: &[f32],
    k: usize,
    first: usize,
    m: usize,
    dst: &mut [f32],
) {
    use std::arch::x86_64::_mm512_loadu_ps;
    let row = |o: usize| &w[o * k..(o + 1) * k];
    let products = |o: usize, xs: &[f32]| {
        // SAFETY: the CPU has AVX-512F (the caller's contract); `eight_products` asks
        // for `i + 16 <= k` only, and `xs` holds eight rows of `k`.
        unsafe {
            eight_products::<2>(
                k,
                |r, i| _mm512_loadu_ps(row(o + r).as_ptr().add(i)),
                |r, j| row(o + r)[j],
                |i| prefetch_ahead(row(o + 1), i),
                xs,
                k,
            )
        }
    };
    let tail = |o: usize, dst: &mut [f32], xs: &[f32]| dot_rows_add(row(o), xs, k, dst);
    eight_branch_pairs((first, k, m), x, dst, products, tail);
}

/// The row pairs of [`dot_f32_many`] on CPUs with AVX2 but not AVX-512 (`m >= 4`,
/// `dst` an even number of rows): the branches four at a time, each load of an input
/// serving both rows, 8 accumulators of 8 lanes. [`dot_rows_add`] sums its blocks of
/// eight and of four branches with one set of 8 lanes each, so every (row, branch)
/// product here has its bits; the branches past the last four go through it. Row by
/// row, eight branches took nine loads for eight multiply-adds, and the down
/// projection's eight inputs (48 KB) did not fit a Zen 1 core's 32 KB L1.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `x` holds `m` rows of `k` and `w` the rows
/// `first..first + dst.len() / m`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_pairs_avx2(
    w: &[f32],
    x: &[f32],
    k: usize,
    first: usize,
    m: usize,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    let rows = dst.len() / m;
    assert!(m >= 4 && x.len() >= m * k && w.len() >= (first + rows) * k);
    // `dot_rows_add` takes blocks of eight while it can, then one of four: together
    // the branches `0..m / 4 * 4`.
    let fours = m / 4 * 4;
    let full = k / LANES * LANES;
    for (p, d) in dst.chunks_exact_mut(2 * m).enumerate() {
        let o = first + 2 * p;
        let pair = [&w[o * k..(o + 1) * k], &w[(o + 1) * k..(o + 2) * k]];
        for b in (0..fours).step_by(4) {
            let xs = &x[b * k..(b + 4) * k];
            let mut acc = [[_mm256_setzero_ps(); 4]; 2];
            let mut i = 0;
            while i < full {
                if i % LINE == 0 {
                    prefetch_ahead(pair[0], i);
                    prefetch_ahead(pair[1], i);
                }
                // SAFETY: `i + 8 <= k`: inside both rows and each of the four inputs.
                unsafe {
                    let w0 = _mm256_loadu_ps(pair[0].as_ptr().add(i));
                    let w1 = _mm256_loadu_ps(pair[1].as_ptr().add(i));
                    let [acc0, acc1] = &mut acc;
                    for (c, (a0, a1)) in acc0.iter_mut().zip(acc1.iter_mut()).enumerate() {
                        let xv = _mm256_loadu_ps(xs.as_ptr().add(c * k + i));
                        *a0 = _mm256_fmadd_ps(w0, xv, *a0);
                        *a1 = _mm256_fmadd_ps(w1, xv, *a1);
                    }
                }
                i += LANES;
            }
            for (r, (row, a)) in pair.iter().zip(&acc).enumerate() {
                for (c, &ac) in a.iter().enumerate() {
                    let mut lanes = [[0.0f32; LANES]; 1];
                    // SAFETY: `lanes` holds 8 floats.
                    unsafe { _mm256_storeu_ps(lanes[0].as_mut_ptr(), ac) };
                    let dv = &mut d[r * m + b + c];
                    // As `dot_rows_generic` does: zero, then add.
                    *dv = 0.0;
                    *dv += total(&lanes, &row[full..], &xs[c * k + full..(c + 1) * k]);
                }
            }
        }
        if fours < m {
            for (r, row) in pair.iter().enumerate() {
                let rest = &mut d[r * m + fours..(r + 1) * m];
                rest.fill(0.0);
                dot_rows_add(row, &x[fours * k..], k, rest);
            }
        }
    }
}

/// [`dot_f32_pairs_avx512`] for rows in Q4_1 blocks, expanded in registers to the
/// same f32 values (so the same bits) instead of through a buffer.
///
/// # Safety
/// As [`dot_f32_pairs_avx512`], with `w` holding the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_q4_pairs_avx512(
    w: &Q4Rows,
    x: &[f32],
    k: usize,
    first: usize,
    m: usize,
    dst: &mut [f32],
) {
    assert!(w.cols() == k && k.is_multiple_of(32) && first + dst.len() / m <= w.rows());
    // SAFETY: rows `o, o + 1` lie in `w` (asserted: `eight_branch_pairs` passes the
    // caller's rows) and `xs` holds eight rows of `k`.
    let products = |o: usize, xs: &[f32]| unsafe { eight_q4_products(w, o, xs) };
    let tail = |o: usize, dst: &mut [f32], xs: &[f32]| {
        EXPANDED.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(k, 0.0);
            w.expand_row(o, &mut buf);
            dot_rows_add(&buf, xs, k, dst);
        })
    };
    eight_branch_pairs((first, k, m), x, dst, products, tail);
}

/// [`eight_products`]`::<2>` for the Q4_1 rows `o` and `o + 1`, with the same sums
/// bit for bit (each (row, branch) product a 16-lane chain over the columns in
/// order), a block of 32 columns per step: one widening of each row's nibbles
/// serves both halves, and there is no branch in the loop. Through `eight_products`
/// the compiler kept three of the 16 sums on the stack.
///
/// # Safety
/// The CPU must have AVX-512F; rows `o` and `o + 1` lie in `w`, and `x` holds 8 rows
/// of `w.cols()`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn eight_q4_products(w: &Q4Rows, o: usize, x: &[f32]) -> [[f32; 8]; 2] {
    use std::arch::x86_64::*;
    let k = w.cols();
    debug_assert!(o + 2 <= w.rows() && x.len() >= 8 * k);
    let mut acc = [[_mm512_setzero_ps(); 8]; 2];
    for i in (0..k).step_by(32) {
        if i % 128 == 0 {
            // The same place in the next pair: 64 bytes of nibbles each, as the
            // one-branch kernel prefetches its next rows (here no clear change was
            // measured: BENCHMARKS.md, session 12).
            w.prefetch(o + 2, i);
            w.prefetch(o + 3, i);
        }
        // SAFETY: rows and columns in range (the caller's contract); `i + 32 <= k`.
        unsafe {
            let (first, second) = (w.expand32(o, i), w.expand32(o + 1, i));
            for (half, (w0, w1)) in first.into_iter().zip(second).enumerate() {
                let [a0, a1] = &mut acc;
                for (b, (s0, s1)) in a0.iter_mut().zip(a1.iter_mut()).enumerate() {
                    let xv = _mm512_loadu_ps(x.as_ptr().add(b * k + i + 16 * half));
                    *s0 = _mm512_fmadd_ps(w0, xv, *s0);
                    *s1 = _mm512_fmadd_ps(w1, xv, *s1);
                }
            }
        }
    }
    // SAFETY: the CPU has AVX-512F (the caller's contract).
    unsafe { reduce_rows(&acc) }
}

/// Each register of `acc` (`R` rows of `M` branches) added up exactly as
/// `_mm512_reduce_add_ps` adds it; with eight branches, two rows (16 registers) at a
/// time through [`reduce_sixteen`].
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn reduce_rows<const M: usize, const R: usize>(
    acc: &[[std::arch::x86_64::__m512; M]; R],
) -> [[f32; M]; R] {
    use std::arch::x86_64::_mm512_reduce_add_ps;
    let mut sums = [[0.0f32; M]; R];
    let mut done = 0;
    if M == 8 {
        for (pair, out) in acc.chunks_exact(2).zip(sums.chunks_exact_mut(2)) {
            let mut v = [std::arch::x86_64::_mm512_setzero_ps(); 16];
            for (i, r) in v.iter_mut().enumerate() {
                *r = pair[i / 8][i % 8];
            }
            // SAFETY: the CPU has AVX-512F (the caller's contract).
            let all = unsafe { reduce_sixteen(v) };
            for (i, &t) in all.iter().enumerate() {
                out[i / 8][i % 8] = t;
            }
        }
        done = R / 2 * 2;
    }
    for (row, a) in sums.iter_mut().zip(acc).skip(done) {
        for (s, &ab) in row.iter_mut().zip(a) {
            *s = _mm512_reduce_add_ps(ab);
        }
    }
    sums
}

/// The sums of 16 registers' lanes, each added up exactly as `_mm512_reduce_add_ps`
/// adds one (halves of 8, then 4, then the pairs `(0, 2)` and `(1, 3)`, then those
/// two: the same additions of the same operands, so the same bits), the 16 at once:
/// each level's additions of two registers are one vector addition after two
/// shuffles, 45 operations in all against about 7 for each register alone. With two
/// rows of eight branches over 576 columns, the reductions one at a time were about
/// a tenth of the paired kernel's operations.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn reduce_sixteen(v: [std::arch::x86_64::__m512; 16]) -> [f32; 16] {
    use std::arch::x86_64::*;
    // Level 1, two registers a time: 128-bit blocks (0, 1) of each plus blocks (2, 3).
    // `halves[j]` holds register 2j's eight sums in blocks 0-1, 2j+1's in blocks 2-3.
    // Loops, not `array::from_fn`: its closures are compiled without the caller's
    // AVX-512, and the shuffles in them became calls.
    let mut halves = [_mm512_setzero_ps(); 8];
    for (j, h) in halves.iter_mut().enumerate() {
        let (a, b) = (v[2 * j], v[2 * j + 1]);
        let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
        let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
        *h = _mm512_add_ps(lo, hi);
    }
    // Level 2: block 0 plus block 1 of each register's eight. `quarters[j]` holds the
    // four sums of registers 4j..4j+3, one per block.
    let mut quarters = [_mm512_setzero_ps(); 4];
    for (j, q) in quarters.iter_mut().enumerate() {
        let (s, t) = (halves[2 * j], halves[2 * j + 1]);
        let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(s, t);
        let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(s, t);
        *q = _mm512_add_ps(lo, hi);
    }
    // Level 3, within each block: lanes (0, 1) plus lanes (2, 3). Block k of
    // `pairs[j]` holds register 8j+k's two sums, then register 8j+4+k's.
    let mut pairs = [_mm512_setzero_ps(); 2];
    for (j, p) in pairs.iter_mut().enumerate() {
        let (u, w) = (quarters[2 * j], quarters[2 * j + 1]);
        let lo = _mm512_shuffle_ps::<0b01_00_01_00>(u, w);
        let hi = _mm512_shuffle_ps::<0b11_10_11_10>(u, w);
        *p = _mm512_add_ps(lo, hi);
    }
    // Level 4: lane 0 plus lane 1 of each pair. Block k holds the totals of registers
    // k, 4 + k, 8 + k and 12 + k.
    let lo = _mm512_shuffle_ps::<0b10_00_10_00>(pairs[0], pairs[1]);
    let hi = _mm512_shuffle_ps::<0b11_01_11_01>(pairs[0], pairs[1]);
    let mut totals = [0.0f32; 16];
    // SAFETY: `totals` holds 16 floats.
    unsafe { _mm512_storeu_ps(totals.as_mut_ptr(), _mm512_add_ps(lo, hi)) };
    let mut sums = [0.0f32; 16];
    for (i, s) in sums.iter_mut().enumerate() {
        *s = totals[4 * (i % 4) + i / 4];
    }
    sums
}

/// One branch, rows in Q4_1 blocks: `dst[j] = w[first + j] . x`, four rows at a time
/// expanded in registers, each summed exactly as [`dot_four_rows`] sums its f32 row (a
/// block of 32 weights is its step: two 16-wide sums hold its four sets of 8 lanes),
/// so the results are the f32 matrix's bits without a store and reload of the weights.
///
/// # Safety
/// The CPU must have AVX-512F; `x` holds `w.cols()` inputs and `w` the rows
/// `first..first + dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_q4_single_avx512(w: &Q4Rows, x: &[f32], first: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = w.cols();
    assert!(x.len() >= k && first + dst.len() <= w.rows() && k.is_multiple_of(32));
    // SAFETY: callers pass `i + 16 <= k`.
    let input = |i: usize| unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) };
    let mut o = first;
    for d in dst.chunks_mut(4) {
        let rows = d.len();
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        for i in (0..k).step_by(32) {
            let (x0, x1) = (input(i), input(i + 16));
            if i % 128 == 0 {
                // The same place in the next four rows: 64 bytes of nibbles each.
                for r in 0..4 {
                    w.prefetch(o + 4 + r, i);
                }
            }
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                // SAFETY: row `o + r` and columns `i..i + 32` lie in `w` (asserted).
                let [w0, w1] = unsafe { w.expand32(o + r, i) };
                a[0] = _mm512_fmadd_ps(w0, x0, a[0]);
                a[1] = _mm512_fmadd_ps(w1, x1, a[1]);
            }
        }
        for (dv, a) in d.iter_mut().zip(&acc) {
            // Lanes 0-15 are `dot_four_rows`' sets 0 and 1, lanes 16-31 sets 2 and 3.
            let mut lanes = [[0.0f32; LANES]; 4];
            // SAFETY: `lanes` holds 32 floats.
            unsafe {
                _mm512_storeu_ps(lanes.as_mut_ptr().cast(), a[0]);
                _mm512_storeu_ps(lanes.as_mut_ptr().cast::<f32>().add(16), a[1]);
            }
            *dv = 0.0;
            *dv += total(&lanes, &[], &[]);
        }
        o += rows;
    }
}

/// [`dot_q4_single_avx512`] for CPUs with AVX2 but not AVX-512: two rows at a time
/// (their 8 accumulators and the block being expanded fit AVX2's 16 registers; four
/// rows' 16 would not), each summed exactly as [`dot_four_rows`] sums its f32 row. A
/// block of 32 weights is one step of its four sets of 8 lanes, so the results are the
/// f32 matrix's bits. On a Zen 1 EPYC the buffered expansion this replaces was half a
/// one-branch decode step.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `x` holds `w.cols()` inputs and `w` the rows
/// `first..first + dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_q4_single_avx2(w: &Q4Rows, x: &[f32], first: usize, dst: &mut [f32]) {
    let k = w.cols();
    assert!(x.len() >= k && first + dst.len() <= w.rows() && k.is_multiple_of(32));
    let mut pairs = dst.chunks_exact_mut(2);
    let mut o = first;
    for d in pairs.by_ref() {
        // SAFETY: rows `o, o + 1` lie in `w` and `x` holds `k` inputs (asserted).
        unsafe { q4_rows_avx2::<2>(w, x, o, d) };
        o += 2;
    }
    let last = pairs.into_remainder();
    if !last.is_empty() {
        // SAFETY: as above, for the one row `o`.
        unsafe { q4_rows_avx2::<1>(w, x, o, last) };
    }
}

/// `R` rows of [`dot_q4_single_avx2`] from row `o` into `dst` (`R` long).
///
/// # Safety
/// As [`dot_q4_single_avx2`], for the rows `o..o + R`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q4_rows_avx2<const R: usize>(w: &Q4Rows, x: &[f32], o: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = w.cols();
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    for i in (0..k).step_by(32) {
        if i % 128 == 0 {
            // The same place in the next rows: 64 bytes of nibbles each.
            for r in 0..R {
                w.prefetch(o + R + r, i);
            }
        }
        for (r, a) in acc.iter_mut().enumerate() {
            // SAFETY: row `o + r` and columns `i..i + 32` lie in `w`, and inputs
            // `i..i + 32` in `x` (the caller's contract).
            unsafe {
                let ws = w.expand32_avx2(o + r, i);
                for (e, (s, wv)) in a.iter_mut().zip(ws).enumerate() {
                    *s = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(i + 8 * e)), *s);
                }
            }
        }
    }
    for (dv, a) in dst.iter_mut().zip(&acc) {
        let mut lanes = [[0.0f32; LANES]; 4];
        for (l, &s) in lanes.iter_mut().zip(a) {
            // SAFETY: each `l` holds 8 floats.
            unsafe { _mm256_storeu_ps(l.as_mut_ptr(), s) };
        }
        *dv = 0.0;
        *dv += total(&lanes, &[], &[]);
    }
}

/// Rows `first..` in pairs, `m >= 8` branches: each block of eight branches through
/// `products(row, x)`, which gives the pair's sums from `row` for the eight rows of
/// `x` from its start; the branches past the last eight through `tail(row, dst, x)`,
/// which adds them into `dst` (zeroed).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn eight_branch_pairs(
    (first, k, m): (usize, usize, usize),
    x: &[f32],
    dst: &mut [f32],
    products: impl Fn(usize, &[f32]) -> [[f32; 8]; 2],
    tail: impl Fn(usize, &mut [f32], &[f32]),
) {
    assert!(m >= 8 && x.len() >= m * k);
    let eights = m / 8 * 8;
    for (p, d) in dst.chunks_exact_mut(2 * m).enumerate() {
        let o = first + 2 * p;
        for b in (0..eights).step_by(8) {
            let sums = products(o, &x[b * k..]);
            for (dr, sr) in d.chunks_exact_mut(m).zip(sums) {
                for (dv, s) in dr[b..b + 8].iter_mut().zip(sr) {
                    // As `dot_rows_generic` does: zero, then add (keeps a -0.0 sum +0.0).
                    *dv = 0.0;
                    *dv += s;
                }
            }
        }
        if eights < m {
            for (r, dr) in d.chunks_exact_mut(m).enumerate() {
                let rest = &mut dr[eights..];
                rest.fill(0.0);
                tail(o + r, rest, &x[eights * k..]);
            }
        }
    }
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
            dot_eight(w, xs, stride, out);
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

/// [`dot_block`] for eight branches, with AVX-512's 16-wide registers where the CPU has
/// them: the eight branches' products need a load of each branch's input per weight
/// vector, and that load count, not the weights' memory traffic, bounds this block;
/// 16-wide loads halve it.
#[inline(always)]
fn dot_eight(w: &[f32], x: &[f32], stride: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            assert!(x.len() >= 7 * stride + w.len() && dst.len() >= 8);
            // SAFETY: the CPU has AVX-512F (just detected), and every input row the
            // kernel reads lies inside `x` (checked above).
            unsafe { dot_eight_avx512(w, x, stride, dst) };
            return;
        }
    }
    dot_block::<8>(w, x, stride, dst)
}

/// # Safety
/// The CPU must have AVX-512F, and `x` must hold 8 rows of `stride` with at least
/// `w.len()` floats each (the last may end there).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_eight_avx512(w: &[f32], x: &[f32], stride: usize, dst: &mut [f32]) {
    use std::arch::x86_64::_mm512_loadu_ps;
    let [sums] = eight_products::<1>(
        w.len(),
        // SAFETY: `eight_products` asks only for `i + 16 <= w.len()`.
        |_, i| unsafe { _mm512_loadu_ps(w.as_ptr().add(i)) },
        |_, j| w[j],
        |i| prefetch_ahead(w, i),
        x,
        stride,
    );
    for (d, s) in dst.iter_mut().zip(sums) {
        *d += s;
    }
}

/// The eight branches' products `w_r . x[b]` for `R` weight rows of `n` elements
/// that `weights(r, i)` gives 16 at a time from `i` (and `weight(r, j)` one at a time,
/// for the tail), calling `ahead(i)` before each 16 to prefetch. Each input vector is
/// loaded once for the `R` rows; each (row, branch) product is summed the same way
/// whatever `R`, so a row's results do not depend on its neighbours.
///
/// # Safety
/// The CPU must have AVX-512F (callers are compiled for it), and `x` must hold 8 rows
/// of `stride` with at least `n` floats each.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn eight_products<const R: usize>(
    n: usize,
    weights: impl Fn(usize, usize) -> std::arch::x86_64::__m512,
    weight: impl Fn(usize, usize) -> f32,
    ahead: impl Fn(usize),
    x: &[f32],
    stride: usize,
) -> [[f32; 8]; R] {
    use std::arch::x86_64::*;
    let full = n / 16 * 16;
    let mut acc = [[_mm512_setzero_ps(); 8]; R];
    let mut i = 0;
    while i < full {
        ahead(i);
        let wv: [__m512; R] = std::array::from_fn(|r| weights(r, i));
        for b in 0..8 {
            // SAFETY: `i + 16 <= n`, and row `b` of `x` has `n` floats from `b * stride`.
            let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(b * stride + i)) };
            for (a, w) in acc.iter_mut().zip(&wv) {
                a[b] = _mm512_fmadd_ps(*w, xv, a[b]);
            }
        }
        i += 16;
    }
    // SAFETY: the CPU has AVX-512F (the caller's contract).
    let mut sums = unsafe { reduce_rows(&acc) };
    for (r, row_sums) in sums.iter_mut().enumerate() {
        for (b, s) in row_sums.iter_mut().enumerate() {
            for j in full..n {
                *s += weight(r, j) * x[b * stride + j];
            }
        }
    }
    sums
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
        if i % LINE == 0 {
            prefetch_ahead(w, i);
        }
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
        dst[b] += total(a, &w[full..n], &x[b * stride + full..b * stride + n]);
    }
}

/// Floats per cache line.
const LINE: usize = 16;

/// How far ahead of the current position weights are prefetched, in floats. The
/// kernel for several branches reads each weight once, in order, but does enough
/// arithmetic between loads (up to eight branches' products per weight) that the
/// hardware prefetcher alone keeps too few lines in flight. Measured on the 2-core
/// development machine, 8 branches: 74-78 tok/s without, 92-98 with 256 or 1,024
/// floats ahead. The one-branch kernels read four rows at once, so they prefetch the
/// same lines of the next four rows instead (see `dot_four_rows`).
const PREFETCH_AHEAD: usize = 256;

/// Asks for the line `PREFETCH_AHEAD` floats past `w[i]`; rows are contiguous, so
/// past a row's end this fetches the start of the next. Only a hint: the address is
/// computed without dereferencing, and a prefetch never faults.
#[inline(always)]
fn prefetch_ahead(w: &[f32], i: usize) {
    prefetch_line(w.as_ptr().wrapping_add(i + PREFETCH_AHEAD));
}

/// Prefetches the cache line of `p` (a hint: the address is never dereferenced, and a
/// prefetch never faults, so `p` may point past the matrix).
#[inline(always)]
fn prefetch_line(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch reads nothing architecturally and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// One dot product's result: the lanes of its accumulators summed in order, then the
/// tail that did not fill a step (`w_tail . x_tail`) added one by one. Every kernel
/// ends this way, so that all give a row the same bits.
#[inline(always)]
fn total<const U: usize>(acc: &[[f32; LANES]; U], w_tail: &[f32], x_tail: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for part in acc {
        s += part.iter().sum::<f32>();
    }
    for (w, x) in w_tail.iter().zip(x_tail) {
        s += w * x;
    }
    s
}

/// `dst[j] = w[first + j] . x` for one branch (`x` is one row of `k`): four weight rows
/// at a time, each summed exactly as [`dot_rows_f32`] sums it alone (bit-identical),
/// which keeps four independent streams of loads in flight instead of one.
fn dot_f32_single(w: &[f32], x: &[f32], k: usize, first: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features the function is compiled for were just detected.
            unsafe { dot_f32_single_avx512(w, x, k, first, dst) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            unsafe { dot_f32_single_avx2(w, x, k, first, dst) };
            return;
        }
    }
    dot_f32_single_generic(w, x, k, first, dst)
}

/// With AVX-512's 32 vector registers the 16 accumulators of four rows stay in
/// registers; the arithmetic is the same 8-lane code as on AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn dot_f32_single_avx512(w: &[f32], x: &[f32], k: usize, first: usize, dst: &mut [f32]) {
    dot_f32_single_generic(w, x, k, first, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_single_avx2(w: &[f32], x: &[f32], k: usize, first: usize, dst: &mut [f32]) {
    dot_f32_single_generic(w, x, k, first, dst)
}

#[inline(always)]
fn dot_f32_single_generic(w: &[f32], x: &[f32], k: usize, first: usize, dst: &mut [f32]) {
    let x = &x[..k];
    let row = |o: usize| &w[o * k..(o + 1) * k];
    let mut groups = dst.chunks_exact_mut(4);
    let mut o = first;
    for d in groups.by_ref() {
        dot_four_rows([row(o), row(o + 1), row(o + 2), row(o + 3)], x, d);
        o += 4;
    }
    for d in groups.into_remainder() {
        *d = 0.0;
        dot_block_unrolled::<1, 4>(row(o), x, k, std::slice::from_mut(d));
        o += 1;
    }
}

/// Four rows' dot products with `x`, each with the accumulators and the final sums of
/// `dot_block_unrolled::<1, 4>` (so each result is bit-identical to it).
#[inline(always)]
fn dot_four_rows(w: [&[f32]; 4], x: &[f32], dst: &mut [f32]) {
    const U: usize = 4;
    let n = x.len();
    let w = w.map(|r| &r[..n]);
    let mut acc = [[[0.0f32; LANES]; U]; 4];
    let step = LANES * U;
    let full = n / step * step;
    let mut i = 0;
    while i < full {
        // The same lines of the next four rows (one group ahead): enough loads in
        // flight to stream the weights. Measured with the bf16 kernel first (42 -> 55
        // tok/s); a fixed distance ahead within the row did not help here.
        for wr in &w {
            prefetch_line(wr.as_ptr().wrapping_add(4 * n + i));
            prefetch_line(wr.as_ptr().wrapping_add(4 * n + i + 16));
        }
        for u in 0..U {
            let at = i + u * LANES;
            let xl = &x[at..at + LANES];
            for (a, wr) in acc.iter_mut().zip(&w) {
                let wl = &wr[at..at + LANES];
                for l in 0..LANES {
                    a[u][l] = wl[l].mul_add(xl[l], a[u][l]);
                }
            }
        }
        i += step;
    }
    for ((a, wr), d) in acc.iter().zip(&w).zip(dst.iter_mut()) {
        *d = 0.0;
        *d += total(a, &wr[full..n], &x[full..n]);
    }
}

/// 16 bf16 values from `p`, widened to f32 (a bf16 is the top half of an f32).
///
/// # Safety
/// The CPU must have AVX-512F, and `p` must point at 16 readable values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn widen16(p: *const bf16) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let halves = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
    }
}

/// One branch, bf16 weights: `dst[j] = w[first + j] . x`. With AVX-512 the weights are
/// widened in registers (bf16 to f32 is a 16-bit shift) instead of through a buffer,
/// four rows at a time so each input vector is loaded once for four rows: the buffered
/// path cost as much time as the halved bytes saved.
fn dot_bf16_single(w: &[bf16], x: &[f32], k: usize, first: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature the function is compiled for was just detected.
        unsafe { dot_bf16_single_avx512(w, x, k, first, dst) };
        return;
    }
    for (j, d) in dst.iter_mut().enumerate() {
        let o = first + j;
        dot_rows_bf16(&w[o * k..(o + 1) * k], x, k, std::slice::from_mut(d));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_bf16_single_avx512(w: &[bf16], x: &[f32], k: usize, first: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(w.len() >= (first + dst.len()) * k && x.len() >= k);
    let full = k / 16 * 16;
    // SAFETY (both closures): callers pass offsets below `full`, so 16 elements fit.
    let widen = |p: *const half::bf16| unsafe { widen16(p) };
    let input = |i: usize| unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) };
    let tail = |o: usize| -> f32 {
        w[o * k + full..(o + 1) * k]
            .iter()
            .zip(&x[full..k])
            .map(|(a, b)| a.to_f32() * b)
            .sum()
    };
    let mut chunks = dst.chunks_exact_mut(4);
    let mut o = first;
    for d in &mut chunks {
        let rows = [0, 1, 2, 3].map(|j| w.as_ptr().wrapping_add((o + j) * k));
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        let mut i = 0;
        while i + 32 <= full {
            let (x0, x1) = (input(i), input(i + 16));
            for (a, row) in acc.iter_mut().zip(rows) {
                // The same line of the next four rows: one group ahead keeps enough
                // loads in flight to stream the weights (a hint; it never faults).
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(4 * k + i) as *const i8);
                a[0] = _mm512_fmadd_ps(widen(row.wrapping_add(i)), x0, a[0]);
                a[1] = _mm512_fmadd_ps(widen(row.wrapping_add(i + 16)), x1, a[1]);
            }
            i += 32;
        }
        if i < full {
            let xv = input(i);
            for (a, row) in acc.iter_mut().zip(rows) {
                a[0] = _mm512_fmadd_ps(widen(row.wrapping_add(i)), xv, a[0]);
            }
        }
        for (j, (d, a)) in d.iter_mut().zip(acc).enumerate() {
            *d = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1])) + tail(o + j);
        }
        o += 4;
    }
    // The rows past the last group of four, each summed exactly as in a group (the
    // same two accumulators), so that a row's product does not depend on its place.
    for d in chunks.into_remainder() {
        let row = w.as_ptr().wrapping_add(o * k);
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        while i + 32 <= full {
            acc[0] = _mm512_fmadd_ps(widen(row.wrapping_add(i)), input(i), acc[0]);
            acc[1] = _mm512_fmadd_ps(widen(row.wrapping_add(i + 16)), input(i + 16), acc[1]);
            i += 32;
        }
        if i < full {
            acc[0] = _mm512_fmadd_ps(widen(row.wrapping_add(i)), input(i), acc[0]);
        }
        *d = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) + tail(o);
        o += 1;
    }
}

fn dot_rows_bf16(w: &[bf16], x: &[f32], k: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if dst.len() >= 8 && std::is_x86_feature_detected!("avx512f") {
            // Blocks of eight branches widen in registers; the rest (fewer than eight)
            // go through the buffer below.
            let eights = dst.len() / 8 * 8;
            assert!(w.len() >= k && x.len() >= dst.len() * k);
            for (b, d) in dst[..eights].chunks_exact_mut(8).enumerate() {
                // SAFETY: the CPU has AVX-512F (just detected); branches `8b..8b+8` of
                // `x` hold `k` floats each (checked above).
                unsafe { dot_eight_bf16_avx512(&w[..k], &x[b * 8 * k..], k, d) };
            }
            if eights < dst.len() {
                dot_rows_bf16(w, &x[eights * k..], k, &mut dst[eights..]);
            }
            return;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features the function is compiled for were just detected.
            unsafe { dot_rows_bf16_avx2(w, x, k, dst) };
            return;
        }
    }
    dot_rows_bf16_generic(w, x, k, dst)
}

/// `dst[b] = w . x[b]` for eight branches (rows of `x` at `stride`), bf16 weights
/// widened in registers: each 16 weights are widened once for all eight products.
///
/// # Safety
/// The CPU must have AVX-512F, and `x` must hold 8 rows of `stride` with at least
/// `w.len()` floats each (the last may end there).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_eight_bf16_avx512(w: &[bf16], x: &[f32], stride: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: `eight_products` asks only for `i + 16 <= w.len()`.
    let widen = |_, i: usize| unsafe { widen16(w.as_ptr().add(i)) };
    // Half a KiB ahead, into the next rows past this one's end (a hint only).
    let ahead =
        |i: usize| _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().wrapping_add(i + 256) as *const i8);
    let [sums] = eight_products::<1>(w.len(), widen, |_, j| w[j].to_f32(), ahead, x, stride);
    dst[..8].copy_from_slice(&sums);
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
        let scale = inverse_rms(row, eps);
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

/// [`rms_norm`] of the rows of `x`, written to `out` (the same length).
pub fn rms_norm_to(x: &[f32], out: &mut [f32], weight: &[f32], eps: f32) {
    assert_eq!(x.len(), out.len());
    for (row, out) in x.chunks(weight.len()).zip(out.chunks_mut(weight.len())) {
        let scale = inverse_rms(row, eps);
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = *v * scale * w;
        }
    }
}

/// `1 / sqrt(mean(x^2) + eps)`. The squares go into 16 running sums, which the
/// compiler keeps in vector registers (one running sum would chain every addition).
fn inverse_rms(row: &[f32], eps: f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (acc, v) in lanes.iter_mut().zip(chunk) {
            *acc += v * v;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    let ms = (lanes.iter().sum::<f32>() + tail) / row.len() as f32;
    1.0 / (ms + eps).sqrt()
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

/// Deterministic test data: fixed patterns of values around zero.
#[cfg(test)]
pub(crate) mod pattern {
    /// `n` weights, `(i * 53 % 97 - 48) / div`.
    pub fn weights(n: usize, div: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / div)
            .collect()
    }

    /// `n` inputs, `(i * 37 % 101 - 50) / div`.
    pub fn inputs(n: usize, div: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / div)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::pattern::{inputs, weights};
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
    fn four_rows_at_a_time_is_bit_identical_to_one_row() {
        for &(k, n) in &[(576, 37), (33, 9), (64, 4), (7, 3), (1536, 130)] {
            let x: Vec<f32> = inputs(k, 7.0);
            let w: Vec<f32> = weights(n * k, 9.0);
            for first in [0, 1] {
                let mut fast = vec![f32::NAN; n - first];
                dot_f32_single(&w, &x, k, first, &mut fast);
                for (j, &got) in fast.iter().enumerate() {
                    let o = first + j;
                    let mut one = [0.0f32];
                    dot_rows_f32(&w[o * k..(o + 1) * k], &x, k, &mut one);
                    assert_eq!(got.to_bits(), one[0].to_bits(), "k={k} row {o}");
                }
            }
        }
    }

    #[test]
    fn one_branch_bf16_rows_match_the_rounded_weights() {
        for &(k, n, first) in &[(576, 7, 0), (37, 9, 2), (15, 5, 1), (1536, 4, 3)] {
            let x: Vec<f32> = inputs(k, 50.0);
            let w: Vec<bf16> = weights((first + n) * k, 40.0)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let mut got = vec![f32::NAN; n];
            dot_bf16_single(&w, &x, k, first, &mut got);
            for (j, g) in got.iter().enumerate() {
                let o = first + j;
                let want: f64 = (0..k).map(|i| w[o * k + i].to_f64() * x[i] as f64).sum();
                assert!(
                    (*g as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "k={k} row {o}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn linear_matches_naive_for_odd_shapes() {
        for &(m, k, n) in &[
            (1, 576, 130),
            (3, 77, 5),
            (8, 1536, 65),
            (9, 37, 11),
            (2, 9, 200),
        ] {
            let x: Vec<f32> = inputs(m * k, 50.0);
            let w: Vec<f32> = weights(n * k, 40.0);
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
    fn any_rows_alone_equal_the_full_product_bit_for_bit() {
        for &(m, k, n) in &[
            (1, 576, 131),
            (1, 40, 9),
            (2, 77, 37),
            (3, 576, 70),
            (8, 96, 45),
            (9, 37, 11),
            (5, 64, 7),
            (12, 45, 10),
        ] {
            let x: Vec<f32> = inputs(m * k, 13.0);
            let w: Vec<f32> = weights(n * k, 41.0);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            // Rows from every place in a group of four and every chunk, in any order.
            let rows: Vec<usize> = (0..n).rev().step_by(3).chain([0, n - 1, n / 2]).collect();
            for weights in [WeightRows::F32(&w), WeightRows::Bf16(&wb)] {
                let mut full = vec![0.0; m * n];
                linear(&x, m, weights, n, &mut full);
                let mut some = vec![f32::NAN; rows.len() * m];
                linear_rows(&x, m, weights, &rows, &mut some);
                for (j, &o) in rows.iter().enumerate() {
                    for b in 0..m {
                        assert_eq!(
                            some[j * m + b].to_bits(),
                            full[b * n + o].to_bits(),
                            "m={m} k={k} row {o} branch {b}"
                        );
                    }
                }
            }
        }
    }

    /// Inputs anywhere relative to a cache line (copied onto lines for several
    /// branches) give the same products bit for bit.
    #[test]
    fn inputs_off_cache_lines_give_the_same_products() {
        let (m, k, n) = (8, 64, 9);
        let q = crate::q4::tests::quantized_rows(n, k);
        let x: Vec<f32> = inputs(m * k, 13.0);
        let mut want = vec![0.0; m * n];
        linear(&x, m, WeightRows::Q4(&q), n, &mut want);
        let mut buf = vec![0.0f32; m * k + 16];
        for off in 0..16 {
            buf[off..off + m * k].copy_from_slice(&x);
            let mut got = vec![f32::NAN; m * n];
            linear(&buf[off..off + m * k], m, WeightRows::Q4(&q), n, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "offset {off}");
        }
    }

    /// Sixteen registers reduced together equal each reduced alone, bit for bit, on
    /// lanes of mixed signs and magnitudes (where any other order of the additions
    /// rounds differently).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_reductions_at_once_equal_one_at_a_time() {
        use std::arch::x86_64::*;
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            unit * 10f32.powi((seed >> 20) as i32 % 9 - 4)
        };
        for _ in 0..200 {
            let lanes: Vec<f32> = (0..256).map(|_| next()).collect();
            // SAFETY: the CPU has AVX-512F (checked above); 16 loads of 16 floats.
            let (got, want) = unsafe {
                let v: [__m512; 16] =
                    std::array::from_fn(|i| _mm512_loadu_ps(lanes.as_ptr().add(16 * i)));
                let want: [f32; 16] = std::array::from_fn(|i| _mm512_reduce_add_ps(v[i]));
                (reduce_sixteen(v), want)
            };
            let bits = |x: [f32; 16]| x.map(f32::to_bits);
            assert_eq!(bits(got), bits(want));
        }
    }

    #[test]
    fn q4_blocks_give_the_f32_matrixs_products_bit_for_bit() {
        for &(m, k, n) in &[
            (1, 576, 131),
            (1, 64, 6),
            (2, 96, 37),
            (5, 32, 9),
            (8, 1536, 21),
            (9, 64, 11),
        ] {
            let q = crate::q4::tests::quantized_rows(n, k);
            let w: Vec<f32> = (0..n)
                .flat_map(|o| WeightRows::Q4(&q).row_f32(o, k))
                .collect();
            assert!(q.expands_to(&w));
            let x: Vec<f32> = inputs(m * k, 13.0);
            let mut want = vec![0.0; m * n];
            linear(&x, m, WeightRows::F32(&w), n, &mut want);
            let mut got = vec![f32::NAN; m * n];
            linear(&x, m, WeightRows::Q4(&q), n, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "m={m} k={k} n={n}");
            // The AVX2 one-branch kernel too where the CPU has it, whichever kernel
            // `linear` took (on AVX-512, the other): every row from row 1, so the
            // pairs and the odd row both start off the first row.
            #[cfg(target_arch = "x86_64")]
            if m == 1
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
            {
                let mut avx2 = vec![f32::NAN; n - 1];
                // SAFETY: AVX2 and FMA were just detected; rows 1..n lie in `q`.
                unsafe { dot_q4_single_avx2(&q, &x, 1, &mut avx2) };
                assert_eq!(bits(&avx2), bits(&want[1..]), "AVX2, k={k} n={n}");
            }
            let rows: Vec<usize> = (0..n).rev().step_by(2).collect();
            let mut some = vec![f32::NAN; rows.len() * m];
            linear_rows(&x, m, WeightRows::Q4(&q), &rows, &mut some);
            for (j, &o) in rows.iter().enumerate() {
                for b in 0..m {
                    assert_eq!(some[j * m + b].to_bits(), want[b * n + o].to_bits());
                }
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
