//! Exact logits of many query heads over one cache segment, a tile of heads and
//! positions at a time held in registers: the dense pass's logits.
//!
//! A tile is up to 6 heads by 64 positions (4 registers of positions): 24 accumulators,
//! each of the tile's 4 loads of transposed key components serving 6 fused
//! multiply-adds, for every component in turn. The tile's keys (64 positions by `d`
//! components, 16 KB at d = 64) stay in the L1 cache for the segment's next tiles of
//! heads, so the keys are read from memory once whatever the number of heads.
//!
//! Each logit is `fma(q_c, k_c, z)` over the components `c = 0..d` in order, from 0:
//! the arithmetic of [`crate::kernels::column_blocks`] with every component, so either
//! way gives the same bits (the conformance tests compare them through `set_simd`).

use crate::cache::HeadKv;
use crate::kernels::{column_blocks, multiversion};
#[cfg(target_arch = "x86_64")]
use crate::lanes::Lanes;
#[cfg(target_arch = "x86_64")]
use half::f16;

/// Positions of a tile: four registers of 16.
#[cfg(target_arch = "x86_64")]
const TILE_POSITIONS: usize = 64;
/// Heads of a tile at most: 6 x 4 accumulators, 4 key registers and a broadcast query
/// component fit AVX-512's 32 registers.
#[cfg(target_arch = "x86_64")]
const TILE_HEADS: usize = 6;

/// `z[h * stride + p] = q_h . k_p` for every position `p` of `seg` and every head `h`
/// of `qs` (`heads x d`, already scaled). Reads the keys' 16-bit copy when `seg` keeps
/// one (the same values, so the same bits).
pub(crate) fn logits(seg: &HeadKv, qs: &[f32], z: &mut [f32], stride: usize) {
    let (d, n) = (seg.head_dim(), seg.len());
    let heads = qs.len() / d;
    if n == 0 || heads == 0 {
        return;
    }
    assert!(qs.len() == heads * d && stride >= n);
    assert!(z.len() >= (heads - 1) * stride + n);
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(half) = seg.half().filter(|_| crate::lanes::half_kernels()) {
            let keys = Keys {
                columns: half.key_columns_ptr(),
                column_stride: half.column_stride(),
                d,
                n,
            };
            // SAFETY: the CPU has AVX-512F, BW and VL (`half_kernels`); the copy holds
            // `d` columns of `n` positions, and the lengths were checked above.
            unsafe { logits_avx512_half(keys, qs, z, stride) };
            return;
        }
        if crate::kernels::simd_enabled() && std::is_x86_feature_detected!("avx512f") {
            let keys = Keys {
                columns: seg.key_column(0).as_ptr(),
                column_stride: seg.capacity(),
                d,
                n,
            };
            // SAFETY: the CPU has AVX-512F (just detected); the cache holds `d` columns
            // of `n` positions, and the lengths were checked above.
            unsafe { logits_avx512_f32(keys, qs, z, stride) };
            return;
        }
        if crate::kernels::simd_enabled()
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            let keys = Keys {
                columns: seg.key_column(0).as_ptr(),
                column_stride: seg.capacity(),
                d,
                n,
            };
            // SAFETY: the CPU has AVX2 and FMA (just detected); the cache holds `d`
            // columns of `n` positions, and the lengths were checked above.
            unsafe { logits_avx2(keys, qs, z, stride) };
            return;
        }
    }
    portable_logits(seg, qs, (heads, stride), z);
}

multiversion! {
    /// [`logits`] without the AVX-512 tiles: every column through [`column_blocks`],
    /// built with FMA where the CPU has it (otherwise each `mul_add` is a call into
    /// libm: on a Zen 1 EPYC those calls were 6% of a one-branch decode step).
    fn portable_logits(seg: &HeadKv, qs: &[f32], shape: (usize, usize), z: &mut [f32]) {
        let every: Vec<u32> = (0..seg.head_dim() as u32).collect();
        column_blocks(seg, &every, qs, shape, z, fma4, fma1);
    }
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

/// A segment's transposed keys: `d` columns of `n` positions, column `c` (component
/// `c` of every position) starting `c * column_stride` elements after `columns`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Keys<T> {
    columns: *const T,
    column_stride: usize,
    d: usize,
    n: usize,
}

