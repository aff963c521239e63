//! The CPU kernels below the ops, every SIMD one among them: f32 matrix
//! products (the `gemm` crate: packed, SIMD, multithreaded with rayon; and
//! [`f32gemm`], AVX-512, for prepared weights), int8 products for W8A8
//! ([`int8`], AVX-512 VNNI), softmax rows ([`softmax`]), LayerNorm rows
//! ([`norm`]), elementwise binary arithmetic ([`binary`]) and parallel
//! elementwise loops. The ops keep their naive references beside these (see
//! `ops::Op::reference`).

pub mod binary;
pub mod conv;
pub mod conv_direct;
pub mod f32gemm;
pub mod gemv;
pub mod ggml;
pub mod int16;
pub mod int8;
pub mod norm;
pub mod pool;
pub mod softmax;
pub mod unary;
pub mod vecops;
pub mod winograd;

use rayon::prelude::*;

use crate::error::OpError;

/// A strided view of a row-major or transposed f32 matrix.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Elements between consecutive rows.
    pub row_stride: usize,
    /// Elements between consecutive columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `cols × rows` matrix, without copying
    /// (a `[out, in]` weight seen as `[in, out]`).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: rows,
        }
    }

    fn fits(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        last < self.data.len()
    }
}

/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 22;

/// `c = a · b` (or `c += a · b` when `accumulate`), `c` row-major `m × n`.
pub fn sgemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], accumulate: bool) -> Result<(), OpError> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.len() != m * n || !a.fits() || !b.fits() {
        return Err(OpError::Shape(format!(
            "internal matmul shape error: a {}x{}, b {}x{}, c has {} elements",
            a.rows,
            a.cols,
            b.rows,
            b.cols,
            c.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return Ok(());
    }
    let parallelism = if m * n * k >= PARALLEL_MIN_FLOPS && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the kernel touches is in bounds: `fits()` checked the
    // last element of `a` and `b` through their strides, and `c` holds exactly
    // `m*n` row-major elements. `c` is a unique borrow, distinct from `a`/`b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// Dot product of two equal-length slices with 16 independent partial sums
/// (so the compiler can vectorize it; the order differs from a plain loop).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// Below this many elements an elementwise loop runs on one thread.
const PARALLEL_MIN_ELEMS: usize = 1 << 15;

/// Runs `f` compiled for AVX2 + FMA where the CPU has them (detected at run
/// time; the crate is built for baseline x86-64, i.e. SSE2), else as is.
/// Loops that `f` inlines vectorize 8 wide instead of 4. No floating-point
/// contraction is enabled, so both paths give the same results.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `avx2` was compiled for.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Rounds half away from zero (what `f32::round` does), the rule every
/// quantized format and every implementation of it use (the
/// weight formats of `quant`, the int8 kernels of [`int8`]).
#[inline]
pub fn round(x: f32) -> f32 {
    x.round()
}

/// `e^x` in f32, branch-free so loops over it vectorize (Cephes `expf`:
/// `x = n·ln2 + r`, a degree-6 polynomial in `r`, `2^n` built from its bits).
/// Within 2 ulp of the exact value on `[-87, 88]`; inputs are clamped to it
/// (so `e^-inf` is `~1.6e-38`, not 0: callers that need exact zeros mask).
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n sits in the low mantissa bits of t (two's complement around 1.5·2^23).
    let e = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23;
    y * f32::from_bits(e)
}

/// ReLU in place, as the `Relu` op computes it: 0 below zero, the value
/// otherwise (NaN and -0.0 pass through).
pub fn relu_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if conv::has_avx2_fma() {
        // SAFETY: AVX2 checked.
        unsafe { relu_avx2(x) };
        return;
    }
    for v in x.iter_mut() {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
}

/// [`relu_in_place`] as `max(0, v)` on whole vectors, stored in full: the
/// compiler turns the plain loop into masked stores, which cost AMD's
/// cores tens of cycles each (`maxps` returns its second operand for a
/// NaN and for -0.0, as the op does).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn relu_avx2(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_ps();
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        _mm256_storeu_ps(p, _mm256_max_ps(zero, _mm256_loadu_ps(p)));
    }
    for v in chunks.into_remainder() {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
}

/// Applies `f` to every element, in parallel for large inputs. Each task
/// runs a plain loop over a chunk, so `f` inlines and vectorizes (a rayon
/// `map(..).collect()` called it per element: 13% of a MiniLM run in GELU).
pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    let apply = |(o, i): (&mut [f32], &[f32])| {
        for (o, &v) in o.iter_mut().zip(i) {
            *o = f(v);
        }
    };
    if x.len() >= PARALLEL_MIN_ELEMS {
        out.par_chunks_mut(PARALLEL_MIN_ELEMS / 4)
            .zip(x.par_chunks(PARALLEL_MIN_ELEMS / 4))
            .for_each(|item| simd(|| apply(item)));
    } else {
        simd(|| apply((&mut out, x)));
    }
    out
}

/// Applies `f` to every row of `row` elements, in place, in parallel for large inputs.
pub fn for_each_row(x: &mut [f32], row: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    if row == 0 {
        return;
    }
    if x.len() >= PARALLEL_MIN_ELEMS {
        x.par_chunks_mut(row).for_each(f);
    } else {
        x.chunks_mut(row).for_each(f);
    }
}

/// Calls `f(y_row, x_row)` for every pair of `row`-element rows of `y` and
/// `x`, in parallel for large inputs, compiled for AVX2 where available.
pub fn for_each_row_pair(y: &mut [f32], x: &[f32], row: usize, f: impl Fn(&mut [f32], &[f32]) + Sync + Send) {
    if row == 0 {
        return;
    }
    let apply = |(yc, xc): (&mut [f32], &[f32])| {
        simd(|| {
            for (yr, xr) in yc.chunks_mut(row).zip(xc.chunks(row)) {
                f(yr, xr);
            }
        })
    };
    if y.len() >= PARALLEL_MIN_ELEMS {
        let chunk = (PARALLEL_MIN_ELEMS / 4).div_ceil(row) * row;
        y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(apply);
    } else {
        apply((y, x));
    }
}

/// Combines two equal-length slices elementwise, in parallel for large inputs.
pub fn zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    let n = a.len().min(b.len());
    let mut out = vec![0.0f32; n];
    // A plain loop per chunk, as in `map`.
    let apply = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    };
    if n >= PARALLEL_MIN_ELEMS {
        out.par_chunks_mut(PARALLEL_MIN_ELEMS / 4)
            .zip(
                a[..n]
                    .par_chunks(PARALLEL_MIN_ELEMS / 4)
                    .zip(b[..n].par_chunks(PARALLEL_MIN_ELEMS / 4)),
            )
            .for_each(|item| simd(|| apply(item)));
    } else {
        simd(|| apply((&mut out, (&a[..n], &b[..n]))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ReLU in place against the op's rule at lengths 0..=20 (whole vectors
    /// and tails): negatives to 0, NaN, -0.0 and positives unchanged.
    #[test]
    fn relu_in_place_keeps_nan_and_negative_zero() {
        let vals = [
            -1.5f32,
            0.0,
            -0.0,
            2.5,
            f32::NAN,
            f32::NEG_INFINITY,
            f32::INFINITY,
            -1e-30,
        ];
        for n in 0..=20 {
            let x: Vec<f32> = (0..n).map(|i| vals[(i * 3) % vals.len()]).collect();
            let mut y = x.clone();
            relu_in_place(&mut y);
            for (a, b) in x.iter().zip(&y) {
                let want = if *a < 0.0 { 0.0 } else { *a };
                assert_eq!(want.to_bits(), b.to_bits(), "relu({a}) = {b}");
            }
        }
    }

    #[test]
    fn sgemm_matches_loops_with_transposed_rhs() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // [n, k]
        let mut c = vec![0.0; m * n];
        sgemm(MatRef::row_major(&a, m, k), MatRef::transposed(&w, k, n), &mut c, false).unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * k + p] * w[j * k + p]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn exp_fast_is_within_2_ulp() {
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (exp_fast(x), (x as f64).exp());
            assert!(
                ((got as f64 - want) / want).abs() < 2.5e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(exp_fast(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_fast(f32::NEG_INFINITY) >= 0.0);
        let v: Vec<f32> = (0..100).map(|i| i as f32 * 0.3 - 15.0).collect();
        let a = map(&v, exp_fast);
        let b: Vec<f32> = v.iter().map(|&x| exp_fast(x)).collect();
        assert_eq!(a, b, "the AVX2 and plain paths agree");
    }

    #[test]
    fn sgemm_rejects_bad_sizes() {
        let a = vec![0.0; 6];
        let mut c = vec![0.0; 4];
        assert!(sgemm(MatRef::row_major(&a, 2, 3), MatRef::row_major(&a, 2, 3), &mut c, false).is_err());
    }
}
