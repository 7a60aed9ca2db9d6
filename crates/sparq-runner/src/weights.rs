//! Weight loading into Hugging Face tensor names: from a GGUF file (dequantized to f32,
//! query/key rows un-permuted back to the "rotate half" layout) or from a directory of
//! safetensors (f32, f16 or bf16; single file or sharded with an index).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};

use crate::config::LlamaConfig;
use crate::error::{Result, RunnerError};
use crate::q4::Q4Rows;

/// Every tensor of a model, by Hugging Face name, as f32 on the CPU.
pub struct LoadedWeights {
    pub config: LlamaConfig,
    pub tensors: HashMap<String, Tensor>,
    /// Llama 3.1 GGUF files keep their RoPE frequency scaling as a tensor.
    pub rope_freqs: Option<Vec<f32>>,
    /// The matrices a GGUF file stores as Q4_1 blocks, in those blocks (rows in the
    /// same order as their f32 tensors), for the decode kernels.
    pub blocks: HashMap<String, Q4Rows>,
}

impl LoadedWeights {
    /// Takes a tensor out by name, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize], origin: &Path) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| {
            RunnerError::model_file(origin, format!("tensor `{name}` is missing"))
        })?;
        if t.dims() != shape {
            return Err(RunnerError::model_file(
                origin,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t)
    }

    /// Takes out the Q4_1 blocks of the matrix `name`, if the file stored it so.
    pub fn take_blocks(&mut self, name: &str) -> Option<Q4Rows> {
        self.blocks.remove(name)
    }
}

/// An opened GGUF file: its metadata (for the tokenizer) and its tensors.
pub struct GgufModel {
    pub weights: LoadedWeights,
    pub metadata: HashMap<String, gguf_file::Value>,
}

pub fn load_gguf(path: &Path) -> Result<GgufModel> {
    let mut file = File::open(path).map_err(|source| RunnerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file_len = file
        .metadata()
        .map_err(|source| RunnerError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| RunnerError::model_file(path, format!("not a readable GGUF file ({e})")))?;
    // A cut-off download passes the header check; find it before reading tensors.
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count();
        let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let end = content.tensor_data_offset + info.offset + bytes as u64;
        if end > file_len {
            return Err(RunnerError::model_file(
                path,
                format!(
                    "is truncated: tensor `{name}` ends at byte {end} but the file has {file_len} bytes"
                ),
            ));
        }
    }
    let vocab = content
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.len());
    let config = LlamaConfig::from_gguf(
        path,
        &content.metadata,
        content.tensor_infos.contains_key("output.weight"),
        vocab,
    )?;
    let device = Device::Cpu;
    let mut tensors = HashMap::new();
    let mut blocks = HashMap::new();
    let mut rope_freqs = None;
    for name in content.tensor_infos.keys() {
        let q = content
            .tensor(&mut file, name, &device)
            .map_err(|e| RunnerError::model_file(path, format!("tensor `{name}`: {e}")))?;
        let t = q.dequantize(&device)?;
        if name == "rope_freqs.weight" {
            rope_freqs = Some(t.flatten_all()?.to_vec1::<f32>()?);
            continue;
        }
        let Some(hf) = hf_name(name) else {
            return Err(RunnerError::model_file(
                path,
                format!("unexpected tensor `{name}` for a Llama model"),
            ));
        };
        let rotary_heads = if name.ends_with("attn_q.weight") {
            Some(config.num_attention_heads)
        } else if name.ends_with("attn_k.weight") {
            Some(config.num_key_value_heads)
        } else {
            None
        };
        let dims = t.dims().to_vec();
        let order = rotary_heads.map(|heads| rotary_row_order(dims[0], heads));
        if let (GgmlDType::Q4_1, &[rows, cols]) = (q.dtype(), dims.as_slice()) {
            let data = q
                .data()
                .map_err(|e| RunnerError::model_file(path, format!("tensor `{name}`: {e}")))?;
            if let Some(b) = Q4Rows::from_ggml(&data, rows, cols) {
                let b = match &order {
                    Some(o) => b.select_rows(o),
                    None => b,
                };
                blocks.insert(hf.clone(), b);
            }
        }
        let t = match &order {
            Some(o) => {
                let ids = Tensor::from_vec(
                    o.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                    o.len(),
                    &device,
                )?;
                t.index_select(&ids, 0)?
            }
            None => t,
        };
        tensors.insert(hf, t);
    }
    Ok(GgufModel {
        weights: LoadedWeights {
            config,
            tensors,
            rope_freqs,
            blocks,
        },
        metadata: content.metadata,
    })
}

