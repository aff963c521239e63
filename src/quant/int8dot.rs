//! int8 products for W8A8: activation quantization per row, and
//! `out[i, j] = Σ_k x[i, k]·w[j, k]` over int8 rows with int32 sums —
//! with AVX-512 VNNI (`vpdpbusd`) where the CPU has it, a portable loop
//! elsewhere. Both are exact (integer arithmetic), so they agree bit for bit.

use rayon::prelude::*;

use super::round;

/// Quantizes each row of `k` values symmetrically to int8: `s = max|x|/127`,
/// `q = round(x/s)`. Returns the values and one scale per row (1 for a zero row).
pub fn quantize_rows_i8(x: &[f32], k: usize) -> (Vec<i8>, Vec<f32>) {
    let k = k.max(1);
    let mut q = vec![0i8; x.len()];
    let mut scales = vec![0.0f32; x.len().div_ceil(k)];
    let row = |((qr, xr), s): ((&mut [i8], &[f32]), &mut f32)| {
        let max = xr.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        *s = if max > 0.0 { max / 127.0 } else { 1.0 };
        let inv = 1.0 / *s;
        for (d, &v) in qr.iter_mut().zip(xr) {
            *d = round(v * inv).clamp(-127.0, 127.0) as i8;
        }
    };
    if x.len() >= 1 << 18 {
        // Rows in parallel, a few per task (tasks of one short row cost more than they save).
        q.par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .zip(scales.par_iter_mut())
            .with_min_len((1 << 14) / k + 1)
            .for_each(row);
    } else {
        q.chunks_mut(k).zip(x.chunks(k)).zip(scales.iter_mut()).for_each(row);
    }
    (q, scales)
}

/// The reference int8 dot product.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// `out[i·n + j] = Σ_k x[i·k + k']·w[j·k + k']` for `m` rows of `x` and `n` rows of `w`.
pub fn gemm_i8(x: &[i8], m: usize, w: &[i8], n: usize, k: usize, out: &mut [i32]) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && out.len() >= m * n,
        "gemm_i8 sizes"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512bw") {
            return vnni::gemm(x, m, w, n, k, out);
        }
    }
    portable(x, m, w, n, k, out);
}

