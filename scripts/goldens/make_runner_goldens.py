#!/usr/bin/env python3
"""Reference goldens for sparq-runner, made with PyTorch + transformers.

What it makes
    crates/sparq-runner/tests/golden/smollm2_q4_1.json (a few tens of KB): for each of
    the prompts in PROMPTS below, as transformers loads the GGUF model
    (weights de-quantized to float32, default "sdpa" attention, 2 CPU threads):
      prompt              the prompt string
      prompt_tokens       tokenizer(prompt)["input_ids"]  (normal special tokens; this
                          tokenizer adds no BOS, see top-level "add_bos")
      first_step_top5     [[id, logit], ...] top-5 of the float32 logits at the last
                          prompt position (the prediction of the first new token)
      greedy_tokens       24 greedy (argmax) new tokens, from a manual loop with the
                          KV cache; EOS does NOT stop it
      greedy_margins      per greedy step, top-1 minus top-2 logit (small values mark
                          near-ties where a quantized runner may legitimately diverge)
      greedy_text         tokenizer.decode(greedy_tokens) with special tokens kept
      digit_split_tokens  only when it differs from prompt_tokens: the ids with the
                          upstream SmolLM2 / llama.cpp "smollm" pre-tokenizer (each
                          digit split off before the byte-level regex), which
                          transformers' GGUF loader does not reproduce
    plus top-level metadata (library versions, the model file's sha256, dtype, add_bos,
    bos/eos ids, thread count).

How to run (from the workspace root; the reference stack is pinned in
scripts/goldens/requirements.txt, CPU is enough; about a minute on an idle 2-core
machine, several when other jobs compete for the cores):
    python3 -m venv /work/goldens-venv
    /work/goldens-venv/bin/pip install -r scripts/goldens/requirements.txt
    /work/goldens-venv/bin/python scripts/goldens/make_runner_goldens.py \
        [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--out crates/sparq-runner/tests/golden/smollm2_q4_1.json]

Deterministic: no sampling, fixed prompts, fixed thread count, deterministic torch
algorithms; re-running with the same versions gives the same ids (logits may move in
the last float32 bits if the thread count or CPU changes).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import inspect
import json
import os
import platform
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = ROOT / "crates" / "sparq-runner" / "tests" / "golden" / "smollm2_q4_1.json"
N_NEW = 24
THREADS = 2

LONG_PARAGRAPH = (
    "The history of the lighthouse is, in many ways, the history of coastal trade itself. "
    "Long before electric lamps and rotating Fresnel lenses, sailors relied on fires lit on "
    "hilltops and on the roofs of towers to warn them of rocks and shallow water. The most "
    "famous of the ancient lights, the Pharos of Alexandria, stood for more than a thousand "
    "years and was counted among the wonders of the world. During the Middle Ages, monks and "
    "local guilds kept small beacons burning along the shores of Europe, often paid for by "
    "tolls collected from passing ships. The modern lighthouse began to take shape in the "
    "eighteenth century, when engineers learned to build towers of interlocking stone that "
    "could survive the force of winter storms. Oil lamps with polished reflectors replaced "
    "open flames, and later the lens invented by Augustin Fresnel allowed a single lamp to "
    "be seen from more than twenty miles away. Each lighthouse was given its own pattern of "
    "flashes, so that a navigator could tell one coast from another at night. Keepers lived "
    "in isolated cottages beside the towers, trimming wicks, winding clockwork, and recording "
    "the weather in careful logbooks. Today most lights are automatic, watched by sensors "
    "rather than people, and satellite navigation has made them less essential than before. "
    "Yet many coastal communities still maintain their old towers, both as working aids to "
    "navigation and as reminders of the men and women who kept the lamps burning through "
    "long and dangerous nights."
)

# (name, prompt). Names are stable keys for the Rust tests.
PROMPTS: list[tuple[str, str]] = [
    ("plain_english", "The capital of France is"),
    ("chat_template_markers", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    (
        "chat_with_system",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    ("endoftext_mid_text", "The first story ends here.<|endoftext|>Once upon a time, in a small village,"),
    ("special_tokens_adjacent", "<|im_end|><|im_start|><|endoftext|>repo:<repo_name>sparq<file_sep>main.rs"),
    ("non_ascii", "Café crème brûlée, naïve façade. Ünïcödé — “quotes” … ¿Qué tal? 東京は日本の首都です。 😀🎉👍🏽 Привет, мир!"),
    ("runs_of_spaces", "a    b      c  d        e. Two  spaces   three    four"),
    ("tabs", "name\tage\tcity\nAlice\t30\tParis\n\tindented\t\tdouble tab\t"),
    ("blank_lines", "First line.\n\n\nSecond paragraph after two blank lines.\n\n\n\nThird:\n"),
    (
        "code",
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
        "for i in range(10):\n    print(f\"{i}: {fib(i)}\")\n",
    ),
    ("numbers", "In 2024, 3.14159 x 1,000,000 = 3141590; call 555-0123 at 12:45, or 0.5% of 1e-9."),
    ("spaces_before_digits", "Total:   42 items,    7 boxes and 2024 pages"),
    ("leading_space", " leading space, and a trailing one "),
    ("crlf_and_trailing_newline", "line one\r\nline two\r\n\r\nline four\n"),
    ("single_char", "A"),
    (
        "chat_answered_eos_next",
        "<|im_start|>user\nReply with one word: is water wet?<|im_end|>\n<|im_start|>assistant\nYes.",
    ),
    ("long_paragraph", LONG_PARAGRAPH),
]


def dumps(doc: dict) -> str:
    """JSON with one key per line and every list on a single line (small, diffable)."""

    def enc(v, indent: str) -> str:
        if isinstance(v, dict):
            inner = indent + "  "
            items = [f"{inner}{json.dumps(k)}: {enc(x, inner)}" for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}"
        if isinstance(v, list) and any(isinstance(x, dict) for x in v):
            inner = indent + "  "
            return "[\n" + ",\n".join(inner + enc(x, inner) for x in v) + "\n" + indent + "]"
        return json.dumps(v, ensure_ascii=False, separators=(",", ":") if isinstance(v, list) else (", ", ": "))

    return enc(doc, "") + "\n"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digit_split_tokenizer(tok):
    """The same tokenizer with SmolLM2's upstream pre-tokenizer
    (Digits(individual_digits) then ByteLevel), i.e. llama.cpp's `smollm` pre-type."""
    from tokenizers import Tokenizer, pre_tokenizers

    t = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return t


