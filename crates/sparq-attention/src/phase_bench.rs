//! `sparq bench dense-phases`: the three steps of the dense pass over a shared prompt
//! (logits, softmax, weighted values; [`crate::shared_dense`]) timed apart on one
//! thread, with the caches coming from memory as in a decode step and again with them
//! warm, beside the time it takes only to read the same keys and values.
//!
//! Why it exists: `sparq bench model` swings by 10-25% between runs on a shared
//! machine, so a change worth a few percent of a step cannot be seen there. One thread
//! timing one pass at a time, hundreds of times, gives medians that move less, and a
//! busy neighbour shows in the warm column too, which tells such a run apart. The cold,
//! warm and read-only columns say how much of a pass is arithmetic, how much is
//! memory, and how little of the two overlap.
//!
//! "Cold" follows a decode step: every timed pass reads another layer's prompt cache
//! (the caches rotate through [`COLD_BYTES`], more than the last-level cache a guest
//! gets here) and, before it, a few MiB of other data (as a layer's projections stream
//! their weights through the caches between two attention passes). "Warm" runs the
//! same cache again and again (at the default model's shape, 820 KB of keys and
//! values, all in L2).
//!
//! With `half_kv` the prompt caches hold halves and keep their 16-bit copy, which the
//! pass and the read-only rows then read (`--dtype q4`'s prompt cache).

use std::time::Instant;

use crate::bench::BenchError;
use crate::cache::HeadKv;
use crate::kernels::{multiversion, Scratch};
use crate::shared_dense::{all_logits, positions, softmax_rows, weighted_values, weights_buffer};

/// The prompt caches that cold passes rotate through hold at least this much.
const COLD_BYTES: usize = 96 << 20;
/// Read between two cold passes: about what a layer's projections of the default
/// model stream through a core's caches between two attention passes.
const BETWEEN_BYTES: usize = 3 << 20;
/// The buffer those reads walk through, so that each finds its data in memory.
const OTHER_BYTES: usize = 64 << 20;
/// Positions each branch has generated beside the shared prompt, as some steps into a
/// decode.
const GENERATED: usize = 16;

/// What to time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseConfig {
    /// Prompt positions shared by the branches.
    pub seq_len: usize,
    pub head_dim: usize,
    /// Query heads per KV head in each branch.
    pub group: usize,
    /// Branches attending the prompt together.
    pub branches: usize,
    /// Timed passes per column; medians are reported.
    pub repeats: usize,
    pub seed: u64,
    /// The prompt caches keep a 16-bit copy ([`HeadKv::keep_half_copy`]).
    pub half_kv: bool,
}

/// One row of the table: a step's median time over the passes, microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseRow {
    pub seq_len: usize,
    pub head_dim: usize,
    /// Query heads in all (branches times the group).
    pub heads: usize,
    /// `f32`, or `f16` for caches read through their 16-bit copy.
    pub kv: &'static str,
    /// `logits`, `softmax`, `values`, `pass` (the three together), `read keys` or
    /// `read values`.
    pub phase: &'static str,
    pub cold_us: f64,
    pub warm_us: f64,
}

/// The phases in the order of the rows.
const PHASES: [&str; 6] = [
    "logits",
    "softmax",
    "values",
    "pass",
    "read keys",
    "read values",
];

/// The synthetic caches and queries of one configuration.
struct Setup {
    prompts: Vec<HeadKv>,
    generated: Vec<HeadKv>,
    queries: Vec<Vec<f32>>,
    outs: Vec<Vec<f32>>,
}