fn portable(x: &[i8], m: usize, w: &[i8], n: usize, k: usize, out: &mut [i32]) {
    let cols = |j: usize| &w[j * k..(j + 1) * k];
    let work = m * n * k;
    let row = |(i, o): (usize, &mut [i32])| {
        let xr = &x[i * k..(i + 1) * k];
        for (j, v) in o.iter_mut().enumerate() {
            *v = dot_i8(xr, cols(j));
        }
    };
    if work >= 1 << 20 {
        out[..m * n].par_chunks_mut(n.max(1)).enumerate().for_each(row);
    } else {
        out[..m * n].chunks_mut(n.max(1)).enumerate().for_each(row);
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    /// Output columns (weight rows) per parallel task.
    const COLS_PER_TASK: usize = 32;

    pub fn gemm(x: &[i8], m: usize, w: &[i8], n: usize, k: usize, out: &mut [i32]) {
        // vpdpbusd multiplies unsigned by signed bytes: feed x + 128 (x ^ 0x80)
        // and subtract 128·Σw afterwards.
        let big = m * n * k >= 1 << 20;
        let mut xu = vec![0u8; m * k];
        let flip = |(d, s): (&mut [u8], &[i8])| {
            for (d, &v) in d.iter_mut().zip(s) {
                *d = (v as u8) ^ 0x80;
            }
        };
        if big && m * k >= 1 << 18 {
            xu.par_chunks_mut(1 << 14)
                .zip(x[..m * k].par_chunks(1 << 14))
                .for_each(flip);
        } else {
            flip((&mut xu, &x[..m * k]));
        }
        let tasks: Vec<usize> = (0..n).step_by(COLS_PER_TASK).collect();
        // Each task fills a column block [m, cols] of its own.
        let run = |&j0: &usize| -> Vec<i32> {
            let j1 = (j0 + COLS_PER_TASK).min(n);
            let cols = j1 - j0;
            // Σw of this task's columns (for the +128 offset of x).
            let wsum: Vec<i32> = (j0..j1)
                .map(|j| w[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
                .collect();
            let mut block = vec![0i32; m * cols];
            let mut j = j0;
            while j < j1 {
                let mut i = 0;
                if j + 4 <= j1 {
                    while i + 4 <= m {
                        // SAFETY: CPU features checked by the caller; rows i..i+4 of
                        // xu and j..j+4 of w, each k long, are in bounds.
                        let t = unsafe { tile4x4(xu.as_ptr().add(i * k), w.as_ptr().add(j * k), k) };
                        for a in 0..4 {
                            for b in 0..4 {
                                block[(i + a) * cols + (j - j0 + b)] = t[a][b];
                            }
                        }
                        i += 4;
                    }
                }
                // Edges: one output at a time.
                for ii in i..m {
                    for jj in j..(j + 4).min(j1) {
                        // SAFETY: as above, one row each.
                        block[ii * cols + (jj - j0)] =
                            unsafe { dot1(xu.as_ptr().add(ii * k), w.as_ptr().add(jj * k), k) };
                    }
                }
                j += 4;
            }
            for (idx, v) in block.iter_mut().enumerate() {
                *v -= 128 * wsum[idx % cols];
            }
            block
        };
        let blocks: Vec<Vec<i32>> = if big {
            tasks.par_iter().map(run).collect()
        } else {
            tasks.iter().map(run).collect()
        };
        for (t, block) in tasks.iter().zip(blocks) {
            let cols = (n - t).min(COLS_PER_TASK);
            for i in 0..m {
                out[i * n + t..i * n + t + cols].copy_from_slice(&block[i * cols..(i + 1) * cols]);
            }
        }
    }

    #[inline(always)]
    unsafe fn mask(len: usize) -> __mmask64 {
        if len >= 64 {
            u64::MAX
        } else {
            (1u64 << len) - 1
        }
    }

    /// A 4×4 tile: rows `x..x+4k` (unsigned) against rows `w..w+4k` (signed).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile4x4(x: *const u8, w: *const i8, k: usize) -> [[i32; 4]; 4] {
        let z = _mm512_setzero_si512();
        let (mut c00, mut c01, mut c02, mut c03) = (z, z, z, z);
        let (mut c10, mut c11, mut c12, mut c13) = (z, z, z, z);
        let (mut c20, mut c21, mut c22, mut c23) = (z, z, z, z);
        let (mut c30, mut c31, mut c32, mut c33) = (z, z, z, z);
        let mut p = 0;
        while p < k {
            let mk = mask(k - p);
            let x0 = _mm512_maskz_loadu_epi8(mk, x.add(p) as *const i8);
            let x1 = _mm512_maskz_loadu_epi8(mk, x.add(k + p) as *const i8);
            let x2 = _mm512_maskz_loadu_epi8(mk, x.add(2 * k + p) as *const i8);
            let x3 = _mm512_maskz_loadu_epi8(mk, x.add(3 * k + p) as *const i8);
            let w0 = _mm512_maskz_loadu_epi8(mk, w.add(p));
            let w1 = _mm512_maskz_loadu_epi8(mk, w.add(k + p));
            let w2 = _mm512_maskz_loadu_epi8(mk, w.add(2 * k + p));
            let w3 = _mm512_maskz_loadu_epi8(mk, w.add(3 * k + p));
            c00 = _mm512_dpbusd_epi32(c00, x0, w0);
            c01 = _mm512_dpbusd_epi32(c01, x0, w1);
            c02 = _mm512_dpbusd_epi32(c02, x0, w2);
            c03 = _mm512_dpbusd_epi32(c03, x0, w3);
            c10 = _mm512_dpbusd_epi32(c10, x1, w0);
            c11 = _mm512_dpbusd_epi32(c11, x1, w1);
            c12 = _mm512_dpbusd_epi32(c12, x1, w2);
            c13 = _mm512_dpbusd_epi32(c13, x1, w3);
            c20 = _mm512_dpbusd_epi32(c20, x2, w0);
            c21 = _mm512_dpbusd_epi32(c21, x2, w1);
            c22 = _mm512_dpbusd_epi32(c22, x2, w2);
            c23 = _mm512_dpbusd_epi32(c23, x2, w3);
            c30 = _mm512_dpbusd_epi32(c30, x3, w0);
            c31 = _mm512_dpbusd_epi32(c31, x3, w1);
            c32 = _mm512_dpbusd_epi32(c32, x3, w2);
            c33 = _mm512_dpbusd_epi32(c33, x3, w3);
            p += 64;
        }
        let r = |v| _mm512_reduce_add_epi32(v);
        [
            [r(c00), r(c01), r(c02), r(c03)],
            [r(c10), r(c11), r(c12), r(c13)],
            [r(c20), r(c21), r(c22), r(c23)],
            [r(c30), r(c31), r(c32), r(c33)],
        ]
    }

    /// One row of `x` (unsigned) against one row of `w` (signed).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot1(x: *const u8, w: *const i8, k: usize) -> i32 {
        let mut c = _mm512_setzero_si512();
        let mut p = 0;
        while p < k {
            let mk = mask(k - p);
            let xv = _mm512_maskz_loadu_epi8(mk, x.add(p) as *const i8);
            let wv = _mm512_maskz_loadu_epi8(mk, w.add(p));
            c = _mm512_dpbusd_epi32(c, xv, wv);
            p += 64;
        }
        _mm512_reduce_add_epi32(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_row_quantization_matches_row_by_row() {
        let mut rng = crate::ops::CaseRng::new(5);
        let (m, k) = (600, 513);
        let x = rng.tensor(&[m, k], -3.0, 3.0).to_f32_vec();
        let (q, s) = quantize_rows_i8(&x, k);
        assert_eq!((q.len(), s.len()), (m * k, m));
        for i in [0, 1, 299, 599] {
            let (qr, sr) = quantize_rows_i8(&x[i * k..(i + 1) * k], k);
            assert_eq!(&q[i * k..(i + 1) * k], &qr[..], "row {i}");
            assert_eq!(s[i], sr[0], "row {i}");
        }
    }

    #[test]
    fn fast_gemm_is_exact() {
        let mut rng = crate::ops::CaseRng::new(3);
        for (m, n, k) in [(1, 1, 1), (3, 5, 17), (5, 9, 64), (7, 3, 130), (1, 70, 1000)] {
            let x: Vec<i8> = (0..m * k).map(|_| (rng.next_u64() % 255) as i64 as i8).collect();
            let w: Vec<i8> = (0..n * k).map(|_| (rng.next_u64() % 255) as i64 as i8).collect();
            let mut got = vec![0; m * n];
            gemm_i8(&x, m, &w, n, k, &mut got);
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(
                        got[i * n + j],
                        dot_i8(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]),
                        "{m}x{n}x{k}"
                    );
                }
            }
        }
    }
}
