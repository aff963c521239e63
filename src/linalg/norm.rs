//! LayerNorm rows in f32: `y = (x - mean) · inv · scale + bias` over each
//! row, with the AVX-512 kernel where the CPU has it and a portable row
//! kernel (8 partial sums, vectorizes) elsewhere.

/// `Σ (x - c)²` with 8 independent partial sums (vectorizes; the order
/// differs from a plain loop), or `Σ x` when `square` is false.
#[inline(always)]
fn sum8(x: &[f32], c: f32, square: bool) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    let term = |v: f32| if square { (v - c) * (v - c) } else { v };
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += term(v);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&v| term(v)).sum::<f32>()
}

/// Elements per parallel task of [`layer_norm_avx512`] (and a quarter of the least worth splitting).
const LN_CHUNK: usize = 1 << 15;

/// LayerNorm of every `inner`-element row of `x` with the AVX-512 kernel (the
/// arithmetic of [`layer_norm_row`]); `None` without AVX-512 F.
pub fn layer_norm_avx512(x: &[f32], inner: usize, scale: &[f32], bias: Option<&[f32]>, eps: f32) -> Option<Vec<f32>> {
    if !super::vecops::has_avx512f() || inner == 0 || scale.len() != inner || bias.is_some_and(|b| b.len() != inner) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let chunk = LN_CHUNK.div_ceil(inner) * inner;
        let par = super::vecops::parallel(x.len(), 4 * LN_CHUNK);
        // SAFETY: AVX-512 F is present; `start` and `out.len()` are whole
        // rows of `x` (its length is rows·inner), `scale` and a non-null
        // `bias` hold `inner` values; each call writes all of `out`.
        Some(unsafe {
            super::vecops::build(x.len(), chunk, par, |start, out| {
                avx512::ln_rows(
                    x.as_ptr().add(start),
                    out.as_mut_ptr().cast(),
                    out.len() / inner,
                    inner,
                    scale.as_ptr(),
                    bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                    eps,
                )
            })
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, eps);
        None
    }
}

/// The explicit AVX-512 LayerNorm.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::linalg::vecops::lanes16;

    /// LayerNorm of `rows` rows of `n`: `y = (x - mean) · inv · scale + bias`.
    ///
    /// # Safety
    /// `x` readable and `y` writable for `rows·n` floats, `scale` (and
    /// `bias` unless null) readable for `n`; AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn ln_rows(
        x: *const f32,
        y: *mut f32,
        rows: usize,
        n: usize,
        scale: *const f32,
        bias: *const f32,
        eps: f32,
    ) {
        for r in 0..rows {
            // SAFETY: (the whole body) every access is within row r of x or
            // y, or within the n values of scale and bias, under a lane mask
            // at the tail.
            unsafe {
                let (xr, yr) = (x.add(r * n), y.add(r * n));
                let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                let mut j = 0;
                while j + 32 <= n {
                    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(xr.add(j)));
                    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(xr.add(j + 16)));
                    j += 32;
                }
                while j < n {
                    s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(lanes16(n - j), xr.add(j)));
                    j += 16;
                }
                let mean = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / n as f32;
                let vmean = _mm512_set1_ps(mean);
                let (mut q0, mut q1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                let mut j = 0;
                while j + 32 <= n {
                    let d0 = _mm512_sub_ps(_mm512_loadu_ps(xr.add(j)), vmean);
                    let d1 = _mm512_sub_ps(_mm512_loadu_ps(xr.add(j + 16)), vmean);
                    q0 = _mm512_fmadd_ps(d0, d0, q0);
                    q1 = _mm512_fmadd_ps(d1, d1, q1);
                    j += 32;
                }
                while j < n {
                    let m = lanes16(n - j);
                    let d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, xr.add(j)), vmean);
                    q0 = _mm512_fmadd_ps(d, d, q0);
                    j += 16;
                }
                let var = _mm512_reduce_add_ps(_mm512_add_ps(q0, q1)) / n as f32;
                let inv = _mm512_set1_ps(1.0 / (var + eps).sqrt());
                let mut j = 0;
                while j < n {
                    let m = lanes16(n - j);
                    let t = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr.add(j)), vmean), inv);
                    let a = _mm512_maskz_loadu_ps(m, scale.add(j));
                    let o = if bias.is_null() {
                        _mm512_mul_ps(t, a)
                    } else {
                        _mm512_fmadd_ps(t, a, _mm512_maskz_loadu_ps(m, bias.add(j)))
                    };
                    _mm512_mask_storeu_ps(yr.add(j), m, o);
                    j += 16;
                }
            }
        }
    }
}

/// One LayerNorm row in f32: `y = (x - mean) · inv · scale + bias` (the
/// portable kernel; rows in parallel through [`super::for_each_row_pair`]).
#[inline(always)]
pub fn layer_norm_row(y: &mut [f32], x: &[f32], scale: &[f32], bias: Option<&[f32]>, eps: f32) {
    let n = x.len();
    let mean = sum8(x, 0.0, false) / n as f32;
    let var = sum8(x, mean, true) / n as f32;
    let inv = 1.0 / (var + eps).sqrt();
    match bias {
        Some(b) => {
            for (((o, &v), &a), &b) in y.iter_mut().zip(x).zip(scale).zip(b) {
                *o = (v - mean) * inv * a + b;
            }
        }
        None => {
            for ((o, &v), &a) in y.iter_mut().zip(x).zip(scale) {
                *o = (v - mean) * inv * a;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::CaseRng;

    #[test]
    fn layernorm_kernel_matches_the_portable_rows() {
        // Row widths around the 16- and 32-lane steps (tails), with and
        // without bias, few rows and more than a parallel chunk of them,
        // a constant row (variance 0) and large offsets.
        let mut rng = CaseRng::new(29);
        for inner in [1usize, 7, 16, 17, 31, 32, 33, 384, 385] {
            for rows in [1usize, 3, (4 * LN_CHUNK) / inner + 5] {
                let mut x = rng.tensor(&[rows, inner], -3.0, 3.0).as_f32().unwrap().to_vec();
                x[..inner].fill(1.5);
                if rows > 1 {
                    for v in &mut x[inner..2 * inner] {
                        *v += 1000.0;
                    }
                }
                let scale = rng.tensor(&[inner], 0.5, 1.5).as_f32().unwrap().to_vec();
                let bias = rng.tensor(&[inner], -1.0, 1.0).as_f32().unwrap().to_vec();
                for b in [None, Some(&bias[..])] {
                    let mut want = vec![0.0f32; x.len()];
                    for (yr, xr) in want.chunks_mut(inner).zip(x.chunks(inner)) {
                        layer_norm_row(yr, xr, &scale, b, 1e-5);
                    }
                    let got = match layer_norm_avx512(&x, inner, &scale, b, 1e-5) {
                        Some(g) => g,
                        None => return, // no AVX-512 here: nothing to compare
                    };
                    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        // The row offset by 1000 loses digits in either summation order.
                        let tol = if i / inner == 1 { 2e-3 } else { 2e-5 };
                        assert!(
                            (g - w).abs() <= tol * (1.0 + w.abs()),
                            "inner {inner} rows {rows} bias {}: element {i}: {g} vs {w}",
                            b.is_some()
                        );
                    }
                }
            }
        }
    }
}
