//! Exact top-k selection: the indices of the `k` largest scores, ascending, ties at
//! the cut going to the lower index. Every top-k method ranks `S` scores per step, so
//! this runs in O(S): one pass guided by a sample of the scores when the sample's
//! bounds hold (nearly always), else passes that bucket the scores by value. Neither
//! branches on the data in its per-score loops.

use crate::kernels::{slots, LANES};

/// Spare slots the packing passes need past their input's length: they store whole
/// vectors of up to 16 lanes and advance by the lanes kept.
const SPARE: usize = 16;

/// Buffers of the top-k selection.
#[derive(Default)]
pub(crate) struct TopK {
    ids: Vec<u16>,
    list: Vec<u32>,
    cand_vals: Vec<f32>,
    sample: Vec<f32>,
    spare: Vec<f32>,
    levels: Levels,
}

/// Buffers of [`kth_largest`].
#[derive(Default)]
struct Levels {
    ids: Vec<u16>,
    vals: Vec<f32>,
    next: Vec<f32>,
    sorted: Vec<f32>,
}

/// Buckets per level of the selection: the histogram (four interleaved copies, so runs
/// of equal buckets do not serialise on one counter) stays in L1.
const BUCKETS: usize = 1024;

/// Candidates below which the selection sorts instead of bucketing.
const SMALL: usize = 128;

/// Scores sampled to bound the cut; below `SAMPLE * 8` scores the bucketing passes are
/// about as quick and the sample is not worth taking.
const SAMPLE: usize = 1024;

/// Indices (ascending) of the `k` largest entries of `scores` into `out`; among equal
/// scores at the cut the lower indices are taken.
#[inline(always)]
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
    if n >= SAMPLE * 8 && top_k_sampled(scores, k, buf, out) {
        return;
    }
    top_k_bucketed(scores, k, buf, out);
}

/// The selection from a sample (after Floyd and Rivest): an evenly spread sample of the
/// scores gives a value `lo` that lies, by a margin of several standard deviations,
/// below the `k`-th largest score. One pass packs every score of at least `lo`, with
/// its index, into a short list; when the list holds at least `k` scores the bound was
/// right, and the cut is found among those few. Returns `false`, with `out`
/// unspecified, when the bound missed (a rare or adversarial input); the caller then
/// selects without the sample.
#[inline(always)]
fn top_k_sampled(scores: &[f32], k: usize, buf: &mut TopK, out: &mut Vec<u32>) -> bool {
    let n = scores.len();
    out.clear();
    buf.sample.clear();
    for i in 0..SAMPLE {
        buf.sample.push(scores[sample_position(i, n)]);
    }
    let p = k as f64 / n as f64;
    let margin = 3.0 * (SAMPLE as f64 * p * (1.0 - p)).sqrt() + 2.0;
    let at = (p * SAMPLE as f64 + margin).ceil();
    let lo = if at > (SAMPLE - 1) as f64 {
        f32::NEG_INFINITY
    } else {
        // The sample's order statistic, descending, by selection rather than a sort.
        let (_, x, _) = buf
            .sample
            .select_nth_unstable_by(at as usize, |a, b| b.total_cmp(a));
        *x
    };
    if lo.is_nan() {
        return false;
    }
    let ids = slots(&mut buf.list, n + SPARE);
    let vals = slots(&mut buf.cand_vals, n + SPARE);
    let m = pack_at_least(scores, None, lo, ids, vals);
    if m < k {
        return false;
    }
    let (t, ties) = kth_largest(&vals[..m], k, &mut buf.levels);
    let equal = vals[..m].iter().filter(|&&x| x == t).count();
    out.resize(m + SPARE, 0);
    let taken = if equal == ties {
        // Every score equal to the cut is taken (the usual case): pack again.
        let spare = slots(&mut buf.spare, m + SPARE);
        pack_at_least(&vals[..m], Some(&ids[..m]), t, out, spare)
    } else {
        take_from(
            vals[..m].iter().copied(),
            ids[..m].iter().copied(),
            t,
            ties,
            out,
        )
    };
    debug_assert_eq!(taken, k);
    out.truncate(taken);
    true
}

