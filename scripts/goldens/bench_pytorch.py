#!/usr/bin/env python3
"""PyTorch/transformers CPU baseline speeds for SmolLM2-135M-Instruct (Q4_1 GGUF).

What it measures (float32 weights de-quantized by transformers, attn_implementation="sdpa",
torch.set_num_threads(2), batch-1 prompt of exactly 1600 tokens):
  prefill    one forward over the 1600-token prompt that builds the KV cache and computes
             only the last position's logits (logits_to_keep=1); tokens/s = 1600 / time
  decode_1   one branch: 64 single-token forwards with the KV cache after that prompt,
             greedy (argmax) feeding; tokens/s = 64 / time
  decode_8   eight branches: the prompt's KV cache repeated to batch 8 (8 identical
             prompts; the prefill is done once and copied, not timed), then 64 steps of a
             [8, 1] forward; tokens/s = 8 * 64 / time (all branches counted)
Each is the median of 3 timed runs (--runs), after one untimed warm-up run (--warmup).
--threads changes the thread count (only for comparisons; the baseline is 2). The prompt is
the start of tinyshakespeare (the token ids are cut to exactly 1600; BOS is not added,
since this tokenizer does not add one). Prints a small table, then one JSON line.

How to run (from the workspace root; reference stack in scripts/goldens/requirements.txt):
    /work/goldens-venv/bin/python scripts/goldens/bench_pytorch.py \
        [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--text /work/shared/data/tinyshakespeare/input.txt] [--runs 3] [--warmup 1] [--threads 2]
Takes a few minutes on 2 cores. Speeds depend on the machine and on what else runs on
it: with other jobs competing for the 2 cores, 2 OpenMP threads stall badly (each
parallel op waits for a descheduled thread), so the JSON line records the 1-minute load
average; compare only numbers taken on an otherwise idle machine. The work done is
deterministic (fixed prompt, greedy, no sampling).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import inspect
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT = Path("/work/shared/data/tinyshakespeare/input.txt")
PROMPT_TOKENS = 1600
NEW_TOKENS = 64
BRANCHES = 8
THREADS = 2

# transformers >= 5.2x names the KV-cache argument/output `cache` (was `past_key_values`).
CACHE_KW = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def _cache_of(out):
    return out.cache if CACHE_KW == "cache" else out.past_key_values


@torch.inference_mode()
def prefill(model, ids: torch.Tensor):
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    dt = time.perf_counter() - t0
    assert out.logits.shape[1] == 1, "logits_to_keep=1 was not honoured"
    return dt, _cache_of(out), out.logits[:, -1]


@torch.inference_mode()
def decode(model, cache, last_logits: torch.Tensor, n: int):
    """n single-token forwards; the first fed token is the argmax of last_logits."""
    nxt = last_logits.argmax(-1, keepdim=True)  # [batch, 1]
    t0 = time.perf_counter()
    for _ in range(n):
        out = model(input_ids=nxt, use_cache=True, **{CACHE_KW: cache})
        cache = _cache_of(out)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs (default 1)")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch threads (default 2)")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model_dir, model_file = str(args.model.parent), args.model.name
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, gguf_file=model_file, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.eval()

    text = args.text.read_text(encoding="utf-8")[:40_000]
    ids = tok(text)["input_ids"]
    assert len(ids) >= PROMPT_TOKENS, f"text gives only {len(ids)} tokens"
    prompt = torch.tensor([ids[:PROMPT_TOKENS]], dtype=torch.long)

    res = {"prefill": [], "decode_1": [], "decode_8": []}
    for run in range(1 - args.warmup, args.runs + 1):  # runs <= 0 are warm-ups
        t_pre, cache, last = prefill(model, prompt)
        t_d1 = decode(model, cache, last, NEW_TOKENS)
        cache.crop(PROMPT_TOKENS - cache.get_seq_length())  # drop the 64 decoded positions
        cache.batch_repeat_interleave(BRANCHES)
        assert cache.get_seq_length() == PROMPT_TOKENS
        t_d8 = decode(model, cache, last.repeat(BRANCHES, 1), NEW_TOKENS)
        del cache
        if run <= 0:
            continue
        res["prefill"].append(PROMPT_TOKENS / t_pre)
        res["decode_1"].append(NEW_TOKENS / t_d1)
        res["decode_8"].append(BRANCHES * NEW_TOKENS / t_d8)
        print(f"run {run}: prefill {t_pre:.3f}s  decode_1 {t_d1:.3f}s  decode_8 {t_d8:.3f}s", file=sys.stderr)

    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"{'phase':10s} {'tokens':>7s} {'median tok/s':>13s}   runs (tok/s)")
    rows = [("prefill", PROMPT_TOKENS), ("decode_1", NEW_TOKENS), ("decode_8", BRANCHES * NEW_TOKENS)]
    for k, n in rows:
        runs = ", ".join(f"{x:.1f}" for x in res[k])
        print(f"{k:10s} {n:7d} {med[k]:13.1f}   {runs}")
    line = {
        "bench": "pytorch",
        "model_file": model_file,
        "dtype": "float32",
        "attn_implementation": model.config._attn_implementation,
        "threads": torch.get_num_threads(),
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "branches": BRANCHES,
        "runs": args.runs,
        "prefill_tok_s": round(med["prefill"], 2),
        "decode_1_tok_s": round(med["decode_1"], 2),
        "decode_8_tok_s": round(med["decode_8"], 2),
        "runs_tok_s": {k: [round(x, 2) for x in v] for k, v in res.items()},
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": md.version("gguf"),
        },
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
