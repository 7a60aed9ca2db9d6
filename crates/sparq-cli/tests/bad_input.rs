//! Bad input through the real binary: every case exits non-zero with a message that
//! names the file or field and what was expected, and never panics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn default_model() -> PathBuf {
    let p = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "run scripts/fetch-model.sh first");
    p
}

/// Runs `sparq` and returns (success, stdout, stderr).
fn sparq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sparq"))
        .args(args)
        .env_remove("SPARQ_MODEL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_clean_failure(args: &[&str], needles: &[&str]) {
    let (ok, _, err) = sparq(args);
    assert!(!ok, "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "message for {args:?} lacks {n:?}: {err}");
    }
}

#[test]
fn missing_model_file_is_named() {
    assert_clean_failure(
        &[
            "generate",
            "--model",
            "/nonexistent/model.gguf",
            "--prompt",
            "hi",
        ],
        &["/nonexistent/model.gguf", "does not exist"],
    );
}

#[test]
fn truncated_gguf_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(default_model()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(
        &[
            "generate",
            "--model",
            cut.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &["cut.gguf", "truncated"],
    );
}

#[test]
fn a_file_that_is_not_gguf_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.gguf");
    std::fs::write(&f, "hello, not a model").unwrap();
    assert_clean_failure(
        &["generate", "--model", f.to_str().unwrap(), "--prompt", "hi"],
        &["notes.gguf", "not a readable GGUF"],
    );
}

fn write_config(dir: &Path, json: &str) {
    std::fs::write(dir.join("config.json"), json).unwrap();
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        r#"{"architectures": ["GPT2LMHeadModel"], "hidden_size": 8}"#,
    );
    std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer_json()).unwrap();
    assert_clean_failure(
        &[
            "generate",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &["config.json", "GPT2LMHeadModel", "LlamaForCausalLM"],
    );
}

#[test]
fn config_without_a_needed_field_names_it() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_attention_heads": 2}"#,
    );
    std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer_json()).unwrap();
    assert_clean_failure(
        &[
            "generate",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &["config.json", "intermediate_size", "required"],
    );
}

#[test]
fn tokenizer_that_cannot_be_built_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 64);
    std::fs::write(dir.path().join("tokenizer.json"), "{\"version\": \"1.0\"}").unwrap();
    assert_clean_failure(
        &[
            "generate",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &["tokenizer.json", "cannot be read"],
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 64);
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 100]).unwrap();
    assert_clean_failure(
        &[
            "generate",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &["model.safetensors"],
    );
}

#[test]
fn long_prompt_is_cut_from_the_left_and_the_count_reported() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 64);
    let prompt = "word ".repeat(100).trim_end().to_string(); // 100 tokens
    let (ok, out, err) = sparq(&[
        "generate",
        "--model",
        dir.path().to_str().unwrap(),
        "--prompt",
        &prompt,
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let kept = v["prompt_tokens"].as_array().unwrap().len();
    let cut = v["truncated_tokens"].as_u64().unwrap() as usize;
    assert_eq!(kept, 60, "64 positions minus 4 new tokens");
    assert_eq!(
        kept + cut,
        100,
        "every prompt token is kept or counted as cut"
    );
    assert!(err.contains(&format!("cut {cut} from the left")), "{err}");
    assert_eq!(v["output_tokens"].as_array().unwrap().len(), 4);
}

/// A bad line of a custom task file is named once: the message is the task's, then
/// the file, line and field (the error chain used to repeat the task's message).
#[test]
fn bad_task_file_line_is_named_once() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("bad.jsonl");
    std::fs::write(&task, "{\"id\": \"a\", \"references\": [\"x\"]}\n").unwrap();
    let (task, out) = (task.display().to_string(), tmp.path().join("out"));
    let model = default_model().display().to_string();
    let args = [
        "eval",
        "--model",
        &model,
        "--tasks",
        &task,
        "--output-dir",
        &out.display().to_string(),
    ];
    let line = format!("{task} line 1: missing field `input`");
    assert_clean_failure(&args, &[&format!("error: task {task}: {line}")]);
    let (_, _, err) = sparq(&args);
    assert_eq!(err.matches(&line).count(), 1, "{err}");
}

#[test]
fn bad_method_spec_is_refused_before_loading_the_model() {
    assert_clean_failure(
        &[
            "generate",
            "--model",
            "/nonexistent.gguf",
            "--prompt",
            "hi",
            "--method",
            "sparq:r=0,k=8",
        ],
        &["--method sparq:r=0,k=8", "r"],
    );
}

#[test]
fn bench_settings_out_of_range_are_named() {
    assert_clean_failure(
        &["bench", "dense-phases", "--branches", "0"],
        &["branches = 0", "expected 1 to 64"],
    );
    assert_clean_failure(
        &["bench", "attention", "--seq-len", "1", "--method", "dense"],
        &["seq_len = 1", "at least 2"],
    );
}

fn tokenizer_json() -> String {
    static TOK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOK.get_or_init(|| {
        let path = default_model();
        let gguf = sparq_runner::weights::load_gguf(&path).unwrap();
        let tok = sparq_runner::Tokenizer::from_gguf(&path, &gguf.metadata).unwrap();
        tok.hf().to_string(false).unwrap()
    })
    .clone()
}

/// A tiny random Llama with the default model's tokenizer and `positions` positions.
fn write_tiny_model(dir: &Path, positions: usize) {
    let (h, i, layers, heads, kv, vocab) = (16usize, 32usize, 2usize, 4usize, 2usize, 49152usize);
    let d = h / heads;
    write_config(
        dir,
        &serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": h, "intermediate_size": i,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
            "max_position_embeddings": positions, "vocab_size": vocab, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": true
        })
        .to_string(),
    );
    let dev = Device::Cpu;
    let rand = |shape: &[usize]| Tensor::randn(0f32, 0.5, shape, &dev).unwrap();
    let mut t = HashMap::new();
    t.insert("model.embed_tokens.weight".to_string(), rand(&[vocab, h]));
    t.insert(
        "model.norm.weight".to_string(),
        Tensor::ones(h, candle_core::DType::F32, &dev).unwrap(),
    );
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        t.insert(
            format!("{p}.self_attn.q_proj.weight"),
            rand(&[heads * d, h]),
        );
        t.insert(format!("{p}.self_attn.k_proj.weight"), rand(&[kv * d, h]));
        t.insert(format!("{p}.self_attn.v_proj.weight"), rand(&[kv * d, h]));
        t.insert(
            format!("{p}.self_attn.o_proj.weight"),
            rand(&[h, heads * d]),
        );
        t.insert(format!("{p}.mlp.gate_proj.weight"), rand(&[i, h]));
        t.insert(format!("{p}.mlp.up_proj.weight"), rand(&[i, h]));
        t.insert(format!("{p}.mlp.down_proj.weight"), rand(&[h, i]));
        t.insert(format!("{p}.input_layernorm.weight"), rand(&[h]));
        t.insert(format!("{p}.post_attention_layernorm.weight"), rand(&[h]));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
}
