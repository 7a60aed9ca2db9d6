//! The Llama family (Llama 2 and 3, Mistral, SmolLM2): dense causal prefill of a whole
//! prompt, and a batched decode step in which every branch attends through its own
//! `sparq_attention` method. Weight names mirror the Hugging Face checkpoints.

use std::path::Path;

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;
use sparq_attention::{AttentionMethod, HeadKv, HeadState, LineAligned, ModelShape};

use crate::causal::{causal_attention, Heads};
use crate::config::LlamaConfig;
use crate::error::{Result, RunnerError};
use crate::kernels::{self, WeightRows};
use crate::q4::Q4Rows;
use crate::rope::Rope;
use crate::screen::{full_argmax, ScreenedHead};
use crate::weights::LoadedWeights;

/// Numeric format of the large weight matrices, and for `Q4` of the KV cache too.
/// Activations and norms are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// Exact. Decode steps read a GGUF file's Q4_1 blocks instead of the f32 matrix
    /// they hold exactly (`q4.rs`), with the same products bit for bit.
    #[default]
    F32,
    /// The same values and products as `F32`, read from the full f32 matrices: for
    /// measuring what the blocks save.
    F32Full,
    /// Half the bytes to read per decode step; outputs move slightly (see BENCHMARKS.md).
    Bf16,
    /// `F32`, except that one branch's decode products are computed from the Q4_1
    /// blocks per block as `d * (q . x) + m * sum(x)` (the same weights rounded
    /// differently, fewer operations), and that keys and values are rounded to 16-bit
    /// floats (f16) as they enter the cache, as llama.cpp's default cache stores them:
    /// the prompt's cache then keeps a 16-bit copy, which dense attention reads at
    /// half the bytes. See BENCHMARKS.md for how far outputs move.
    Q4,
}

impl WeightDtype {
    /// Whether keys and values are rounded to f16 and the prompt's cache kept at 16
    /// bits too.
    pub fn half_kv(self) -> bool {
        self == Self::Q4
    }
}

impl std::fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F32Full => "f32-full",
            Self::Bf16 => "bf16",
            Self::Q4 => "q4",
        })
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f32-full" => Ok(Self::F32Full),
            "bf16" => Ok(Self::Bf16),
            "q4" => Ok(Self::Q4),
            _ => Err(format!(
                "unknown dtype `{s}` (expected f32, f32-full, bf16 or q4)"
            )),
        }
    }
}

/// A weight matrix `[out, in]`, kept as a candle tensor (for prefill matmuls) whose
/// storage the decode kernels read directly, unless they read its Q4_1 blocks.
struct Linear {
    weight: Tensor,
    /// The file's blocks, when they expand to `weight` bit for bit and the dtype is
    /// `F32` or `Q4`: what the decode kernels read then.
    blocks: Option<Q4Rows>,
    /// `Q4`: one branch's products from the blocks are factored per block.
    factored: bool,
    out_dim: usize,
    in_dim: usize,
}

impl Linear {
    fn new(weight: Tensor, dtype: WeightDtype, blocks: Option<Q4Rows>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let weight = match dtype {
            WeightDtype::F32 | WeightDtype::F32Full | WeightDtype::Q4 => {
                weight.to_dtype(DType::F32)?
            }
            WeightDtype::Bf16 => weight.to_dtype(DType::BF16)?,
        }
        .contiguous()?;
        let mut linear = Self {
            weight,
            blocks: None,
            factored: dtype == WeightDtype::Q4,
            out_dim,
            in_dim,
        };
        if matches!(dtype, WeightDtype::F32 | WeightDtype::Q4) {
            let exact = |b: &Q4Rows| {
                linear.with_rows(|w| matches!(w, WeightRows::F32(v) if b.expands_to(v)))
            };
            linear.blocks = blocks.filter(exact);
        }
        Ok(linear)
    }