/// One tile's place: its keys (component `c` of its first position
/// `c * column_stride` elements after `keys`, the tile's positions following it), the
/// queries from head `h0`, the logits `z` (its first position of head 0's row, rows
/// `stride` apart).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Tile<T> {
    keys: *const T,
    column_stride: usize,
    d: usize,
    qs: *const f32,
    z: *mut f32,
    stride: usize,
    h0: usize,
    /// Where the tile writes its keys widened to f32 (component `c`'s 64 positions
    /// `64 * c` on), or null.
    keep: *mut f32,
}

/// [`logits`] with AVX-512 tiles over f32 keys.
///
/// # Safety
/// The CPU must have AVX-512F; `keys` lies inside its cache and the lengths are those
/// `logits` asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn logits_avx512_f32(keys: Keys<f32>, qs: &[f32], z: &mut [f32], stride: usize) {
    // SAFETY: the caller's contract.
    unsafe { logits_avx512(keys, qs, z, stride) }
}

/// Positions of an AVX2 tile: two registers of 8.
#[cfg(target_arch = "x86_64")]
const AVX2_POSITIONS: usize = 16;
/// Heads of an AVX2 tile at most: 4 x 2 accumulators, 2 key registers and a broadcast
/// query component stay well inside AVX2's 16 registers.
#[cfg(target_arch = "x86_64")]
const AVX2_HEADS: usize = 4;

/// [`logits`] for CPUs with AVX2 but not AVX-512, over f32 keys: tiles of up to 4
/// heads by 16 positions in registers, the positions past the last whole tile one by
/// one; every logit the same chain of fused multiply-adds as the portable loop's. The
/// portable loop loaded and stored the logits every four components: on a Zen 1 EPYC
/// it was a twentieth of an eight-branch decode step.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `keys` lies inside its cache and the lengths are
/// those `logits` asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn logits_avx2(keys: Keys<f32>, qs: &[f32], z: &mut [f32], stride: usize) {
    let Keys {
        columns,
        column_stride,
        d,
        n,
    } = keys;
    let heads = qs.len() / d;
    let full = n / AVX2_POSITIONS * AVX2_POSITIONS;
    for p0 in (0..full).step_by(AVX2_POSITIONS) {
        let mut h0 = 0;
        while h0 < heads {
            let nh = (heads - h0).min(AVX2_HEADS);
            let tile = Tile {
                keys: columns.wrapping_add(p0),
                column_stride,
                d,
                qs: qs.as_ptr(),
                z: z.as_mut_ptr().wrapping_add(p0),
                stride,
                h0,
                keep: std::ptr::null_mut(),
            };
            // The tile four on, for the first block of heads to ask for: 64 columns are
            // more streams than the hardware prefetcher follows.
            let ahead = h0 == 0 && p0 + 4 * AVX2_POSITIONS < n;
            // SAFETY: the tile's 16 positions and heads `h0..h0 + nh` lie inside the
            // keys, `qs` and `z` (the caller's contract).
            unsafe {
                match nh {
                    1 => logits_tile_avx2::<1>(tile, ahead),
                    2 => logits_tile_avx2::<2>(tile, ahead),
                    3 => logits_tile_avx2::<3>(tile, ahead),
                    _ => logits_tile_avx2::<4>(tile, ahead),
                }
            }
            h0 += nh;
        }
    }
    for (h, q) in qs.chunks_exact(d).enumerate() {
        for p in full..n {
            let mut acc = 0.0f32;
            for (c, &qc) in q.iter().enumerate() {
                // SAFETY: component `c` of position `p < n` lies in the keys.
                acc = qc.mul_add(unsafe { *columns.add(c * column_stride + p) }, acc);
            }
            z[h * stride + p] = acc;
        }
    }
}

