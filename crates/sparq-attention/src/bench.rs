//! `sparq bench attention`: the time of one decode step of attention over a synthetic
//! cache for each method beside dense, with the speed-up the transfer formula predicts,
//! and the machine's copy bandwidth as the yardstick.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;

use crate::cache::{HeadKv, KvView};
use crate::method::{AttentionMethod, HeadState, ModelShape};
use crate::spec::{MethodSpec, SpecError};
use crate::team::{Chunks, Team};

/// What to time. The cache holds `seq_len - 1` prompt positions and one generated
/// position (the current token) for each of `kv_heads` KV heads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    pub seq_len: usize,
    pub head_dim: usize,
    pub kv_heads: usize,
    /// Query heads per KV head.
    pub group: usize,
    /// Timed steps per method; the median is reported.
    pub repeats: usize,
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            seq_len: 16384,
            head_dim: 128,
            kv_heads: 8,
            group: 1,
            repeats: 7,
            seed: 0,
        }
    }
}

/// One row of the table (and of `--json`).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    /// The spec as given (canonical form), or `memcpy`.
    pub method: String,
    pub seq_len: usize,
    pub head_dim: usize,
    pub kv_heads: usize,
    pub group: usize,
    /// Median time of one step over all KV heads, microseconds.
    pub time_us: f64,
    /// Dense time / this time; `None` for `memcpy`.
    pub speedup: Option<f64>,
    /// Dense elements / this method's elements (SPEC section 4); `None` for `memcpy`.
    pub predicted_speedup: Option<f64>,
    /// Elements moved (all heads) times 4 bytes, per second. For `memcpy`: bytes read
    /// plus bytes written per second, the same "moved" convention.
    pub bytes_per_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("bench: `{method}` produced a non-finite output on the synthetic cache")]
    NonFinite { method: String },
    #[error("bench: {field} = {value} is out of range; expected {expected}")]
    Config {
        field: &'static str,
        value: usize,
        expected: &'static str,
    },
}

/// Least size of the copy that measures bandwidth and of the buffer read between timed
/// steps to push the cache out of the last-level cache: a real decode step finds a
/// layer's cache cold, the other layers having passed through since. On a machine
/// whose last-level cache is larger (480 MiB is reported on some virtual machines
/// here), twice its size is used instead.
const BIG: usize = 128 << 20;

/// Twice the last-level cache as Linux reports it, at least [`BIG`] and at most 2 GiB (the
/// bench holds three buffers of this size: the eviction read and the copy's two).
fn eviction_bytes() -> usize {
    let llc = (0..8)
        .filter_map(|i| {
            let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
            let level = std::fs::read_to_string(format!("{dir}/level")).ok()?;
            let size = std::fs::read_to_string(format!("{dir}/size")).ok()?;
            (level.trim() == "3").then(|| parse_cache_size(size.trim()))?
        })
        .max()
        .unwrap_or(0);
    (2 * llc).clamp(BIG, 2 << 30)
}

/// A sysfs cache size such as `491520K` or `32M`, in bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: usize = digits.parse().ok()?;
    match unit {
        "" => Some(n),
        "K" => Some(n << 10),
        "M" => Some(n << 20),
        "G" => Some(n << 30),
        _ => None,
    }
}

/// Times dense and every method in `methods` (dense first, once even if listed), then
/// measures the copy bandwidth. Specs are checked before the cache is built.
pub fn bench_attention(
    cfg: &BenchConfig,
    methods: &[MethodSpec],
) -> Result<Vec<BenchRow>, BenchError> {
    run_bench(cfg, methods, eviction_bytes())
}

