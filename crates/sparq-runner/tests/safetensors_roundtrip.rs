//! The same weights written as a safetensors directory (Hugging Face names and layout,
//! tokenizer.json, config.json) and read back through the directory path give the same
//! tokens and logits as the GGUF path.

mod common;

use sparq_attention::dense::Dense;
use sparq_runner::export::export_safetensors_dir;
use sparq_runner::weights::load_gguf;
use sparq_runner::{load_model, ModelSource, Tokenizer, WeightDtype};

#[test]
fn safetensors_directory_gives_the_gguf_logits() {
    let gguf_path = common::default_model_path();
    let dir = tempfile::tempdir().unwrap();
    {
        let gguf = load_gguf(&gguf_path).unwrap();
        let tokenizer = Tokenizer::from_gguf(&gguf_path, &gguf.metadata).unwrap();
        export_safetensors_dir(&gguf.weights, &tokenizer, dir.path()).unwrap();
    }
    let from_dir = load_model(
        &ModelSource::Dir(dir.path().to_path_buf()),
        WeightDtype::F32,
    )
    .unwrap();
    let from_gguf = common::default_model();

    let text = "Résumé of the day:\n\tthe cat  sat on the mat. <|im_start|>assistant\n";
    let a = from_gguf.tokenizer.encode(text).unwrap();
    let b = from_dir.tokenizer.encode(text).unwrap();
    assert_eq!(
        a, b,
        "tokenizer.json written from the GGUF metadata encodes alike"
    );

    let ga = sparq_runner::generate(&from_gguf.model, &a, vec![Box::new(Dense)], 6).unwrap();
    let gb = sparq_runner::generate(&from_dir.model, &b, vec![Box::new(Dense)], 6).unwrap();
    let max_diff = ga
        .first_logits
        .iter()
        .zip(&gb.first_logits)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-5, "logits differ by {max_diff}");
    assert_eq!(ga.branches[0].tokens, gb.branches[0].tokens);
}
