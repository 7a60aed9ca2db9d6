//! Weight matrices that a GGUF file stores as Q4_1 blocks, kept in those blocks for
//! the decode kernels.
//!
//! A Q4_1 block holds 32 weights as 4-bit integers `q` with one scale `d` and one
//! offset `m` (both f16), and its f32 value is `q * d + m`, rounded after the product
//! and after the sum. Dequantizing at load gives exactly those f32 values; a decode
//! step that expands the blocks on the fly to the same f32 values and multiplies them
//! exactly as the f32 kernels do gives the same bits as the f32 matrix, while reading
//! 0.75 bytes per weight instead of 4. A matrix is only kept in blocks after checking
//! that they expand to the loaded f32 matrix bit for bit ([`Q4Rows::expands_to`]).
//!
//! The kernels expand rows into a buffer ([`Q4Rows::expand_row`]) or in registers
//! (`Q4Rows::expand32`, `kernels.rs`); `--dtype q4` instead multiplies the blocks
//! factored, `d * (q . x) + m * sum(x)` ([`Q4Rows::factored_products`]).

use half::f16;
use rayon::prelude::*;

/// Weights per block.
pub const BLOCK: usize = 32;
/// Bytes of one block in a GGUF file: `d` and `m` (f16), then 16 bytes of nibbles.
const GGML_BLOCK_BYTES: usize = 20;

/// A `rows x cols` matrix in Q4_1 blocks along its rows.
#[derive(Clone, Debug)]
pub struct Q4Rows {
    rows: usize,
    cols: usize,
    /// `cols / 2` bytes per row; in block `j` of a row, byte `i` holds weight
    /// `32j + i` in its low nibble and weight `32j + 16 + i` in its high nibble.
    nibbles: Vec<u8>,
    /// `(d, m)` of every block, row by row, widened to f32 (exactly).
    scales: Vec<[f32; 2]>,
}

