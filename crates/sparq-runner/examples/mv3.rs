use sparq_runner::kernels::{linear, WeightRows};
use std::time::Instant;
fn main() {
    let k = 576usize;
    let n = 135_000_000 / k;
    let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.001).collect();
    let x = vec![0.5f32; k];
    let mut out = vec![0.0f32; n];
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    let inst = std::env::var_os("INSTALL").is_some();
    let mut body = || {
    for rows in [n, 1536, 576] {
        for rep in 0..3 {
            let t = Instant::now();
            for (c, o) in w.chunks(rows * k).zip(out.chunks_mut(rows)) { linear(&x, 1, WeightRows::F32(c), o.len(), o); }
            let s = t.elapsed().as_secs_f64();
            println!("rows/call {rows} rep {rep}: {:.2} GB/s", (n * k * 4) as f64 / s / 1e9);
        }
    }
    };
    if inst { pool.install(body) } else { body() }
}