/// Packs the entries of `vals` that are at least `lo` to the front of `out_vals`, and
/// their indices (`ids[j]`, or `j` itself without `ids`) to the front of `out_ids`;
/// returns how many. Both outputs need [`SPARE`] slots past `vals.len()`.
#[inline(always)]
fn pack_at_least(
    vals: &[f32],
    ids: Option<&[u32]>,
    lo: f32,
    out_ids: &mut [u32],
    out_vals: &mut [f32],
) -> usize {
    assert!(out_ids.len() >= vals.len() + SPARE && out_vals.len() >= vals.len() + SPARE);
    assert!(ids.is_none_or(|ids| ids.len() == vals.len()));
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_enabled() && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the function is compiled for, and the
        // lengths it relies on were checked above.
        return unsafe { pack_at_least_avx512(vals, ids, lo, out_ids, out_vals) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_enabled()
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("popcnt")
    {
        // SAFETY: the CPU has the features the function is compiled for, and the
        // lengths it relies on were checked above.
        return unsafe { pack_at_least_avx2(vals, ids, lo, out_ids, out_vals) };
    }
    pack_at_least_scalar(vals, ids, 0, lo, out_ids, out_vals)
}

/// [`pack_at_least`] one entry at a time from `first` on: each entry is written
/// unconditionally and only the count advances, so nothing branches on the data.
#[inline(always)]
fn pack_at_least_scalar(
    vals: &[f32],
    ids: Option<&[u32]>,
    first: usize,
    lo: f32,
    out_ids: &mut [u32],
    out_vals: &mut [f32],
) -> usize {
    let mut m = 0;
    for (j, &x) in vals.iter().enumerate().skip(first) {
        out_ids[m] = ids.map_or(j as u32, |ids| ids[j]);
        out_vals[m] = x;
        m += usize::from(x >= lo);
    }
    m
}

/// [`pack_at_least`] eight entries at a time: a vector compare gives an 8-bit mask, and
/// `PACK[mask]` is the permutation that moves the kept lanes to the front; the permuted
/// vectors are stored whole, the spare slots absorbing the lanes not kept.
///
/// # Safety
/// The CPU must have AVX2 and POPCNT, and both outputs `vals.len() + 8` slots; `ids`,
/// when given, as long as `vals`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn pack_at_least_avx2(
    vals: &[f32],
    ids: Option<&[u32]>,
    lo: f32,
    out_ids: &mut [u32],
    out_vals: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let blocks = vals.len() / 8;
    let lo_v = _mm256_set1_ps(lo);
    let mut iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let eight = _mm256_set1_epi32(8);
    let mut m = 0usize;
    for b in 0..blocks {
        // SAFETY (all loads and stores): `b * 8 + 8 <= vals.len()`, and the stores
        // write slots `m..m + 8` with `m <= b * 8`, inside `vals.len() + 8`.
        let x = _mm256_loadu_ps(vals.as_ptr().add(b * 8));
        let idx = match ids {
            Some(ids) => _mm256_loadu_si256(ids.as_ptr().add(b * 8).cast()),
            None => iota,
        };
        let keep = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(x, lo_v)) as usize;
        let perm = _mm256_loadu_si256(PACK[keep].as_ptr().cast());
        _mm256_storeu_si256(
            out_ids.as_mut_ptr().add(m).cast(),
            _mm256_permutevar8x32_epi32(idx, perm),
        );
        _mm256_storeu_ps(
            out_vals.as_mut_ptr().add(m),
            _mm256_permutevar8x32_ps(x, perm),
        );
        m += keep.count_ones() as usize;
        iota = _mm256_add_epi32(iota, eight);
    }
    m + pack_at_least_scalar(
        vals,
        ids,
        blocks * 8,
        lo,
        &mut out_ids[m..],
        &mut out_vals[m..],
    )
}

