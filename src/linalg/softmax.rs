//! Softmax over rows of attention scores, in place: the scale folded in,
//! keys dropped by a mask, a fully masked row all zeros. The AVX-512 kernel
//! where the CPU has it, else the portable rows compiled for AVX2.

/// Softmax of one score row in place over the kept keys; masked keys and a
/// fully masked row become 0.
#[inline(always)]
pub fn masked_softmax(row: &mut [f32], scale: f32, keep: Option<&[f32]>) {
    // Branch-free loops over 8 independent lanes (they vectorize; a plain
    // `fold` with `max` or `+` is sequential): `keep[j]` is 1 or 0.
    for x in row.iter_mut() {
        *x *= scale;
    }
    let mut lanes = [f32::NEG_INFINITY; 8];
    match keep {
        Some(keep) => {
            for (c, kc) in row.chunks(8).zip(keep.chunks(8)) {
                for ((m, &s), &k) in lanes.iter_mut().zip(c).zip(kc) {
                    *m = if k != 0.0 && s > *m { s } else { *m };
                }
            }
        }
        None => {
            for c in row.chunks(8) {
                for (m, &s) in lanes.iter_mut().zip(c) {
                    *m = if s > *m { s } else { *m };
                }
            }
        }
    }
    let max = lanes.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    match keep {
        Some(keep) => {
            for (s, &k) in row.iter_mut().zip(keep) {
                *s = super::exp_fast(*s - max) * k;
            }
        }
        None => {
            for s in row.iter_mut() {
                *s = super::exp_fast(*s - max);
            }
        }
    }
    let mut sums = [0.0f32; 8];
    for c in row.chunks(8) {
        for (t, &s) in sums.iter_mut().zip(c) {
            *t += s;
        }
    }
    let inv = 1.0 / sums.iter().sum::<f32>();
    for s in row.iter_mut() {
        *s *= inv;
    }
}

/// The explicit AVX-512 softmax.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::linalg::vecops::lanes16;

    /// `e^x` on 16 lanes for `x <= 0` (up to rounding; softmax exponents):
    /// `t = x·log2(e) = n + f` with `n` the nearest integer, `2^f` by its
    /// degree-6 Taylor polynomial on `|f| <= 1/2` (relative error under
    /// 1.2e-7, plus about `|x|·6e-8` from rounding `t`), `2^n` applied with
    /// `scalef`. `t` is clamped at -127, so
    /// `e^-inf` is about 5.9e-39 (callers that need exact zeros mask).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn exp16(x: __m512) -> __m512 {
        const C: [f32; 6] = [
            1.540_353e-4,
            1.333_355_8e-3,
            9.618_129e-3,
            5.550_411e-2,
            2.402_265e-1,
            std::f32::consts::LN_2,
        ];
        let t = _mm512_max_ps(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
            _mm512_set1_ps(-127.0),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        let f = _mm512_sub_ps(t, n);
        let mut p = _mm512_set1_ps(C[0]);
        for c in &C[1..] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(*c));
        }
        _mm512_scalef_ps(_mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0)), n)
    }

    /// [`super::masked_softmax`] on every row of `s` (rows of `n`): keys are
    /// taken 16 at a time under a lane mask (the kept keys, and the row's
    /// tail), the scale folded into the exponent.
    ///
    /// # Safety
    /// AVX-512 F must be present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax_rows(s: &mut [f32], n: usize, scale: f32, keep: Option<&[f32]>) {
        if n == 0 {
            return;
        }
        let chunks = n.div_ceil(16);
        // Per 16 keys: the lanes in the row, and those kept.
        let (mut valid, mut kept) = (Vec::with_capacity(chunks), Vec::with_capacity(chunks));
        for c in 0..chunks {
            let v = lanes16(n - 16 * c);
            valid.push(v);
            kept.push(match keep {
                // SAFETY: the masked lanes are within the row of `n` keys.
                Some(k) if k.len() >= n => unsafe {
                    let m = _mm512_maskz_loadu_ps(v, k.as_ptr().add(16 * c));
                    _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(v, m, _mm512_setzero_ps())
                },
                _ => v,
            });
        }
        let vscale = _mm512_set1_ps(scale);
        for row in s.chunks_exact_mut(n) {
            let p = row.as_mut_ptr();
            let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
            for (c, &k) in kept.iter().enumerate() {
                // SAFETY: the masked lanes are within the row.
                let x = unsafe { _mm512_maskz_loadu_ps(k, p.add(16 * c)) };
                mx = _mm512_mask_max_ps(mx, k, mx, _mm512_mul_ps(x, vscale));
            }
            let max = _mm512_reduce_max_ps(mx);
            if max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            let vmax = _mm512_set1_ps(max);
            let mut sum = _mm512_setzero_ps();
            for (c, (&v, &k)) in valid.iter().zip(&kept).enumerate() {
                // SAFETY: the masked lanes are within the row.
                unsafe {
                    let x = _mm512_maskz_loadu_ps(k, p.add(16 * c));
                    let e = _mm512_maskz_mov_ps(k, exp16(_mm512_fmsub_ps(x, vscale, vmax)));
                    sum = _mm512_add_ps(sum, e);
                    _mm512_mask_storeu_ps(p.add(16 * c), v, e);
                }
            }
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
            for (c, &v) in valid.iter().enumerate() {
                // SAFETY: the masked lanes are within the row.
                unsafe {
                    let e = _mm512_maskz_loadu_ps(v, p.add(16 * c));
                    _mm512_mask_storeu_ps(p.add(16 * c), v, _mm512_mul_ps(e, inv));
                }
            }
        }
    }
}