impl Q4Rows {
    /// Reads a GGUF tensor's raw Q4_1 data (`rows x cols`, blocks along the rows).
    /// `None` when the sizes do not fit that layout.
    pub fn from_ggml(raw: &[u8], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0
            || !cols.is_multiple_of(BLOCK)
            || raw.len() != rows * cols / BLOCK * GGML_BLOCK_BYTES
        {
            return None;
        }
        let blocks = raw.len() / GGML_BLOCK_BYTES;
        let mut nibbles = Vec::with_capacity(blocks * BLOCK / 2);
        let mut scales = Vec::with_capacity(blocks);
        for b in raw.chunks_exact(GGML_BLOCK_BYTES) {
            let half = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
            scales.push([half(0), half(2)]);
            nibbles.extend_from_slice(&b[4..]);
        }
        Some(Self {
            rows,
            cols,
            nibbles,
            scales,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes a pass over the whole matrix reads.
    pub fn bytes(&self) -> usize {
        self.nibbles.len() + std::mem::size_of_val(&self.scales[..])
    }

    /// The matrix whose row `i` is this one's row `order[i]`.
    pub fn select_rows(&self, order: &[usize]) -> Self {
        let (row_bytes, row_blocks) = (self.cols / 2, self.cols / BLOCK);
        let mut out = Self {
            rows: order.len(),
            cols: self.cols,
            nibbles: Vec::with_capacity(order.len() * row_bytes),
            scales: Vec::with_capacity(order.len() * row_blocks),
        };
        for &r in order {
            out.nibbles
                .extend_from_slice(&self.nibbles[r * row_bytes..(r + 1) * row_bytes]);
            out.scales
                .extend_from_slice(&self.scales[r * row_blocks..(r + 1) * row_blocks]);
        }
        out
    }

    /// The matrices' rows one after another; `None` when their widths differ.
    pub fn stack(parts: &[Self]) -> Option<Self> {
        let cols = parts.first()?.cols;
        if parts.iter().any(|p| p.cols != cols) {
            return None;
        }
        Some(Self {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
            nibbles: parts
                .iter()
                .flat_map(|p| p.nibbles.iter().copied())
                .collect(),
            scales: parts
                .iter()
                .flat_map(|p| p.scales.iter().copied())
                .collect(),
        })
    }

    /// Writes row `r`'s f32 values into `out` (`cols` long).
    #[inline]
    pub fn expand_row(&self, r: usize, out: &mut [f32]) {
        let (row_bytes, row_blocks) = (self.cols / 2, self.cols / BLOCK);
        let nibbles = &self.nibbles[r * row_bytes..(r + 1) * row_bytes];
        let scales = &self.scales[r * row_blocks..(r + 1) * row_blocks];
        let out = &mut out[..self.cols];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (just detected); the three slices hold the
            // same number of blocks (cut above).
            unsafe { expand_avx512(nibbles, scales, out) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above, with AVX2 and FMA.
            unsafe { expand_avx2(nibbles, scales, out) };
            return;
        }
        expand_generic(nibbles, scales, out)
    }

    /// Whether the blocks expand to exactly `w` (row-major `rows x cols`), bit for bit.
    pub fn expands_to(&self, w: &[f32]) -> bool {
        w.len() == self.rows * self.cols
            && w.par_chunks(self.cols).enumerate().all(|(r, want)| {
                let mut row = vec![0.0f32; self.cols];
                self.expand_row(r, &mut row);
                row.iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            })
    }
}

impl Q4Rows {
    /// `dst[j] = w[first + j] . x` computed from the blocks as `d * (q . x) + m * sum(x)`
    /// per block: the same weights, rounded differently from the exact products (the
    /// reduced-precision `--dtype q4`), and fewer operations than expanding each
    /// weight first. A row's result does not depend on which rows share the call.
    pub fn factored_products(&self, x: &[f32], first: usize, dst: &mut [f32]) {
        let k = self.cols;
        let x = &x[..k];
        let x_sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            for (g, d) in dst.chunks_mut(4).enumerate() {
                // SAFETY: AVX-512F was just detected; the rows are the caller's.
                unsafe { self.factored_avx512(x, &x_sums, first + 4 * g, d) };
            }
            return;
        }
        let (row_bytes, row_blocks) = (k / 2, k / BLOCK);
        for (o, d) in (first..).zip(dst.iter_mut()) {
            let nibbles = &self.nibbles[o * row_bytes..(o + 1) * row_bytes];
            let scales = &self.scales[o * row_blocks..(o + 1) * row_blocks];
            *d = factored_generic(nibbles, scales, x, &x_sums);
        }
    }

    /// [`factored_generic`] for up to four rows from `first` into `dst`, 16 lanes at a
    /// time: each block's `q . x` is a vector, scaled by `d` into the row's
    /// accumulator, and the offsets' share is added at the end. Each row's arithmetic
    /// is the same whatever rows share the call; the next four rows are prefetched.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn factored_avx512(&self, x: &[f32], x_sums: &[f32], first: usize, dst: &mut [f32]) {
        use std::arch::x86_64::*;
        let k = self.cols;
        let rows = dst.len();
        assert!(
            rows <= 4 && first + rows <= self.rows && x.len() >= k && x_sums.len() * BLOCK == k
        );
        let mut acc = [_mm512_setzero_ps(); 4];
        for (j, i) in (0..k).step_by(BLOCK).enumerate() {
            if i % 128 == 0 {
                for r in 0..4 {
                    self.prefetch(first + 4 + r, i);
                }
            }
            // SAFETY: inputs `i..i + 32` lie in `x` (asserted).
            let (x0, x1) = unsafe {
                let xp = x.as_ptr().add(i);
                (_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(BLOCK / 2)))
            };
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                let block = (first + r) * (k / BLOCK) + j;
                // SAFETY: block `block` lies in the matrix (asserted rows and columns).
                unsafe {
                    let codes = block_codes(self.nibbles.as_ptr().add(block * BLOCK / 2));
                    let lo = _mm512_cvtepi32_ps(_mm512_and_si512(codes, _mm512_set1_epi32(0x0f)));
                    let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(codes));
                    let q_dot = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
                    let d = self.scales.get_unchecked(block)[0];
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(d), q_dot, *a);
                }
            }
        }
        for (r, (dv, a)) in dst.iter_mut().zip(acc).enumerate() {
            let row_blocks = k / BLOCK;
            let scales = &self.scales[(first + r) * row_blocks..(first + r + 1) * row_blocks];
            let offsets: f32 = scales.iter().zip(x_sums).map(|(&[_, m], &s)| m * s).sum();
            *dv = _mm512_reduce_add_ps(a) + offsets;
        }
    }
}

