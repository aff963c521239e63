//! Unary elementwise math on the CPU: `erf` as a rational function that
//! vectorizes, and the exact GELU over a whole slice (16-lane AVX-512 where
//! the CPU has it). `ops::unary` calls these.

use super::vecops;

/// `erf` in f32 as a branch-free rational function of `x²` on `[-4, 4]`
/// (Eigen's `generic_fast_erf_float` coefficients): within 4.2e-7 of the
/// exact value, and it vectorizes, unlike `libm::erff` (which was 15% of a
/// BERT run on the CPU in the exact GELU). From |x| = 4 on it is exactly ±1,
/// as erf is in f32 (1 − erf(4) = 1.5e-8 is under half an ulp of 1), so that
/// `1 + erf(x)` is 0 in the far negative tail.
#[inline]
pub fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_2e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    // The rational function is 1 − 6e-8 at 4: that residue times a large
    // |x| made GELU(−1e30) −3e22 instead of −0.
    if x.abs() >= 4.0 {
        x * 0.25
    } else {
        x * p / q
    }
}

/// The exact GELU `x/2 · (1 + erf(x/√2))` of one value, erf as [`erf_fast`].
#[inline]
pub fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Elements per parallel task of [`gelu`] (and the least worth splitting).
const GELU_CHUNK: usize = 1 << 14;

/// The exact GELU of every element: the 16-lane AVX-512 kernel where the CPU
/// has it, else [`gelu_scalar`] in a loop that vectorizes. In parallel
/// chunks for large inputs when rayon has threads.
pub fn gelu(x: &[f32]) -> Vec<f32> {
    let par = vecops::parallel(x.len(), 4 * GELU_CHUNK);
    #[cfg(target_arch = "x86_64")]
    if vecops::has_avx512f() {
        // SAFETY: AVX-512 F is present; each call reads `out.len()` elements
        // of `x` from `start` (the chunks tile `0..x.len()`) and writes all of `out`.
        return unsafe {
            vecops::build(x.len(), GELU_CHUNK, par, |start, out| {
                avx512::gelu(x.as_ptr().add(start), out.as_mut_ptr().cast(), out.len())
            })
        };
    }
    // SAFETY: every element of each chunk is written.
    unsafe {
        vecops::build(x.len(), GELU_CHUNK, par, |start, out| {
            super::simd(|| {
                for (o, &v) in out.iter_mut().zip(&x[start..]) {
                    o.write(gelu_scalar(v));
                }
            })
        })
    }
}
/// Explicit AVX-512 forms of the activations.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::erf_fast`]'s numerator (`P`) and denominator (`Q`)
    /// coefficients, highest power of `x²` first.
    const P: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_2e-3,
        -1.609_603_3e-2,
    ];
    const Q: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];

    /// GELU of 16 lanes: `x/2 · (1 + erf(x/√2))`, erf as in [`super::erf_fast`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn gelu16(x: __m512) -> __m512 {
        let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let z = _mm512_min_ps(_mm512_max_ps(z, _mm512_set1_ps(-4.0)), _mm512_set1_ps(4.0));
        let z2 = _mm512_mul_ps(z, z);
        let mut p = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(c));
        }
        let mut q = _mm512_set1_ps(Q[0]);
        for &c in &Q[1..] {
            q = _mm512_fmadd_ps(q, z2, _mm512_set1_ps(c));
        }
        // 1/q: the 14-bit estimate and one Newton step (within 2 ulp; a
        // division would be the kernel's bottleneck).
        let r = _mm512_rcp14_ps(q);
        let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0)));
        let erf = _mm512_mul_ps(_mm512_mul_ps(z, p), r);
        // ±1 where the clamp took hold (z = ±4 there), as in `erf_fast`.
        let tail = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(z), _mm512_set1_ps(4.0));
        let erf = _mm512_mask_mul_ps(erf, tail, z, _mm512_set1_ps(0.25));
        let half = _mm512_mul_ps(x, _mm512_set1_ps(0.5));
        _mm512_fmadd_ps(half, erf, half)
    }

    /// `y[i] = gelu(x[i])` for `i < n`.
    ///
    /// # Safety
    /// `x` must be readable and `y` writable for `n` floats; AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gelu(x: *const f32, y: *mut f32, n: usize) {
        let mut i = 0;
        // Four independent vectors per step: the polynomial chains overlap.
        while i + 64 <= n {
            // SAFETY: i + 64 <= n.
            unsafe {
                let a = gelu16(_mm512_loadu_ps(x.add(i)));
                let b = gelu16(_mm512_loadu_ps(x.add(i + 16)));
                let c = gelu16(_mm512_loadu_ps(x.add(i + 32)));
                let d = gelu16(_mm512_loadu_ps(x.add(i + 48)));
                _mm512_storeu_ps(y.add(i), a);
                _mm512_storeu_ps(y.add(i + 16), b);
                _mm512_storeu_ps(y.add(i + 32), c);
                _mm512_storeu_ps(y.add(i + 48), d);
            }
            i += 64;
        }
        while i < n {
            let m = super::super::vecops::lanes16(n - i);
            // SAFETY: the masked lanes are below n.
            unsafe { _mm512_mask_storeu_ps(y.add(i), m, gelu16(_mm512_maskz_loadu_ps(m, x.add(i)))) };
            i += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact GELU in f64.
    fn gelu_exact(x: f32) -> f32 {
        let x = x as f64;
        (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
    }

    #[test]
    fn gelu_kernel_matches_the_scalar_form_on_every_length() {
        // Lengths around the 16- and 64-lane steps and the parallel chunk
        // (tails), values across the clamp at |x/√2| = 4, and extremes.
        let mut state = 5u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32 * 18.0 - 9.0
        };
        for n in [
            0usize,
            1,
            15,
            16,
            17,
            63,
            64,
            65,
            100,
            1000,
            GELU_CHUNK + 33,
            4 * GELU_CHUNK + 7,
        ] {
            let mut x: Vec<f32> = (0..n).map(|_| next()).collect();
            for (i, v) in [-100.0f32, -5.7, -1e-3, 0.0, 1e-3, 5.7, 100.0, 1e30].iter().enumerate() {
                if i < n {
                    x[i] = *v;
                }
            }
            let got = gelu(&x);
            assert_eq!(got.len(), n);
            for (&v, &g) in x.iter().zip(&got) {
                let (want, exact) = (gelu_scalar(v), gelu_exact(v));
                assert!(
                    (g - want).abs() <= 5e-7 * (1.0 + v.abs()),
                    "gelu({v}) = {g}, scalar {want}"
                );
                assert!(
                    (g - exact).abs() <= 1e-6 * (1.0 + v.abs()),
                    "gelu({v}) = {g}, exact {exact}"
                );
            }
        }
        assert!(gelu(&[f32::NAN])[0].is_nan());
        // The far negative tail is 0 (the exact value is below 1e-300), −∞
        // gives NaN as the formula does in f64 (−∞ · 0), +∞ gives +∞.
        let tail = [-6.0f32, -1e4, -1e30, f32::MIN, f32::NEG_INFINITY, f32::INFINITY];
        for got in [gelu(&tail), tail.map(gelu_scalar).to_vec()] {
            for (&x, &g) in tail.iter().zip(&got) {
                let want = gelu_exact(x);
                let ok = (g.is_nan() && want.is_nan()) || g == want || (g - want).abs() <= 1e-7;
                assert!(ok, "gelu({x}) = {g}, exact {want}");
            }
        }
    }
}
