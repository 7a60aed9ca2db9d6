//! Sixteen keys' or values' components into one AVX-512 register, from the cache's
//! f32 buffers or from its 16-bit copy ([`crate::cache::HalfKv`]): the dense kernels
//! are written once for both. Widening an f16 is exact, so a kernel gives the same
//! bits from a copy as from the floats it copies.

use half::f16;

/// An element of a cache buffer the dense kernels read.
pub(crate) trait Lanes: Copy {
    /// The element as an f32 (exact).
    fn to_f32(self) -> f32;

    /// Elements `0..16` from `p`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and `p` must point to 16 readable elements.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;

    /// Elements `0..8` from `p`, for CPUs without AVX-512.
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C, and `p` must point to 8 readable elements.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// The elements of `p` whose bits are set in `mask`, the other lanes zero.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and VL, and the lanes of `mask` must be readable
    /// (the others are not read).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16_masked(mask: u16, p: *const Self) -> std::arch::x86_64::__m512;
}

impl Lanes for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_masked(mask: u16, p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(mask, p) }
    }
}

impl Lanes for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; 16 halves are 256 bits.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; 8 halves are 128 bits.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_masked(mask: u16, p: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (masked-off halves are neither read nor fault).
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.cast())) }
    }
}

/// Whether the kernels may read the 16-bit copies: the masked loads of halves need
/// AVX-512BW and VL besides F. Without them the kernels read the f32 buffers, which
/// give the same results.
#[inline]
pub(crate) fn half_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::kernels::simd_enabled()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}