/// One row of [`Q4Rows::factored_products`].
fn factored_generic(nibbles: &[u8], scales: &[[f32; 2]], x: &[f32], x_sums: &[f32]) -> f32 {
    let mut total = 0.0f32;
    for (((bytes, &[d, m]), xb), &x_sum) in nibbles
        .chunks_exact(BLOCK / 2)
        .zip(scales)
        .zip(x.chunks_exact(BLOCK))
        .zip(x_sums)
    {
        let (low, high) = xb.split_at(BLOCK / 2);
        let q_dot: f32 = bytes
            .iter()
            .zip(low.iter().zip(high))
            .map(|(&byte, (lo, hi))| (byte & 0x0f) as f32 * lo + (byte >> 4) as f32 * hi)
            .sum();
        total += d * q_dot + m * x_sum;
    }
    total
}

/// `q * d + m` for every weight, rounded as the dequantizer rounds (product, then sum;
/// never fused).
fn expand_generic(nibbles: &[u8], scales: &[[f32; 2]], out: &mut [f32]) {
    for ((bytes, &[d, m]), block) in nibbles
        .chunks_exact(BLOCK / 2)
        .zip(scales)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let (low, high) = block.split_at_mut(BLOCK / 2);
        for ((&byte, lo), hi) in bytes.iter().zip(low).zip(high) {
            *lo = (byte & 0x0f) as f32 * d + m;
            *hi = (byte >> 4) as f32 * d + m;
        }
    }
}

/// [`expand_generic`] 16 weights at a time: the same two roundings per weight.
///
/// # Safety
/// The CPU must have AVX-512F, and the slices must hold the same number of blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn expand_avx512(nibbles: &[u8], scales: &[[f32; 2]], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(nibbles.len() == scales.len() * BLOCK / 2 && out.len() == scales.len() * BLOCK);
    for (j, &[d, m]) in scales.iter().enumerate() {
        // SAFETY: block `j` has 16 bytes at `16j` and 32 outputs at `32j` (asserted).
        unsafe {
            let q = block_codes(nibbles.as_ptr().add(j * BLOCK / 2));
            let (d, m) = (_mm512_set1_ps(d), _mm512_set1_ps(m));
            let dst = out.as_mut_ptr().add(j * BLOCK);
            _mm512_storeu_ps(dst, block_values::<0>(q, d, m));
            _mm512_storeu_ps(dst.add(BLOCK / 2), block_values::<1>(q, d, m));
        }
    }
}

/// [`expand_generic`] 8 weights at a time, for CPUs without AVX-512 (the scalar loop
/// was a quarter of a one-branch decode step's time on a Zen 1 EPYC).
///
/// # Safety
/// The CPU must have AVX2 and FMA, and the slices must hold the same number of blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn expand_avx2(nibbles: &[u8], scales: &[[f32; 2]], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(nibbles.len() == scales.len() * BLOCK / 2 && out.len() == scales.len() * BLOCK);
    for (j, &[d, m]) in scales.iter().enumerate() {
        // SAFETY: block `j` has 16 bytes at `16j` and 32 outputs at `32j` (asserted).
        unsafe {
            let values = block_values_avx2(
                nibbles.as_ptr().add(j * BLOCK / 2),
                _mm256_set1_ps(d),
                _mm256_set1_ps(m),
            );
            let dst = out.as_mut_ptr().add(j * BLOCK);
            for (e, v) in values.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(8 * e), v);
            }
        }
    }
}