impl Setup {
    fn new(cfg: &PhaseConfig, caches: usize) -> Self {
        let (s, d) = (cfg.seq_len, cfg.head_dim);
        let mut rng = crate::bench::SplitMix(cfg.seed);
        let mut floats = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform()).collect() };
        let prompts = (0..caches)
            .map(|_| {
                let (mut keys, mut values) = (floats(s * d), floats(s * d));
                if !cfg.half_kv {
                    return HeadKv::from_rows(d, &keys, &values);
                }
                for xs in [&mut keys, &mut values] {
                    crate::cache::round_to_half(xs).expect("uniform floats are within f16");
                }
                let mut kv = HeadKv::from_rows(d, &keys, &values);
                assert!(kv.keep_half_copy(), "rounded floats are halves");
                kv
            })
            .collect();
        let generated = (0..cfg.branches)
            .map(|_| {
                let mut kv = HeadKv::with_capacity(d, GENERATED);
                for _ in 0..GENERATED {
                    kv.push(&floats(d), &floats(d));
                }
                kv
            })
            .collect();
        let queries = (0..cfg.branches).map(|_| floats(cfg.group * d)).collect();
        let outs = vec![vec![0.0; cfg.group * d]; cfg.branches];
        Self {
            prompts,
            generated,
            queries,
            outs,
        }
    }

    /// One dense pass over prompt cache `c`: the times of its three steps, seconds.
    fn pass(&mut self, c: usize, sc: &mut Scratch, z: &mut Vec<f32>) -> [f64; 3] {
        let prompt = &self.prompts[c];
        let queries: Vec<&[f32]> = self.queries.iter().map(|q| &q[..]).collect();
        let generated: Vec<&HeadKv> = self.generated.iter().collect();
        let mut outs: Vec<&mut [f32]> = self.outs.iter_mut().map(|o| &mut o[..]).collect();
        let z = weights_buffer(z, &queries, prompt, &generated);
        let t0 = Instant::now();
        timed_logits(&queries, prompt, &generated, z, &mut sc.qs);
        let t1 = Instant::now();
        timed_softmax(z, positions(prompt, &generated));
        let t2 = Instant::now();
        timed_values(z, prompt, &generated, &mut outs, sc);
        let t3 = Instant::now();
        [t1 - t0, t2 - t1, t3 - t2].map(|t| t.as_secs_f64())
    }
}

multiversion! {
    fn timed_logits(
        queries: &[&[f32]],
        prompt: &HeadKv,
        generated: &[&HeadKv],
        z: &mut [f32],
        qs: &mut Vec<f32>,
    ) {
        all_logits(queries, prompt, generated, z, qs)
    }
}

multiversion! {
    fn timed_softmax(z: &mut [f32], s: usize) {
        softmax_rows(z, s)
    }
}

multiversion! {
    fn timed_values(
        z: &[f32],
        prompt: &HeadKv,
        generated: &[&HeadKv],
        outs: &mut [&mut [f32]],
        sc: &mut Scratch,
    ) {
        weighted_values(z, prompt, generated, outs, sc)
    }
}

/// Seconds to read every cache line of `kv`'s transposed keys in the order the logits
/// take them (tiles of 64 positions, a tile's lines of every component in turn), and
/// of its values in order: of its 16-bit copy when it keeps one.
fn read_times(kv: &HeadKv) -> [f64; 2] {
    match kv.half() {
        Some(half) => read_lines(kv.head_dim(), |c| half.key_column(c), half.values()),
        None => read_lines(kv.head_dim(), |c| kv.key_column(c), kv.values()),
    }
}

/// [`read_times`] of `d` key columns and the values, elements of type `T`: one load
/// per cache line, nothing computed from it.
fn read_lines<'a, T: Copy + 'a>(
    d: usize,
    column: impl Fn(usize) -> &'a [T],
    values: &[T],
) -> [f64; 2] {
    const TILE: usize = 64;
    let line = 64 / std::mem::size_of::<T>();
    let n = column(0).len();
    let t0 = Instant::now();
    for p0 in (0..n).step_by(TILE) {
        for c in 0..d {
            let column = column(c);
            for p in (p0..(p0 + TILE).min(n)).step_by(line) {
                std::hint::black_box(column[p]);
            }
        }
    }
    let t1 = Instant::now();
    for x in values.iter().step_by(line) {
        std::hint::black_box(*x);
    }
    let t2 = Instant::now();
    [t1 - t0, t2 - t1].map(|t| t.as_secs_f64())
}

