# Compares a reduced-precision --dtype (bf16 by default, or q4) with f32 on the golden
# prompts: how far it moves the outputs. Run from the repository root after building:
# python3 scripts/compare_dtypes.py [bf16|q4]. The first step's top-5 logits come from
# the prefill: q4 moves them only through its keys and values rounded to f16.
import json, subprocess, sys
other = sys.argv[1] if len(sys.argv) > 1 else 'bf16'
g = json.load(open('crates/sparq-runner/tests/golden/smollm2_q4_1.json'))
agree = 0; maxd = 0; same_prefix = []
for c in g['cases']:
    out = {}
    for dt in ['f32', other]:
        r = subprocess.run(['./target/release/sparq', 'generate', '--prompt', c['prompt'], '--max-new-tokens', '24', '--json', '--dtype', dt], capture_output=True, text=True)
        out[dt] = json.loads(r.stdout)
    a, b = out['f32'], out[other]
    la = dict((i, l) for i, l in a['first_step_top5']); lb = dict((i, l) for i, l in b['first_step_top5'])
    d = max(abs(la[i] - lb[i]) for i in la if i in lb)
    maxd = max(maxd, d)
    n = 0
    for x, y in zip(a['output_tokens'], b['output_tokens']):
        if x != y: break
        n += 1
    same_prefix.append(n)
    agree += a['output_tokens'] == b['output_tokens']
print(f"{other} vs f32 on {len(g['cases'])} golden prompts: identical 24-token continuations {agree}/{len(g['cases'])}; leading agreeing tokens {same_prefix}; max |top-5 logit difference| {maxd:.4f}")