/// [`bench_attention`] with `big` bytes for the copy and the cache eviction; tests use
/// less than the last-level cache, which keeps them quick (their timings mean nothing).
fn run_bench(
    cfg: &BenchConfig,
    methods: &[MethodSpec],
    big: usize,
) -> Result<Vec<BenchRow>, BenchError> {
    for (field, value, min) in [
        ("seq_len", cfg.seq_len, 2),
        ("head_dim", cfg.head_dim, 1),
        ("kv_heads", cfg.kv_heads, 1),
        ("group", cfg.group, 1),
        ("repeats", cfg.repeats, 1),
    ] {
        if value < min {
            let expected = if min == 2 { "at least 2" } else { "at least 1" };
            return Err(BenchError::Config {
                field,
                value,
                expected,
            });
        }
    }
    let shape = ModelShape {
        head_dim: cfg.head_dim,
        group: cfg.group,
        kv_heads: cfg.kv_heads,
        layers: 1,
    };
    let prompt_len = cfg.seq_len - 1;
    let mut specs = vec![MethodSpec::Dense];
    specs.extend(methods.iter().filter(|m| **m != MethodSpec::Dense).cloned());
    let built: Vec<(String, Box<dyn AttentionMethod>)> = specs
        .iter()
        .map(|s| Ok((s.to_string(), s.build(&shape, prompt_len)?)))
        .collect::<Result<_, SpecError>>()?;

    let heads = synthetic_heads(cfg, 0..cfg.kv_heads);
    // One more head, never timed: see `time_methods`.
    let spare = synthetic_heads(cfg, cfg.kv_heads..cfg.kv_heads + 1);
    let scrub = vec![1u8; big];
    let methods: Vec<&dyn AttentionMethod> = built.iter().map(|(_, m)| m.as_ref()).collect();
    let timed = time_methods(&methods, (&heads, &spare[0]), prompt_len, cfg, &scrub)?;
    let (dense_time, dense_elements) = timed[0];
    let mut rows = Vec::new();
    for ((name, _), &(time_s, elements)) in built.iter().zip(&timed) {
        rows.push(BenchRow {
            method: name.clone(),
            seq_len: cfg.seq_len,
            head_dim: cfg.head_dim,
            kv_heads: cfg.kv_heads,
            group: cfg.group,
            time_us: time_s * 1e6,
            speedup: Some(dense_time / time_s),
            predicted_speedup: Some(dense_elements as f64 / elements as f64),
            bytes_per_s: (elements * cfg.kv_heads as u64) as f64 * 4.0 / time_s,
        });
    }
    let (time_s, bytes_per_s) = memcpy_bandwidth(big, cfg.repeats);
    rows.push(BenchRow {
        method: "memcpy".to_string(),
        seq_len: cfg.seq_len,
        head_dim: cfg.head_dim,
        kv_heads: cfg.kv_heads,
        group: cfg.group,
        time_us: time_s * 1e6,
        speedup: None,
        predicted_speedup: None,
        bytes_per_s,
    });
    Ok(rows)
}

/// One KV head's cache and its group's query.
struct Head {
    prompt: HeadKv,
    generated: HeadKv,
    q: Vec<f32>,
    prompt_mass: Vec<f32>,
}

