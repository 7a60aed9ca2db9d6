// Throwaway: in-cache single-thread throughput of the kernels.
use sparq_attention::*;
use std::time::Instant;
fn cpu_ns() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (s, d, g, reps) = (args[0], args[1], args[2], args[3]);
    let mut x = 1u64;
    let mut rnd = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    };
    let keys: Vec<f32> = (0..(s - 1) * d).map(|_| rnd()).collect();
    let vals: Vec<f32> = (0..(s - 1) * d).map(|_| rnd()).collect();
    let p = HeadKv::from_rows(d, &keys, &vals);
    let kk: Vec<f32> = (0..d).map(|_| rnd()).collect();
    let mut gen = HeadKv::with_capacity(d, 1);
    gen.push(&kk, &kk);
    let q: Vec<f32> = (0..g * d).map(|_| 2.0 * rnd()).collect();
    let kv = KvView::new(&p, &gen);
    let shape = ModelShape {
        head_dim: d,
        group: g,
        kv_heads: 1,
        layers: 1,
    };
    let specs: Vec<String> = std::env::var("SPECS")
        .map(|s| s.split(' ').map(String::from).collect())
        .unwrap_or(vec![
            "dense".into(),
            "sparq:ratio=1/8".into(),
            "sparq:ratio=1/8,realloc=false".into(),
            "oracle:k=512".into(),
            "flexgen:k=512".into(),
            "h2o:k=512".into(),
            "lminf:k=512".into(),
        ]);
    for spec in specs.iter().map(|s| s.as_str()) {
        let m = spec
            .parse::<MethodSpec>()
            .unwrap()
            .build(&shape, s - 1)
            .unwrap();
        let mut st = m.init_state(s - 1, Some(&vec![0.5; s - 1]));
        let mut out = vec![0.0; g * d];
        let mut e = m.attend(&mut st, &q, &kv, &mut out);
        let t = Instant::now();
        let c0 = cpu_ns();
        for _ in 0..reps {
            e = m.attend(&mut st, &q, &kv, &mut out);
        }
        let wall = t.elapsed().as_secs_f64() / reps as f64;
        let dt = (cpu_ns() - c0) * 1e-9 / reps as f64;
        let _ = wall;
        println!(
            "{spec:<32} {:>9.1} us  {:>6.2} GB/s (elements*4)",
            dt * 1e6,
            e as f64 * 4.0 / dt / 1e9
        );
    }
}
