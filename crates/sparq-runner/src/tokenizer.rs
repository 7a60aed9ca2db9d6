//! The model's tokenizer: from `tokenizer.json`, or rebuilt from GGUF metadata the way
//! transformers rebuilds it (byte-level BPE for `gpt2`-style files, SentencePiece-style
//! BPE with byte fallback for `llama`-style files). Special tokens written in the text
//! are recognised as such, and BOS is added exactly when the tokenizer adds it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper};

use crate::error::{Result, RunnerError};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: String,
    eos: Option<u32>,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| RunnerError::Tokenizer {
            source_desc: path.display().to_string(),
            message: format!("cannot be read as a tokenizer.json ({e})"),
        })?;
        Ok(Self {
            inner,
            source: path.display().to_string(),
            eos: None,
        })
    }

    /// Rebuilds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(path: &Path, metadata: &HashMap<String, Value>) -> Result<Self> {
        let source = format!("{} (GGUF metadata)", path.display());
        let err = |message: String| RunnerError::Tokenizer {
            source_desc: source.clone(),
            message,
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            let v = metadata
                .get(key)
                .ok_or_else(|| err(format!("`{key}` is missing")))?;
            v.to_vec()
                .map_err(|_| err(format!("`{key}` must be an array of strings")))?
                .iter()
                .map(|s| s.to_string().cloned())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| err(format!("`{key}` must be an array of strings")))
        };
        let id = |key: &str| metadata.get(key).and_then(|v| v.to_u32().ok());
        let flag = |key: &str| metadata.get(key).and_then(|v| v.to_bool().ok());
        let model = metadata
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| err("`tokenizer.ggml.model` is missing".into()))?
            .clone();
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|_| err("`tokenizer.ggml.token_type` must be an array".into()))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();

        let mut inner = match model.as_str() {
            "gpt2" => {
                let merges = strings("tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .ok_or_else(|| {
                                err(format!(
                                    "merge `{m}` is not two tokens separated by a space"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .build()
                    .map_err(|e| err(format!("BPE model cannot be built ({e})")))?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let add_prefix_space = flag("tokenizer.ggml.add_space_prefix").unwrap_or(false);
                t.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
                t.with_decoder(Some(ByteLevel::default()));
                t
            }
            "llama" => {
                let scores: Vec<f32> = match metadata.get("tokenizer.ggml.scores") {
                    Some(v) => v
                        .to_vec()
                        .map_err(|_| err("`tokenizer.ggml.scores` must be an array".into()))?
                        .iter()
                        .map(|s| s.to_f32().unwrap_or(0.0))
                        .collect(),
                    None => vec![0.0; tokens.len()],
                };
                let merges = sentencepiece_merges(&tokens, &scores);
                let unk = id("tokenizer.ggml.unknown_token_id")
                    .and_then(|i| tokens.get(i as usize).cloned())
                    .unwrap_or_else(|| "<unk>".into());
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .unk_token(unk)
                    .fuse_unk(true)
                    .byte_fallback(true)
                    .build()
                    .map_err(|e| err(format!("BPE model cannot be built ({e})")))?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
                if flag("tokenizer.ggml.add_space_prefix").unwrap_or(true) {
                    normalizers.push(Prepend::new("▁".into()).into());
                }
                normalizers.push(
                    Replace::new(" ", "▁")
                        .map_err(|e| err(format!("normalizer ({e})")))?
                        .into(),
                );
                t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(normalizers)));
                let decoders: Vec<DecoderWrapper> = vec![
                    Replace::new("▁", " ")
                        .map_err(|e| err(format!("decoder ({e})")))?
                        .into(),
                    ByteFallback::default().into(),
                    Fuse::default().into(),
                    Strip::new(' ', 1, 0).into(),
                ];
                t.with_decoder(Some(DecoderSequence::new(decoders)));
                t
            }
            other => {
                return Err(err(format!(
                    "tokenizer model `{other}` is not supported (expected `gpt2` or `llama`)"
                )))
            }
        };

        // Control tokens are special (matched whole, skipped when decoding with
        // `skip_special_tokens`); user-defined ones are matched whole but kept.
        let mut special = Vec::new();
        let mut added = Vec::new();
        for (i, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
            let is_named = Some(i as u32) == bos || Some(i as u32) == eos;
            if ty == TOKEN_TYPE_CONTROL || is_named {
                special.push(AddedToken::from(tok.clone(), true));
            } else if ty == TOKEN_TYPE_USER_DEFINED {
                added.push(AddedToken::from(tok.clone(), false));
            }
        }
        inner.add_special_tokens(&special);
        inner.add_tokens(&added);

        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama");
        match (add_bos, bos) {
            (true, Some(bos)) => {
                let bos_tok = tokens[bos as usize].clone();
                let template = TemplateProcessing::builder()
                    .try_single(format!("{bos_tok}:0 $A:0"))
                    .and_then(|b| b.try_pair(format!("{bos_tok}:0 $A:0 {bos_tok}:1 $B:1")))
                    .map_err(|e| err(format!("post-processor ({e})")))?
                    .special_tokens(vec![(bos_tok, bos)])
                    .build()
                    .map_err(|e| err(format!("post-processor ({e})")))?;
                inner.with_post_processor(Some(PostProcessorWrapper::Template(template)));
            }
            (true, None) => {
                return Err(err(
                    "`tokenizer.ggml.add_bos_token` is true but `tokenizer.ggml.bos_token_id` is missing".into(),
                ))
            }
            (false, _) if model == "gpt2" => {
                inner.with_post_processor(Some(ByteLevel::new(true, false, true)));
            }
            _ => {}
        }
        Ok(Self { inner, source, eos })
    }

    /// Token ids of `text` with the tokenizer's normal special tokens (BOS where the
    /// tokenizer adds one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token count of `text` alone, without BOS or other added specials.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.encode_with(text, false)?.len())
    }

    pub fn encode_with(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| RunnerError::Tokenizer {
                source_desc: self.source.clone(),
                message: format!("cannot encode text ({e})"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included (so that what was generated is visible).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| RunnerError::Tokenizer {
                source_desc: self.source.clone(),
                message: format!("cannot decode ids ({e})"),
            })
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// The underlying Hugging Face tokenizer (to save it as `tokenizer.json`).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Merges of a SentencePiece vocabulary, ordered as transformers orders them: every
/// split of a token into two vocabulary pieces, by the merged token's score (higher
/// first), then by longer left and right pieces; stable otherwise.
fn sentencepiece_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(usize, usize, f32)> = Vec::new();
    for (t, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(usize, usize, f32)> = t
            .char_indices()
            .skip(1)
            .filter_map(|(cut, _)| {
                let (l, r) = t.split_at(cut);
                Some((*index.get(l)?, *index.get(r)?, score))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    let char_len = |i: usize| tokens[i].chars().count();
    // Python's `sorted(..., reverse=True)` is stable: equal keys keep their order.
    merges.sort_by(|a, b| {
        b.2.partial_cmp(&a.2)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(char_len(b.0).cmp(&char_len(a.0)))
            .then(char_len(b.1).cmp(&char_len(a.1)))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_merges_follow_score_order() {
        let toks: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let merges = sentencepiece_merges(&toks, &scores);
        let want: Vec<(String, String)> = [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(merges, want);
    }
}
