//! Integer products over i16 operands with i32 sums, for `MatMulInteger`:
//! 8-bit operands minus their zero points lie in `[-255, 255]`, so one
//! product fits an i32 and the sums wrap only past the i32 range (as ONNX's
//! reference, which sums in int32, does).

use rayon::prelude::*;

/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// `Σ a[i]·b[i]` over equally long slices, with wrapping i32 sums.
#[inline(always)]
pub fn dot_i16(a: &[i16], b: &[i16]) -> i32 {
    // Sixteen independent lanes, so the loop vectorizes (pmaddwd-style).
    let mut acc = [0i32; 16];
    let (ac, ar) = a.as_chunks::<16>();
    let (bc, br) = b.as_chunks::<16>();
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..16 {
            acc[i] = acc[i].wrapping_add(x[i] as i32 * y[i] as i32);
        }
    }
    let mut sum = acc.iter().fold(0i32, |s, &v| s.wrapping_add(v));
    for (&x, &y) in ar.iter().zip(br) {
        sum = sum.wrapping_add(x as i32 * y as i32);
    }
    sum
}

/// `out[i·n + j] = Σ_q a[i·k + q]·b[j·k + q]` for `m` rows of `a` and `n`
/// rows of `b` (`b` holds the right-hand matrix transposed), `k` values a row.
///
/// # Panics
/// When a slice is shorter than its sizes say (a caller's bug, not data).
pub fn gemm_i16_nt(a: &[i16], m: usize, b: &[i16], n: usize, k: usize, out: &mut [i32]) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && out.len() >= m * n,
        "gemm_i16_nt sizes"
    );
    if n == 0 {
        return;
    }
    let row = |(i, o): (usize, &mut [i32])| {
        let ar = &a[i * k..(i + 1) * k];
        super::simd(|| {
            for (j, v) in o.iter_mut().enumerate() {
                *v = dot_i16(ar, &b[j * k..(j + 1) * k]);
            }
        });
    };
    if super::vecops::parallel(m * n * k, PARALLEL_MIN_WORK) && m > 1 {
        out[..m * n].par_chunks_mut(n).enumerate().for_each(row);
    } else {
        out[..m * n].chunks_mut(n).enumerate().for_each(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_loop_and_wraps() {
        let (m, n, k) = (3, 5, 37);
        let a: Vec<i16> = (0..m * k).map(|i| ((i * 37) % 511) as i16 - 255).collect();
        let b: Vec<i16> = (0..n * k).map(|i| ((i * 101) % 511) as i16 - 255).collect();
        let mut out = vec![0i32; m * n];
        gemm_i16_nt(&a, m, &b, n, k, &mut out);
        for i in 0..m {
            for j in 0..n {
                let want: i64 = (0..k).map(|q| a[i * k + q] as i64 * b[j * k + q] as i64).sum();
                assert_eq!(out[i * n + j] as i64, want);
            }
        }
        // 40000 products of 255·255 pass 2^31: the sum wraps as an i32 one does.
        let big = vec![255i16; 40_000];
        let want = (40_000i64 * 255 * 255) as i32;
        assert_eq!(dot_i16(&big, &big), want);
    }
}
