//! The runner against Hugging Face transformers loading the same GGUF file: prompt
//! token ids, 24 greedy tokens and the first step's top-5 logits. The goldens were
//! made by `scripts/goldens/make_runner_goldens.py`; no Python is needed here.

mod common;

use serde_json::Value;
use sparq_attention::dense::Dense;
use sparq_runner::generate;

fn goldens() -> Value {
    let path = common::repo_root().join("crates/sparq-runner/tests/golden/smollm2_q4_1.json");
    let text = std::fs::read_to_string(&path).expect("golden file is committed");
    serde_json::from_str(&text).expect("golden file is JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn tokenizer_matches_transformers_on_every_prompt() {
    let model = common::default_model();
    let g = goldens();
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let got = model.tokenizer.encode(prompt).unwrap();
        assert_eq!(got, ids(&case["prompt_tokens"]), "prompt {prompt:?}");
    }
}

#[test]
fn greedy_tokens_and_first_logits_match_transformers() {
    let model = common::default_model();
    let g = goldens();
    let cases = g["cases"].as_array().unwrap();
    let mut equal = 0;
    let mut report = Vec::new();
    for case in cases {
        let prompt = ids(&case["prompt_tokens"]);
        let want = ids(&case["greedy_tokens"]);
        // SparQ with a budget covering every position decodes alongside dense and
        // must reproduce it token for token.
        let full: sparq_attention::MethodSpec = "sparq:r=64,k=100000".parse().unwrap();
        let sparq_full = full.build(&model.model.shape(), prompt.len()).unwrap();
        let out = generate(
            &model.model,
            &prompt,
            vec![Box::new(Dense), sparq_full],
            want.len(),
        )
        .unwrap();
        let got = &out.branches[0].tokens;
        assert_eq!(
            &out.branches[1].tokens, got,
            "full-budget SparQ differs from dense"
        );
        if *got == want {
            equal += 1;
        } else {
            let first_diff = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            report.push(format!(
                "{:?}: first difference at token {first_diff}",
                case["prompt"]
            ));
        }
        for pair in case["first_step_top5"].as_array().unwrap() {
            let id = pair[0].as_u64().unwrap() as usize;
            let logit = pair[1].as_f64().unwrap();
            let ours = out.first_logits[id] as f64;
            assert!(
                (ours - logit).abs() < 1e-3,
                "prompt {:?}: logit of token {id} is {ours}, transformers gives {logit}",
                case["prompt"]
            );
        }
        // The top-5 ids themselves agree (ranked by our logits).
        let mut ranked: Vec<usize> = (0..out.first_logits.len()).collect();
        ranked.sort_by(|&a, &b| out.first_logits[b].total_cmp(&out.first_logits[a]));
        let want_top: Vec<usize> = case["first_step_top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            ranked[0], want_top[0],
            "argmax differs for {:?}",
            case["prompt"]
        );
    }
    println!(
        "greedy continuations equal: {equal}/{}; {report:?}",
        cases.len()
    );
    assert!(
        equal * 10 >= cases.len() * 9,
        "only {equal}/{} equal: {report:?}",
        cases.len()
    );
}

/// Dense branches decoded together (sharing one pass over the prompt cache, with a
/// SparQ branch in between) each give exactly what one dense branch gives alone.
#[test]
fn dense_branches_decoded_together_equal_dense_alone() {
    let model = common::default_model();
    let g = goldens();
    for case in g["cases"].as_array().unwrap().iter().take(3) {
        let prompt = ids(&case["prompt_tokens"]);
        let alone = generate(&model.model, &prompt, vec![Box::new(Dense)], 12).unwrap();
        let sparq: sparq_attention::MethodSpec = "sparq:ratio=1/8".parse().unwrap();
        let methods: Vec<Box<dyn sparq_attention::AttentionMethod>> = vec![
            Box::new(Dense),
            sparq.build(&model.model.shape(), prompt.len()).unwrap(),
            Box::new(Dense),
            Box::new(Dense),
        ];
        let together = generate(&model.model, &prompt, methods, 12).unwrap();
        for b in [0, 2, 3] {
            assert_eq!(
                together.branches[b].tokens, alone.branches[0].tokens,
                "branch {b}"
            );
            assert_eq!(
                together.branches[b].elements_per_step,
                alone.branches[0].elements_per_step
            );
        }
        assert!(together.branches[1].method.starts_with("sparq:r=8,"));
    }
}