/// Uniform random keys, values and queries: the positions SparQ and the top-k methods
/// select are then spread evenly over the cache, the worst case for their row gathers.
fn synthetic_heads(cfg: &BenchConfig, heads: std::ops::Range<usize>) -> Vec<Head> {
    let d = cfg.head_dim;
    heads
        .into_par_iter()
        .map(|h| {
            let mut rng = SplitMix(cfg.seed ^ (h as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let n = cfg.seq_len - 1;
            let mut prompt = HeadKv::with_capacity(d, n);
            let (mut k, mut v) = (vec![0.0; d], vec![0.0; d]);
            for _ in 0..n {
                k.iter_mut()
                    .chain(v.iter_mut())
                    .for_each(|x| *x = rng.uniform());
                prompt.push(&k, &v);
            }
            let mut generated = HeadKv::with_capacity(d, 1);
            k.iter_mut()
                .chain(v.iter_mut())
                .for_each(|x| *x = rng.uniform());
            generated.push(&k, &v);
            let q = (0..cfg.group * d).map(|_| 2.0 * rng.uniform()).collect();
            let prompt_mass = (0..n).map(|_| rng.uniform().abs()).collect();
            Head {
                prompt,
                generated,
                q,
                prompt_mass,
            }
        })
        .collect()
}

/// For each method, the median seconds of one step over all heads and the elements one
/// head moves. The methods' steps are interleaved, one step of each in turn per
/// repeat, so that a drift in the shared machine's speed during the run reaches every
/// method alike and leaves their ratios alone; timed one method after the other, the
/// SparQ-over-dense ratio at S = 16,384, d = 64 ranged 0.53 to 0.67 of the predicted
/// speed-up in consecutive runs.
///
/// The heads are handed out one at a time to the decode team (see [`crate::team`]),
/// as the runner hands out its attention jobs; the eviction between steps runs on the
/// same threads, so that a step starts with them awake, as it would after the previous
/// phase of a real decode step. With rayon, waking its workers and the caller took 50
/// to 100 µs a step on this project's 2-core virtual machine: a sixth of a SparQ step
/// at S = 16,384, d = 64, and no part of the attention.
///
/// After the eviction, each thread attends the `spare` head (a cache of its own, never
/// timed; each thread with its own state and output) with the method about to be
/// timed. In a decode step the method's code and its thread's scratch buffers are in
/// use by every layer; after the eviction they were cold, and their pages met the
/// host's stalls (see [`touch_pages`]): one thread's SparQ step at S = 16,384, d = 64
/// took 196-293 µs a head without that warm-up against 121-128 µs with it, alternated.
fn time_methods(
    methods: &[&dyn AttentionMethod],
    (heads, spare): (&[Head], &Head),
    prompt_len: usize,
    cfg: &BenchConfig,
    scrub: &[u8],
) -> Result<Vec<(f64, u64)>, BenchError> {
    // Per method, one lock per head, taken once per step by the thread that attends
    // it: the timed heads, then the spare head once per thread.
    let threads = rayon::current_num_threads();
    let all: Vec<&Head> = heads
        .iter()
        .chain(std::iter::repeat_n(spare, threads))
        .collect();
    let slots: Vec<Vec<HeadSlot>> = methods
        .iter()
        .map(|method| {
            let mass = method.needs_prompt_mass();
            all.iter()
                .map(|h| {
                    let state = method.init_state(prompt_len, mass.then_some(&h.prompt_mass[..]));
                    Mutex::new((state, vec![0.0; h.q.len()]))
                })
                .collect()
        })
        .collect();
    let attend = |m: usize, i: usize| -> u64 {
        let h = all[i];
        let mut slot = lock(&slots[m][i]);
        let (state, out) = &mut *slot;
        methods[m].attend(state, &h.q, &KvView::new(&h.prompt, &h.generated), out)
    };
    let measure = |team: Option<&Team>| -> (Vec<u64>, Vec<Vec<f64>>) {
        let step = |m: usize| -> u64 {
            match team {
                Some(team) => {
                    let next = Chunks::new(heads.len(), 1);
                    let moved = AtomicU64::new(0);
                    team.run(&|_| {
                        while let Some(r) = next.next() {
                            let n: u64 = r.map(|i| attend(m, i)).sum();
                            moved.fetch_add(n, Ordering::Relaxed);
                        }
                    });
                    moved.into_inner()
                }
                None => (0..heads.len()).into_par_iter().map(|i| attend(m, i)).sum(),
            }
        };
        let evict = || match team {
            Some(team) => {
                let next = Chunks::new(scrub.len(), EVICT_CHUNK);
                team.run(&|_| {
                    while let Some(r) = next.next() {
                        read_every_line(&scrub[r]);
                    }
                });
            }
            None => evict_caches(scrub),
        };
        let warm_up = |m: usize| match team {
            Some(team) => team.run(&|t| {
                attend(m, heads.len() + t % threads);
            }),
            None => (0..threads).into_par_iter().for_each(|t| {
                attend(m, heads.len() + t);
            }),
        };
        // The first step warms the thread-local buffers and makes H2O's first eviction.
        let elements = (0..methods.len()).map(step).collect();
        let mut times = vec![Vec::with_capacity(cfg.repeats); methods.len()];
        for _ in 0..cfg.repeats {
            for (m, t) in times.iter_mut().enumerate() {
                evict();
                touch_pages(heads);
                warm_up(m);
                let start = Instant::now();
                std::hint::black_box(step(m));
                t.push(start.elapsed().as_secs_f64());
            }
        }
        (elements, times)
    };
    // The team is busy only when another bench or test holds it; rayon then serves.
    let (elements, times) = Team::with(|team| measure(Some(team))).unwrap_or_else(|| measure(None));
    for (m, method) in methods.iter().enumerate() {
        if !slots[m]
            .iter()
            .all(|s| lock(s).1.iter().all(|x| x.is_finite()))
        {
            return Err(BenchError::NonFinite {
                method: method.describe(),
            });
        }
    }
    Ok(elements
        .into_iter()
        .zip(times)
        .map(|(e, mut t)| (median(&mut t), e / heads.len() as u64))
        .collect())
}

/// One head's state under one method, and its output.
type HeadSlot = Mutex<(HeadState, Vec<f32>)>;

/// Bytes of the scrub buffer per piece handed out during the eviction.
const EVICT_CHUNK: usize = 1 << 20;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads a buffer larger than the last-level cache.
fn evict_caches(buf: &[u8]) {
    let sum: u64 = buf.par_chunks(EVICT_CHUNK).map(read_every_line).sum();
    std::hint::black_box(sum);
}

/// One byte of every cache line of `buf`, summed so the reads are not optimised away.
fn read_every_line(buf: &[u8]) -> u64 {
    std::hint::black_box(buf.iter().step_by(64).map(|&b| b as u64).sum())
}

/// Bytes between the reads of [`touch_pages`]: the huge-page size, so one read per
/// page of a cache backed by 2 MiB pages.
const TOUCH_STRIDE: usize = 2 << 20;

/// Reads one float every [`TOUCH_STRIDE`] bytes of every head's cache buffers, after
/// the eviction and before the timer starts.
///
/// On the virtual machines this project is measured on, the first load from a 2 MiB
/// page now and then stalls for about 100 µs (up to 900), however the page was left:
/// `scripts/bench/page_stall.c` counted 77 stalls in 640 first loads after a 1,000 MiB
/// read, 65 after 100 ms asleep, and none in the loads that followed to other 4 KiB
/// pages of the same 2 MiB pages, which otherwise take 0.3 µs. That is the host
/// remapping guest memory, not the cache. Inside the timed step these stalls add the
/// same time to every method and swamp the shorter ones: at S = 16,384, d = 64, g = 1,
/// alternated, dense took 2,772-2,860 µs and SparQ at 1/8 847-929 µs without the
/// touch, 2,485-2,555 and 620-649 µs with it. One line per 2 MiB leaves the data cold.
fn touch_pages(heads: &[Head]) {
    let floats = TOUCH_STRIDE / std::mem::size_of::<f32>();
    let mut sum = 0.0f32;
    for h in heads {
        for buf in h.prompt.buffers().into_iter().chain(h.generated.buffers()) {
            for x in buf.iter().step_by(floats) {
                sum += std::hint::black_box(*x);
            }
        }
    }
    std::hint::black_box(sum);
}

/// Median seconds and bandwidth (bytes read plus bytes written per second) of a
/// parallel copy of `bytes` bytes, bigger than the last-level cache so it measures
/// memory, not cache.
pub fn memcpy_bandwidth(bytes: usize, repeats: usize) -> (f64, f64) {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let copy = |dst: &mut [u8]| {
        dst.par_chunks_mut(1 << 20)
            .zip(src.par_chunks(1 << 20))
            .for_each(|(d, s)| d.copy_from_slice(s));
    };
    copy(&mut dst);
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            copy(&mut dst);
            std::hint::black_box(&dst);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let t = median(&mut times);
    (t, 2.0 * bytes as f64 / t)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The rows as an aligned plain-text table.
pub fn table(rows: &[BenchRow]) -> String {
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
    let mut out = format!(
        "{:<34} {:>8} {:>5} {:>4} {:>3} {:>12} {:>8} {:>9} {:>10}\n",
        "method", "seq_len", "d", "H", "g", "time_us", "speedup", "predicted", "GB/s"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<34} {:>8} {:>5} {:>4} {:>3} {:>12.1} {:>8} {:>9} {:>10.2}\n",
            r.method,
            r.seq_len,
            r.head_dim,
            r.kv_heads,
            r.group,
            r.time_us,
            opt(r.speedup),
            opt(r.predicted_speedup),
            r.bytes_per_s / 1e9
        ));
    }
    out
}