/// A block's 32 f32 values in four 8-lane registers, weights `8e..8e + 7` in register
/// `e` (the low nibbles of bytes 0-7 and 8-15, then their high nibbles), `q * d + m`
/// in one fused multiply-add as [`block_values`] computes it (the product is exact).
///
/// # Safety
/// The CPU must have AVX2 and FMA, and `p` must point at the block's 16 bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_values_avx2(
    p: *const u8,
    d: std::arch::x86_64::__m256,
    m: std::arch::x86_64::__m256,
) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract: bytes `p..p + 16` are readable.
    let (first, second) = unsafe {
        (
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)),
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8) as *const __m128i)),
        )
    };
    let low = _mm256_set1_epi32(0x0f);
    let value = |q: __m256i| _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), d, m);
    [
        value(_mm256_and_si256(first, low)),
        value(_mm256_and_si256(second, low)),
        value(_mm256_srli_epi32::<4>(first)),
        value(_mm256_srli_epi32::<4>(second)),
    ]
}

/// A block's 16 bytes of nibbles, one byte per 32-bit lane.
///
/// # Safety
/// The CPU must have AVX-512F, and `p` must point at 16 readable bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_codes(p: *const u8) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)) }
}

/// The f32 values of the block's first (`HALF` 0: low nibbles) or second 16 weights,
/// `q * d + m` with both roundings, in one fused multiply-add: `d` is an f16 value (11
/// significant bits) and `q` has 4, so `q * d` is exact in f32 and the product's
/// rounding changes nothing. One operation fewer per 16 weights; `expands_to` checks
/// the values against the loaded matrix bit for bit all the same.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_values<const HALF: u32>(
    codes: std::arch::x86_64::__m512i,
    d: std::arch::x86_64::__m512,
    m: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let q = if HALF == 0 {
        _mm512_and_si512(codes, _mm512_set1_epi32(0x0f))
    } else {
        _mm512_srli_epi32::<4>(codes)
    };
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), d, m)
}

impl Q4Rows {
    /// Asks for the cache lines that hold row `r`'s weights from column `i` (a hint:
    /// nothing is read, and a row past the end is harmless).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn prefetch(&self, r: usize, i: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let block = (r * self.cols + i) / BLOCK;
        let nibbles = self.nibbles.as_ptr().wrapping_add(block * BLOCK / 2);
        let scales = self.scales.as_ptr().wrapping_add(block);
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(nibbles as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(scales as *const i8);
        }
    }

    /// The block of row `r` from column `i` (32 weights), in registers, exactly as
    /// [`Q4Rows::expand_row`] writes them: its nibbles are widened once for both
    /// halves, and `d` and `m` are broadcast straight from memory (loading the pair
    /// as one word and splitting it, as the compiler did for `[f32; 2]`, cost two
    /// shuffles per block on the port the products need).
    ///
    /// The weights are looked up in a table of the block's 16 values rather than
    /// converted one by one. In profiles of eight branches of the default model (160
    /// new tokens, three runs alternated with the build before), the paired kernel
    /// took 5,105 to 5,587 samples instead of 5,507 to 5,893.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `r < rows`, `i + 32 <= cols` and `i` is a multiple
    /// of 32.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) unsafe fn expand32(&self, r: usize, i: usize) -> [std::arch::x86_64::__m512; 2] {
        use std::arch::x86_64::*;
        debug_assert!(r < self.rows && i + BLOCK <= self.cols && i.is_multiple_of(BLOCK));
        let block = (r * self.cols + i) / BLOCK;
        // SAFETY: block `block` lies in the matrix (the caller's contract).
        unsafe {
            let codes = block_codes(self.nibbles.as_ptr().add(block * BLOCK / 2));
            let scale = self.scales.as_ptr().add(block).cast::<f32>();
            let d = _mm512_broadcastss_ps(_mm_load_ss(scale));
            let m = _mm512_broadcastss_ps(_mm_load_ss(scale.add(1)));
            // The block's 16 possible values, `q * d + m` for `q = 0..15` (the
            // rounding of `block_values`), looked up by each weight's nibble:
            // `permutexvar` reads only an index's low four bits, so the low nibbles
            // need no mask. Two operations a block fewer on the ports the products
            // use than converting every weight.
            let nibbles = _mm512_setr_ps(
                0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0,
                15.0,
            );
            let table = _mm512_fmadd_ps(nibbles, d, m);
            [
                _mm512_permutexvar_ps(codes, table),
                _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(codes), table),
            ]
        }
    }
}