# transformers >= 5.2x names the KV-cache argument/output `cache` (was `past_key_values`).
CACHE_KW = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def _cache_of(out):
    return out.cache if CACHE_KW == "cache" else out.past_key_values


@torch.inference_mode()
def greedy(model, ids: list[int], n_new: int):
    """Prefill once, then feed one token at a time with the KV cache. Never stops early."""
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, use_cache=True)
    past = _cache_of(out)
    logits = out.logits[0, -1].float()
    top = torch.topk(logits, 5)
    top5 = [[int(i), float(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())]
    tokens, margins = [], []
    for step in range(n_new):
        t2 = torch.topk(logits, 2)
        nxt = int(t2.indices[0])
        assert nxt == int(torch.argmax(logits)), "topk/argmax disagree"
        tokens.append(nxt)
        margins.append(round(float(t2.values[0] - t2.values[1]), 5))
        if step + 1 == n_new:
            break
        out = model(input_ids=torch.tensor([[nxt]], dtype=torch.long), use_cache=True, **{CACHE_KW: past})
        past = _cache_of(out)
        logits = out.logits[0, -1].float()
    return top5, tokens, margins


@torch.inference_mode()
def check_against_full_recompute(model, ids: list[int], tokens: list[int]) -> None:
    """One no-cache forward over prompt+generation: every greedy token must be the argmax
    (or within 1e-3 of it) at its position. Guards against a broken cache loop."""
    full = torch.tensor([ids + tokens[:-1]], dtype=torch.long)
    logits = model(input_ids=full, use_cache=False).logits[0, len(ids) - 1 :].float()
    for k, t in enumerate(tokens):
        row = logits[k]
        assert float(row.max() - row[t]) < 1e-3, f"cache loop mismatch at step {k}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)

    model_dir, model_file = str(args.model.parent), args.model.name
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=model_file, dtype=torch.float32)
    model.eval()
    ds_tok = digit_split_tokenizer(tok)

    probe = tok("x")["input_ids"]
    add_bos = bool(probe) and tok.bos_token_id is not None and probe[0] == tok.bos_token_id and len(probe) > 1
    add_eos = bool(probe) and tok.eos_token_id is not None and probe[-1] == tok.eos_token_id

    cases = []
    for name, prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        top5, gen, margins = greedy(model, ids, N_NEW)
        assert len(gen) == N_NEW
        check_against_full_recompute(model, ids, gen)
        case = {
            "name": name,
            "prompt": prompt,
            "prompt_tokens": ids,
            "n_prompt_tokens": len(ids),
            "first_step_top5": top5,
            "greedy_tokens": gen,
            "greedy_margins": margins,
            "greedy_text": tok.decode(gen, skip_special_tokens=False),
        }
        ds_ids = ds_tok.encode(prompt).ids
        if ds_ids != ids:
            case["digit_split_tokens"] = ds_ids
        cases.append(case)
        print(f"{name:28s} prompt={len(ids):4d} tok  first={gen[0]:6d}  min_margin={min(margins):.4f}  "
              f"{case['greedy_text'][:50]!r}", file=sys.stderr)

    doc = {
        "generator": "scripts/goldens/make_runner_goldens.py",
        "model_file": args.model.name,
        "model_sha256": sha256(args.model),
        "dtype": "float32",
        "weights": "GGUF de-quantized to float32 by transformers (Q4_1 blocks, Q8_0 token_embd, tied lm_head)",
        "attn_implementation": model.config._attn_implementation,
        "torch_threads": THREADS,
        "n_new_tokens": N_NEW,
        "greedy": "argmax of float32 logits, manual loop with KV cache, EOS does not stop",
        "add_bos": add_bos,
        "add_eos": add_eos,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": md.version("tokenizers"),
            "gguf": md.version("gguf"),
            "numpy": md.version("numpy"),
        },
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(dumps(doc))
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(cases)} cases)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