/// [`pack_at_least`] sixteen entries at a time: the compare gives a lane mask, and
/// `vcompressps` moves the kept lanes to the front of the register, which is stored
/// whole.
///
/// # Safety
/// The CPU must have AVX-512F, and both outputs `vals.len() + 16` slots; `ids`, when
/// given, as long as `vals`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_at_least_avx512(
    vals: &[f32],
    ids: Option<&[u32]>,
    lo: f32,
    out_ids: &mut [u32],
    out_vals: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let blocks = vals.len() / 16;
    let lo_v = _mm512_set1_ps(lo);
    let mut iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let sixteen = _mm512_set1_epi32(16);
    let mut m = 0usize;
    for b in 0..blocks {
        // SAFETY (all loads and stores): `b * 16 + 16 <= vals.len()`, and the stores
        // write slots `m..m + 16` with `m <= b * 16`, inside `vals.len() + 16`.
        let x = _mm512_loadu_ps(vals.as_ptr().add(b * 16));
        let idx = match ids {
            Some(ids) => _mm512_loadu_si512(ids.as_ptr().add(b * 16).cast()),
            None => iota,
        };
        let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, lo_v);
        _mm512_storeu_si512(
            out_ids.as_mut_ptr().add(m).cast(),
            _mm512_maskz_compress_epi32(keep, idx),
        );
        _mm512_storeu_ps(
            out_vals.as_mut_ptr().add(m),
            _mm512_maskz_compress_ps(keep, x),
        );
        m += keep.count_ones() as usize;
        iota = _mm512_add_epi32(iota, sixteen);
    }
    m + pack_at_least_scalar(
        vals,
        ids,
        blocks * 16,
        lo,
        &mut out_ids[m..],
        &mut out_vals[m..],
    )
}

/// `PACK[mask]` lists the set bits of `mask` in ascending order, padded with zeros.
#[cfg(target_arch = "x86_64")]
static PACK: [[u32; 8]; 256] = {
    let mut t = [[0u32; 8]; 256];
    let mut mask = 0;
    while mask < 256 {
        let (mut bit, mut n) = (0, 0);
        while bit < 8 {
            if mask & (1 << bit) != 0 {
                t[mask][n] = bit as u32;
                n += 1;
            }
            bit += 1;
        }
        mask += 1;
    }
    t
};

/// The index of the `i`-th sampled score of `n`: one from each of `SAMPLE` equal
/// strips, at an offset that varies from strip to strip so that a period in the scores
/// does not line up with the sample.
#[inline(always)]
fn sample_position(i: usize, n: usize) -> usize {
    let strip = n / SAMPLE;
    // A 32-bit hash of `i` scaled into `0..strip` by a multiply and a shift: a
    // division per sample cost as much as the rest of the sampling.
    let hash = (i as u32).wrapping_mul(2_654_435_761) as u64;
    i * strip + ((hash * strip as u64) >> 32) as usize
}

/// The selection without a sample, in passes that do not branch on the data (a
/// comparison-based select mispredicts in every partition): bucket every score by
/// value, count the buckets, keep every index at or above the bucket holding the cut,
/// and settle that one bucket on its own.
#[inline(always)]
fn top_k_bucketed(scores: &[f32], k: usize, buf: &mut TopK, out: &mut Vec<u32>) {
    let n = scores.len();
    let (lo, hi) = min_max(scores);
    let scale = BUCKETS as f32 / (hi - lo);
    if n <= SMALL || !bucketable(lo, hi, scale) {
        let (cut, ties) = kth_largest(scores, k, &mut buf.levels);
        out.resize(k + 1, 0);
        let taken = take_from(scores.iter().copied(), 0..n as u32, cut, ties, out);
        debug_assert_eq!(taken, k);
        out.truncate(k);
        return;
    }
    let ids = bucket_ids(scores, lo, scale, &mut buf.ids);
    let tables = histogram(ids);
    let (cut, above) = find_cut(&tables, k);
    let in_cut = (0..4).map(|t| tables[t][cut] as usize).sum::<usize>();
    let cut = cut as u16;
    // Every index in or above the cut bucket, ascending. Most blocks of 16 hold none
    // (the cut keeps a small share), and a vectorised maximum skips them.
    let list = slots(&mut buf.list, above + in_cut + 1);
    let mut m = 0;
    let blocks = ids.chunks_exact(16);
    let tail = blocks.remainder();
    for (b, block) in blocks.enumerate() {
        let block: &[u16; 16] = block.try_into().expect("block of 16");
        if block.iter().fold(0, |a, &id| a.max(id)) >= cut {
            for (j, &id) in block.iter().enumerate() {
                list[m] = (b * 16 + j) as u32;
                m += (id >= cut) as usize;
            }
        }
    }
    let base = ids.len() - tail.len();
    for (j, &id) in tail.iter().enumerate() {
        list[m] = (base + j) as u32;
        m += (id >= cut) as usize;
    }
    debug_assert_eq!(m, above + in_cut);
    let list = &list[..m];
    // The cut bucket's threshold value, and how many entries equal to it are taken.
    buf.cand_vals.clear();
    buf.cand_vals.extend(
        list.iter()
            .filter(|&&i| ids[i as usize] == cut)
            .map(|&i| scores[i as usize]),
    );
    let (t, mut ties) = kth_largest(&buf.cand_vals, k - above, &mut buf.levels);
    out.reserve(k);
    for &i in list {
        let x = scores[i as usize];
        let take = ids[i as usize] > cut || x > t || (x == t && ties > 0);
        if take {
            ties -= (ids[i as usize] == cut && x == t) as usize;
            out.push(i);
        }
    }
    debug_assert_eq!(out.len(), k);
}