/// [`masked_softmax`] on every row of `s` (rows of `n`): the AVX-512 kernel
/// where the CPU has it, else compiled for AVX2 where the CPU has that.
pub fn softmax_rows(s: &mut [f32], n: usize, scale: f32, keep: Option<&[f32]>) {
    #[inline(always)]
    fn rows(s: &mut [f32], n: usize, scale: f32, keep: Option<&[f32]>) {
        for row in s.chunks_mut(n.max(1)) {
            masked_softmax(row, scale, keep);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if super::vecops::has_avx512f() {
            // SAFETY: AVX-512 F is present.
            return unsafe { avx512::softmax_rows(s, n, scale, keep) };
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(s: &mut [f32], n: usize, scale: f32, keep: Option<&[f32]>) {
            rows(s, n, scale, keep)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `avx2` was compiled for.
            return unsafe { avx2(s, n, scale, keep) };
        }
    }
    rows(s, n, scale, keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::CaseRng;

    #[test]
    fn softmax_kernel_matches_the_portable_rows() {
        // Row lengths around the 16-lane steps (tails), random and
        // all-dropped masks, a negative scale, large scores.
        let mut rng = CaseRng::new(7);
        for n in [1usize, 2, 15, 16, 17, 31, 33, 128, 129] {
            for (mi, scale) in [(0, 0.17f32), (1, 1.0), (2, -0.5), (3, 30.0)] {
                let rows = 5;
                let s0 = rng.tensor(&[rows, n], -8.0, 8.0).as_f32().unwrap().to_vec();
                let keep: Option<Vec<f32>> = match mi {
                    0 => None,
                    1 => Some((0..n).map(|j| if (j * 7 + n) % 3 == 0 { 0.0 } else { 2.5 }).collect()),
                    2 => Some(vec![0.0; n]),
                    _ => Some((0..n).map(|j| f32::from(j + 1 == n)).collect()),
                };
                let mut got = s0.clone();
                softmax_rows(&mut got, n, scale, keep.as_deref());
                let mut want = s0.clone();
                let keep01: Option<Vec<f32>> = keep.as_ref().map(|k| k.iter().map(|&v| f32::from(v != 0.0)).collect());
                for row in want.chunks_mut(n) {
                    masked_softmax(row, scale, keep01.as_deref());
                }
                for (j, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    let dropped = keep01.as_ref().is_some_and(|k| k[j % n] == 0.0);
                    if dropped {
                        assert_eq!(g, 0.0, "n {n} mask {mi}: dropped key {j} got {g}");
                    } else {
                        assert!(
                            (g - e).abs() <= 1e-6 + 1e-5 * e,
                            "n {n} mask {mi} scale {scale}: {g} vs {e}"
                        );
                    }
                }
                if mi == 2 {
                    assert!(got.iter().all(|&g| g == 0.0));
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp16_is_close_relative_to_the_exponent() {
        use std::arch::x86_64::*;
        if !super::super::vecops::has_avx512f() {
            return;
        }
        let mut x = -87.0f32;
        while x <= 1e-6 {
            let xs: [f32; 16] = std::array::from_fn(|i| x - i as f32 * 0.0071);
            let mut got = [0.0f32; 16];
            // SAFETY: AVX-512 F is present; both arrays hold 16 floats.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), avx512::exp16(_mm512_loadu_ps(xs.as_ptr()))) };
            for (&v, &g) in xs.iter().zip(&got) {
                let want = (v as f64).exp();
                // Rounding x·log2(e) costs about |x|·6e-8 relative.
                let tol = 2e-7 + 1e-7 * v.abs() as f64;
                assert!(((g as f64 - want) / want).abs() < tol, "exp({v}) = {g}, want {want}");
            }
            x += 0.0913;
        }
    }
}
