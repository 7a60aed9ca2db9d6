#!/usr/bin/env python3
"""How much of a decode step only the calling thread works, from a perf recording.

The decode step runs on a team of two threads (`sparq_attention::team`): the caller,
and a helper that spins in `team::helper` whenever it has no share of work. The
helper's idle samples are therefore the step's serial time, and what the caller was
doing at those moments says where it goes. Record at a rate whose sample gap is short
against the step's phases (50 µs at 20 kHz), skipping the load and prefill:

    SPARQ_MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf perf record -N -e cpu-clock \\
        -F 20000 -D 3000 -o perf.data target/release/sparq bench model \\
        --prompt-tokens 1600 --new-tokens 96 --branches 8 --repeats 1
    python3 scripts/bench/helper_idle.py perf.data

(`-N`: perf otherwise copies every profiled binary, 750 MB with its debug info, into
~/.debug; over a few sessions those copies filled this machine's disk.)

It prints the helper's idle share, the caller's share spent waiting for the helper
(`Team::run`), and the caller's functions at the helper's idle samples (the caller's
sample within 20 µs of each), as shares of all the helper's samples.
"""

from __future__ import annotations

import bisect
import collections
import subprocess
import sys

# A caller sample this close to a helper sample is taken as simultaneous.
MATCH_SECONDS = 20e-6


def samples(data: str) -> list[tuple[int, float, str]]:
    cmd = ["perf", "script", "-i", data, "-F", "tid,time,ip,sym", "--no-inline"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SystemExit("error: `perf` is not installed (apt-get install linux-perf)")
    if done.returncode != 0:
        raise SystemExit(f"error: perf script could not read {data}:\n{done.stderr}")
    rows = []
    for line in done.stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4:
            rows.append((int(parts[0]), float(parts[1].rstrip(":")), parts[3].strip()))
    return rows


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} PERF_DATA")
    rows = samples(sys.argv[1])
    per_thread = collections.Counter(tid for tid, _, _ in rows)
    if len(per_thread) < 2:
        raise SystemExit("error: the recording has fewer than two threads' samples")
    # The two busiest threads; the caller (the process's main thread) has the lower id.
    caller, helper = sorted(tid for tid, _ in per_thread.most_common(2))
    at_caller = [(t, sym) for tid, t, sym in rows if tid == caller]
    times = [t for t, _ in at_caller]
    meanwhile: collections.Counter[str] = collections.Counter()
    idle = 0
    for tid, t, sym in rows:
        if tid != helper or "team::helper" not in sym:
            continue
        idle += 1
        i = bisect.bisect_left(times, t)
        near = min((j for j in (i - 1, i) if 0 <= j < len(times)), key=lambda j: abs(times[j] - t))
        if abs(times[near] - t) < MATCH_SECONDS:
            meanwhile[at_caller[near][1]] += 1
    total = per_thread[helper]
    waiting = sum(1 for _, sym in at_caller if "Team::run" in sym)
    print(
        f"helper idle {100 * idle / total:.1f}% of its {total} samples; "
        f"caller waiting for it {100 * waiting / per_thread[caller]:.1f}% of its own"
    )
    print("caller meanwhile (share of the helper's samples):")
    for sym, n in meanwhile.most_common(10):
        print(f"  {100 * n / total:5.1f}%  {sym}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
