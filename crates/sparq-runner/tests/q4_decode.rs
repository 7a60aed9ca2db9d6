//! The default model's layer matrices are Q4_1 blocks in its GGUF file. With
//! `--dtype f32` the decode steps read those blocks, expanded to the same f32 values;
//! the logits must be bit for bit those of `--dtype f32-full`, which reads the full
//! f32 matrices, for one branch and for several decoded together.
//!
//! `--dtype q4` also rounds keys and values to f16 and keeps the prompt's cache at
//! 16 bits as well, which dense attention reads: the same logits, bit for bit, as
//! reading that cache's floats.

mod common;

use sparq_attention::HeadKv;
use sparq_attention::MethodSpec;
use sparq_runner::{kernels, load_model, Llama, ModelSource, PromptCache, WeightDtype};

/// Every step's logits of `specs` decoded from one prefill of `text`.
fn decode_logits(model: &Llama, specs: &[&str], text: &str, steps: usize) -> Vec<Vec<f32>> {
    let prompt = common::default_model().tokenizer.encode(text).unwrap();
    let cache = model.prefill(&prompt, true).unwrap();
    decode_from(model, &cache, specs, steps)
}

/// Every step's logits of `specs` decoded from `cache`.
fn decode_from(model: &Llama, cache: &PromptCache, specs: &[&str], steps: usize) -> Vec<Vec<f32>> {
    let prompt = &cache.tokens;
    let mut branches: Vec<_> = specs
        .iter()
        .map(|s| {
            let method = s
                .parse::<MethodSpec>()
                .unwrap()
                .build(&model.shape(), prompt.len())
                .unwrap();
            model.branch(cache, method, steps).unwrap()
        })
        .collect();
    let vocab = model.config().vocab_size;
    let mut inputs = vec![kernels::argmax(&cache.last_logits) as u32; specs.len()];
    let mut all = vec![cache.last_logits.clone()];
    for _ in 0..steps {
        let logits = model.decode_step(cache, &mut branches, &inputs).unwrap();
        inputs = logits
            .chunks(vocab)
            .map(|r| kernels::argmax(r) as u32)
            .collect();
        all.push(logits);
    }
    all
}

#[test]
fn blocks_give_the_full_f32_logits_bit_for_bit() {
    let blocks = &common::default_model().model;
    let (bytes, in_blocks) = blocks.decode_weight_bytes();
    let layers = blocks.config().num_hidden_layers;
    assert_eq!(
        in_blocks,
        4 * layers,
        "every layer matrix is read as blocks"
    );
    let full = load_model(
        &ModelSource::Gguf(common::default_model_path()),
        WeightDtype::F32Full,
    )
    .expect("the default model loads");
    let (full_bytes, none) = full.model.decode_weight_bytes();
    assert_eq!(none, 0);
    assert!(
        bytes * 5 < full_bytes,
        "blocks {bytes} bytes, f32 {full_bytes}"
    );
    let text = "Write a short letter to a friend about the first snow of the year.";
    for specs in [&["dense"][..], &["dense", "sparq:r=16,k=8", "dense"][..]] {
        let got = decode_logits(blocks, specs, text, 6);
        let want = decode_logits(&full.model, specs, text, 6);
        for (step, (g, w)) in got.iter().zip(&want).enumerate() {
            let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "step {step}, branches {specs:?}");
        }
    }
}

#[test]
fn q4_reads_the_prompts_16_bit_copy_with_the_logits_of_its_floats() {
    let q4 = load_model(
        &ModelSource::Gguf(common::default_model_path()),
        WeightDtype::Q4,
    )
    .expect("the default model loads");
    let text = "Write a short letter to a friend about the first snow of the year.";
    let prompt = q4.tokenizer.encode(text).unwrap();
    let halves = q4.model.prefill(&prompt, true).unwrap();
    let is_half = |x: &f32| half::f16::from_f32(*x).to_f32().to_bits() == x.to_bits();
    for (l, layer) in halves.kv.iter().enumerate() {
        for kv in layer {
            assert!(kv.half().is_some(), "layer {l} keeps no 16-bit copy");
            assert!(
                kv.keys().iter().chain(kv.values()).all(is_half),
                "layer {l}"
            );
        }
    }
    // The same cache without its copies: every method then reads the floats.
    let floats = PromptCache {
        kv: halves
            .kv
            .iter()
            .map(|layer| {
                layer
                    .iter()
                    .map(|kv| HeadKv::from_rows(kv.head_dim(), kv.keys(), kv.values()))
                    .collect()
            })
            .collect(),
        tokens: halves.tokens.clone(),
        mass: halves.mass.clone(),
        last_logits: halves.last_logits.clone(),
    };
    assert!(floats.kv[0][0].half().is_none());
    for specs in [&["dense"][..], &["dense", "sparq:r=16,k=8", "dense"][..]] {
        let got = decode_from(&q4.model, &halves, specs, 6);
        let want = decode_from(&q4.model, &floats, specs, 6);
        for (step, (g, w)) in got.iter().zip(&want).enumerate() {
            let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "step {step}, branches {specs:?}");
        }
    }
    // And q4 is not f32: its cache's rounding moves the logits.
    let f32_logits = decode_logits(&common::default_model().model, &["dense"], text, 1);
    assert_ne!(f32_logits[0], halves.last_logits);
}
