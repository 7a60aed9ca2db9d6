//! Fused causal attention for the prefill (after FlashAttention, Dao et al. 2022), for
//! CPUs with AVX-512 and heads of 64 or 128 dimensions.
//!
//! A group of a few query rows walks the keys in tiles of [`KEY_TILE`]: the tile's
//! scores stay in registers, the softmax is kept online (running maximum and sum per
//! row, the output rescaled when the maximum grows), and the tile's weighted values are
//! added at once. Compared with two matrix products around a softmax over the block's
//! full score matrix, no score is written to memory or read back, no score above the
//! diagonal is computed beyond the last tile, and nothing is packed.
//!
//! Loops, not closures, fill the register arrays: a closure is compiled without the
//! enclosing function's AVX-512 and its intrinsics become calls.
//!
//! The scores read the keys transposed tile by tile ([`TiledKeys`]): a tile is `d`
//! rows of 64 key components, 16 KiB in one piece at d = 64, so that a key component
//! of the tile is four registers.
//!
//! Measured against the two matrix products (gemm) around a softmax it replaces, on
//! the default model with a 1,600-token prompt: the prefill's attention took 392 to 455
//! ms instead of 465 to 509 (instrumented builds, three runs each), and the prefill ran
//! 939 to 958 tok/s instead of 878 to 904 (three interleaved pairs of
//! `sparq bench model --prompt-tokens 1600`). The attention mass that H2O needs from
//! the prefill still goes through the matrix products.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use crate::activation::exp512;
use sparq_attention::LineAligned;

/// Keys per tile: four AVX-512 registers of scores per query row.
pub(crate) const KEY_TILE: usize = 64;

/// Whether [`attend_rows`] serves heads of `d` dimensions on this CPU.
pub(crate) fn available(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (d == 64 || d == 128)
            && sparq_attention::simd_enabled()
            && std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = d;
        false
    }
}

/// The keys of one KV head transposed tile by tile: tile `t` holds, for each key
/// component `c`, the components `c` of keys `64t .. 64t + 63` (zeros past the last).
pub(crate) struct TiledKeys {
    /// On cache-line boundaries, like every tile (a tile is `d` whole lines): a vector
    /// load that straddles two lines costs the kernel about a tenth of its speed.
    data: LineAligned,
    /// Positions covered: the keys' count rounded up to whole tiles.
    positions: usize,
}

impl TiledKeys {
    /// From the `s x d` row-major keys of one KV head.
    pub(crate) fn new(k: &[f32], s: usize, d: usize) -> Self {
        let positions = s.div_ceil(KEY_TILE) * KEY_TILE;
        let mut data = LineAligned::zeroed(d * positions);
        for (p, row) in k.chunks_exact(d).take(s).enumerate() {
            let tile = &mut data[(p / KEY_TILE) * d * KEY_TILE..];
            for (c, &x) in row.iter().enumerate() {
                tile[c * KEY_TILE + p % KEY_TILE] = x;
            }
        }
        Self { data, positions }
    }
}

/// Causal attention of query rows `q` (`len x d`, the first at position `start`, already
/// multiplied by the score scale) over the `keys` and values `v` (`s x d`) of one KV
/// head: row `i` of the output, `out[i * stride..i * stride + d]`, receives
/// `softmax(q_i . k_j, j <= start + i) . v`. The rest of `out` is not touched, so the
/// heads of a position can sit side by side in one row.
///
/// # Panics
/// When [`available`] is false for `d`, the keys or values end before the last query's
/// position, or `out` is too short for `len` rows of `stride`.
pub(crate) fn attend_rows(
    q: &[f32],
    keys: &TiledKeys,
    v: &[f32],
    (start, d): (usize, usize),
    out: &mut [f32],
    stride: usize,
) {
    assert!(
        available(d),
        "fused prefill attention needs AVX-512 and d of 64 or 128"
    );
    let len = q.len() / d;
    assert!(len > 0 && stride >= d && out.len() >= (len - 1) * stride + d);
    assert!(keys.data.len() == d * keys.positions && start + len <= keys.positions);
    assert!(v.len() >= (start + len) * d);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (checked by `available`); the kernels read the tiles
    // up to the one holding the last query's position, which `keys` covers, value rows
    // only up to that position, and write `len` rows of `out` at `stride` (all
    // asserted above).
    unsafe {
        let out = Out { rows: out, stride };
        match d {
            64 => rows_avx512::<4, 6>(q, &keys.data, v, start, out),
            _ => rows_avx512::<8, 3>(q, &keys.data, v, start, out),
        }
    }
}

/// Output rows `stride` apart.
#[cfg(target_arch = "x86_64")]
struct Out<'a> {
    rows: &'a mut [f32],
    stride: usize,
}

