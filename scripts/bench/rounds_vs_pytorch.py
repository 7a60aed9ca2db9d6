#!/usr/bin/env python3
"""sparq's model throughput beside PyTorch's, in rounds, as docs/BENCHMARKS.md reports it.

This machine is shared and its speed drifts by 10-15% within minutes, for PyTorch and
sparq alike, so one pair of runs says little. Each round runs sparq, then PyTorch
(scripts/goldens/bench_pytorch.py), then sparq again, back to back, and compares
PyTorch with the mean of the two sparq runs around it. The table gives every round and
the median ratio over the rounds.

    python3 scripts/bench/rounds_vs_pytorch.py [--rounds 5] [--branches 1] [--dtype f32]
        [--sparq target/release/sparq] [--python /work/goldens-venv/bin/python]

PyTorch needs the reference stack of scripts/goldens/requirements.txt (torch,
transformers, gguf) in the interpreter given by --python. Each round takes about two
minutes on 2 cores. Prefill is compared for any --branches; decode is compared with
PyTorch's one-branch figure for --branches 1 and its eight-branch figure for 8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def last_json_line(text: str, what: str) -> dict:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"error: {what} printed no JSON line; its output was:\n{text}")


def run(cmd: list[str], what: str) -> dict:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {what} failed (exit {done.returncode}):\n{done.stderr}")
    return last_json_line(done.stdout, what)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--branches", type=int, choices=[1, 8], default=1)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--sparq", type=Path, default=ROOT / "target" / "release" / "sparq")
    ap.add_argument("--python", default="/work/goldens-venv/bin/python")
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit("error: --rounds must be at least 1")
    if not args.sparq.exists():
        raise SystemExit(f"error: {args.sparq} not found; build it with `cargo build --release -p sparq-cli`")

    sparq_cmd = [
        str(args.sparq), "bench", "model", "--prompt-tokens", "1600", "--new-tokens", "32",
        "--branches", str(args.branches), "--repeats", "3", "--dtype", args.dtype, "--json",
    ]
    torch_cmd = [args.python, str(ROOT / "scripts" / "goldens" / "bench_pytorch.py")]
    torch_decode = "decode_1_tok_s" if args.branches == 1 else "decode_8_tok_s"

    rows = []
    for r in range(1, args.rounds + 1):
        start = time.strftime("%H:%M")
        load = os.getloadavg()[0]
        before = run(sparq_cmd, "sparq bench model")
        torch = run(torch_cmd, "bench_pytorch.py")
        after = run(sparq_cmd, "sparq bench model")
        pre = (before["prefill_tokens_per_s"] + after["prefill_tokens_per_s"]) / 2
        dec = (before["decode_tokens_per_s"] + after["decode_tokens_per_s"]) / 2
        row = {
            "round": r,
            "start": start,
            "load": load,
            "sparq_prefill": pre,
            "torch_prefill": torch["prefill_tok_s"],
            "sparq_decode": dec,
            "torch_decode": torch[torch_decode],
        }
        rows.append(row)
        print(
            f"round {r} ({start}, load {load:.2f}): prefill {pre:.1f} vs {row['torch_prefill']:.1f} "
            f"({pre / row['torch_prefill']:.2f}x), decode {dec:.1f} vs {row['torch_decode']:.1f} "
            f"({dec / row['torch_decode']:.2f}x)",
            file=sys.stderr,
        )

    print(f"sparq {args.dtype}, {args.branches} branch(es), against PyTorch f32\n")
    print("| round | start | sparq prefill | PyTorch prefill | ratio | sparq decode | PyTorch decode | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(
            f"| {x['round']} | {x['start']} | {x['sparq_prefill']:.1f} | {x['torch_prefill']:.1f} | "
            f"{x['sparq_prefill'] / x['torch_prefill']:.2f}x | {x['sparq_decode']:.1f} | "
            f"{x['torch_decode']:.1f} | {x['sparq_decode'] / x['torch_decode']:.2f}x |"
        )
    pre_ratios = [x["sparq_prefill"] / x["torch_prefill"] for x in rows]
    dec_ratios = [x["sparq_decode"] / x["torch_decode"] for x in rows]
    print(
        f"\nmedian over {len(rows)} rounds: prefill {statistics.median(pre_ratios):.2f}x "
        f"(range {min(pre_ratios):.2f}-{max(pre_ratios):.2f}), decode "
        f"{statistics.median(dec_ratios):.2f}x (range {min(dec_ratios):.2f}-{max(dec_ratios):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