    /// Many rows at once (prefill): `out (m x out) = x (m x in) . W^T`, or `out +=`
    /// that product when `accumulate` (the residual connection, added by the matrix
    /// product itself instead of a separate pass). Row `i` of `x` starts at `i * lda`
    /// (`lda` at least `in`), so that the input can be the left part of wider rows.
    fn forward_many(&self, x: &[f32], (m, lda): (usize, usize), out: &mut [f32], accumulate: bool) {
        let n = self.out_dim;
        let k = self.in_dim;
        assert!(lda >= k && (m == 0 || x.len() >= (m - 1) * lda + k));
        assert_eq!(out.len(), m * n);
        let (storage, layout) = self.weight.storage_and_layout();
        let start = layout.start_offset();
        let widened;
        let w: &[f32] = match &*storage {
            Storage::Cpu(candle_core::CpuStorage::F32(v)) => &v[start..start + n * k],
            Storage::Cpu(candle_core::CpuStorage::BF16(v)) => {
                // Widened once per call for the matrix product, on all threads.
                widened = v[start..start + n * k]
                    .par_iter()
                    .map(|b| b.to_f32())
                    .collect::<Vec<f32>>();
                &widened
            }
            _ => unreachable!("weights are f32 or bf16 on the CPU by construction"),
        };
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            // An empty sum (zero-width input): the output stays, or becomes zero.
            if !accumulate {
                out.fill(0.0);
            }
            return;
        }
        // Each thread multiplies every row by its own share of the output features (a
        // band of the weight's rows) with gemm's one-thread path: it packs only its
        // share of the weights, and on the model's shapes this ran 0-11% faster than
        // bands of rows with the whole weight matrix each (BENCHMARKS.md).
        let threads = rayon::current_num_threads().max(1);
        let share = n.div_ceil(threads).next_multiple_of(16);
        let dst = SharedOut(out.as_mut_ptr());
        (0..n.div_ceil(share)).into_par_iter().for_each(|t| {
            let c0 = t * share;
            let cols = share.min(n - c0);
            // SAFETY: task `t` writes only the columns `c0..c0 + cols` of `out` (`m x n`,
            // row stride `n`), which no other task writes; `x` holds `m` rows of `k` at
            // stride `lda` (checked above) and the weight rows `c0..c0 + cols` of `w`
            // (`n x k`, row-major) are read as their transpose `k x cols`.
            unsafe {
                gemm::gemm(
                    m,
                    cols,
                    k,
                    dst.at(c0),
                    1,
                    n as isize,
                    accumulate,
                    x.as_ptr(),
                    1,
                    lda as isize,
                    w.as_ptr().add(c0 * k),
                    k as isize,
                    1,
                    if accumulate { 1.0 } else { 0.0 },
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    }

    /// A few rows (decode): `x` is `m x in`.
    fn forward_rows(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut out = Vec::new();
        self.forward_rows_into(x, m, &mut out);
        out
    }

    /// [`Linear::forward_rows`] into `out`, resized to `m x out` (a buffer reused
    /// across layers is not zeroed again: every entry is written).
    fn forward_rows_into(&self, x: &[f32], m: usize, out: &mut Vec<f32>) {
        out.resize(m * self.out_dim, 0.0);
        self.with_rows(|w| kernels::linear(x, m, w, self.out_dim, out));
    }

    /// `f` of the weight matrix as the decode kernels read it.
    fn with_rows<T>(&self, f: impl FnOnce(WeightRows<'_>) -> T) -> T {
        match &self.blocks {
            Some(b) if self.factored => return f(WeightRows::Q4Factored(b)),
            Some(b) => return f(WeightRows::Q4(b)),
            None => {}
        }
        let (storage, layout) = self.weight.storage_and_layout();
        let start = layout.start_offset();
        let n = self.weight.elem_count();
        match &*storage {
            Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
                f(WeightRows::F32(&v[start..start + n]))
            }
            Storage::Cpu(candle_core::CpuStorage::BF16(v)) => {
                f(WeightRows::Bf16(&v[start..start + n]))
            }
            _ => unreachable!("weights are f32 or bf16 on the CPU by construction"),
        }
    }
}

/// The output of [`Linear::forward_many`], shared by the tasks that each write their
/// own columns of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: the pointer is only used by tasks that write disjoint elements, while the
// slice it came from is borrowed mutably for the whole parallel section.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `offset` places on.
    ///
    /// # Safety
    /// `offset` lies inside the slice the pointer came from.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

struct Layer {
    input_norm: Vec<f32>,
    post_attention_norm: Vec<f32>,
    /// q, k and v projections stacked: one pass over the input per step.
    qkv: Linear,
    o: Linear,
    /// gate and up projections stacked.
    gate_up: Linear,
    down: Linear,
}

pub struct Llama {
    config: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Linear,
    /// Keys and values rounded to f16, the prompt's cache kept at 16 bits too
    /// ([`WeightDtype::half_kv`]).
    half_kv: bool,
    /// The output head's 8-bit screen for greedy steps; `None` when the head has a
    /// weight that is not finite.
    screen: Option<ScreenedHead>,
    rope: Rope,
}

/// The prompt's cache after prefill, shared read-only by every branch.
pub struct PromptCache {
    pub tokens: Vec<u32>,
    /// `[layer][kv_head]`.
    pub kv: Vec<Vec<HeadKv>>,
    /// `[layer][kv_head][position]`: attention weight each prompt position received
    /// from all prompt queries, averaged over the group (for H2O).
    pub mass: Option<Vec<Vec<Vec<f32>>>>,
    /// Logits of the last prompt position.
    pub last_logits: Vec<f32>,
}

impl PromptCache {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// One decoding branch: its attention method, its own generated positions' cache and
/// its method's state, for every layer and KV head.
pub struct Branch {
    pub method: Box<dyn AttentionMethod>,
    /// `layer * kv_heads + kv_head`.
    pub(crate) generated: Vec<HeadKv>,
    pub(crate) states: Vec<HeadState>,
    /// Elements moved, summed over steps, layers and KV heads.
    pub elements_moved: u64,
    /// Decode steps taken.
    pub steps: u64,
}

impl Branch {
    /// Number of positions this branch has added after the prompt.
    pub fn generated_len(&self) -> usize {
        self.generated.first().map_or(0, |g| g.len())
    }
}

fn f32_vec(t: Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl Llama {
    pub fn new(mut w: LoadedWeights, dtype: WeightDtype, origin: &Path) -> Result<Self> {
        let c = w.config.clone();
        let (h, d) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let embed = w.take("model.embed_tokens.weight", &[c.vocab_size, h], origin)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let q = w.take(&format!("{p}.self_attn.q_proj.weight"), &[q_dim, h], origin)?;
            let k = w.take(
                &format!("{p}.self_attn.k_proj.weight"),
                &[kv_dim, h],
                origin,
            )?;
            let v = w.take(
                &format!("{p}.self_attn.v_proj.weight"),
                &[kv_dim, h],
                origin,
            )?;
            let o = w.take(&format!("{p}.self_attn.o_proj.weight"), &[h, q_dim], origin)?;
            let i_dim = c.intermediate_size;
            let gate = w.take(&format!("{p}.mlp.gate_proj.weight"), &[i_dim, h], origin)?;
            let up = w.take(&format!("{p}.mlp.up_proj.weight"), &[i_dim, h], origin)?;
            let down = w.take(&format!("{p}.mlp.down_proj.weight"), &[h, i_dim], origin)?;
            let input_norm = w.take(&format!("{p}.input_layernorm.weight"), &[h], origin)?;
            let post_norm = w.take(
                &format!("{p}.post_attention_layernorm.weight"),
                &[h],
                origin,
            )?;
            let mut blocks = |parts: &[&str]| {
                let parts: Option<Vec<Q4Rows>> = parts
                    .iter()
                    .map(|part| w.take_blocks(&format!("{p}.{part}.weight")))
                    .collect();
                Q4Rows::stack(&parts?)
            };
            let qkv_blocks = blocks(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]);
            let o_blocks = blocks(&["self_attn.o_proj"]);
            let gate_up_blocks = blocks(&["mlp.gate_proj", "mlp.up_proj"]);
            let down_blocks = blocks(&["mlp.down_proj"]);
            layers.push(Layer {
                input_norm: f32_vec(input_norm)?,
                post_attention_norm: f32_vec(post_norm)?,
                qkv: Linear::new(Tensor::cat(&[q, k, v], 0)?, dtype, qkv_blocks)?,
                o: Linear::new(o, dtype, o_blocks)?,
                gate_up: Linear::new(Tensor::cat(&[gate, up], 0)?, dtype, gate_up_blocks)?,
                down: Linear::new(down, dtype, down_blocks)?,
            });
        }
        let norm = f32_vec(w.take("model.norm.weight", &[h], origin)?)?;
        let (lm_head, head_blocks) =
            if c.tie_word_embeddings || !w.tensors.contains_key("lm_head.weight") {
                (embed.clone(), w.take_blocks("model.embed_tokens.weight"))
            } else {
                let head = w.take("lm_head.weight", &[c.vocab_size, h], origin)?;
                (head, w.take_blocks("lm_head.weight"))
            };
        let rope = Rope::new(&c, w.rope_freqs.as_deref());
        // The head is never factored: the screen's error bound assumes the exact
        // products' rounding.
        let head_dtype = match dtype {
            WeightDtype::Q4 => WeightDtype::F32,
            other => other,
        };
        let lm_head = Linear::new(lm_head, head_dtype, head_blocks)?;
        let screen = lm_head.with_rows(|w| ScreenedHead::new(w, c.vocab_size, h));
        Ok(Self {
            lm_head,
            half_kv: dtype.half_kv(),
            screen,
            embed: embed.to_dtype(DType::F32)?,
            layers,
            norm,
            rope,
            config: c,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Bytes of the layers' weight matrices that one decode step reads (the output
    /// head aside), and how many of those matrices are read as Q4_1 blocks.
    pub fn decode_weight_bytes(&self) -> (usize, usize) {
        let linears = self
            .layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down]);
        linears.fold((0, 0), |(bytes, in_blocks), lin| match &lin.blocks {
            Some(b) => (bytes + b.bytes(), in_blocks + 1),
            None => (
                bytes + lin.weight.elem_count() * lin.weight.dtype().size_in_bytes(),
                in_blocks,
            ),
        })
    }

    pub fn shape(&self) -> ModelShape {
        ModelShape {
            head_dim: self.config.head_dim,
            group: self.config.group_size(),
            kv_heads: self.config.num_key_value_heads,
            layers: self.config.num_hidden_layers,
        }
    }

    /// Splits the projected rows (`s x qkv_dim`, per row the query heads, then the
    /// key heads, then the value heads) into head-major `q` (`nh x s x d`), `k` and `v`
    /// (`nkv x s x d`), rotating queries and keys for their positions. The queries are
    /// also multiplied by the score scale `1 / sqrt(d)`, once here rather than in every
    /// score.
    fn split_heads(&self, qkv: &[f32], s: usize, (q, k, v): (&mut [f32], &mut [f32], &mut [f32])) {
        let c = &self.config;
        let (nh, nkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let qkv_dim = (nh + 2 * nkv) * d;
        let scale = 1.0 / (d as f32).sqrt();
        // Head `j` of the combined row (queries, keys, values in turn) goes to one
        // head-major destination; each task fills one head for every position.
        let dests = q
            .par_chunks_mut(s * d)
            .map(|h| (h, Some(scale)))
            .chain(k.par_chunks_mut(s * d).map(|h| (h, Some(1.0))))
            .chain(v.par_chunks_mut(s * d).map(|h| (h, None)));
        dests.enumerate().for_each(|(j, (dst, rotate_and_scale))| {
            for (p, row) in dst.chunks_mut(d).enumerate() {
                let src = &qkv[p * qkv_dim + j * d..p * qkv_dim + (j + 1) * d];
                row.copy_from_slice(src);
                if let Some(scale) = rotate_and_scale {
                    self.rope.apply(row, p);
                    if scale != 1.0 {
                        row.iter_mut().for_each(|x| *x *= scale);
                    }
                }
            }
        });
    }

    /// Dense causal prefill of `tokens`; keeps the KV cache and, when `with_mass`, the
    /// attention mass each position received (H2O's initial scores).
    pub fn prefill(&self, tokens: &[u32], with_mass: bool) -> Result<PromptCache> {
        let c = &self.config;
        let s = tokens.len();
        if s == 0 {
            return Err(RunnerError::Invalid("the prompt has no tokens".into()));
        }
        if s > self.rope.max_positions() {
            return Err(RunnerError::Invalid(format!(
                "the prompt has {s} tokens; the model has {} positions",
                self.rope.max_positions()
            )));
        }
        let (nh, nkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let h = c.hidden_size;
        let i_dim = c.intermediate_size;
        let qkv_dim = (nh + 2 * nkv) * d;
        let eps = c.rms_norm_eps as f32;
        // 1. token embeddings
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = LineAligned::copied(&f32_vec(self.embed.index_select(&ids, 0)?)?);
        let mut kv = Vec::with_capacity(c.num_hidden_layers);
        let mut mass_all = with_mass.then(Vec::new);
        // Buffers reused by every layer. They start on cache lines, and so do their
        // rows wherever a row is a multiple of 16 floats (every row of the default
        // model), so that the kernels' vector loads and stores do not straddle two
        // lines: straddling made the fused attention 7% slower in a probe.
        let mut hn = LineAligned::zeroed(s * h);
        let mut qkv = LineAligned::zeroed(s * qkv_dim);
        let mut q = LineAligned::zeroed(nh * s * d);
        let mut k = LineAligned::zeroed(nkv * s * d);
        let mut v = LineAligned::zeroed(nkv * s * d);
        let mut attn = LineAligned::zeroed(s * nh * d);
        let mut gu = LineAligned::zeroed(s * 2 * i_dim);
        for (li, layer) in self.layers.iter().enumerate() {
            // 2. attention block: norm, projections, rotary embedding
            rms_norm_rows(&x, &mut hn, &layer.input_norm, eps);
            layer.qkv.forward_many(&hn, (s, h), &mut qkv, false);
            self.split_heads(&qkv, s, (&mut q, &mut k, &mut v));
            if self.half_kv {
                round_kv_to_half(&mut k, &mut v, li)?;
            }
            // Past the last layer's keys and values only the last position's output
            // counts (the logits come from it), unless H2O needs every query's mass.
            let first = if li + 1 == self.layers.len() && !with_mass {
                s - 1
            } else {
                0
            };
            let rows = s - first;
            // 3. causal attention of the rows `first..s`; the output projection adds
            //    itself to the residual stream
            let heads = Heads::new((&q, &k, &v), (nh, nkv, s, d));
            let attn = &mut attn[..rows * nh * d];
            let mass = causal_attention(&heads, first, with_mass, attn);
            let x = &mut x[first * h..];
            layer.o.forward_many(attn, (rows, nh * d), x, true);
            // 4. MLP block: SiLU(gate) * up overwrites the gate half of each row, which
            //    the down projection then reads in place
            let hn = &mut hn[..rows * h];
            rms_norm_rows(x, hn, &layer.post_attention_norm, eps);
            let gu = &mut gu[..rows * 2 * i_dim];
            layer.gate_up.forward_many(hn, (rows, h), gu, false);
            gu.par_chunks_mut(2 * i_dim).for_each(|row| {
                let (gate, up) = row.split_at_mut(i_dim);
                crate::activation::silu_mul(gate, up);
            });
            layer.down.forward_many(gu, (rows, 2 * i_dim), x, true);
            // 5. keep this layer's cache
            kv.push(
                k.par_chunks(s * d)
                    .zip(v.par_chunks(s * d))
                    .map(|(kh, vh)| {
                        let mut cache = HeadKv::from_rows(d, kh, vh);
                        if self.half_kv {
                            // Always kept: the keys and values were rounded to f16
                            // above. Without it the dense passes would read the
                            // floats, which give the same results.
                            let kept = cache.keep_half_copy();
                            debug_assert!(kept, "rounded keys and values are halves");
                        }
                        cache
                    })
                    .collect(),
            );
            if let (Some(all), Some(m)) = (mass_all.as_mut(), mass) {
                all.push(m);
            }
        }
        // 6. final norm and output head, for the last position only
        let mut last = x[(s - 1) * h..].to_vec();
        kernels::rms_norm(&mut last, &self.norm, c.rms_norm_eps as f32);
        let last_logits = self.lm_head.forward_rows(&last, 1);
        Ok(PromptCache {
            tokens: tokens.to_vec(),
            kv,
            mass: mass_all,
            last_logits,
        })
    }

    /// A new branch over `prompt` that will add at most `capacity` positions.
    pub fn branch(
        &self,
        prompt: &PromptCache,
        method: Box<dyn AttentionMethod>,
        capacity: usize,
    ) -> Result<Branch> {
        let c = &self.config;
        let (layers, nkv) = (c.num_hidden_layers, c.num_key_value_heads);
        if method.needs_prompt_mass() && prompt.mass.is_none() {
            return Err(RunnerError::Invalid(format!(
                "method `{}` needs the prompt's attention mass; prefill with it",
                method.describe()
            )));
        }
        let mut states = Vec::with_capacity(layers * nkv);
        for l in 0..layers {
            for h in 0..nkv {
                let mass = prompt.mass.as_ref().map(|m| m[l][h].as_slice());
                states.push(
                    method.init_state(prompt.len(), mass.filter(|_| method.needs_prompt_mass())),
                );
            }
        }
        Ok(Branch {
            method,
            generated: vec![HeadKv::with_capacity(c.head_dim, capacity); layers * nkv],
            states,
            elements_moved: 0,
            steps: 0,
        })
    }

    /// Feeds one token per branch (all branches one batch) and returns the logits,
    /// `branches.len() x vocab`.
    pub fn decode_step(
        &self,
        prompt: &PromptCache,
        branches: &mut [Branch],
        inputs: &[u32],
    ) -> Result<Vec<f32>> {
        let x = self.decode_hidden(prompt, branches, inputs)?;
        Ok(self.lm_head.forward_rows(&x, branches.len()))
    }

    /// [`Llama::decode_step`] for greedy decoding: each branch's most likely next
    /// token (the first on ties), exactly the argmax of the step's logits, found by
    /// screening the output head instead of computing every logit (`screen.rs`).
    pub fn decode_step_greedy(
        &self,
        prompt: &PromptCache,
        branches: &mut [Branch],
        inputs: &[u32],
    ) -> Result<Vec<u32>> {
        let x = self.decode_hidden(prompt, branches, inputs)?;
        let m = branches.len();
        let tokens = match &self.screen {
            Some(screen) => self.lm_head.with_rows(|w| screen.argmax(&x, m, w)),
            None => self
                .lm_head
                .with_rows(|w| full_argmax(&x, m, w, self.config.vocab_size)),
        };
        Ok(tokens.into_iter().map(|t| t as u32).collect())
    }

    /// The decode step up to the output head: the final-normed hidden state of each
    /// branch, `branches.len() x hidden`.
    fn decode_hidden(
        &self,
        prompt: &PromptCache,
        branches: &mut [Branch],
        inputs: &[u32],
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let m = branches.len();
        assert_eq!(inputs.len(), m, "one input token per branch");
        let (h, nh, nkv, d) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        for (b, &t) in inputs.iter().enumerate() {
            if t as usize >= c.vocab_size {
                return Err(RunnerError::Invalid(format!(
                    "token id {t} of branch {b} is outside the vocabulary ({})",
                    c.vocab_size
                )));
            }
        }
        let positions: Vec<usize> = branches
            .iter()
            .map(|br| prompt.len() + br.generated_len())
            .collect();
        if let Some(&p) = positions.iter().max() {
            if p >= self.rope.max_positions() {
                return Err(RunnerError::Invalid(format!(
                    "position {p} is beyond the model's {} positions",
                    self.rope.max_positions()
                )));
            }
        }
        // 1. token embeddings
        let ids = Tensor::new(inputs, &Device::Cpu)?;
        let mut x = self
            .embed
            .index_select(&ids, 0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let qkv_dim = (nh + 2 * nkv) * d;
        let i_dim = c.intermediate_size;
        // Buffers reused by every layer: allocating and zeroing them per layer was
        // about 2% of a step of eight branches, on the calling thread alone. The
        // projections' inputs start on cache lines, as the weight kernels want them
        // (`kernels::linear` copies any other input onto lines first).
        let mut hn = LineAligned::zeroed(x.len());
        let (mut qkv, mut o, mut gu, mut down) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut attn = LineAligned::zeroed(m * nh * d);
        let mut act = LineAligned::zeroed(m * i_dim);
        let mut handoff_buffers = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            // 2. norm, projections and rotary embedding; the new key and value join
            //    each branch's own cache before attention
            hn.copy_from_slice(&x);
            kernels::rms_norm(&mut hn, &layer.input_norm, c.rms_norm_eps as f32);
            layer.qkv.forward_rows_into(&hn, m, &mut qkv);
            // Branch by branch in parallel: each writes its own caches, whose
            // transposed keys take a scattered store per component (1.6-2.1 ms a step
            // for eight branches on one thread).
            let rows: Vec<_> = branches
                .iter_mut()
                .zip(qkv.chunks_mut(qkv_dim))
                .zip(&positions)
                .collect();
            let joined = crate::spread::run_each(rows, |((branch, row), &pos)| {
                let (q, kv_part) = row.split_at_mut(nh * d);
                let (k, v) = kv_part.split_at_mut(nkv * d);
                self.rope.apply(q, pos);
                self.rope.apply(k, pos);
                if self.half_kv {
                    round_kv_to_half(k, v, l)?;
                }
                for kvh in 0..nkv {
                    branch.generated[l * nkv + kvh]
                        .push(&k[kvh * d..(kvh + 1) * d], &v[kvh * d..(kvh + 1) * d]);
                }
                Ok(())
            });
            joined.into_iter().collect::<Result<()>>()?;
            // 3. attention through each branch's method, all (branch, KV head) pairs
            //    in parallel (dense branches share one pass over the prompt); every
            //    method writes its heads' outputs whole
            crate::attend::attend_layer(
                &mut handoff_buffers,
                branches,
                &prompt.kv[l],
                l,
                &qkv,
                qkv_dim,
                (nh, nkv, d),
                &mut attn,
            );
            layer.o.forward_rows_into(&attn, m, &mut o);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            // 4. MLP block
            hn.copy_from_slice(&x);
            kernels::rms_norm(&mut hn, &layer.post_attention_norm, c.rms_norm_eps as f32);
            layer.gate_up.forward_rows_into(&hn, m, &mut gu);
            let rows: Vec<_> = act.chunks_mut(i_dim).zip(gu.chunks(2 * i_dim)).collect();
            crate::spread::run_each(rows, |(dst, row)| {
                dst.copy_from_slice(&row[..i_dim]);
                sparq_attention::silu_mul(dst, &row[i_dim..]);
            });
            layer.down.forward_rows_into(&act, m, &mut down);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        for br in branches.iter_mut() {
            br.steps += 1;
        }
        // 5. final norm and output head
        kernels::rms_norm(&mut x, &self.norm, c.rms_norm_eps as f32);
        debug_assert_eq!(x.len(), m * h);
        Ok(x)
    }
}

/// Rounds layer `layer`'s keys and values to f16 for a 16-bit cache (a prefill's in
/// parallel), or says which is beyond its range.
fn round_kv_to_half(keys: &mut [f32], values: &mut [f32], layer: usize) -> Result<()> {
    for (what, xs) in [("key", keys), ("value", values)] {
        xs.par_chunks_mut(1 << 14)
            .try_for_each(sparq_attention::round_to_half)
            .map_err(|x| {
                RunnerError::Invalid(format!(
                    "--dtype {} keeps keys and values as 16-bit floats, but layer {layer} has a \
                 {what} component of {x}, beyond their range (at most 65504 in magnitude); \
                 use --dtype f32",
                    WeightDtype::Q4
                ))
            })?;
    }
    Ok(())
}

/// `out` = the RMS norm of every `weight.len()`-long row of `x`, rows in parallel.
fn rms_norm_rows(x: &[f32], out: &mut [f32], weight: &[f32], eps: f32) {
    out.par_chunks_mut(weight.len() * 16)
        .zip(x.par_chunks(weight.len() * 16))
        .for_each(|(o, x)| kernels::rms_norm_to(x, o, weight, eps));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefill's matrix product against a plain loop: output features split
    /// unevenly between the threads, input rows at a stride wider than the input, and
    /// the product written or added to what the output held.
    #[test]
    fn forward_many_matches_a_plain_loop() {
        let (m, n, k, lda) = (5, 37, 19, 23);
        let mut seed = 9u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / 8_388_608.0 - 1.0
        };
        let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..m * lda).map(|_| rnd()).collect();
        let before: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
        let lin = Linear::new(
            Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap(),
            WeightDtype::F32,
            None,
        )
        .unwrap();
        for accumulate in [false, true] {
            let mut out = before.clone();
            lin.forward_many(&x, (m, lda), &mut out, accumulate);
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|c| f64::from(x[i * lda + c]) * f64::from(w[j * k + c]))
                        .sum();
                    let want = dot
                        + if accumulate {
                            f64::from(before[i * n + j])
                        } else {
                            0.0
                        };
                    let got = f64::from(out[i * n + j]);
                    assert!(
                        (got - want).abs() < 1e-5,
                        "accumulate {accumulate}, ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Keys or values beyond f16's range are refused under `q4`, naming the dtype, the
    /// layer and which of the two.
    #[test]
    fn a_key_or_value_beyond_f16_is_a_clear_error() {
        let mut keys = vec![0.5f32; 64];
        let mut values = vec![0.5f32; 64];
        round_kv_to_half(&mut keys, &mut values, 3).unwrap();
        values[10] = 1.0e5;
        let err = round_kv_to_half(&mut keys, &mut values, 7)
            .unwrap_err()
            .to_string();
        for part in [
            "--dtype q4",
            "layer 7",
            "value component of 100000",
            "65504",
        ] {
            assert!(err.contains(part), "{err}");
        }
        keys[0] = -7.0e4;
        let err = round_kv_to_half(&mut keys, &mut values, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("key component of -70000"), "{err}");
    }
}
