#!/usr/bin/env python3
"""Decode throughput of several sparq builds, alternated run by run, with medians.

This machine's speed drifts by 10-15% within minutes, so two builds are only compared
in runs taken side by side. Each round runs every build once for every branch count
(`sparq bench model`, the decode figure of the median of its repeats); the table ends
with each build's median over the rounds and its eight-versus-one ratio when both
counts were run.

    python3 scripts/bench/alternate.py --rounds 6 before=/tmp/sparq-a after=/tmp/sparq-b
    python3 scripts/bench/alternate.py off=/tmp/sparq:SPARQ_X=0 on=/tmp/sparq:SPARQ_X=1
    python3 scripts/bench/alternate.py f32=target/release/sparq q4=target/release/sparq+--dtype=q4

A build is `name=binary[:VAR=value,...][+ARG...]`: the variables are set for its runs
only, and each `+ARG` is passed on to `sparq bench model` after the common flags.
The model is `$SPARQ_MODEL` (default: the project's default GGUF file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models/SmolLM2-135M-Instruct.Q4_1.gguf"

Build = tuple[str, str, dict[str, str], list[str]]

def parse_build(spec: str) -> Build:
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"error: build `{spec}` is not name=binary[:VAR=value,...][+ARG...]")
    head, *extra = rest.split("+")
    binary, _, env_part = head.partition(":")
    env = {}
    for pair in filter(None, env_part.split(",")):
        var, sep, value = pair.partition("=")
        if not sep or not var:
            raise SystemExit(f"error: `{pair}` in build `{name}` is not VAR=value")
        env[var] = value
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"error: build `{name}`: `{binary}` is not an executable file")
    if any(not a for a in extra):
        raise SystemExit(f"error: build `{name}` has an empty `+ARG`")
    return name, binary, env, extra

def decode_tps(build: Build, args: argparse.Namespace, branches: int) -> float:
    _, binary, env, extra = build
    cmd = [
        binary, "bench", "model", "--prompt-tokens", str(args.prompt_tokens),
        "--new-tokens", str(args.new_tokens), "--branches", str(branches),
        "--repeats", str(args.repeats), "--json", *extra,
    ]
    full_env = {**os.environ, "SPARQ_MODEL": args.model, **env}
    done = subprocess.run(cmd, capture_output=True, text=True, env=full_env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{done.stderr}")

    rows = json.loads(done.stdout)
    row = rows[0] if isinstance(rows, list) else rows
    return float(row["decode_tokens_per_s"])

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("builds", nargs="+", help="name=binary[:VAR=value,...][+ARG...]")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--branches", default="1,8", help="comma-separated branch counts")
    p.add_argument("--prompt-tokens", type=int, default=1600)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default=os.environ.get("SPARQ_MODEL", str(DEFAULT_MODEL)))
    args = p.parse_args()
    builds = [parse_build(b) for b in args.builds]
    counts = [int(b) for b in args.branches.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    header = " | ".join(f"{build[0]} x{b}" for build in builds for b in counts)
    print(f"| round | {header} |")
    print("|---" * (1 + len(builds) * len(counts)) + "|")
    for r in range(1, args.rounds + 1):
        cells = []
        for build in builds:
            for b in counts:
                tps = decode_tps(build, args, b)
                results.setdefault((build[0], b), []).append(tps)
                cells.append(f"{tps:.1f}")
        print(f"| {r} | {' | '.join(cells)} |", flush=True)
    print()
    for name, *_ in builds:
        medians = {b: statistics.median(results[(name, b)]) for b in counts}
        line = ", ".join(f"{b} branches {m:.1f} tok/s" for b, m in medians.items())
        if 1 in medians and 8 in medians:
            ratios = [e / o for o, e in zip(results[(name, 1)], results[(name, 8)])]
            line += (
                f"; 8 vs 1 {medians[8] / medians[1]:.2f}x"
                f" (per round {min(ratios):.2f}-{max(ratios):.2f}x)"
            )
        print(f"{name}: {line}")

if __name__ == "__main__":
    sys.exit(main())
