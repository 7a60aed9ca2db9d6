//! Rotary position embedding in the "rotate half" layout of Hugging Face checkpoints
//! (GGUF query/key weights are un-permuted into this layout at load).

use crate::config::{LlamaConfig, RopeScaling};

/// Cosine and sine tables, `positions x head_dim/2`, computed the way transformers
/// computes them (f32 inverse frequencies times f32 positions).
#[derive(Clone, Debug)]
pub struct Rope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// `freq_divisors` are GGUF's optional `rope_freqs` factors (Llama 3.1 files store
    /// their frequency scaling that way instead of in metadata).
    pub fn new(config: &LlamaConfig, freq_divisors: Option<&[f32]>) -> Self {
        let d = config.head_dim;
        let half = d / 2;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (config.rope_theta as f32).powf((2 * i) as f32 / d as f32))
            .collect();
        match &config.rope_scaling {
            None | Some(RopeScaling::Default) => {}
            Some(RopeScaling::Linear { factor }) => {
                inv_freq.iter_mut().for_each(|f| *f /= *factor as f32)
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f32;
                let (factor, low, high) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                );
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        if let Some(div) = freq_divisors {
            for (f, d) in inv_freq.iter_mut().zip(div) {
                *f /= d;
            }
        }
        let n = config.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for &f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Self { half, cos, sin }
    }

    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Tables for positions `0..n` (row-major `n x head_dim/2`).
    pub fn tables(&self, n: usize) -> (&[f32], &[f32]) {
        (&self.cos[..n * self.half], &self.sin[..n * self.half])
    }

    /// Rotates every `head_dim`-long head of `x` in place for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let cos = &self.cos[pos * h..(pos + 1) * h];
        let sin = &self.sin[pos * h..(pos + 1) * h];
        for head in x.chunks_mut(2 * h) {
            let (a, b) = head.split_at_mut(h);
            for i in 0..h {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}
