//! Prints the `sparq bench attention` table for the settings of the speed target: a
//! cache bigger than the last-level cache (8 KV heads, S = 16384 and 65536, d = 64 and
//! 128, groups 1 and 3), dense beside SparQ at 1/8, with the ratio of the measured to
//! the predicted speed-up. `cargo run --release -p sparq-attention --example
//! bench_attention [-- S D G METHOD...]` runs one setting instead.

use sparq_attention::bench::{bench_attention, table, BenchConfig};
use sparq_attention::MethodSpec;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings: Vec<(usize, usize, usize)> = if args.len() >= 3 {
        vec![(args[0].parse()?, args[1].parse()?, args[2].parse()?)]
    } else {
        let mut v = Vec::new();
        for s in [16384, 65536] {
            for d in [64, 128] {
                for g in [1, 3] {
                    v.push((s, d, g));
                }
            }
        }
        v
    };
    let specs: Vec<String> = if args.len() > 3 {
        args[3..].to_vec()
    } else {
        vec!["sparq:ratio=1/8".to_string()]
    };
    let methods: Vec<MethodSpec> = specs.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    for (seq_len, head_dim, group) in settings {
        let cfg = BenchConfig {
            seq_len,
            head_dim,
            kv_heads: 8,
            group,
            repeats: 9,
            seed: 0,
        };
        let rows = bench_attention(&cfg, &methods)?;
        print!("{}", table(&rows));
        for r in rows
            .iter()
            .filter(|r| r.method != "dense" && r.speedup.is_some())
        {
            let (m, p) = (r.speedup.unwrap(), r.predicted_speedup.unwrap());
            println!("  {}: measured/predicted speed-up = {:.2}", r.method, m / p);
        }
        println!();
    }
    Ok(())
}