/// The block of query rows tile by tile: each key tile and its value rows stay in L1
/// while every group of `R` rows that sees them takes them in (the rows' outputs,
/// running maxima and sums wait in memory between tiles).
///
/// # Safety
/// AVX-512F; the bounds [`attend_rows`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512<const NV: usize, const R: usize>(
    q: &[f32],
    kt: &[f32],
    v: &[f32],
    start: usize,
    out: Out<'_>,
) {
    let d = 16 * NV;
    let len = q.len() / d;
    let last = start + len - 1;
    let Out { rows: out, stride } = out;
    // The output rows are not zeroed first: every row's first tile (t0 = 0) starts
    // its sum from zero instead of reading them (a zeroing pass was 4% of this
    // function's profile, its stores missing the cache).
    let mut m = vec![f32::NEG_INFINITY; len];
    // Each row's running sum in 16 lanes, added up at the end.
    let mut l = vec![0.0f32; 16 * len];
    let tile = Tile { kt, v };
    let mut t0 = 0;
    while t0 <= last {
        // Rows before the tile's first key see none of it.
        let mut i = t0.saturating_sub(start);
        while i < len {
            let rows = Rows {
                q: &q[i * d..],
                first: start + i,
                m: &mut m[i..],
                l: &mut l[16 * i..],
            };
            let out = &mut out[i * stride..];
            // Full groups, then one smaller group for the rows left over.
            let taken = match len - i {
                n if n >= R => group_tile::<NV, R>(&tile, t0, rows, out, stride),
                1 => group_tile::<NV, 1>(&tile, t0, rows, out, stride),
                2 => group_tile::<NV, 2>(&tile, t0, rows, out, stride),
                3 => group_tile::<NV, 3>(&tile, t0, rows, out, stride),
                4 => group_tile::<NV, 4>(&tile, t0, rows, out, stride),
                _ => group_tile::<NV, 5>(&tile, t0, rows, out, stride),
            };
            i += taken;
        }
        t0 += KEY_TILE;
    }
    for (i, lanes) in l.chunks_exact(16).enumerate() {
        let inv = 1.0 / lanes.iter().sum::<f32>();
        for x in &mut out[i * stride..i * stride + d] {
            *x *= inv;
        }
    }
}

/// The keys and values a tile is cut from.
#[cfg(target_arch = "x86_64")]
struct Tile<'a> {
    kt: &'a [f32],
    v: &'a [f32],
}

/// A group of consecutive query rows and their running softmax state.
#[cfg(target_arch = "x86_64")]
struct Rows<'a> {
    q: &'a [f32],
    /// Position of the first row.
    first: usize,
    m: &'a mut [f32],
    /// Running sums, 16 lanes per row.
    l: &'a mut [f32],
}

/// `R` rows over the key tile starting at `t0`: scores in registers, the online
/// softmax update, and the weighted values added to the rows' outputs (`stride` apart
/// in `out`). Returns `R`, the rows taken.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indices name the registers of a tile
unsafe fn group_tile<const NV: usize, const R: usize>(
    tile: &Tile<'_>,
    t0: usize,
    rows: Rows<'_>,
    out: &mut [f32],
    stride: usize,
) -> usize {
    let d = 16 * NV;
    let Rows { q, first, m, l } = rows;
    // Scores of the tile: s[r][w] holds keys t0 + 16w .. t0 + 16w + 15.
    let mut s = [[_mm512_setzero_ps(); 4]; R];
    for c in 0..d {
        let krow = tile.kt.as_ptr().add(t0 * d + c * KEY_TILE);
        let mut kv = [_mm512_setzero_ps(); 4];
        for (w, x) in kv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(krow.add(16 * w));
        }
        for r in 0..R {
            let b = _mm512_set1_ps(*q.get_unchecked(r * d + c));
            for w in 0..4 {
                s[r][w] = _mm512_fmadd_ps(b, kv[w], s[r][w]);
            }
        }
    }
    // Every lane of `p` is written below before the weighted sum reads it.
    let mut p = std::mem::MaybeUninit::<TileWeights<R>>::uninit();
    let p = p.as_mut_ptr() as *mut f32;
    let mut alpha = [1.0f32; R];
    // Whether some key of the tile lies after some row's position (a diagonal tile).
    let diagonal = t0 + KEY_TILE > first + 1;
    for r in 0..R {
        // Keys after this row's position are masked.
        let valid = (first + r + 1).saturating_sub(t0).min(KEY_TILE);
        let mut masks = [0xFFFF as __mmask16; 4];
        let mut mx = _mm512_max_ps(
            _mm512_max_ps(s[r][0], s[r][1]),
            _mm512_max_ps(s[r][2], s[r][3]),
        );
        if diagonal {
            mx = _mm512_set1_ps(f32::NEG_INFINITY);
            for w in 0..4 {
                masks[w] = lanes_below(valid.saturating_sub(16 * w));
                mx = _mm512_mask_max_ps(mx, masks[w], mx, s[r][w]);
            }
        }
        let tile_max = _mm512_reduce_max_ps(mx);
        let lr = l.as_mut_ptr().add(16 * r);
        let mut sum = _mm512_loadu_ps(lr);
        if tile_max > m[r] {
            // A row's first tile holds its first key, so `m` is finite from then on.
            alpha[r] = if m[r] == f32::NEG_INFINITY {
                0.0
            } else {
                exp_scalar(m[r] - tile_max)
            };
            sum = _mm512_mul_ps(sum, _mm512_set1_ps(alpha[r]));
            m[r] = tile_max;
        }
        let mv = _mm512_set1_ps(m[r]);
        for w in 0..4 {
            let e = _mm512_maskz_mov_ps(masks[w], exp512(_mm512_sub_ps(s[r][w], mv)));
            sum = _mm512_add_ps(sum, e);
            _mm512_storeu_ps(p.add(r * KEY_TILE + 16 * w), e);
        }
        _mm512_storeu_ps(lr, sum);
    }
    // The tile's weighted values. Keys past the group's last position have weight 0 in
    // every row and are not read (they may lie past the cache's end).
    let mut o = [[_mm512_setzero_ps(); NV]; R];
    if t0 > 0 {
        for r in 0..R {
            let a = _mm512_set1_ps(alpha[r]);
            for c in 0..NV {
                o[r][c] = _mm512_mul_ps(_mm512_loadu_ps(out.as_ptr().add(r * stride + 16 * c)), a);
            }
        }
    }
    let keys = (first + R - t0).min(KEY_TILE);
    for j in 0..keys {
        let vrow = tile.v.as_ptr().add((t0 + j) * d);
        let mut vv = [_mm512_setzero_ps(); NV];
        for (c, x) in vv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(vrow.add(16 * c));
        }
        for r in 0..R {
            let w = _mm512_set1_ps(*p.add(r * KEY_TILE + j));
            for c in 0..NV {
                o[r][c] = _mm512_fmadd_ps(w, vv[c], o[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..NV {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * stride + 16 * c), o[r][c]);
        }
    }
    R
}

