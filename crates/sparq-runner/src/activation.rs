//! The prefill's gated activation, `gate <- silu(gate) * up`, and the 16-lane `exp` it
//! shares with the fused attention.
//!
//! The attention crate's `silu_mul` computes `exp` with the operations its portable
//! build can repeat bit for bit (no fused multiply-add, a 2^n built from bits, a
//! division). The prefill does not need that agreement, and on AVX-512 this version
//! takes about two thirds of the operations and no division.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `gate_i <- silu(gate_i) * up_i = gate_i / (1 + e^-gate_i) * up_i` for the first
/// `gate.len()` entries of `up`.
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert!(up.len() >= gate.len());
    #[cfg(target_arch = "x86_64")]
    if sparq_attention::simd_enabled() && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was just detected; the lengths were checked above.
        unsafe { silu_mul_avx512(gate, up) };
        return;
    }
    sparq_attention::silu_mul(gate, up);
}

/// [`silu_mul`] 16 lanes at a time; the tail goes through the portable version.
///
/// # Safety
/// AVX-512F; `up` at least as long as `gate`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(gate: &mut [f32], up: &[f32]) {
    let blocks = gate.len() / 16;
    for b in 0..blocks {
        let g = _mm512_loadu_ps(gate.as_ptr().add(16 * b));
        let u = _mm512_loadu_ps(up.as_ptr().add(16 * b));
        // e^-g at most e^88, so that 1 + e^-g stays finite and its reciprocal's Newton
        // step never meets infinity times zero; silu is 0 in f32 long before.
        let e = exp512(_mm512_min_ps(
            _mm512_sub_ps(_mm512_setzero_ps(), g),
            _mm512_set1_ps(88.0),
        ));
        let d = _mm512_add_ps(e, _mm512_set1_ps(1.0));
        // 1 / d: the 14-bit estimate and one Newton step (about 1 ulp).
        let r = _mm512_rcp14_ps(d);
        let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)));
        let y = _mm512_mul_ps(_mm512_mul_ps(g, r), u);
        _mm512_storeu_ps(gate.as_mut_ptr().add(16 * b), y);
    }
    let done = 16 * blocks;
    sparq_attention::silu_mul(&mut gate[done..], &up[done..]);
}

/// `e^x` on 16 lanes: `x = n ln 2 + t` with `|t| <= ln 2 / 2` (Cody-Waite: `ln 2` in
/// two parts, exact for |n| < 2^12), a degree-6 Taylor polynomial for `e^t` (relative
/// error below 1.3e-7, about one unit in the last place), and `2^n` applied by
/// `vscalefps`, which gives 0 for `x` below about -104 and infinity above 88.7 without
/// clamping.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn exp512(x: __m512) -> __m512 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest.
    let n = _mm512_roundscale_ps::<0>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    let t = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let t = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), t);
    let mut poly = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(poly, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64, over the range a model's activations take and well past it (where
    /// silu saturates to 0 and to x), with a tail shorter than a vector.
    #[test]
    fn silu_mul_matches_f64() {
        let xs: Vec<f32> = (0..4003).map(|i| (i as f32 - 2001.0) * 0.07).collect();
        let mut gate: Vec<f32> = xs.clone();
        gate.extend([-1e4, -200.0, -89.0, 89.0, 200.0, 1e4, 0.0, -0.0]);
        let up: Vec<f32> = (0..gate.len())
            .map(|i| 0.5 + (i % 7) as f32 * 0.25)
            .collect();
        let mut got = gate.clone();
        silu_mul(&mut got, &up);
        for ((&g, &u), &y) in gate.iter().zip(&up).zip(&got) {
            let (g64, u64_) = (f64::from(g), f64::from(u));
            let want = g64 / (1.0 + (-g64).exp()) * u64_;
            assert!(y.is_finite(), "silu({g}) * {u} = {y}");
            assert!(
                (f64::from(y) - want).abs() <= 4e-7 * want.abs() + 1e-30,
                "silu({g}) * {u}: {y} vs {want}"
            );
        }
    }

    /// `exp512` against f64 over the range the softmaxes use.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp512_is_within_two_ulp() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        for i in 0..20_000 {
            let x = -87.0 + i as f32 * (87.0 + 88.0) / 20_000.0;
            // SAFETY: AVX-512F was just detected.
            let got = unsafe { _mm512_cvtss_f32(exp512(_mm512_set1_ps(x))) };
            let want = f64::from(x).exp();
            assert!(
                (f64::from(got) - want).abs() <= 2.4e-7 * want,
                "exp({x}) = {got}, want {want}"
            );
        }
    }
}