/// The logits of `NH` heads from `tile.h0` and the 16 positions of `tile`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; heads `h0..h0 + NH` of `qs` and `z` and the tile's
/// 16 positions of every column and of `z`'s rows lie inside them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn logits_tile_avx2<const NH: usize>(tile: Tile<f32>, ahead: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; NH];
    for c in 0..tile.d {
        let column = tile.keys.wrapping_add(c * tile.column_stride);
        if ahead {
            _mm_prefetch::<_MM_HINT_T0>(column.wrapping_add(4 * AVX2_POSITIONS).cast());
        }
        // SAFETY: the tile's positions of column `c`.
        let k = unsafe { [_mm256_loadu_ps(column), _mm256_loadu_ps(column.add(8))] };
        for (h, regs) in acc.iter_mut().enumerate() {
            // SAFETY: head `h0 + h` of `qs` has `d` components.
            let q = _mm256_set1_ps(unsafe { *tile.qs.add((tile.h0 + h) * tile.d + c) });
            regs[0] = _mm256_fmadd_ps(q, k[0], regs[0]);
            regs[1] = _mm256_fmadd_ps(q, k[1], regs[1]);
        }
    }
    for (h, regs) in acc.iter().enumerate() {
        let row = tile.z.wrapping_add((tile.h0 + h) * tile.stride);
        // SAFETY: the tile's 16 positions of head `h0 + h`'s row of `z`.
        unsafe {
            _mm256_storeu_ps(row, regs[0]);
            _mm256_storeu_ps(row.add(8), regs[1]);
        }
    }
}

/// [`logits`] with AVX-512 tiles over f16 keys.
///
/// # Safety
/// The CPU must have AVX-512F, BW and VL; `keys` lies inside its copy and the lengths
/// are those `logits` asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn logits_avx512_half(keys: Keys<f16>, qs: &[f32], z: &mut [f32], stride: usize) {
    // SAFETY: the caller's contract.
    unsafe { logits_avx512(keys, qs, z, stride) }
}

/// The tiles of [`logits`], inlined into a build for each element type.
///
/// A tile's heads come in blocks of up to [`TILE_HEADS`], each block reading the
/// tile's keys again from L1. Keys of 16 bits are widened once per tile instead: the
/// first block keeps them widened, and the others read those (widening again for
/// every block cost a third more arithmetic at 24 heads).
///
/// # Safety
/// As for [`logits_avx512_half`] when `T` is `f16`, [`logits_avx512_f32`] when `f32`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn logits_avx512<T: Lanes>(keys: Keys<T>, qs: &[f32], z: &mut [f32], stride: usize) {
    let Keys {
        columns,
        column_stride,
        d,
        n,
    } = keys;
    let heads = qs.len() / d;
    let blocks = heads.div_ceil(TILE_HEADS);
    let widen_once = std::mem::size_of::<T>() < 4 && blocks > 1;
    let mut buf = Vec::new();
    let widened = if widen_once {
        buf.resize(TILE_POSITIONS * d + 16, 0.0f32);
        let skip = buf.as_ptr().align_offset(64).min(16);
        buf[skip..].as_mut_ptr()
    } else {
        std::ptr::null_mut()
    };
    let mut p0 = 0;
    while p0 < n {
        let width = (n - p0).min(TILE_POSITIONS);
        let source = Tile {
            keys: columns.wrapping_add(p0),
            column_stride,
            d,
            qs: qs.as_ptr(),
            z: z.as_mut_ptr().wrapping_add(p0),
            stride,
            h0: 0,
            keep: widened,
        };
        // The next tiles' keys are asked for while this one is summed: 64 columns are
        // more streams than the hardware prefetcher follows. The tile after next goes
        // into L2 (its queue of misses is deeper than L1's), the next into L1; both
        // from a block that reads the source, the second block's when it does.
        let far_block = if widen_once { 0 } else { blocks.min(2) - 1 };
        for block in 0..blocks {
            let h0 = block * TILE_HEADS;
            let nh = (heads - h0).min(TILE_HEADS);
            let ahead = Ahead {
                near: block == 0 && p0 + TILE_POSITIONS < n,
                far: block == far_block && p0 + 2 * TILE_POSITIONS < n,
            };
            // SAFETY (both): the tile lies inside `keys`, `qs` and `z` (the asserts of
            // `logits`), with `nh` heads and `width` positions; `widened` holds a
            // tile's keys and was written by block 0.
            if widen_once && block > 0 {
                let tile = Tile {
                    keys: widened.cast_const(),
                    column_stride: TILE_POSITIONS,
                    d,
                    qs: source.qs,
                    z: source.z,
                    stride,
                    h0,
                    keep: std::ptr::null_mut(),
                };
                unsafe { tile_of(tile, nh, width, ahead) };
            } else {
                let keep = if block == 0 {
                    widened
                } else {
                    std::ptr::null_mut()
                };
                unsafe { tile_of(Tile { h0, keep, ..source }, nh, width, ahead) };
            }
        }
        p0 += TILE_POSITIONS;
    }
}