/// Writes to `out` the indices whose value is above `cut`, and the first `ties` whose
/// value equals it; returns how many. `out` needs one spare slot: the write is
/// unconditional and only the count advances.
#[inline(always)]
fn take_from(
    vals: impl Iterator<Item = f32>,
    idx: impl Iterator<Item = u32>,
    cut: f32,
    mut ties: usize,
    out: &mut [u32],
) -> usize {
    let mut taken = 0;
    for (x, i) in vals.zip(idx) {
        let tie = x == cut;
        let take = x > cut || (tie && ties > 0);
        out[taken] = i;
        taken += take as usize;
        ties -= (take && tie) as usize;
    }
    taken
}

/// Whether `[lo, hi]` can be split into buckets in f32: not all equal, and neither too
/// wide (the difference overflows) nor too narrow (the scale overflows).
#[inline(always)]
fn bucketable(lo: f32, hi: f32, scale: f32) -> bool {
    lo < hi && scale.is_finite() && scale > 0.0
}

/// The bucket of every value: `(x - lo) * scale` clamped to `[0, BUCKETS - 1]` and
/// rounded, monotone in `x` (so a higher bucket holds only larger values) with `lo` and
/// the largest value in the first and last bucket. Rounding by adding 2^23 and reading
/// the low mantissa bits avoids a float-to-int conversion the compiler would not
/// vectorise.
#[inline(always)]
fn bucket_ids<'b>(vals: &[f32], lo: f32, scale: f32, buf: &'b mut Vec<u16>) -> &'b [u16] {
    let ids = slots(buf, vals.len());
    for (id, &x) in ids.iter_mut().zip(vals) {
        let b = (x - lo) * scale;
        let b = if b < (BUCKETS - 1) as f32 {
            b
        } else {
            (BUCKETS - 1) as f32
        };
        let b = if b > 0.0 { b } else { 0.0 };
        *id = ((b + 8_388_608.0).to_bits() - 0x4B00_0000) as u16;
    }
    ids
}

/// Four interleaved bucket counts of `ids` (sum them for the total).
#[inline(always)]
fn histogram(ids: &[u16]) -> [[u32; BUCKETS]; 4] {
    let mut t = [[0u32; BUCKETS]; 4];
    let c = ids.chunks_exact(4);
    let rest = c.remainder();
    for q in c {
        t[0][q[0] as usize & (BUCKETS - 1)] += 1;
        t[1][q[1] as usize & (BUCKETS - 1)] += 1;
        t[2][q[2] as usize & (BUCKETS - 1)] += 1;
        t[3][q[3] as usize & (BUCKETS - 1)] += 1;
    }
    for &b in rest {
        t[0][b as usize & (BUCKETS - 1)] += 1;
    }
    t
}

