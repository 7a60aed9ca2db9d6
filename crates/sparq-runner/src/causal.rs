//! Causal self-attention over a whole prompt (the prefill), written straight into the
//! layout the output projection reads.
//!
//! Work goes in blocks of [`PREFILL_BLOCK`] query rows, all heads of a block in one task:
//! a block's output rows are one contiguous piece of the output, so the tasks write
//! disjoint slices and nothing is gathered afterwards. Later blocks score more keys;
//! threads take blocks from one queue, longest first, so that the last ones to finish
//! are short (rayon's halving split could leave one thread idle for up to a long block).

use std::sync::Mutex;

use rayon::prelude::*;

use crate::flash;

/// Query rows per task: a block scores only the keys up to its last query, so no masked
/// score is computed beyond the block's diagonal.
const PREFILL_BLOCK: usize = 128;

/// The heads of one layer, head-major: `q` is `[nh, s, d]` and already multiplied by
/// the score scale `1 / sqrt(d)`; `k` and `v` are `[nkv, s, d]`; `g = nh / nkv` query
/// heads share each KV head.
pub(crate) struct Heads<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub nh: usize,
    pub nkv: usize,
    pub s: usize,
    pub d: usize,
}

impl<'a> Heads<'a> {
    /// `nh` query heads over `nkv` KV heads, `s` positions of `d` dimensions.
    pub(crate) fn new(
        (q, k, v): (&'a [f32], &'a [f32], &'a [f32]),
        (nh, nkv, s, d): (usize, usize, usize, usize),
    ) -> Self {
        assert!(nkv > 0 && nh % nkv == 0);
        assert!(q.len() == nh * s * d && k.len() == nkv * s * d && v.len() == nkv * s * d);
        Self {
            q,
            k,
            v,
            nh,
            nkv,
            s,
            d,
        }
    }
}

/// Causal attention of the query rows `first..s` over every key up to their own
/// position. `out` (`(s - first) x nh * d`, row-major, one row per query position with
/// the heads side by side) receives the outputs. When `with_mass` (which needs `first`
/// = 0), also returns the attention mass each position received from all queries
/// (`[nkv][s]`, averaged over each group): H2O's initial scores.
pub(crate) fn causal_attention(
    heads: &Heads<'_>,
    first: usize,
    with_mass: bool,
    out: &mut [f32],
) -> Option<Vec<Vec<f32>>> {
    let Heads {
        k, nh, nkv, s, d, ..
    } = *heads;
    assert!(first < s && !(with_mass && first > 0));
    assert_eq!(out.len(), (s - first) * nh * d);
    // The fused kernel when it serves this CPU and shape; it does not report the mass.
    let fused = !with_mass && flash::available(d);
    let tiled: Vec<flash::TiledKeys> = if fused {
        k.par_chunks(s * d)
            .map(|kh| flash::TiledKeys::new(kh, s, d))
            .collect()
    } else {
        Vec::new()
    };
    // In order of position, so that `pop` hands out the longest block first.
    let queue = Mutex::new(
        out.chunks_mut(PREFILL_BLOCK * nh * d)
            .enumerate()
            .map(|(b, rows)| (first + b * PREFILL_BLOCK, rows))
            .collect::<Vec<_>>(),
    );
    let mass_all = Mutex::new(with_mass.then(|| vec![vec![0.0f32; s]; nkv]));
    let threads = rayon::current_num_threads().max(1);
    (0..threads).into_par_iter().for_each(|_| loop {
        let task = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let Some((start, rows)) = task else { break };
        if fused {
            attend_block_fused(heads, &tiled, start, rows);
        } else {
            let masses = attend_block(heads, start, with_mass, rows);
            if let Some(all) = mass_all.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                for (acc, m) in all.iter_mut().zip(&masses) {
                    acc.iter_mut().zip(m).for_each(|(a, x)| *a += x);
                }
            }
        }
    });
    mass_all.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// One block through the fused kernel: the query rows from position `start`, every
/// head, written into `rows` (`len x nh * d`).
fn attend_block_fused(
    heads: &Heads<'_>,
    tiled: &[flash::TiledKeys],
    start: usize,
    rows: &mut [f32],
) {
    let Heads {
        q,
        v,
        nh,
        nkv,
        s,
        d,
        ..
    } = *heads;
    let g = nh / nkv;
    let len = rows.len() / (nh * d);
    for h in 0..nh {
        let kvh = h / g;
        let qh = &q[(h * s + start) * d..(h * s + start + len) * d];
        let vh = &v[kvh * s * d..(kvh + 1) * s * d];
        flash::attend_rows(qh, &tiled[kvh], vh, (start, d), &mut rows[h * d..], nh * d);
    }
}

/// One block through two matrix products around a softmax, for the shapes and CPUs the
/// fused kernel does not serve and whenever the mass is asked for. Writes the block's
/// outputs into `rows` (`len x nh * d`) and returns, when `with_mass`, the probability
/// mass each key up to the block's end received from the block's queries (`[nkv]`,
/// empty otherwise).
fn attend_block(
    heads: &Heads<'_>,
    start: usize,
    with_mass: bool,
    rows: &mut [f32],
) -> Vec<Vec<f32>> {
    let Heads {
        q,
        k,
        v,
        nh,
        nkv,
        s,
        d,
    } = *heads;
    let g = nh / nkv;
    let len = rows.len() / (nh * d);
    let end = start + len;
    let mut masses = Vec::new();
    let mut scores = vec![0.0f32; len * end];
    let mut row_sums = vec![1.0f32; len];
    let mut oj = vec![0.0f32; len * d];
    for kvh in 0..nkv {
        let kh = &k[kvh * s * d..(kvh + 1) * s * d];
        let vh = &v[kvh * s * d..(kvh + 1) * s * d];
        let mut mass = if with_mass {
            vec![0.0f32; end]
        } else {
            Vec::new()
        };
        for j in 0..g {
            let h = kvh * g + j;
            let qh = &q[(h * s + start) * d..(h * s + end) * d];
            // SAFETY: every pointer/stride pair addresses only the slices above:
            // scores `len x end`, q rows `len x d`, keys `end x d` read transposed.
            unsafe {
                gemm::gemm(
                    len,
                    end,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    end as isize,
                    false,
                    qh.as_ptr(),
                    1,
                    d as isize,
                    kh.as_ptr(),
                    d as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (i, row) in scores.chunks_mut(end).enumerate() {
                let valid = start + i + 1;
                let (live, masked) = row.split_at_mut(valid);
                if with_mass {
                    sparq_attention::softmax_in_place(live);
                    mass[..valid]
                        .iter_mut()
                        .zip(live.iter())
                        .for_each(|(m, p)| *m += p / g as f32);
                } else {
                    // Unnormalised: the `d`-wide output row is divided below, which is
                    // cheaper than dividing the `valid`-wide row of weights.
                    row_sums[i] = sparq_attention::exp_shifted_in_place(live);
                }
                masked.fill(0.0);
            }
            // SAFETY: output `len x d`, weights `len x end`, values `end x d`.
            unsafe {
                gemm::gemm(
                    len,
                    d,
                    end,
                    oj.as_mut_ptr(),
                    1,
                    d as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    end as isize,
                    vh.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (i, (row, sum)) in oj.chunks(d).zip(&row_sums).enumerate() {
                let inv = if with_mass { 1.0 } else { 1.0 / sum };
                let dst = &mut rows[i * nh * d + h * d..i * nh * d + (h + 1) * d];
                dst.iter_mut().zip(row).for_each(|(o, x)| *o = x * inv);
            }
        }
        if with_mass {
            masses.push(mass);
        }
    }
    masses
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / 8_388_608.0 - 1.0
            })
            .collect()
    }

    /// Softmax attention of every query row in f64, with the mass each key received.
    fn reference(h: &Heads<'_>) -> (Vec<f64>, Vec<Vec<f64>>) {
        let Heads {
            q,
            k,
            v,
            nh,
            nkv,
            s,
            d,
        } = *h;
        let g = nh / nkv;
        let mut out = vec![0.0; s * nh * d];
        let mut mass = vec![vec![0.0; s]; nkv];
        for hd in 0..nh {
            let kvh = hd / g;
            for i in 0..s {
                let qi = &q[(hd * s + i) * d..(hd * s + i + 1) * d];
                let logits: Vec<f64> = (0..=i)
                    .map(|j| {
                        let kj = &k[(kvh * s + j) * d..(kvh * s + j + 1) * d];
                        qi.iter()
                            .zip(kj)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum()
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
                let total: f64 = w.iter().sum();
                for (j, wj) in w.iter().enumerate() {
                    mass[kvh][j] += wj / total / g as f64;
                    for c in 0..d {
                        out[i * nh * d + hd * d + c] +=
                            wj / total * f64::from(v[(kvh * s + j) * d + c]);
                    }
                }
            }
        }
        (out, mass)
    }

    /// Every path (fused when the CPU has it, matrix products with and without the
    /// mass) against f64, over more than one block, for all rows and for the last only.
    #[test]
    fn matches_f64_softmax_attention() {
        // d = 32 takes the matrix products everywhere, d = 64 the fused kernel too.
        for d in [32, 64] {
            check_against_reference(d);
        }
    }

    fn check_against_reference(d: usize) {
        let (nh, nkv, s) = (6, 2, 300);
        let q = random(nh * s * d, 3);
        let k: Vec<f32> = random(nkv * s * d, 5).iter().map(|x| 3.0 * x).collect();
        let v = random(nkv * s * d, 7);
        let heads = Heads::new((&q, &k, &v), (nh, nkv, s, d));
        let (want, want_mass) = reference(&heads);
        for with_mass in [false, true] {
            for first in [0, s - 1] {
                if with_mass && first > 0 {
                    continue;
                }
                let mut out = vec![f32::NAN; (s - first) * nh * d];
                let mass = causal_attention(&heads, first, with_mass, &mut out);
                for (i, (got, want)) in out.iter().zip(&want[first * nh * d..]).enumerate() {
                    assert!(
                        (f64::from(*got) - want).abs() < 1e-5,
                        "d {d}, mass {with_mass}, first {first}, element {i}: {got} vs {want}"
                    );
                }
                assert_eq!(mass.is_some(), with_mass);
                for (got, want) in mass.iter().flatten().zip(&want_mass) {
                    for (g, w) in got.iter().zip(want) {
                        assert!((f64::from(*g) - w).abs() < 1e-4, "mass {g} vs {w}");
                    }
                }
            }
        }
    }
}
