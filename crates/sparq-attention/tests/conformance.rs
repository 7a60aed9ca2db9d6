//! The conformance suite: every attention method in `METHODS` goes through the same
//! checks (finite outputs, full budget equals dense, transfer equals the formula, GQA
//! groups share one selection, agreement with a plain f64 reference under random
//! shapes and data, state that never resurrects an evicted position), plus the
//! method-specific facts of SPEC sections 2 and 3. Adding a method means adding a line
//! to `METHODS` and a reference in `reference/mod.rs`.

mod reference;

use proptest::prelude::*;
use reference::{reference_for, Cache, RefStep};
use sparq_attention::dense::{attend_shared_prompt_from, LogitsHandoff};
use sparq_attention::{
    AttentionMethod, HeadKv, HeadState, KvView, MethodConfig, MethodSpec, ModelShape, Trace,
};

/// The budget knobs a case is built from; each method reads the ones it has.
#[derive(Clone, Copy, Debug)]
struct Knobs {
    r: usize,
    k: usize,
    l: usize,
    sinks: usize,
}

/// One method under test: a spec from the knobs, and the smallest spec that must
/// reproduce dense attention on a cache of up to `s` positions.
struct MethodCase {
    name: &'static str,
    spec: fn(&Knobs) -> String,
    full: fn(&Knobs, usize) -> String,
}

const METHODS: &[MethodCase] = &[
    MethodCase {
        name: "dense",
        spec: |_| "dense".into(),
        full: |_, _| "dense".into(),
    },
    MethodCase {
        name: "sparq",
        spec: |n| format!("sparq:r={},k={},l={},realloc=false", n.r, n.k, n.l),
        full: |n, s| format!("sparq:r={},k={},realloc=false", n.r, (s - 1).max(1)),
    },
    MethodCase {
        name: "sparq-realloc",
        spec: |n| format!("sparq:r={},k={},l={},realloc=true", n.r, n.k, n.l),
        full: |n, s| format!("sparq:r={},k={},realloc=true", n.r, (s - 1).max(1)),
    },
    MethodCase {
        name: "sparq-probs",
        spec: |n| {
            format!(
                "sparq:r={},k={},l={},realloc=true,rank=probs",
                n.r, n.k, n.l
            )
        },
        full: |n, s| format!("sparq:r={},k={},rank=probs", n.r, (s - 1).max(1)),
    },
    MethodCase {
        name: "h2o",
        spec: |n| format!("h2o:k={},l={}", n.k, n.l),
        full: |_, s| format!("h2o:k={}", (s - 1).max(1)),
    },
    MethodCase {
        name: "lminf",
        spec: |n| format!("lminf:k={},sinks={}", n.k, n.sinks % n.k),
        full: |_, s| format!("lminf:k={},sinks=0", s),
    },
    MethodCase {
        name: "flexgen",
        spec: |n| format!("flexgen:k={}", n.k),
        full: |_, s| format!("flexgen:k={s}"),
    },
    MethodCase {
        name: "oracle",
        spec: |n| format!("oracle:k={}", n.k),
        full: |_, s| format!("oracle:k={s}"),
    },
];

/// Synthetic data: a prompt and the positions generated over `steps` decode steps,
/// with one group query per step.
struct Data {
    d: usize,
    g: usize,
    prompt_len: usize,
    steps: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    prompt_mass: Vec<f32>,
    seed: u64,
    q_scale: f32,
}

/// The recipe rather than the numbers, so a failing case reads as something to rerun.
impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Data::new(prompt {}, steps {}, d {}, g {}, seed {}, q_scale {})",
            self.prompt_len, self.steps, self.d, self.g, self.seed, self.q_scale
        )
    }
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

impl Data {
    fn new(prompt_len: usize, steps: usize, d: usize, g: usize, seed: u64, q_scale: f32) -> Self {
        let mut rng = SplitMix(seed);
        let n = prompt_len + steps;
        let mut row = |scale: f32| (0..d).map(|_| scale * rng.uniform()).collect::<Vec<f32>>();
        let keys = (0..n).map(|_| row(1.0)).collect();
        let values = (0..n).map(|_| row(1.0)).collect();
        let queries = (0..steps)
            .map(|_| (0..g).flat_map(|_| row(q_scale)).collect())
            .collect();
        let prompt_mass = (0..prompt_len).map(|_| rng.uniform().abs() * 3.0).collect();
        Self {
            d,
            g,
            prompt_len,
            steps,
            keys,
            values,
            queries,
            prompt_mass,
            seed,
            q_scale,
        }
    }

