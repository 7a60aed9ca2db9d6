//! Decode-step attention for one KV head group: the KV cache layout, the attention
//! methods under test (dense, SparQ and its baselines), their settings, and the
//! data-transfer accounting of SPEC section 4. Plain `f32` slices; no model, no I/O.
//!
//! Entry points: parse a [`MethodSpec`] (`"sparq:r=16,k=128"`), [`MethodSpec::validate`]
//! it against the model's [`ModelShape`] before any work, then [`MethodSpec::build`] an
//! [`AttentionMethod`] per example and call [`AttentionMethod::attend`] once per decode
//! step for every (branch, layer, KV head). [`transfer`] holds the cost formulas and
//! [`mod@bench`] the `sparq bench attention` measurement ([`phase_bench`] that of the
//! dense pass's steps); [`team`] runs the short parallel phases of a decode step (the
//! runner's and the bench's).

pub mod bench;
pub mod cache;
pub mod dense;
mod exact_topk;
pub mod flexgen;
pub mod h2o;
mod kernels;
mod lanes;
pub mod lminf;
pub mod method;
pub mod oracle;
pub mod phase_bench;
mod shared_dense;
pub mod sparq;
pub mod spec;
mod subset;
pub mod team;
mod tiled_logits;
mod topk;
pub mod transfer;

pub use bench::{bench_attention, BenchConfig, BenchError, BenchRow};
pub use cache::{round_to_half, HalfKv, HeadKv, KvView, LineAligned};
pub use dense::Dense;
pub use flexgen::FlexGen;
pub use h2o::H2o;
pub use kernels::{exp_shifted_in_place, silu_mul, softmax_in_place};
pub use kernels::{set_simd, simd_enabled};
pub use lminf::LmInfinite;
pub use method::{AttentionMethod, HeadState, ModelShape, Trace};
pub use oracle::Oracle;
pub use phase_bench::{bench_dense_phases, PhaseConfig, PhaseRow};
pub use sparq::{sparq_step, Rank, Sparq, SparqStep};
pub use spec::{registry, MethodConfig, MethodInfo, MethodSpec, Ratio, SparqBudget, SpecError};
pub use transfer::Budget;