/// SplitMix64: a small, fast, well-mixed generator for synthetic data.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[-1, 1)`.
    pub(crate) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_cover_dense_methods_and_memcpy() {
        let cfg = BenchConfig {
            seq_len: 300,
            head_dim: 16,
            kv_heads: 2,
            group: 2,
            repeats: 1,
            seed: 1,
        };
        let methods: Vec<MethodSpec> = ["sparq:r=4,k=32", "dense", "h2o:k=40"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let rows = run_bench(&cfg, &methods, 1 << 20).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(names, ["dense", "sparq:r=4,k=32", "h2o:k=40", "memcpy"]);
        assert_eq!(rows[0].speedup, Some(1.0));
        assert_eq!(rows[0].predicted_speedup, Some(1.0));
        let sparq = crate::transfer::sparq_elements(4, 32, 300, 16) as f64;
        let dense = crate::transfer::dense_elements(300, 16) as f64;
        assert!((rows[1].predicted_speedup.unwrap() - dense / sparq).abs() < 1e-12);
        assert!(rows.iter().all(|r| r.time_us > 0.0 && r.bytes_per_s > 0.0));
        // Bytes per second count every head: 2 heads of dense elements, 4 bytes each.
        let dense_bytes = 2.0 * 4.0 * dense;
        assert!((rows[0].bytes_per_s * rows[0].time_us * 1e-6 / dense_bytes - 1.0).abs() < 1e-9);
        assert_eq!(rows[3].speedup, None);
        assert!(table(&rows).lines().count() == 5);
    }

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("491520K"), Some(491_520 << 10));
        assert_eq!(parse_cache_size("32M"), Some(32 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("12Q"), None);
        assert_eq!(parse_cache_size(""), None);
        assert!(eviction_bytes() >= BIG);
    }

    #[test]
    fn bad_settings_are_refused_before_work() {
        let cfg = BenchConfig {
            head_dim: 16,
            ..BenchConfig::default()
        };
        let err = bench_attention(&cfg, &["sparq:r=32,k=8".parse().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("`r=32` is out of range"), "{err}");
        let cfg = BenchConfig {
            seq_len: 1,
            ..BenchConfig::default()
        };
        assert!(bench_attention(&cfg, &[])
            .unwrap_err()
            .to_string()
            .contains("seq_len = 1"));
    }
}
