//! Elementwise binary f32 arithmetic (`+`, `·`, `-`, `/`) with AVX-512:
//! `a ∘ b` with `b` as long as `a` or repeated along its leading axes (a
//! bias row, a scalar), in parallel chunks of whole rows.

/// The operator code of `+` in [`zip_avx512`].
pub const ADD: u8 = 0;
/// The operator code of `·` in [`zip_avx512`].
pub const MUL: u8 = 1;
/// The operator code of `-` in [`zip_avx512`].
pub const SUB: u8 = 2;
/// The operator code of `/` in [`zip_avx512`].
pub const DIV: u8 = 3;

/// Elements per parallel task of [`zip_avx512`] (and a quarter of the least worth splitting).
const SIMD_CHUNK: usize = 1 << 16;

/// `a ∘ b` with the AVX-512 kernel, `∘` by `K` ([`ADD`], [`MUL`], [`SUB`],
/// [`DIV`]), `b` as long as `a` or repeated along its leading axes
/// (`a.len()` a multiple of `b.len()`); `None` without AVX-512 F or for
/// other lengths. Results are those of the scalar operators.
pub fn zip_avx512<const K: u8>(a: &[f32], b: &[f32]) -> Option<Vec<f32>> {
    if !super::vecops::has_avx512f() || b.is_empty() || !a.len().is_multiple_of(b.len()) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let row = b.len();
        // Chunks of whole rows of `b`.
        let chunk = SIMD_CHUNK.div_ceil(row) * row;
        let par = super::vecops::parallel(a.len(), 4 * SIMD_CHUNK);
        let f = avx512::binary::<K>;
        // SAFETY: AVX-512 F is present; each call reads `out.len()` elements
        // of `a` from `start` and its `b` rows (`start` and `out.len()` are
        // multiples of `row`, or `out` ends a), and writes all of `out`.
        Some(unsafe {
            super::vecops::build(a.len(), chunk, par, |start, out| {
                let o: *mut f32 = out.as_mut_ptr().cast();
                for r in 0..out.len() / row {
                    f(a.as_ptr().add(start + r * row), b.as_ptr(), o.add(r * row), row);
                }
            })
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The explicit AVX-512 elementwise arithmetic.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::linalg::vecops::lanes16;

    /// `y[i] = a[i] ∘ b[i]` for `i < n`, `∘` by `K`: 0 `+`, 1 `·`, 2 `-`, 3 `/`.
    ///
    /// # Safety
    /// `a` and `b` must be readable and `y` writable for `n` floats; AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn binary<const K: u8>(a: *const f32, b: *const f32, y: *mut f32, n: usize) {
        let op = |x: __m512, z: __m512| match K {
            0 => _mm512_add_ps(x, z),
            1 => _mm512_mul_ps(x, z),
            2 => _mm512_sub_ps(x, z),
            _ => _mm512_div_ps(x, z),
        };
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n.
            unsafe { _mm512_storeu_ps(y.add(i), op(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)))) };
            i += 16;
        }
        if i < n {
            let m = lanes16(n - i);
            // SAFETY: the masked lanes are below n. The dropped lanes of `b`
            // load as 0; 0/0 there is never stored.
            unsafe {
                let r = op(_mm512_maskz_loadu_ps(m, a.add(i)), _mm512_maskz_loadu_ps(m, b.add(i)));
                _mm512_mask_storeu_ps(y.add(i), m, r);
            }
        }
    }
}
