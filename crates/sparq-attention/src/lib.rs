//! Decode-step attention for one KV head group: the KV cache layout, the attention
//! methods under test (dense, SparQ and its baselines), their settings, and the
//! data-transfer accounting of SPEC section 4. Plain `f32` slices; no model, no I/O.

pub mod cache;
pub mod method;

pub use cache::{HeadKv, KvView};
pub use method::{AttentionMethod, HeadState, ModelShape};