    fn shape(&self) -> ModelShape {
        ModelShape {
            head_dim: self.d,
            group: self.g,
            kv_heads: 1,
            layers: 1,
        }
    }

    /// Positions in the cache at the last step.
    fn s_max(&self) -> usize {
        self.prompt_len + self.steps
    }

    fn cache(&self, s: usize) -> Cache {
        let f = |rows: &[Vec<f32>]| {
            rows[..s]
                .iter()
                .map(|r| r.iter().map(|&x| x as f64).collect())
                .collect()
        };
        Cache {
            keys: f(&self.keys),
            values: f(&self.values),
        }
    }

    fn query(&self, step: usize) -> Vec<Vec<f64>> {
        self.queries[step]
            .chunks(self.d)
            .map(|h| h.iter().map(|&x| x as f64).collect())
            .collect()
    }
}

/// What the fast implementation did at each step.
struct Run {
    outs: Vec<Vec<f32>>,
    traces: Vec<Trace>,
    elements: Vec<u64>,
    /// The state after each step.
    states: Vec<HeadState>,
}

fn config(spec: &str, data: &Data) -> MethodConfig {
    let spec: MethodSpec = spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"));
    spec.resolve(&data.shape(), data.prompt_len)
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn run(method: &dyn AttentionMethod, data: &Data) -> Run {
    let d = data.d;
    let flat = |rows: &[Vec<f32>]| rows.concat();
    let prompt = HeadKv::from_rows(
        d,
        &flat(&data.keys[..data.prompt_len]),
        &flat(&data.values[..data.prompt_len]),
    );
    let mut generated = HeadKv::with_capacity(d, data.steps);
    let mass = method.needs_prompt_mass().then_some(&data.prompt_mass[..]);
    let mut state = method.init_state(data.prompt_len, mass);
    let mut r = Run {
        outs: vec![],
        traces: vec![],
        elements: vec![],
        states: vec![],
    };
    for t in 0..data.steps {
        let p = data.prompt_len + t;
        generated.push(&data.keys[p], &data.values[p]);
        let kv = KvView::new(&prompt, &generated);
        let mut out = vec![f32::NAN; d * data.g];
        let mut trace = Trace::default();
        let e = method.attend_traced(
            &mut state,
            &data.queries[t],
            &kv,
            &mut out,
            Some(&mut trace),
        );
        // Untraced calls take a different path through SparQ: same result.
        let mut again = vec![0.0; out.len()];
        let mut state2 = r
            .states
            .last()
            .cloned()
            .unwrap_or_else(|| method.init_state(data.prompt_len, mass));
        assert_eq!(
            method.attend(&mut state2, &data.queries[t], &kv, &mut again),
            e
        );
        assert_eq!(
            again,
            out,
            "{}: traced and untraced outputs differ",
            method.describe()
        );
        r.outs.push(out);
        r.traces.push(trace);
        r.elements.push(e);
        r.states.push(state.clone());
    }
    r
}

fn reference_run(cfg: &MethodConfig, data: &Data) -> Vec<RefStep> {
    let mass: Vec<f64> = data.prompt_mass.iter().map(|&m| m as f64).collect();
    let mut reference = reference_for(cfg, &mass);
    (0..data.steps)
        .map(|t| reference.step(&data.query(t), &data.cache(data.prompt_len + t + 1)))
        .collect()
}

/// Largest absolute difference.
fn max_diff(a: &[f32], b: impl IntoIterator<Item = f64>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// Every method against its reference on one data set: `Err` names the first
/// disagreement; `Ok(false)` when a ranking was too close to call in f32.
fn agrees_with_reference(
    case: &MethodCase,
    spec: &str,
    data: &Data,
    tol: f64,
) -> Result<bool, String> {
    let cfg = config(spec, data);
    let fast = run(cfg.build().as_ref(), data);
    let slow = reference_run(&cfg, data);
    for (t, (f, s)) in fast.outs.iter().zip(&slow).enumerate() {
        if s.margin < 1e-5 {
            return Ok(false);
        }
        let ctx = format!("{} `{spec}` step {t}", case.name);
        if fast.traces[t].selected != s.selected {
            return Err(format!(
                "{ctx}: selected {:?}, reference {:?}",
                fast.traces[t].selected, s.selected
            ));
        }
        let diff = max_diff(f, s.out.iter().flatten().copied());
        if diff > tol {
            return Err(format!(
                "{ctx}: output differs from the reference by {diff}"
            ));
        }
        if let Some(alpha) = &s.alpha {
            let diff = max_diff(&fast.traces[t].alpha, alpha.iter().copied());
            if diff > tol {
                return Err(format!("{ctx}: alpha differs from the reference by {diff}"));
            }
        }
    }
    Ok(true)
}

/// A spread of shapes and budgets for the deterministic checks: MHA and GQA, head
/// widths with and without a remainder past the 8-wide accumulators, and caches
/// longer than a selection block.
fn sample_settings() -> Vec<(Data, Knobs)> {
    let mut v = Vec::new();
    for (i, &(prompt, steps, d, g)) in [
        (40, 6, 16, 1),
        (40, 6, 16, 3),
        (25, 5, 7, 2),
        (700, 4, 32, 4),
        (1, 3, 5, 1),
        (1100, 3, 24, 1),
    ]
    .iter()
    .enumerate()
    {
        let data = Data::new(
            prompt,
            steps,
            d,
            g,
            1000 + i as u64,
            if i % 2 == 0 { 1.0 } else { 4.0 },
        );
        let s = prompt + 1;
        let k = (s / 3).max(1);
        v.push((
            data,
            Knobs {
                r: (d / 4).max(1),
                k,
                l: k / 4,
                sinks: 4,
            },
        ));
    }
    v
}

#[test]
fn outputs_are_finite() {
    for case in METHODS {
        for (data, knobs) in sample_settings() {
            for spec in [(case.spec)(&knobs), (case.full)(&knobs, data.s_max())] {
                let r = run(config(&spec, &data).build().as_ref(), &data);
                for out in &r.outs {
                    assert!(
                        out.iter().all(|x| x.is_finite()),
                        "{} `{spec}`: {out:?}",
                        case.name
                    );
                }
            }
        }
        // Large queries make the softmax one-hot; the exp must not overflow.
        let data = Data::new(50, 3, 16, 2, 9, 300.0);
        let knobs = Knobs {
            r: 4,
            k: 10,
            l: 2,
            sinks: 3,
        };
        let r = run(config(&(case.spec)(&knobs), &data).build().as_ref(), &data);
        assert!(
            r.outs.iter().flatten().all(|x| x.is_finite()),
            "{}: peaked softmax",
            case.name
        );
    }
}

#[test]
fn full_budget_equals_dense() {
    for case in METHODS {
        for (data, knobs) in sample_settings() {
            let dense = run(&sparq_attention::Dense, &data);
            let spec = (case.full)(&knobs, data.s_max());
            let r = run(config(&spec, &data).build().as_ref(), &data);
            for (t, (a, b)) in r.outs.iter().zip(&dense.outs).enumerate() {
                let diff = max_diff(a, b.iter().map(|&x| x as f64));
                assert!(
                    diff <= 1e-5,
                    "{} `{spec}` step {t}: differs from dense by {diff}",
                    case.name
                );
                let s = data.prompt_len + t + 1;
                assert_eq!(
                    r.traces[t].selected,
                    (0..s).collect::<Vec<_>>(),
                    "{} `{spec}`",
                    case.name
                );
                assert!(
                    r.traces[t].alpha.iter().all(|&a| a == 1.0),
                    "{} `{spec}`: alpha",
                    case.name
                );
            }
        }
    }
}

#[test]
fn transfer_counts_equal_the_formula() {
    for case in METHODS {
        for (data, knobs) in sample_settings() {
            for spec in [(case.spec)(&knobs), (case.full)(&knobs, data.s_max())] {
                let cfg = config(&spec, &data);
                let r = run(cfg.build().as_ref(), &data);
                for (t, &e) in r.elements.iter().enumerate() {
                    let s = data.prompt_len + t + 1;
                    assert_eq!(
                        e,
                        cfg.budget().elements(s, data.d),
                        "{} `{spec}` at S = {s}",
                        case.name
                    );
                }
            }
        }
    }
}

#[test]
fn matches_reference_on_sample_settings() {
    for case in METHODS {
        let mut checked = 0;
        for (data, knobs) in sample_settings() {
            let spec = (case.spec)(&knobs);
            checked += agrees_with_reference(case, &spec, &data, 1e-4).unwrap() as usize;
        }
        assert!(
            checked >= 4,
            "{}: only {checked} settings were clear enough to check",
            case.name
        );
    }
}

#[test]
fn baseline_and_simd_builds_agree_bit_for_bit() {
    // Other tests may run meanwhile on the baseline build: harmless, as the builds agree.
    for case in METHODS {
        for (data, knobs) in sample_settings() {
            let spec = (case.spec)(&knobs);
            let method = config(&spec, &data).build();
            sparq_attention::set_simd(false);
            let baseline = run(method.as_ref(), &data);
            sparq_attention::set_simd(true);
            let simd = run(method.as_ref(), &data);
            assert_eq!(baseline.outs, simd.outs, "{} `{spec}`", case.name);
            assert_eq!(baseline.traces, simd.traces, "{} `{spec}`", case.name);
        }
    }
}

#[test]
fn alpha_is_a_probability() {
    let mut reported = 0;
    for case in METHODS {
        for (data, knobs) in sample_settings() {
            let r = run(config(&(case.spec)(&knobs), &data).build().as_ref(), &data);
            for trace in &r.traces {
                reported += trace.alpha.len();
                assert!(
                    trace.alpha.iter().all(|a| (0.0..=1.0).contains(a)),
                    "{}: {:?}",
                    case.name,
                    trace.alpha
                );
                assert!(trace.alpha.is_empty() || trace.alpha.len() == data.g);
            }
        }
    }
    assert!(reported > 0, "no method reported alpha; SparQ must");
}

#[test]
fn gqa_groups_share_their_selection() {
    let (g, d) = (3, 16);
    // Small prompt scores, so that H2O's evictions after the first step follow this
    // group's attention rather than the prefill's.
    let data_for = |seed: u64, heads: usize, head: Option<usize>| {
        let mut data = Data::new(60, 4, d, g, 500 + seed, 3.0);
        data.prompt_mass.iter_mut().for_each(|m| *m *= 0.01);
        if let Some(h) = head {
            data.g = heads;
            data.queries = data
                .queries
                .iter()
                .map(|q| q[h * d..(h + 1) * d].to_vec())
                .collect();
        }
        data
    };
    for case in METHODS {
        let mut differs_from_a_head = false;
        for seed in 0..8 {
            let data = data_for(seed, g, None);
            let knobs = Knobs {
                r: 4,
                k: 12,
                l: 3,
                sinks: 4,
            };
            let spec = (case.spec)(&knobs);
            // The group's one selection is the reference's group-wide one ...
            if !agrees_with_reference(case, &spec, &data, 1e-4).unwrap() {
                continue;
            }
            // ... and, for methods that rank, not what a single head picks alone.
            let group = run(config(&spec, &data).build().as_ref(), &data);
            for h in 0..g {
                let alone = data_for(seed, 1, Some(h));
                let single = run(config(&spec, &alone).build().as_ref(), &alone);
                differs_from_a_head |= single.traces != group.traces;
            }
        }
        let ranks = !matches!(case.name, "dense" | "lminf");
        assert_eq!(
            differs_from_a_head, ranks,
            "{}: group selection vs single heads",
            case.name
        );
    }
}

#[test]
fn evicted_positions_never_come_back() {
    let mut evictions = 0;
    for case in METHODS {
        let data = Data::new(30, 60, 8, 2, 77, 2.0);
        let knobs = Knobs {
            r: 2,
            k: 12,
            l: 3,
            sinks: 2,
        };
        let r = run(config(&(case.spec)(&knobs), &data).build().as_ref(), &data);
        let mut gone = std::collections::BTreeSet::new();
        for (t, (state, trace)) in r.states.iter().zip(&r.traces).enumerate() {
            for (p, &kept) in state.kept.iter().enumerate() {
                if !kept {
                    gone.insert(p);
                } else {
                    assert!(
                        !gone.contains(&p),
                        "{}: position {p} came back at step {t}",
                        case.name
                    );
                }
            }
            assert!(
                trace.selected.iter().all(|p| !gone.contains(p)),
                "{}: attends to an evicted position",
                case.name
            );
            if !state.kept.is_empty() {
                assert!(
                    state.kept.iter().filter(|&&k| k).count() <= knobs.k + 1,
                    "{}: over budget",
                    case.name
                );
            }
        }
        evictions += gone.len();
    }
    // H2O must actually evict here, or the check above proves nothing.
    assert!(evictions >= 60, "only {evictions} evictions");
}

#[test]
fn h2o_keeps_its_window_and_budget() {
    let data = Data::new(50, 20, 8, 1, 3, 2.0);
    let spec = "h2o:k=10,l=4";
    let r = run(config(spec, &data).build().as_ref(), &data);
    for (t, trace) in r.traces.iter().enumerate() {
        let s = data.prompt_len + t + 1;
        assert_eq!(trace.selected.len(), 11);
        assert!(
            (s - 5..s).all(|p| trace.selected.contains(&p)),
            "step {t}: window missing"
        );
    }
}

#[test]
fn lminf_keeps_exactly_the_sinks_and_the_window() {
    let data = Data::new(100, 5, 8, 2, 4, 1.0);
    for (k, sinks) in [(20, 16), (20, 0), (30, 5), (1, 0)] {
        let r = run(
            config(&format!("lminf:k={k},sinks={sinks}"), &data)
                .build()
                .as_ref(),
            &data,
        );
        for (t, trace) in r.traces.iter().enumerate() {
            let s = data.prompt_len + t + 1;
            let want: Vec<usize> = (0..sinks).chain(s - (k - sinks)..s).collect();
            assert_eq!(trace.selected, want, "k={k} sinks={sinks} step {t}");
        }
    }
}

#[test]
fn sparq_keeps_the_local_window() {
    let data = Data::new(200, 3, 16, 2, 5, 2.0);
    let r = run(config("sparq:r=2,k=20,l=7", &data).build().as_ref(), &data);
    for (t, trace) in r.traces.iter().enumerate() {
        let s = data.prompt_len + t + 1;
        assert_eq!(trace.selected.len(), 21);
        assert!((s - 8..s).all(|p| trace.selected.contains(&p)), "step {t}");
    }
}

#[test]
fn sparq_reallocation_uses_the_mean_value() {
    // With realloc, y = alpha * y_sel + (1 - alpha) * v_mean: recover v_mean from the
    // outputs with and without it.
    let data = Data::new(80, 1, 8, 1, 6, 1.0);
    let with = run(
        config("sparq:r=2,k=8,realloc=true", &data).build().as_ref(),
        &data,
    );
    let without = run(
        config("sparq:r=2,k=8,realloc=false", &data)
            .build()
            .as_ref(),
        &data,
    );
    let a = with.traces[0].alpha[0] as f64;
    assert!(a < 0.999, "alpha {a} leaves nothing to reallocate");
    for i in 0..8 {
        let mean = data.values.iter().map(|v| v[i] as f64).sum::<f64>() / data.values.len() as f64;
        let want = a * without.outs[0][i] as f64 + (1.0 - a) * mean;
        assert!((with.outs[0][i] as f64 - want).abs() < 1e-5);
    }
}

/// Random settings for the property tests: shapes, budgets, data, with a generated
/// segment of several steps behind the prompt.
fn settings() -> impl Strategy<Value = (Data, Knobs)> {
    (
        0usize..50,
        1usize..6,
        1usize..20,
        1usize..5,
        any::<u64>(),
        prop_oneof![Just(0.5f32), Just(4.0)],
    )
        .prop_flat_map(|(prompt, steps, d, g, seed, q_scale)| {
            let s = prompt + 1;
            (1..=d, 1..=s + 2, 0usize..100, 0usize..100).prop_map(move |(r, k, l_pct, sinks)| {
                let data = Data::new(prompt, steps, d, g, seed, q_scale);
                (
                    data,
                    Knobs {
                        r,
                        k,
                        l: k * l_pct / 100,
                        sinks,
                    },
                )
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_method_matches_its_reference((data, knobs) in settings()) {
        for case in METHODS {
            let spec = (case.spec)(&knobs);
            let clear = agrees_with_reference(case, &spec, &data, 1e-4)
                .map_err(TestCaseError::fail)?;
            prop_assume!(clear, "ranking too close to call");
        }
    }

    #[test]
    fn every_method_at_full_budget_is_dense((data, knobs) in settings()) {
        let dense = run(&sparq_attention::Dense, &data);
        for case in METHODS {
            let spec = (case.full)(&knobs, data.s_max());
            let r = run(config(&spec, &data).build().as_ref(), &data);
            for (a, b) in r.outs.iter().zip(&dense.outs) {
                prop_assert!(max_diff(a, b.iter().map(|&x| x as f64)) <= 1e-5, "{}", spec);
            }
        }
    }

    /// r = d makes the approximate logits the exact ones scaled by sqrt(d)/tau = 1, so
    /// SparQ's ranking is the exact (oracle) ranking of the positions before the window.
    #[test]
    fn sparq_with_r_equal_d_ranks_exactly((data, knobs) in settings()) {
        let s = data.prompt_len + 1;
        prop_assume!(knobs.k + 1 < s);
        let spec = format!("sparq:r={},k={},l=0,realloc=false", data.d, knobs.k);
        let r = run(config(&spec, &data).build().as_ref(), &data);
        let mut exact = reference_for(&config(&format!("oracle:k={}", knobs.k), &data), &[]);
        // The oracle over all but the current token, which SparQ forces in.
        let mut cache = data.cache(s);
        cache.keys.pop();
        cache.values.pop();
        let want = exact.step(&data.query(0), &cache);
        prop_assume!(want.margin > 1e-5);
        let mut sel = want.selected.clone();
        sel.push(s - 1);
        prop_assert_eq!(&r.traces[0].selected, &sel);
    }
}

/// Each branch's own cache (`generated` positions of `d`) and its `g` queries, for the
/// shared-prompt tests.
fn branch_data(
    seed: &mut u64,
    branches: usize,
    (generated, d, g): (usize, usize, usize),
) -> (Vec<HeadKv>, Vec<Vec<f32>>) {
    let gens = (0..branches)
        .map(|_| {
            HeadKv::from_rows(
                d,
                &lcg_values(seed, generated * d),
                &lcg_values(seed, generated * d),
            )
        })
        .collect();
    let queries = (0..branches).map(|_| lcg_values(seed, g * d)).collect();
    (gens, queries)
}

/// A small deterministic generator for the shared-prompt test's data.
fn lcg_values(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Several dense branches sharing one prompt pass give, bit for bit, what each
    /// gives alone, whatever the shapes (the runner relies on this to batch them), the
    /// head dimensions of real models included (they have kernels of their own), and
    /// the same with and without the SIMD kernels.
    #[test]
    fn dense_branches_sharing_the_prompt_pass_equal_dense_alone(
        prompt in prop_oneof![0usize..60, 60usize..300],
        generated in 1usize..6,
        d in prop_oneof![1usize..20, Just(64usize), Just(128usize)],
        g in 1usize..5,
        branches in 1usize..10,
        seed in any::<u64>(),
    ) {
        let mut seed = seed;
        let prompt_kv = HeadKv::from_rows(
            d,
            &lcg_values(&mut seed, prompt * d),
            &lcg_values(&mut seed, prompt * d),
        );
        let (gens, queries) = branch_data(&mut seed, branches, (generated, d, g));
        let shared_pass = || {
            let mut shared = vec![vec![f32::NAN; g * d]; branches];
            let qs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
            let gs: Vec<&HeadKv> = gens.iter().collect();
            let mut outs: Vec<&mut [f32]> = shared.iter_mut().map(|o| o.as_mut_slice()).collect();
            let moved = sparq_attention::dense::attend_shared_prompt(&qs, &prompt_kv, &gs, &mut outs);
            (shared, moved)
        };
        // The baseline build too: the SIMD kernels tile many heads differently.
        sparq_attention::set_simd(false);
        let (baseline, _) = shared_pass();
        sparq_attention::set_simd(true);
        let (shared, moved) = shared_pass();
        prop_assert_eq!(&baseline, &shared);
        // The pass split into its logits and the rest (two jobs, which the runner
        // hands to two threads), in either order and side by side, from a reused
        // buffer: the same bits.
        let qs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
        let gs: Vec<&HeadKv> = gens.iter().collect();
        for order in ["logits first", "finish first", "side by side"] {
            let handoff = LogitsHandoff::new(vec![f32::NAN; 3 * branches * g * (prompt + 9)]);
            let mut split = vec![vec![f32::NAN; g * d]; branches];
            let mut outs: Vec<&mut [f32]> = split.iter_mut().map(|o| o.as_mut_slice()).collect();
            let split_moved = match order {
                "logits first" => {
                    handoff.compute(&qs, &prompt_kv, &gs);
                    attend_shared_prompt_from(&handoff, &qs, &prompt_kv, &gs, &mut outs)
                }
                "finish first" => {
                    let n = attend_shared_prompt_from(&handoff, &qs, &prompt_kv, &gs, &mut outs);
                    handoff.compute(&qs, &prompt_kv, &gs);
                    n
                }
                _ => std::thread::scope(|scope| {
                    scope.spawn(|| handoff.compute(&qs, &prompt_kv, &gs));
                    attend_shared_prompt_from(&handoff, &qs, &prompt_kv, &gs, &mut outs)
                }),
            };
            prop_assert_eq!(split_moved, moved);
            let same = split.iter().flatten().zip(shared.iter().flatten()).all(|(a, s)| a.to_bits() == s.to_bits());
            prop_assert!(same, "{}: {:?} vs {:?}", order, split, shared);
        }
        for b in 0..branches {
            let mut alone = vec![f32::NAN; g * d];
            let view = KvView::new(&prompt_kv, &gens[b]);
            let want = sparq_attention::Dense.attend(&mut HeadState::default(), &queries[b], &view, &mut alone);
            prop_assert_eq!(moved, want);
            let same = alone.iter().zip(&shared[b]).all(|(a, s)| a.to_bits() == s.to_bits());
            prop_assert!(same, "branch {}: {:?} vs {:?}", b, alone, shared[b]);
        }
    }
}

/// `lcg_values` rounded to halves, the values a 16-bit cache holds.
fn half_values(seed: &mut u64, n: usize) -> Vec<f32> {
    let mut xs = lcg_values(seed, n);
    sparq_attention::round_to_half(&mut xs).expect("values within f16's range");
    xs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// A prompt cache that keeps a 16-bit copy gives, through the copy, the same bits
    /// as through its floats: in one pass of several branches and split into logits
    /// and the rest, with and without the SIMD kernels, on the head dimensions of real
    /// models and on others.
    #[test]
    fn dense_passes_over_the_half_copy_equal_those_over_the_floats(
        prompt in prop_oneof![1usize..70, 70usize..400],
        generated in 1usize..4,
        d in prop_oneof![1usize..20, Just(64usize), Just(128usize)],
        g in 1usize..5,
        branches in 1usize..10,
        seed in any::<u64>(),
    ) {
        let mut seed = seed;
        let floats = HeadKv::from_rows(
            d,
            &half_values(&mut seed, prompt * d),
            &half_values(&mut seed, prompt * d),
        );
        let mut halves = floats.clone();
        prop_assert!(halves.keep_half_copy());
        prop_assert!(floats.half().is_none());
        let (gens, queries) = branch_data(&mut seed, branches, (generated, d, g));
        let qs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
        let gs: Vec<&HeadKv> = gens.iter().collect();
        let pass = |prompt: &HeadKv, split: bool| {
            let mut out = vec![vec![f32::NAN; g * d]; branches];
            let mut outs: Vec<&mut [f32]> = out.iter_mut().map(|o| o.as_mut_slice()).collect();
            let moved = if split {
                let handoff = LogitsHandoff::new(Vec::new());
                handoff.compute(&qs, prompt, &gs);
                attend_shared_prompt_from(&handoff, &qs, prompt, &gs, &mut outs)
            } else {
                sparq_attention::dense::attend_shared_prompt(&qs, prompt, &gs, &mut outs)
            };
            let bits: Vec<u32> = out.iter().flatten().map(|x| x.to_bits()).collect();
            (bits, moved)
        };
        for simd in [true, false] {
            sparq_attention::set_simd(simd);
            for split in [false, true] {
                prop_assert_eq!(pass(&halves, split), pass(&floats, split), "simd {} split {}", simd, split);
            }
        }
        sparq_attention::set_simd(true);
    }
}