/// The softmax weights of a group's rows over one tile, each row on whole cache lines
/// so that no store of a register straddles two.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileWeights<const R: usize>([[f32; KEY_TILE]; R]);

/// The mask of the first `n` of 16 lanes (all of them from 16 on).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes_below(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// One `e^x`, the same way.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp_scalar(x: f32) -> f32 {
    _mm512_cvtss_f32(exp512(_mm512_set1_ps(x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention of one query row in f64, for comparison.
    fn reference(qi: &[f32], k: &[f32], v: &[f32], pos: usize, d: usize) -> Vec<f64> {
        let logits: Vec<f64> = (0..=pos)
            .map(|j| {
                let kj = &k[j * d..(j + 1) * d];
                qi.iter()
                    .zip(kj)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum::<f64>()
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
        let total: f64 = w.iter().sum();
        (0..d)
            .map(|c| {
                (0..=pos)
                    .map(|j| w[j] * f64::from(v[j * d + c]))
                    .sum::<f64>()
                    / total
            })
            .collect()
    }

    #[test]
    fn matches_softmax_attention_over_every_prefix() {
        for d in [64, 128] {
            if !available(d) {
                eprintln!("skipped: no AVX-512 on this CPU");
                return;
            }
            let s = 203;
            let mut x = 11u64;
            let mut rnd = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / 8_388_608.0 - 1.0
            };
            // Keys drift with the position, so later tiles raise the running maximum.
            let k: Vec<f32> = (0..s * d).map(|i| rnd() + 0.01 * (i / d) as f32).collect();
            let v: Vec<f32> = (0..s * d).map(|_| rnd()).collect();
            let keys = TiledKeys::new(&k, s, d);
            let scale = 1.0 / (d as f32).sqrt();
            // Output rows with room for another head beside them, which must stay as it
            // was. NaN everywhere, so that a kernel reading a row before writing it
            // shows (even times a factor of 0).
            let stride = d + 16;
            // Blocks that start mid-tile and end at the cache's last position, with
            // every count of rows left over after the full groups.
            for (start, len) in [
                (0, 13),
                (61, 70),
                (130, 73),
                (3, 5),
                (64, 2),
                (199, 4),
                (90, 9),
            ] {
                let q: Vec<f32> = (0..len * d).map(|_| 3.0 * scale * rnd()).collect();
                let mut out = vec![f32::NAN; len * stride];
                attend_rows(&q, &keys, &v, (start, d), &mut out, stride);
                for i in 0..len {
                    let want = reference(&q[i * d..(i + 1) * d], &k, &v, start + i, d);
                    for (c, w) in want.iter().enumerate() {
                        let got = f64::from(out[i * stride + c]);
                        assert!(
                            (got - w).abs() < 1e-5,
                            "d={d} row {}: {got} vs {w}",
                            start + i
                        );
                    }
                    assert!(out[i * stride + d..(i + 1) * stride]
                        .iter()
                        .all(|x| x.is_nan()));
                }
            }
        }
    }
}