/// The bucket holding the `want`-th largest entry (1-based) and how many entries lie
/// in higher buckets.
#[inline(always)]
fn find_cut(tables: &[[u32; BUCKETS]; 4], want: usize) -> (usize, usize) {
    let mut above = 0usize;
    for b in (0..BUCKETS).rev() {
        let c = (tables[0][b] + tables[1][b] + tables[2][b] + tables[3][b]) as usize;
        if above + c >= want {
            return (b, above);
        }
        above += c;
    }
    unreachable!("top-k asked for more entries than it was given")
}

/// The `k`-th largest value `t` of `scores` (`1 <= k <= n`) and how many entries equal
/// to `t` belong to the `k` largest. Buckets the candidates by value, keeps the bucket
/// holding the cut, and repeats; the lowest and highest values always land in different
/// buckets, so every level shrinks the candidates. Small sets are sorted.
#[inline(always)]
fn kth_largest(scores: &[f32], k: usize, lv: &mut Levels) -> (f32, usize) {
    let mut want = k;
    let mut first = true;
    loop {
        let vals: &[f32] = if first { scores } else { &lv.vals };
        let (lo, hi) = min_max(vals);
        if lo == hi {
            return (lo, want);
        }
        let scale = BUCKETS as f32 / (hi - lo);
        if vals.len() <= SMALL || !bucketable(lo, hi, scale) {
            let v = &mut lv.sorted;
            v.clear();
            v.extend_from_slice(vals);
            v.sort_unstable_by(|a, b| b.total_cmp(a));
            let t = v[want - 1];
            let above = v.iter().filter(|&&x| x > t).count();
            return (t, want - above);
        }
        let ids = bucket_ids(vals, lo, scale, &mut lv.ids);
        let (cut, above) = find_cut(&histogram(ids), want);
        want -= above;
        let next = slots(&mut lv.next, vals.len() + 1);
        let mut m = 0;
        for (&x, &id) in vals.iter().zip(ids.iter()) {
            next[m] = x;
            m += (id as usize == cut) as usize;
        }
        lv.next.truncate(m);
        std::mem::swap(&mut lv.vals, &mut lv.next);
        first = false;
    }
}