/// GGUF tensor name to its Hugging Face name.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// llama.cpp's converter stores each head's query/key rows interleaved (pairs
/// `(i, i + d/2)` adjacent) for its interleaved RoPE; this order puts them back in
/// halves, as transformers does when it loads a GGUF file: row `i` of the result is
/// row `order[i]` of the file's matrix.
fn rotary_row_order(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads;
    (0..rows)
        .map(|r| {
            let (head, within) = (r / d, r % d);
            let (half, i) = (within / (d / 2), within % (d / 2));
            head * d + 2 * i + half
        })
        .collect()
}

/// The files of a safetensors checkpoint directory.
pub struct SafetensorsDir {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub shards: Vec<PathBuf>,
}

impl SafetensorsDir {
    pub fn locate(dir: &Path) -> Result<Self> {
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(RunnerError::model_file(
                dir,
                "has no config.json (expected a directory with config.json, *.safetensors and tokenizer.json)",
            ));
        }
        let index = dir.join("model.safetensors.index.json");
        let shards = if index.is_file() {
            shards_from_index(&index)?
        } else {
            let single = dir.join("model.safetensors");
            if single.is_file() {
                vec![single]
            } else {
                let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|source| RunnerError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                    .collect();
                found.sort();
                if found.is_empty() {
                    return Err(RunnerError::model_file(dir, "has no *.safetensors file"));
                }
                found
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            shards,
        })
    }
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|source| RunnerError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| RunnerError::model_file(index, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            RunnerError::field(
                index,
                "weight_map",
                "must be an object of tensor name -> file",
            )
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str().map(|s| dir.join(s)))
        .collect();
    files.sort();
    files.dedup();
    for f in &files {
        if !f.is_file() {
            return Err(RunnerError::model_file(
                f,
                format!("is listed in {} but does not exist", index.display()),
            ));
        }
    }
    Ok(files)
}

pub fn load_safetensors(files: &SafetensorsDir) -> Result<LoadedWeights> {
    let config = LlamaConfig::from_config_json(&files.config)?;
    let device = Device::Cpu;
    let mut tensors = HashMap::new();
    for shard in &files.shards {
        // SAFETY: the file is mapped read-only and not modified while we read it.
        let st =
            unsafe { candle_core::safetensors::MmapedSafetensors::new(shard) }.map_err(|e| {
                RunnerError::model_file(shard, format!("not a readable safetensors file ({e})"))
            })?;
        for (name, _) in st.tensors() {
            let t = st
                .load(&name, &device)
                .map_err(|e| RunnerError::model_file(shard, format!("tensor `{name}`: {e}")))?;
            let t = match t.dtype() {
                DType::F32 => t,
                DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
                other => {
                    return Err(RunnerError::model_file(
                        shard,
                        format!("tensor `{name}` has dtype {other:?}; expected f32, f16 or bf16"),
                    ))
                }
            };
            tensors.insert(name, t);
        }
    }
    Ok(LoadedWeights {
        config,
        tensors,
        blocks: HashMap::new(),
        rope_freqs: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_puts_interleaved_pairs_back_in_halves() {
        // Heads of dim 4: GGUF rows are [x0, x2, x1, x3] per head.
        assert_eq!(rotary_row_order(4, 1), vec![0, 2, 1, 3]);
        assert_eq!(rotary_row_order(8, 2), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        // Dim 6: [x0, x3, x1, x4, x2, x5] back to x0..x5.
        let file = [0, 3, 1, 4, 2, 5];
        let back: Vec<usize> = rotary_row_order(6, 1).iter().map(|&r| file[r]).collect();
        assert_eq!(back, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        assert_eq!(
            hf_name("blk.7.attn_q.weight").unwrap(),
            "model.layers.7.self_attn.q_proj.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.x.attn_q.weight").is_none());
    }
}