/// [`logits_tile`] for `nh` heads.
///
/// # Safety
/// As for [`logits_tile`], with `nh` for `NH`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_of<T: Lanes>(tile: Tile<T>, nh: usize, width: usize, ahead: Ahead) {
    macro_rules! go {
        ($($nh:literal),*) => {
            match nh {
                // SAFETY: the caller's contract.
                $($nh => unsafe { logits_tile::<$nh, T>(tile, width, ahead) },)*
                _ => unreachable!("a tile has 1 to {TILE_HEADS} heads"),
            }
        };
    }
    go!(1, 2, 3, 4, 5, 6)
}

/// Which of the next tiles' keys a tile prefetches on its way.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Default)]
struct Ahead {
    /// The next tile's, into L1.
    near: bool,
    /// The one after, into L2.
    far: bool,
}

/// The logits of `NH` heads from `tile.h0` and `width` (at most 64) positions of
/// `tile`, prefetching the keys `ahead` names on the way.
///
/// # Safety
/// The CPU must have AVX-512F, and BW and VL for `f16` keys; heads `h0..h0 + NH` of
/// `qs` and `z`, the tile's `width` positions of every column and of `z`'s rows lie
/// inside them, and `keep` (when not null) holds 64 floats per component.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn logits_tile<const NH: usize, T: Lanes>(tile: Tile<T>, width: usize, ahead: Ahead) {
    use std::arch::x86_64::*;
    const R: usize = TILE_POSITIONS / 16;
    // A tile's positions of one column: 4 cache lines of f32, 2 of f16.
    let lines = (TILE_POSITIONS * std::mem::size_of::<T>()).div_ceil(64);
    let per_line = 64 / std::mem::size_of::<T>();
    // Lanes past `width` are neither loaded (masked loads do not fault) nor stored.
    let masks: [__mmask16; R] = std::array::from_fn(|r| {
        let lanes = width.saturating_sub(16 * r).min(16);
        ((1u32 << lanes) - 1) as __mmask16
    });
    let mut acc = [[_mm512_setzero_ps(); R]; NH];
    for c in 0..tile.d {
        // `wrapping_add`: past `width` the addresses may leave the cache's buffer; only
        // masked-off lanes and prefetches (which never fault) go there.
        let column = tile.keys.wrapping_add(c * tile.column_stride);
        if ahead.near {
            for i in 0..lines {
                let line = column.wrapping_add(TILE_POSITIONS + per_line * i);
                _mm_prefetch::<_MM_HINT_T0>(line.cast());
            }
        }
        if ahead.far {
            for i in 0..lines {
                let line = column.wrapping_add(2 * TILE_POSITIONS + per_line * i);
                _mm_prefetch::<_MM_HINT_T1>(line.cast());
            }
        }
        // SAFETY: the unmasked lanes are the tile's `width` positions of column `c`.
        let k: [__m512; R] = std::array::from_fn(|r| unsafe {
            T::load16_masked(masks[r], column.wrapping_add(16 * r))
        });
        if !tile.keep.is_null() {
            for (r, k) in k.iter().enumerate() {
                // SAFETY: `keep` holds 64 floats for component `c`.
                unsafe { _mm512_storeu_ps(tile.keep.add(TILE_POSITIONS * c + 16 * r), *k) };
            }
        }
        for (h, regs) in acc.iter_mut().enumerate() {
            // SAFETY: head `h0 + h` of `qs` has `d` components.
            let q = _mm512_set1_ps(unsafe { *tile.qs.add((tile.h0 + h) * tile.d + c) });
            for (a, k) in regs.iter_mut().zip(&k) {
                *a = _mm512_fmadd_ps(q, *k, *a);
            }
        }
    }
    for (h, regs) in acc.iter().enumerate() {
        let row = tile.z.wrapping_add((tile.h0 + h) * tile.stride);
        for (r, a) in regs.iter().enumerate() {
            // SAFETY: the unmasked lanes are the tile's `width` positions of head
            // `h0 + h`'s row of `z`.
            unsafe { _mm512_mask_storeu_ps(row.wrapping_add(16 * r), masks[r], *a) };
        }
    }
}