impl Q4Rows {
    /// [`Q4Rows::expand32`] in 8-lane registers, for CPUs without AVX-512: the block of
    /// row `r` from column `i`, weights `i + 8e..i + 8e + 7` in register `e`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `r < rows`, `i + 32 <= cols` and `i` is a
    /// multiple of 32.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) unsafe fn expand32_avx2(
        &self,
        r: usize,
        i: usize,
    ) -> [std::arch::x86_64::__m256; 4] {
        use std::arch::x86_64::*;
        debug_assert!(r < self.rows && i + BLOCK <= self.cols && i.is_multiple_of(BLOCK));
        let block = (r * self.cols + i) / BLOCK;
        // SAFETY: block `block` lies in the matrix (the caller's contract).
        unsafe {
            let scale = self.scales.as_ptr().add(block).cast::<f32>();
            block_values_avx2(
                self.nibbles.as_ptr().add(block * BLOCK / 2),
                _mm256_broadcast_ss(&*scale),
                _mm256_broadcast_ss(&*scale.add(1)),
            )
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// A quantized matrix with blocks of every kind: spread, constant, negative, large.
    fn quantized(rows: usize, cols: usize) -> QTensor {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let block = i / BLOCK;
                let wave = ((i * 7919 % 1009) as f32 - 504.0) / 317.0;
                match block % 4 {
                    0 => wave,
                    1 => 0.25,
                    2 => wave * 1e-3 - 2.0,
                    _ => wave * 300.0,
                }
            })
            .collect();
        let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
        QTensor::quantize(&t, GgmlDType::Q4_1).unwrap()
    }

    /// [`quantized`]'s blocks as [`Q4Rows`].
    pub(crate) fn quantized_rows(rows: usize, cols: usize) -> Q4Rows {
        Q4Rows::from_ggml(&quantized(rows, cols).data().unwrap(), rows, cols).unwrap()
    }

    fn expanded(q: &Q4Rows) -> Vec<f32> {
        let mut out = vec![f32::NAN; q.rows() * q.cols()];
        for (r, row) in out.chunks_mut(q.cols()).enumerate() {
            q.expand_row(r, row);
        }
        out
    }

    #[test]
    fn blocks_expand_to_candles_dequantized_values_bit_for_bit() {
        let (rows, cols) = (13, 96);
        let qt = quantized(rows, cols);
        let q = Q4Rows::from_ggml(&qt.data().unwrap(), rows, cols).unwrap();
        let want: Vec<f32> = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(want.iter().any(|v| *v != want[0]), "the data must vary");
        assert!(q.expands_to(&want));
        let got = expanded(&q);
        // The vector path against the scalar one, block by block.
        let mut scalar = vec![0.0f32; rows * cols];
        for (r, row) in scalar.chunks_mut(cols).enumerate() {
            let row_blocks = cols / BLOCK;
            expand_generic(
                &q.nibbles[r * cols / 2..(r + 1) * cols / 2],
                &q.scales[r * row_blocks..(r + 1) * row_blocks],
                row,
            );
        }
        for (i, ((g, s), w)) in got.iter().zip(&scalar).zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "element {i}");
            assert_eq!(s.to_bits(), w.to_bits(), "element {i}, scalar");
        }
        // The AVX2 path too where the CPU has it, whichever path `expand_row` took.
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            let mut avx2 = vec![f32::NAN; rows * cols];
            for (r, row) in avx2.chunks_mut(cols).enumerate() {
                let row_blocks = cols / BLOCK;
                // SAFETY: AVX2 and FMA were just detected; the slices hold one row's
                // blocks.
                unsafe {
                    expand_avx2(
                        &q.nibbles[r * cols / 2..(r + 1) * cols / 2],
                        &q.scales[r * row_blocks..(r + 1) * row_blocks],
                        row,
                    )
                };
            }
            for (i, (a, w)) in avx2.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), w.to_bits(), "element {i}, AVX2");
            }
        }
        // One changed weight is noticed.
        let mut off = want.clone();
        off[cols + 5] = f32::from_bits(off[cols + 5].to_bits() ^ 1);
        assert!(!q.expands_to(&off));
        assert!(!q.expands_to(&want[..cols]));
    }

    #[test]
    fn selected_and_stacked_rows_keep_their_values() {
        let cols = 64;
        let (a, b) = (quantized_rows(5, cols), quantized_rows(3, cols));
        let (ea, eb) = (expanded(&a), expanded(&b));
        let order = [4, 0, 2, 2];
        let picked = expanded(&a.select_rows(&order));
        for (i, &r) in order.iter().enumerate() {
            assert_eq!(
                picked[i * cols..(i + 1) * cols],
                ea[r * cols..(r + 1) * cols]
            );
        }
        let both = Q4Rows::stack(&[a.clone(), b]).unwrap();
        assert_eq!(both.rows(), 8);
        assert_eq!(expanded(&both), [ea, eb].concat());
        let narrow = quantized_rows(1, 32);
        assert!(Q4Rows::stack(&[a, narrow]).is_none());
    }

    #[test]
    fn factored_products_stay_close_to_the_exact_ones() {
        let (rows, cols) = (9, 160);
        let q = quantized_rows(rows, cols);
        let w = expanded(&q);
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let mut got = vec![f32::NAN; rows - 2];
        q.factored_products(&x, 2, &mut got);
        let mut scalar = vec![f32::NAN; rows - 2];
        for (j, s) in scalar.iter_mut().enumerate() {
            let (o, rb) = (2 + j, cols / BLOCK);
            let sums: Vec<f32> = x.chunks(BLOCK).map(|b| b.iter().sum()).collect();
            *s = factored_generic(
                &q.nibbles[o * cols / 2..(o + 1) * cols / 2],
                &q.scales[o * rb..(o + 1) * rb],
                &x,
                &sums,
            );
        }
        for (j, (g, s)) in got.iter().zip(&scalar).enumerate() {
            let o = 2 + j;
            let row = &w[o * cols..(o + 1) * cols];
            let exact: f64 = row.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let scale: f64 = row
                .iter()
                .zip(&x)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            for v in [g, s] {
                assert!(
                    (*v as f64 - exact).abs() <= 1e-5 * scale,
                    "row {o}: {v} against {exact} (scale {scale})"
                );
            }
            // Alone, the row gives the same result as among the others.
            let mut alone = [f32::NAN];
            q.factored_products(&x, o, &mut alone);
            assert_eq!(alone[0].to_bits(), g.to_bits());
        }
    }

    #[test]
    fn sizes_that_do_not_fit_the_layout_are_refused() {
        let raw = vec![0u8; 2 * GGML_BLOCK_BYTES];
        assert!(Q4Rows::from_ggml(&raw, 1, 64).is_some());
        assert!(Q4Rows::from_ggml(&raw, 2, 64).is_none());
        assert!(Q4Rows::from_ggml(&raw, 1, 48).is_none());
        assert!(Q4Rows::from_ggml(&raw[1..], 1, 64).is_none());
        assert!(Q4Rows::from_ggml(&[], 0, 0).is_none());
    }
}