/// The smallest and largest entries (`(inf, -inf)` for an empty slice).
#[inline(always)]
fn min_max(xs: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let c = xs.chunks_exact(LANES);
    let rest = c.remainder();
    for x in c {
        for j in 0..LANES {
            lo[j] = if x[j] < lo[j] { x[j] } else { lo[j] };
            hi[j] = if x[j] > hi[j] { x[j] } else { hi[j] };
        }
    }
    let (mut l, mut h) = (f32::INFINITY, f32::NEG_INFINITY);
    for (&a, &b) in lo.iter().chain(rest).zip(hi.iter().chain(rest)) {
        l = if a < l { a } else { l };
        h = if b > h { b } else { h };
    }
    (l, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positions from the largest score down, ties to the lower position.
    fn by_score(scores: &[f32]) -> Vec<u32> {
        let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
        idx.sort_by(|&a, &b| {
            scores[b as usize]
                .partial_cmp(&scores[a as usize])
                .unwrap()
                .then(a.cmp(&b))
        });
        idx
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn top_k_matches_a_sort_including_ties_and_signs() {
        let mut seed = 7;
        let mut buf = TopK::default();
        let mut out = Vec::new();
        for n in [1usize, 2, 5, 33, 129, 1000, 5000, 8192, 20011, 70000] {
            // Continuous scores, coarse scores with many ties, mixed signs with zeros,
            // a narrow range, one huge outlier, a range too wide for f32 differences,
            // and a heavy tail (nearly all candidates in one bucket at first).
            let sets: Vec<Vec<f32>> = vec![
                (0..n).map(|_| lcg(&mut seed) * 10.0).collect(),
                (0..n).map(|_| (lcg(&mut seed) * 3.0).round()).collect(),
                (0..n)
                    .map(|i| {
                        if i % 3 == 0 {
                            0.0
                        } else {
                            lcg(&mut seed) * 1e-30
                        }
                    })
                    .collect(),
                (0..n).map(|_| 1.0 + lcg(&mut seed) * 1e-6).collect(),
                (0..n)
                    .map(|i| if i == n / 2 { 1e30 } else { lcg(&mut seed) })
                    .collect(),
                (0..n).map(|_| lcg(&mut seed) * 3e38).collect(),
                (0..n).map(|_| (lcg(&mut seed) * 60.0).exp()).collect(),
                (0..n)
                    .map(|i| if i % 34 == 0 { 100.0 } else { lcg(&mut seed) })
                    .collect(),
            ];
            for (set, scores) in sets.iter().enumerate() {
                let order = by_score(scores);
                for k in [0, 1, 7, n / 16, n / 3, n.saturating_sub(1), n, n + 2] {
                    let mut want = order[..k.min(n)].to_vec();
                    want.sort_unstable();
                    top_k(scores, k, &mut buf, &mut out);
                    assert_eq!(out, want, "set {set} n={n} k={k}");
                }
            }
        }
    }

    /// Every packing path the CPU has keeps the same entries in the same order, with
    /// and without an index list, including a tail shorter than a vector.
    #[test]
    fn packing_paths_agree() {
        let mut seed = 5;
        for n in [0usize, 7, 16, 33, 1000] {
            let vals: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let idx: Vec<u32> = (0..n as u32).map(|i| 3 * i + 1).collect();
            for ids in [None, Some(idx.as_slice())] {
                let run = |f: &dyn Fn(&mut [u32], &mut [f32]) -> usize| {
                    let (mut oi, mut ov) = (vec![0u32; n + SPARE], vec![0f32; n + SPARE]);
                    let m = f(&mut oi, &mut ov);
                    (oi[..m].to_vec(), ov[..m].to_vec())
                };
                let want = run(&|oi, ov| pack_at_least_scalar(&vals, ids, 0, 0.25, oi, ov));
                assert!(want.0.len() < n || n == 0);
                #[cfg(target_arch = "x86_64")]
                {
                    if std::is_x86_feature_detected!("avx2")
                        && std::is_x86_feature_detected!("popcnt")
                    {
                        // SAFETY: the features were just detected; the outputs have spare slots.
                        let got =
                            run(&|oi, ov| unsafe { pack_at_least_avx2(&vals, ids, 0.25, oi, ov) });
                        assert_eq!(got, want, "avx2, n={n}");
                    }
                    if std::is_x86_feature_detected!("avx512f") {
                        // SAFETY: as above.
                        let got = run(&|oi, ov| unsafe {
                            pack_at_least_avx512(&vals, ids, 0.25, oi, ov)
                        });
                        assert_eq!(got, want, "avx512, n={n}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_sample_that_misses_the_cut_falls_back_to_the_exact_passes() {
        // A large score at every sampled position and smaller ones everywhere else: the
        // sample puts the bound at that large score, and fewer than k scores reach it.
        let n = 20_000;
        let mut seed = 3;
        let mut scores: Vec<f32> = (0..n).map(|_| 1.0 + lcg(&mut seed).abs()).collect();
        for i in 0..SAMPLE {
            scores[sample_position(i, n)] = 10.0;
        }
        let k = n / 10;
        assert!(k > SAMPLE);
        let mut buf = TopK::default();
        let mut out = Vec::new();
        assert!(!top_k_sampled(&scores, k, &mut buf, &mut out));
        top_k(&scores, k, &mut buf, &mut out);
        let mut want = by_score(&scores)[..k].to_vec();
        want.sort_unstable();
        assert_eq!(out, want);
    }

    #[test]
    fn a_representative_sample_settles_the_cut_in_one_pass() {
        let mut seed = 11;
        let mut buf = TopK::default();
        let mut out = Vec::new();
        for n in [8192usize, 65_535] {
            let scores: Vec<f32> = (0..n).map(|_| lcg(&mut seed) * 4.0).collect();
            let order = by_score(&scores);
            for k in [1, 3, n / 16, n / 2, n - 5] {
                assert!(top_k_sampled(&scores, k, &mut buf, &mut out), "n={n} k={k}");
                let mut want = order[..k].to_vec();
                want.sort_unstable();
                assert_eq!(out, want, "n={n} k={k}");
            }
        }
    }
}
