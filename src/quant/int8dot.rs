//! int8 products for W8A8: activation quantization per row, and
//! `out[i, j] = Σ_k x[i, k]·w[j, k]` over int8 rows with int32 sums —
//! with AVX-512 VNNI (`vpdpbusd`) where the CPU has it, a portable loop
//! elsewhere. Both are exact (integer arithmetic), so they agree bit for bit.

use rayon::prelude::*;

use super::round;

/// Quantizes each row of `k` values symmetrically to int8: `s = max|x|/127`,
/// `q = round(x/s)`. Returns the values and one scale per row (1 for a zero row).
pub fn quantize_rows_i8(x: &[f32], k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / k.max(1));
    for row in x.chunks(k.max(1)) {
        let max = row.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        let inv = 1.0 / s;
        q.extend(row.iter().map(|&v| round(v * inv).clamp(-127.0, 127.0) as i8));
        scales.push(s);
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
    const COLS_PER_TASK: usize = 64;

    pub fn gemm(x: &[i8], m: usize, w: &[i8], n: usize, k: usize, out: &mut [i32]) {
        // vpdpbusd multiplies unsigned by signed bytes: feed x + 128 (x ^ 0x80)
        // and subtract 128·Σw afterwards.
        let xu: Vec<u8> = x[..m * k].iter().map(|&v| (v as u8) ^ 0x80).collect();
        let wsum: Vec<i32> = (0..n)
            .map(|j| w[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        let tasks: Vec<(usize, usize)> = (0..n)
            .step_by(COLS_PER_TASK)
            .map(|j| (j, (j + COLS_PER_TASK).min(n)))
            .collect();
        let run = |&(j0, j1): &(usize, usize)| -> Vec<(usize, usize, i32)> {
            let mut res = Vec::with_capacity(m * (j1 - j0));
            let mut j = j0;
            while j < j1 {
                let nj = (j1 - j).min(4);
                let mut i = 0;
                while i < m {
                    let mi = (m - i).min(4);
                    let mut tile = [[0i32; 4]; 4];
                    // SAFETY: the caller checked the CPU features; every row
                    // read is in bounds (i+mi <= m, j+nj <= n, length k).
                    unsafe { tile4x4(&xu, i, mi, w, j, nj, k, &mut tile) };
                    for (a, trow) in tile.iter().enumerate().take(mi) {
                        for (b, &v) in trow.iter().enumerate().take(nj) {
                            res.push((i + a, j + b, v - 128 * wsum[j + b]));
                        }
                    }
                    i += mi;
                }
                j += nj;
            }
            res
        };
        let parts: Vec<Vec<(usize, usize, i32)>> = if m * n * k >= 1 << 20 {
            tasks.par_iter().map(run).collect()
        } else {
            tasks.iter().map(run).collect()
        };
        for part in parts {
            for (i, j, v) in part {
                out[i * n + j] = v;
            }
        }
    }

    /// Up to 4 rows of `xu` against up to 4 rows of `w`, 64 bytes a step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile4x4(
        xu: &[u8],
        i: usize,
        mi: usize,
        w: &[i8],
        j: usize,
        nj: usize,
        k: usize,
        tile: &mut [[i32; 4]; 4],
    ) {
        let mut acc = [[_mm512_setzero_si512(); 4]; 4];
        let mut p = 0;
        while p < k {
            let len = (k - p).min(64);
            let mask: __mmask64 = if len == 64 { u64::MAX } else { (1u64 << len) - 1 };
            let mut xv = [_mm512_setzero_si512(); 4];
            let mut wv = [_mm512_setzero_si512(); 4];
            for a in 0..mi {
                xv[a] = _mm512_maskz_loadu_epi8(mask, xu.as_ptr().add((i + a) * k + p) as *const i8);
            }
            for b in 0..nj {
                wv[b] = _mm512_maskz_loadu_epi8(mask, w.as_ptr().add((j + b) * k + p));
            }
            for a in 0..4 {
                for b in 0..4 {
                    acc[a][b] = _mm512_dpbusd_epi32(acc[a][b], xv[a], wv[b]);
                }
            }
            p += 64;
        }
        for a in 0..mi {
            for b in 0..nj {
                tile[a][b] = _mm512_reduce_add_epi32(acc[a][b]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
