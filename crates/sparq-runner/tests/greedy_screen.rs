//! Greedy steps pick their tokens through the output head's 8-bit screen; on the
//! default model they must be exactly the argmax of the full logits, for one branch
//! and for several decoded together, in f32 and bf16.

mod common;

use sparq_attention::{AttentionMethod, MethodSpec};
use sparq_runner::{kernels, load_model, Llama, ModelSource, WeightDtype};

fn methods(model: &Llama, specs: &[&str], prompt_len: usize) -> Vec<Box<dyn AttentionMethod>> {
    let shape = model.shape();
    specs
        .iter()
        .map(|s| {
            s.parse::<MethodSpec>()
                .unwrap()
                .build(&shape, prompt_len)
                .unwrap()
        })
        .collect()
}

/// Decodes twice from one prefill, feeding the same tokens: once through the screen,
/// once through the full logits. Every step's tokens must agree.
fn screened_tokens_equal_full_argmax(model: &Llama, specs: &[&str]) {
    let text = "The lighthouse keeper counted the ships that passed the cape each \
                morning, wrote their names in a blue book, and trimmed the lamp. \
                On the third day of the storm he saw";
    let prompt = common::default_model().tokenizer.encode(text).unwrap();
    let cache = model.prefill(&prompt, true).unwrap();
    let steps = 24;
    let branch_set = || {
        methods(model, specs, prompt.len())
            .into_iter()
            .map(|m| model.branch(&cache, m, steps).unwrap())
            .collect::<Vec<_>>()
    };
    let (mut screened, mut full) = (branch_set(), branch_set());
    let vocab = model.config().vocab_size;
    let mut inputs = vec![kernels::argmax(&cache.last_logits) as u32; specs.len()];
    for step in 0..steps {
        let picked = model
            .decode_step_greedy(&cache, &mut screened, &inputs)
            .unwrap();
        let logits = model.decode_step(&cache, &mut full, &inputs).unwrap();
        let want: Vec<u32> = logits
            .chunks(vocab)
            .map(|r| kernels::argmax(r) as u32)
            .collect();
        assert_eq!(picked, want, "step {step}, branches {specs:?}");
        inputs = want;
    }
}

#[test]
fn one_branch_f32() {
    screened_tokens_equal_full_argmax(&common::default_model().model, &["dense"]);
}

#[test]
fn several_branches_f32() {
    let specs = [
        "dense",
        "sparq:r=16,k=8",
        "h2o:k=8",
        "lminf:k=20",
        "flexgen:k=4",
    ];
    screened_tokens_equal_full_argmax(&common::default_model().model, &specs);
}

#[test]
fn bf16_weights() {
    let bf16 = load_model(
        &ModelSource::Gguf(common::default_model_path()),
        WeightDtype::Bf16,
    )
    .expect("the default model loads in bf16");
    screened_tokens_equal_full_argmax(&bf16.model, &["dense"]);
    screened_tokens_equal_full_argmax(&bf16.model, &["dense", "sparq:r=16,k=8", "oracle:k=8"]);
}