/// Reads `bytes` of `other` from `*at` on (wrapping), moving `*at` past them.
fn read_between(other: &[u8], at: &mut usize, bytes: usize) {
    let mut sum = 0u8;
    for _ in (0..bytes).step_by(64) {
        sum = sum.wrapping_add(other[*at]);
        *at = (*at + 64) % other.len();
    }
    std::hint::black_box(sum);
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn check(cfg: &PhaseConfig) -> Result<(), BenchError> {
    let bad = |field, value, expected| {
        Err(BenchError::Config {
            field,
            value,
            expected,
        })
    };
    if !(1..=1 << 20).contains(&cfg.seq_len) {
        return bad("seq_len", cfg.seq_len, "1 to 1048576 positions");
    }
    if !(1..=1024).contains(&cfg.head_dim) {
        return bad("head_dim", cfg.head_dim, "1 to 1024");
    }
    if !(1..=256).contains(&cfg.group) {
        return bad("group", cfg.group, "1 to 256 query heads per KV head");
    }
    if !(1..=64).contains(&cfg.branches) {
        return bad("branches", cfg.branches, "1 to 64");
    }
    if cfg.repeats == 0 {
        return bad("repeats", 0, "at least 1");
    }
    Ok(())
}

/// Times the dense pass's steps for `cfg`: the rows of [`PHASES`], cold and warm.
pub fn bench_dense_phases(cfg: &PhaseConfig) -> Result<Vec<PhaseRow>, BenchError> {
    check(cfg)?;
    run(cfg, COLD_BYTES, OTHER_BYTES)
}

/// [`bench_dense_phases`] with the cold passes' caches rotating through `cold_bytes`
/// and the reads between them walking `other_bytes` (small in the tests).
fn run(
    cfg: &PhaseConfig,
    cold_bytes: usize,
    other_bytes: usize,
) -> Result<Vec<PhaseRow>, BenchError> {
    // Each prompt cache holds its keys twice and its values: three copies of s x d,
    // and two more of halves with `half_kv`.
    let per_element = if cfg.half_kv { 3 * 4 + 2 * 2 } else { 3 * 4 };
    let cache_bytes = per_element * cfg.seq_len * cfg.head_dim;
    let caches = cold_bytes.div_ceil(cache_bytes).max(2);
    let mut setup = Setup::new(cfg, caches);
    let other: Vec<u8> = (0..other_bytes).map(|i| i as u8).collect();
    let between = BETWEEN_BYTES.min(other_bytes / 2);
    let mut at = 0;
    let mut sc = Scratch::default();
    let mut z = Vec::new();
    // One untimed pass of each kind first: code, scratch and page tables warm.
    setup.pass(0, &mut sc, &mut z);
    let mut cold = vec![Vec::with_capacity(cfg.repeats); PHASES.len()];
    let mut warm = vec![Vec::with_capacity(cfg.repeats); PHASES.len()];
    for i in 0..cfg.repeats {
        // Passes and reads on different caches, each left alone the longest.
        read_between(&other, &mut at, between);
        let steps = setup.pass(2 * i % caches, &mut sc, &mut z);
        read_between(&other, &mut at, between);
        let reads = read_times(&setup.prompts[(2 * i + 1) % caches]);
        record(&mut cold, steps, reads);
    }
    if setup.outs.iter().flatten().any(|x| !x.is_finite()) {
        return Err(BenchError::NonFinite {
            method: "dense".into(),
        });
    }
    for _ in 0..cfg.repeats {
        let steps = setup.pass(0, &mut sc, &mut z);
        let reads = read_times(&setup.prompts[0]);
        record(&mut warm, steps, reads);
    }
    let heads = cfg.branches * cfg.group;
    Ok(PHASES
        .iter()
        .zip(cold.iter_mut().zip(warm.iter_mut()))
        .map(|(&phase, (c, w))| PhaseRow {
            seq_len: cfg.seq_len,
            head_dim: cfg.head_dim,
            heads,
            kv: if cfg.half_kv { "f16" } else { "f32" },
            phase,
            cold_us: median(c) * 1e6,
            warm_us: median(w) * 1e6,
        })
        .collect())
}

/// Appends one pass's step times, their total and the read times to `times` (one list
/// per phase).
fn record(times: &mut [Vec<f64>], steps: [f64; 3], reads: [f64; 2]) {
    let total = steps.iter().sum();
    for (list, t) in times
        .iter_mut()
        .zip(steps.into_iter().chain([total]).chain(reads))
    {
        list.push(t);
    }
}

/// The rows as an aligned plain-text table.
pub fn phase_table(rows: &[PhaseRow]) -> String {
    let mut out = format!(
        "{:>8} {:>5} {:>6} {:>4} {:<12} {:>10} {:>10}\n",
        "seq_len", "d", "heads", "kv", "phase", "cold_us", "warm_us"
    );
    for r in rows {
        out.push_str(&format!(
            "{:>8} {:>5} {:>6} {:>4} {:<12} {:>10.1} {:>10.1}\n",
            r.seq_len, r.head_dim, r.heads, r.kv, r.phase, r.cold_us, r.warm_us
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PhaseConfig {
        PhaseConfig {
            seq_len: 300,
            head_dim: 64,
            group: 3,
            branches: 2,
            repeats: 3,
            seed: 7,
            half_kv: false,
        }
    }

    /// The timed steps are the dense pass itself: their outputs are those of
    /// `attend_shared_prompt`, bit for bit, in every build.
    #[test]
    fn timed_steps_compute_the_dense_pass() {
        for (simd, half_kv) in [(true, false), (false, false), (true, true)] {
            crate::kernels::set_simd(simd);
            let cfg = PhaseConfig { half_kv, ..small() };
            let mut setup = Setup::new(&cfg, 2);
            setup.pass(1, &mut Scratch::default(), &mut Vec::new());
            let queries: Vec<&[f32]> = setup.queries.iter().map(|q| &q[..]).collect();
            let generated: Vec<&HeadKv> = setup.generated.iter().collect();
            let mut want = vec![vec![0.0f32; cfg.group * cfg.head_dim]; cfg.branches];
            let mut outs: Vec<&mut [f32]> = want.iter_mut().map(|o| &mut o[..]).collect();
            crate::dense::attend_shared_prompt(&queries, &setup.prompts[1], &generated, &mut outs);
            assert_eq!(setup.prompts[1].half().is_some(), half_kv);
            assert_eq!(setup.outs, want, "simd {simd}, half {half_kv}");
            crate::kernels::set_simd(true);
        }
    }

    #[test]
    fn rows_name_every_phase_with_positive_times() {
        let rows = run(&small(), 1 << 20, 1 << 16).unwrap();
        let phases: Vec<&str> = rows.iter().map(|r| r.phase).collect();
        assert_eq!(phases, PHASES);
        assert!(rows
            .iter()
            .all(|r| r.heads == 6 && r.cold_us > 0.0 && r.warm_us > 0.0));
        // The pass is its three steps (medians of sums against sums of medians: close).
        let steps: f64 = rows[..3].iter().map(|r| r.warm_us).sum();
        assert!(rows[3].warm_us <= 2.0 * steps && steps <= 2.0 * rows[3].warm_us);
        assert_eq!(phase_table(&rows).lines().count(), 1 + PHASES.len());
    }

    #[test]
    fn bad_settings_are_refused_before_work() {
        for (cfg, field) in [
            (
                PhaseConfig {
                    seq_len: 0,
                    ..small()
                },
                "seq_len = 0",
            ),
            (
                PhaseConfig {
                    branches: 0,
                    ..small()
                },
                "branches = 0",
            ),
            (
                PhaseConfig {
                    repeats: 0,
                    ..small()
                },
                "repeats = 0",
            ),
        ] {
            let err = bench_dense_phases(&cfg).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
