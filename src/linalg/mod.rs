//! Fast CPU kernels below the ops: matrix products through the `gemm` crate
//! (packed, SIMD, multithreaded with rayon) and parallel elementwise loops.
//! The ops keep their naive references beside these (see `ops::Op::reference`).

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
            .for_each(apply);
    } else {
        apply((&mut out, x));
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

/// Combines two equal-length slices elementwise, in parallel for large inputs.
pub fn zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    if a.len() >= PARALLEL_MIN_ELEMS {
        a.par_iter().zip(b.par_iter()).map(|(&x, &y)| f(x, y)).collect()
    } else {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sgemm_rejects_bad_sizes() {
        let a = vec![0.0; 6];
        let mut c = vec![0.0; 4];
        assert!(sgemm(MatRef::row_major(&a, 2, 3), MatRef::row_major(&a, 2, 3), &mut c, false).is_err());
    }
}
