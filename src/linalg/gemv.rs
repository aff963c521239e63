//! A matrix-vector product for one-row Linear layers: `y = W · x (+ bias)`,
//! then ReLU when asked, with `W [n, k]` read in place (PyTorch's
//! `[out, in]`: each output a dot product over a contiguous row).
//!
//! The AVX2 + FMA kernel takes four rows at a time: eight accumulators (two
//! 8-wide per row) share each pair of `x` loads, enough independent FMA
//! chains to keep both FMA pipes busy; the rows' sums are reduced at the
//! end. Remaining rows and inputs run in scalar code with the same sums.
//! Output ranges go to the spinning workers of [`super::pool`] for layers
//! of at least [`PARALLEL_MIN`] multiply-adds.

/// Below this many multiply-adds (a 256×256 layer; about 3 µs on one core)
/// a product runs on one thread.
pub const PARALLEL_MIN: usize = 1 << 16;
/// Tasks per thread: small shares, so that a thread that starts late (a
/// loaded machine) leaves its work to the others instead of holding them up.
const TASKS_PER_THREAD: usize = 4;

/// `y[j] = Σ_p w[j·k + p] · x[p] + bias[j]` for `j < y.len()`, `k =
/// x.len()`, then `max(0, ·)` (as the `Relu` op computes it) when `relu`.
///
/// # Panics
/// If `w` holds fewer than `y.len()` rows of `k`, or `bias` fewer than
/// `y.len()` values.
pub fn gemv(x: &[f32], w: &[f32], bias: Option<&[f32]>, relu: bool, y: &mut [f32]) {
    let (n, k) = (y.len(), x.len());
    assert!(w.len() >= n * k && bias.is_none_or(|b| b.len() >= n), "gemv sizes");
    let threads = super::pool::threads();
    if n * k >= PARALLEL_MIN && threads > 1 && n >= 16 {
        // Whole groups of four rows per task, at least eight rows.
        let per = n.div_ceil(threads * TASKS_PER_THREAD).div_ceil(4).max(2) * 4;
        super::pool::for_each_mut(y, per, 1, |t, ys| {
            range(x, &w[t * per * k..], bias.map(|b| &b[t * per..]), relu, ys);
        });
    } else {
        range(x, w, bias, relu, y);
    }
}

/// [`gemv`] of rows `0..y.len()` of `w` on this thread.
fn range(x: &[f32], w: &[f32], bias: Option<&[f32]>, relu: bool, y: &mut [f32]) {
    let k = x.len();
    let mut j = 0;
    #[cfg(target_arch = "x86_64")]
    if super::conv::has_avx2_fma() {
        while j + 4 <= y.len() {
            // SAFETY: the CPU has AVX2 and FMA; rows j..j+4 of k lie in `w`.
            let s = unsafe { avx2::dot4(x, &w[j * k..(j + 4) * k]) };
            y[j..j + 4].copy_from_slice(&s);
            j += 4;
        }
    }
    for (jj, v) in y.iter_mut().enumerate().skip(j) {
        *v = x.iter().zip(&w[jj * k..][..k]).map(|(a, b)| a * b).sum();
    }
    for (jj, v) in y.iter_mut().enumerate() {
        if let Some(b) = bias {
            *v += b[jj];
        }
        if relu && *v < 0.0 {
            *v = 0.0;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Sum of the eight lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// The dot products of `x` with the four rows of `w` (`4 × x.len()`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4(x: &[f32], w: &[f32]) -> [f32; 4] {
        let k = x.len();
        debug_assert!(w.len() >= 4 * k);
        let xp = x.as_ptr();
        let rows = [
            w.as_ptr(),
            w.as_ptr().add(k),
            w.as_ptr().add(2 * k),
            w.as_ptr().add(3 * k),
        ];
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut p = 0;
        while p + 16 <= k {
            let (x0, x1) = (_mm256_loadu_ps(xp.add(p)), _mm256_loadu_ps(xp.add(p + 8)));
            for (a, r) in acc.iter_mut().zip(rows) {
                a[0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(r.add(p)), a[0]);
                a[1] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(r.add(p + 8)), a[1]);
            }
            p += 16;
        }
        if p + 8 <= k {
            let x0 = _mm256_loadu_ps(xp.add(p));
            for (a, r) in acc.iter_mut().zip(rows) {
                a[0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(r.add(p)), a[0]);
            }
            p += 8;
        }
        let mut out = [0.0f32; 4];
        for ((o, a), r) in out.iter_mut().zip(&acc).zip(rows) {
            let mut s = hsum(_mm256_add_ps(a[0], a[1]));
            for q in p..k {
                s += *xp.add(q) * *r.add(q);
            }
            *o = s;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_loops_on_odd_shapes() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        for &(n, k) in &[
            (1, 1),
            (3, 7),
            (4, 16),
            (5, 24),
            (9, 31),
            (13, 100),
            (64, 784),
            (128, 3136),
            (70, 4000),
            (1030, 1030),
        ] {
            let x: Vec<f32> = (0..k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            for (b, relu) in [(None, false), (Some(&bias[..]), false), (Some(&bias[..]), true)] {
                let mut y = vec![f32::NAN; n];
                gemv(&x, &w, b, relu, &mut y);
                for j in 0..n {
                    let mut want = b.map_or(0.0, |b| b[j] as f64);
                    for p in 0..k {
                        want += x[p] as f64 * w[j * k + p] as f64;
                    }
                    if relu {
                        want = want.max(0.0);
                    }
                    let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                    assert!((y[j] as f64 - want).abs() <= tol, "{n}x{k} row {j}: {} vs {want}", y[j]);
                }
            }
        }
    }
}
