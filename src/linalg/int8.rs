//! int8 products for W8A8: activation quantization per row, and
//! `out[i, j] = Σ_k x[i, k]·w[j, k]` over int8 rows with int32 sums —
//! with AVX-512 VNNI (`vpdpbusd`) where the CPU has it, a portable loop
//! elsewhere. Both are exact (integer arithmetic), so they agree bit for bit.

use rayon::prelude::*;

use super::round;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod conv;

/// Quantizes each row of `k` values symmetrically to int8: `s = max|x|/127`,
/// `q = round(x/s)`. Returns the values and one scale per row (1 for a zero row).
pub fn quantize_rows_i8(x: &[f32], k: usize) -> (Vec<i8>, Vec<f32>) {
    let k = k.max(1);
    let mut q = vec![0i8; x.len()];
    let mut scales = vec![0.0f32; x.len().div_ceil(k)];
    // AVX2 where available: `round` then vectorizes instead of calling libm.
    let row = |((qr, xr), s): ((&mut [i8], &[f32]), &mut f32)| super::simd(|| quantize_row(qr, xr, s));
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

#[inline(always)]
fn quantize_row(q: &mut [i8], x: &[f32], s: &mut f32) {
    let max = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    *s = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inv = 1.0 / *s;
    for (d, &v) in q.iter_mut().zip(x) {
        *d = round(v * inv).clamp(-127.0, 127.0) as i8;
    }
}

/// W8A8's activation quantization of one row `x` (outlier positions, flagged
/// in `skip`, count as 0): with `lo = min(0, min x)`, `hi = max(0, max x)`,
/// `s = (hi - lo)/255`, `z = clamp(round(-lo/s), 0, 255)` (as `-lo·(1/s)`),
/// `q = clamp(round(x·(1/s)) + z, 0, 255)`; a row with `hi == lo` gets
/// `s = 1`, `z = 0` and all-zero codes. Writes `q` and returns `(s, z)`.
#[inline(always)]
pub fn quantize_row_u8(x: &[f32], skip: Option<&[bool]>, q: &mut [u8]) -> (f32, i32) {
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    match skip {
        None => {
            for &v in x {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        Some(sk) => {
            for (&v, &o) in x.iter().zip(sk) {
                let v = if o { 0.0 } else { v };
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    if hi <= lo {
        q[..x.len()].fill(0);
        return (1.0, 0);
    }
    let s = (hi - lo) / 255.0;
    let inv = 1.0 / s;
    let z = round(-lo * inv).clamp(0.0, 255.0);
    match skip {
        None => {
            for (d, &v) in q.iter_mut().zip(x) {
                *d = (round(v * inv) + z).clamp(0.0, 255.0) as u8;
            }
        }
        Some(sk) => {
            for ((d, &v), &o) in q.iter_mut().zip(x).zip(sk) {
                *d = if o {
                    z as u8
                } else {
                    (round(v * inv) + z).clamp(0.0, 255.0) as u8
                };
            }
        }
    }
    (s, z as i32)
}

/// [`quantize_row_u8`] over the rows of `x` (`k` values each): the codes
/// `[rows, k]`, the scales and the zero points. `outliers` are input
/// positions that count as 0 (their code is the zero point).
pub fn quantize_rows_u8(x: &[f32], k: usize, outliers: &[usize]) -> (Vec<u8>, Vec<f32>, Vec<i32>) {
    let k = k.max(1);
    let rows = x.len() / k;
    let mut q = vec![0u8; rows * k];
    let (mut s, mut z) = (vec![0.0f32; rows], vec![0i32; rows]);
    let skip = (!outliers.is_empty()).then(|| {
        let mut m = vec![false; k];
        for &o in outliers {
            if let Some(f) = m.get_mut(o) {
                *f = true;
            }
        }
        m
    });
    for (i, (qr, xr)) in q.chunks_mut(k).zip(x.chunks_exact(k)).enumerate() {
        (s[i], z[i]) = super::simd(|| quantize_row_u8(xr, skip.as_deref(), qr));
    }
    (q, s, z)
}

/// `out[i·n + j] = Σ_k x[i·k + k']·w[j·k + k']` for `m` unsigned rows of `x`
/// and `n` signed rows of `w` (int32 sums, exact).
pub fn gemm_u8i8(x: &[u8], m: usize, w: &[i8], n: usize, k: usize, out: &mut [i32]) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && out.len() >= m * n,
        "gemm_u8i8 sizes"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if vnni_available() {
            return vnni::gemm(x, m, w, n, k, out);
        }
    }
    let work = m * n * k;
    let row = |(i, o): (usize, &mut [i32])| {
        let xr = &x[i * k..(i + 1) * k];
        for (j, v) in o.iter_mut().enumerate() {
            *v = xr
                .iter()
                .zip(&w[j * k..(j + 1) * k])
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
        }
    };
    if work >= 1 << 20 {
        out[..m * n].par_chunks_mut(n.max(1)).enumerate().for_each(row);
    } else {
        out[..m * n].chunks_mut(n.max(1)).enumerate().for_each(row);
    }
}

/// A W8A8 weight's packed tensors, borrowed (see [`WeightFormat::W8A8`](crate::quant::WeightFormat::W8A8)).
#[derive(Clone, Debug)]
pub struct W8A8Weights<'a> {
    /// Codes `[n, k]`, zero in the outlier columns.
    pub q: &'a [i8],
    /// Scales `[n]`.
    pub scale: &'a [f32],
    /// Row sums of `q`, `[n]`.
    pub wsum: &'a [i32],
    /// Outlier input columns, ascending.
    pub outliers: Vec<usize>,
    /// Their f32 weights, `[n, c]`.
    pub outlier_weight: &'a [f32],
    /// Outputs.
    pub n: usize,
    /// Inputs.
    pub k: usize,
}

impl<'a> W8A8Weights<'a> {
    /// Borrows the packed tensors (in `tensor_names` order) of an `[n, k]`
    /// weight; [`check_packed`](crate::quant::check_packed) checked them.
    pub fn new(packed: &[&'a crate::tensor::Tensor], n: usize, k: usize) -> Result<Self, crate::error::OpError> {
        let (outliers, outlier_weight) = match (packed.get(3), packed.get(4)) {
            (Some(i), Some(w)) => (
                i.as_slice::<i32>()?.iter().map(|&c| c.max(0) as usize).collect(),
                w.as_f32()?,
            ),
            _ => (Vec::new(), &[][..]),
        };
        let w = Self {
            q: packed[0].as_slice()?,
            scale: packed[1].as_f32()?,
            wsum: packed[2].as_slice()?,
            outliers,
            outlier_weight,
            n,
            k,
        };
        let c = w.outliers.len();
        if w.q.len() != n * k
            || w.scale.len() != n
            || w.wsum.len() != n
            || w.outlier_weight.len() != n * c
            || w.outliers.iter().any(|&o| o >= k)
        {
            return Err(crate::error::OpError::Shape(format!(
                "W8A8 tensors do not fit a {n}x{k} weight"
            )));
        }
        Ok(w)
    }
}

/// The portable W8A8 layer, `y [m, n]` for `x [m, k]`: [`quantize_rows_u8`],
/// [`gemm_u8i8`], then `y = ((acc - z_i·wsum_j) as f32)·(s_i·scale_j)`, plus
/// `Σ_t x[i, o_t]·ow[j, t]` (left to right, multiply then add), plus `b_j`,
/// f32 operations in that order. [`PackedW8A8::run`] gives the same bits.
pub fn w8a8_portable(x: &[f32], m: usize, w: &W8A8Weights, bias: Option<&[f32]>, y: &mut [f32]) {
    let (n, k, c) = (w.n, w.k, w.outliers.len());
    let (xq, xs, xz) = quantize_rows_u8(&x[..m * k], k, &w.outliers);
    let mut acc = vec![0i32; m * n];
    gemm_u8i8(&xq, m, w.q, n, k, &mut acc);
    let row = |(i, (yr, ar)): (usize, (&mut [f32], &[i32]))| {
        let xo: Vec<f32> = w.outliers.iter().map(|&o| x[i * k + o]).collect();
        for (j, (d, &a)) in yr.iter_mut().zip(ar).enumerate() {
            let mut o = 0.0f32;
            for (t, &v) in xo.iter().enumerate() {
                o += v * w.outlier_weight[j * c + t];
            }
            *d = (a - xz[i] * w.wsum[j]) as f32 * (xs[i] * w.scale[j]) + o + bias.map_or(0.0, |b| b[j]);
        }
    };
    y[..m * n]
        .chunks_mut(n.max(1))
        .zip(acc.chunks(n.max(1)))
        .enumerate()
        .for_each(row);
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
        if vnni_available() {
            // vpdpbusd multiplies unsigned by signed bytes: feed x + 128
            // (x ^ 0x80) and subtract 128·Σw afterwards.
            let xu: Vec<u8> = x[..m * k].iter().map(|&v| (v as u8) ^ 0x80).collect();
            vnni::gemm(&xu, m, w, n, k, out);
            let wsum: Vec<i32> = (0..n)
                .map(|j| w[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
                .collect();
            for row in out[..m * n].chunks_mut(n.max(1)) {
                for (o, &s) in row.iter_mut().zip(&wsum) {
                    *o -= 128 * s;
                }
            }
            return;
        }
    }
    portable(x, m, w, n, k, out);
}

/// int8 weight rows `w [n, k]` repacked once for the VNNI kernel: blocks of
/// 32 outputs, and within a block, for every 4 inputs, the 32×4 bytes that
/// one `vpdpbusd` pair reads (so the kernel needs no horizontal sums), plus
/// `Σ_k w[j, k]` per output for the activations' zero points.
#[derive(Clone, Debug)]
pub struct PackedI8 {
    n: usize,
    k: usize,
    data: Vec<i8>,
    wsum: Vec<i32>,
}

/// Outputs per packed block.
const NB: usize = 32;

impl PackedI8 {
    /// Packs `w` (`n` rows of `k`), or `None` where the CPU lacks AVX-512
    /// VNNI (callers then use [`gemm_i8`] on the plain rows).
    pub fn new(w: &[i8], n: usize, k: usize) -> Option<Self> {
        if !vnni_available() || w.len() < n * k {
            return None;
        }
        let (k4, n_pad) = (k.div_ceil(4) * 4, n.div_ceil(NB) * NB);
        let mut data = vec![0i8; n_pad * k4];
        // One block (NB rows) at a time: each row's groups of 4 inputs go to
        // stride NB·4 within the block.
        let block = |(blk, d): (usize, &mut [i8])| {
            for c in 0..NB.min(n.saturating_sub(blk * NB)) {
                let j = blk * NB + c;
                let row = w[j * k..(j + 1) * k].chunks_exact(4);
                let (rem, full) = (row.remainder(), k / 4);
                for (q, chunk) in row.enumerate() {
                    let at = q * NB * 4 + c * 4;
                    d[at..at + 4].copy_from_slice(chunk);
                }
                if !rem.is_empty() {
                    let at = full * NB * 4 + c * 4;
                    d[at..at + rem.len()].copy_from_slice(rem);
                }
            }
        };
        if n * k >= 1 << 18 {
            data.par_chunks_mut((k4 * NB).max(1)).enumerate().for_each(block);
        } else {
            data.chunks_mut((k4 * NB).max(1)).enumerate().for_each(block);
        }
        let mut wsum = vec![0i32; n_pad];
        for (j, s) in wsum.iter_mut().enumerate().take(n) {
            *s = w[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum::<i32>();
        }
        Some(Self { n, k, data, wsum })
    }

    /// Outputs (weight rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs (weight columns).
    pub fn k(&self) -> usize {
        self.k
    }
}

fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i·n + j] = Σ_k x[i·k + k']·w[j·k + k']` over weights packed by
/// [`PackedI8::new`]: the same sums as [`gemm_i8`], exactly. Register tiles
/// of 8 rows × 32 outputs; tasks of up to 32 rows × 128 outputs run in
/// parallel for large products.
pub fn gemm_i8_packed(x: &[i8], m: usize, w: &PackedI8, out: &mut [i32]) {
    assert!(x.len() >= m * w.k && out.len() >= m * w.n, "gemm_i8_packed sizes");
    let k4 = w.k.div_ceil(4) * 4;
    // vpdpbusd multiplies unsigned by signed bytes: x + 128 (x ^ 0x80) with
    // a zero point of 128, rows padded to k4 (the padded weights are 0).
    let mut xu = vec![0u8; m * k4];
    for (d, s) in xu.chunks_mut(k4.max(1)).zip(x.chunks(w.k.max(1))).take(m) {
        for (d, &v) in d.iter_mut().zip(s) {
            *d = (v as u8) ^ 0x80;
        }
    }
    let z = vec![128i32; m];
    #[cfg(target_arch = "x86_64")]
    packed::gemm(
        &xu,
        m,
        w,
        packed::Epilogue::Int {
            out: out.as_mut_ptr(),
            z: z.as_ptr(),
        },
    );
}

/// A W8A8 weight prepared for the fast CPU path: the codes packed for the
/// VNNI kernel ([`PackedI8`]) or, on AVX2 CPUs without it, widened for the
/// AVX2 kernel ([`avx2::PackedI16`]); the scales, and the outlier columns
/// with their f32 weights transposed to `[c, n]` (padded) for the epilogue.
#[derive(Clone, Debug)]
pub struct PackedW8A8 {
    w: Kernel,
    scale: Vec<f32>,
    outliers: Vec<usize>,
    owt: Vec<f32>,
}

/// Activation codes in the form a [`PackedW8A8`] kernel reads
/// ([`PackedW8A8::code_row_len`] per row).
#[derive(Clone, Copy, Debug)]
pub enum Codes<'a> {
    /// uint8 codes (the VNNI kernel).
    U8(&'a [u8]),
    /// The uint8 codes widened to int16 (the AVX2 kernel).
    I16(&'a [i16]),
}

/// The packed codes of a [`PackedW8A8`], for the kernel this CPU runs.
#[derive(Clone, Debug)]
enum Kernel {
    Vnni(PackedI8),
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::PackedI16),
}

/// Per-thread scratch of [`PackedW8A8::run`]: activation codes `[m, k4]`
/// (VNNI) or int16 codes `[m, k2]` (AVX2), row scales and zero points,
/// outlier activations `[m, c]`.
#[derive(Default)]
struct Scratch {
    xu: Vec<u8>,
    xw: Vec<i16>,
    xs: Vec<f32>,
    xz: Vec<i32>,
    xo: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl PackedW8A8 {
    /// Prepares a W8A8 weight for the VNNI kernel, else for the AVX2 one;
    /// `None` on CPUs with neither.
    pub fn new(weights: &W8A8Weights) -> Option<Self> {
        match PackedI8::new(weights.q, weights.n, weights.k) {
            Some(w) => Some(Self::with(weights, Kernel::Vnni(w))),
            None => Self::new_avx2(weights),
        }
    }

    /// Prepares a W8A8 weight for the AVX2 kernel even where VNNI exists
    /// (for tests and comparisons); `None` without AVX2.
    pub fn new_avx2(weights: &W8A8Weights) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let w = avx2::PackedI16::new(weights.q, weights.n, weights.k)?;
            Some(Self::with(weights, Kernel::Avx2(w)))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = weights;
            None
        }
    }

    fn with(weights: &W8A8Weights, w: Kernel) -> Self {
        let (n, c) = (weights.n, weights.outliers.len());
        let (scale, outliers, ow) = (weights.scale, &weights.outliers, weights.outlier_weight);
        // Padded to whole blocks of either kernel (NB is a multiple of avx2::NB).
        let n_pad = n.div_ceil(NB) * NB;
        let mut sp = vec![0.0f32; n_pad];
        sp[..n].copy_from_slice(&scale[..n]);
        let mut owt = vec![0.0f32; c * n_pad];
        for j in 0..n {
            for t in 0..c {
                owt[t * n_pad + j] = ow[j * c + t];
            }
        }
        Self {
            w,
            scale: sp,
            outliers: outliers.to_vec(),
            owt,
        }
    }

    /// Outputs.
    pub fn n(&self) -> usize {
        self.dims().0
    }

    /// Inputs.
    pub fn k(&self) -> usize {
        self.dims().1
    }

    fn dims(&self) -> (usize, usize) {
        match &self.w {
            Kernel::Vnni(w) => (w.n, w.k),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(w) => (w.n, w.k),
        }
    }

    /// Whether the weight is packed for the AVX-512 VNNI kernel (else AVX2).
    pub fn is_vnni(&self) -> bool {
        matches!(self.w, Kernel::Vnni(_))
    }

    /// Whether the weight keeps outlier columns in f32.
    pub fn has_outliers(&self) -> bool {
        !self.outliers.is_empty()
    }

    /// The length of one row of activation codes its kernel reads: `k`
    /// rounded up to 4 (VNNI, [`Codes::U8`]) or to 2 (AVX2, [`Codes::I16`]).
    pub fn code_row_len(&self) -> usize {
        match &self.w {
            Kernel::Vnni(w) => w.k.div_ceil(4) * 4,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(w) => w.k2(),
        }
    }

    /// `y [m, n]` from activations already quantized: `m` rows of
    /// [`Self::code_row_len`] codes (0 past `k`) in the form this kernel
    /// reads, each row's scale `xs[i]` and zero point `xz[i]`; then the
    /// epilogue of [`Self::run`] (no outlier columns: the weight must have none).
    ///
    /// # Panics
    /// If the sizes do not fit, the codes are not this kernel's form, or the
    /// weight has outlier columns.
    pub fn run_codes(&self, codes: Codes, m: usize, xs: &[f32], xz: &[i32], bias: Option<&[f32]>, y: &mut [f32]) {
        let (n, row) = (self.n(), self.code_row_len());
        let len = match codes {
            Codes::U8(c) => c.len(),
            Codes::I16(c) => c.len(),
        };
        assert!(
            len >= m * row
                && xs.len() >= m
                && xz.len() >= m
                && bias.is_none_or(|b| b.len() >= n)
                && y.len() >= m * n
                && self.outliers.is_empty(),
            "PackedW8A8::run_codes sizes"
        );
        if m == 0 || n == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let epi = packed::Epilogue::W8A8 {
                xs: xs.as_ptr(),
                z: xz.as_ptr(),
                ws: self.scale.as_ptr(),
                bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                // Not read: no outlier columns.
                xo: xs.as_ptr(),
                owt: self.owt.as_ptr(),
                c: 0,
                n_pad: self.scale.len(),
                y: y.as_mut_ptr(),
            };
            match (&self.w, codes) {
                (Kernel::Vnni(w), Codes::U8(c)) => packed::gemm(c, m, w, epi),
                (Kernel::Avx2(w), Codes::I16(c)) => avx2::gemm(c, m, w, epi),
                _ => panic!("PackedW8A8::run_codes: codes not in this kernel's form"),
            }
        }
    }

    /// [`Self::run_codes`] for an AVX2 weight over int16 codes gathered
    /// from `x`: row `i`'s codes are the pairs `x[base[i] + off[q]..][..2]`,
    /// `q < code_row_len/2` (an implicit im2col: `base` per output pixel,
    /// `off` per pair of taps).
    ///
    /// # Panics
    /// If the weight is not packed for the AVX2 kernel, has outlier
    /// columns, or a size or a pair's position does not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn run_gathered(
        &self,
        x: &[i16],
        base: &[usize],
        off: &[usize],
        m: usize,
        xs: &[f32],
        xz: &[i32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        let n = self.n();
        assert!(
            base.len() >= m
                && xs.len() >= m
                && xz.len() >= m
                && bias.is_none_or(|b| b.len() >= n)
                && y.len() >= m * n
                && self.outliers.is_empty(),
            "PackedW8A8::run_gathered sizes"
        );
        #[cfg(target_arch = "x86_64")]
        {
            let Kernel::Avx2(w) = &self.w else {
                panic!("PackedW8A8::run_gathered: not an AVX2 weight");
            };
            let epi = packed::Epilogue::W8A8 {
                xs: xs.as_ptr(),
                z: xz.as_ptr(),
                ws: self.scale.as_ptr(),
                bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                // Not read: no outlier columns.
                xo: xs.as_ptr(),
                owt: self.owt.as_ptr(),
                c: 0,
                n_pad: self.scale.len(),
                y: y.as_mut_ptr(),
            };
            avx2::gemm_gathered(x, base, off, m, w, epi);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, off);
            panic!("PackedW8A8::run_gathered: not an AVX2 weight");
        }
    }

    /// `y [m, n]` for `x [m, k]`: the activations quantized per row as
    /// [`quantize_row_u8`] does (straight into the kernel's padded rows), then
    /// `y = ((acc - z_i·wsum_j) as f32)·(s_i·scale_j) + Σ_t x[i, o_t]·ow[j, t] + b_j`
    /// in registers as each tile finishes (f32 operations in that order: the
    /// same values as the portable path).
    pub fn run(&self, x: &[f32], m: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        let (n, k) = self.dims();
        assert!(
            x.len() >= m * k && bias.is_none_or(|b| b.len() >= n) && y.len() >= m * n,
            "PackedW8A8::run sizes"
        );
        if m == 0 || n == 0 {
            return;
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => self.run_with(&mut s, x, m, bias, y),
            // Re-entered on this thread (a rayon task of another run): fresh buffers.
            Err(_) => self.run_with(&mut Scratch::default(), x, m, bias, y),
        });
    }

    fn run_with(&self, s: &mut Scratch, x: &[f32], m: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        let (n, k) = self.dims();
        let c = self.outliers.len();
        // Grow only: the buffers keep their capacity between runs.
        s.xs.resize(m, 0.0);
        s.xz.resize(m, 0);
        // One slot per row even without outliers (so rows zip with their chunk).
        s.xo.resize(m * c.max(1), 0.0);
        let big = m * n * k >= 1 << 20 && rayon::current_num_threads() > 1;
        let outliers = &self.outliers;
        let rows = Rows {
            x,
            k,
            outliers,
            xs: &mut s.xs,
            xz: &mut s.xz,
            xo: &mut s.xo,
            parallel: big && m >= 16,
        };
        match &self.w {
            // Rows of k4 codes (the padding's code 0).
            Kernel::Vnni(_) => {
                s.xu.resize(m * k.div_ceil(4) * 4, 0);
                rows.quantize(&mut s.xu, k.div_ceil(4) * 4, |xr, q| {
                    quantize_row_padded(xr, outliers, q)
                });
            }
            // Rows of k2 int16 codes (the pad input's code 0; its weight is 0 too).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(w) => {
                s.xw.resize(m * w.k2(), 0);
                // SAFETY: AVX2 was detected when `w` was packed; each row holds k2 >= k codes.
                rows.quantize(&mut s.xw, w.k2(), |xr, q| unsafe {
                    avx2::quantize_row(xr, outliers, q)
                });
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            let epi = packed::Epilogue::W8A8 {
                xs: s.xs.as_ptr(),
                z: s.xz.as_ptr(),
                ws: self.scale.as_ptr(),
                bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                xo: s.xo.as_ptr(),
                owt: self.owt.as_ptr(),
                c,
                n_pad: self.scale.len(),
                y: y.as_mut_ptr(),
            };
            match &self.w {
                Kernel::Vnni(w) => packed::gemm(&s.xu, m, w, epi),
                Kernel::Avx2(w) => avx2::gemm(&s.xw, m, w, epi),
            }
        }
    }
}

/// One row's activation quantization: its codes, its values, its scale and
/// zero point, its outlier values.
type RowJob<'a, T> = (((&'a mut [T], &'a [f32]), (&'a mut f32, &'a mut i32)), &'a mut [f32]);

/// The activation rows of one [`PackedW8A8::run`]: `x` (`k` per row), the
/// outlier columns, and where each row's scale, zero point and outlier
/// values go.
struct Rows<'a> {
    x: &'a [f32],
    k: usize,
    outliers: &'a [usize],
    xs: &'a mut [f32],
    xz: &'a mut [i32],
    xo: &'a mut [f32],
    parallel: bool,
}

impl Rows<'_> {
    /// Quantizes every row into `codes` (rows of `row_len`) with `f`, which
    /// returns the row's scale and zero point; copies the outlier values.
    fn quantize<T: Send>(self, codes: &mut [T], row_len: usize, f: impl Fn(&[f32], &mut [T]) -> (f32, i32) + Sync) {
        let (k, c, outliers) = (self.k, self.outliers.len(), self.outliers);
        let job = |(((q, xr), (sc, zp)), xo): RowJob<T>| {
            (*sc, *zp) = f(xr, q);
            for (d, &o) in xo.iter_mut().zip(outliers) {
                *d = xr[o];
            }
        };
        if self.parallel {
            codes
                .par_chunks_mut(row_len)
                .zip(self.x.par_chunks(k.max(1)))
                .zip(self.xs.par_iter_mut().zip(self.xz.par_iter_mut()))
                .zip(self.xo.par_chunks_mut(c.max(1)))
                .with_min_len(8)
                .for_each(job);
        } else {
            codes
                .chunks_mut(row_len)
                .zip(self.x.chunks(k.max(1)))
                .zip(self.xs.iter_mut().zip(self.xz.iter_mut()))
                .zip(self.xo.chunks_mut(c.max(1)))
                .for_each(job);
        }
    }
}

/// [`quantize_row_u8`] of one row into `q` (`k4 >= k` bytes: the padding
/// gets code 0), outliers left out of the range. Returns `(s, z)`.
fn quantize_row_padded(x: &[f32], outliers: &[usize], q: &mut [u8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    {
        if vnni_available() {
            // SAFETY: AVX-512 F/BW detected; `q` holds at least `x.len()` bytes.
            return unsafe { avx512::quantize_row(x, outliers, q) };
        }
    }
    let k = x.len();
    q[k..].fill(0);
    if outliers.is_empty() {
        return quantize_row_u8(x, None, &mut q[..k]);
    }
    let mut skip = vec![false; k];
    for &o in outliers {
        skip[o] = true;
    }
    quantize_row_u8(x, Some(&skip), &mut q[..k])
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[inline(always)]
    fn tail(len: usize) -> __mmask16 {
        if len >= 16 {
            0xffff
        } else {
            ((1u32 << len) - 1) as __mmask16
        }
    }

    /// min/max of `x[a..b]` folded into `(lo, hi)`.
    #[target_feature(enable = "avx512f")]
    unsafe fn range(x: &[f32], lo: &mut __m512, hi: &mut __m512) {
        let mut p = 0;
        while p < x.len() {
            let mk = tail(x.len() - p);
            let v = _mm512_maskz_loadu_ps(mk, x.as_ptr().add(p));
            *lo = _mm512_min_ps(*lo, v);
            *hi = _mm512_max_ps(*hi, v);
            p += 16;
        }
    }

    /// The codes of [`super::quantize_row_u8`] with the row's outliers (ascending)
    /// left out of the range (their codes are don't-cares: their weights are 0);
    /// `q[x.len()..]` is zeroed. Rounding half away from zero as
    /// `trunc(t + copysign(0.49999997, t))`, exact for |t| < 2^22 (here |t| <= 256
    /// except at outliers).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn quantize_row(x: &[f32], outliers: &[usize], q: &mut [u8]) -> (f32, i32) {
        let k = x.len();
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut start = 0;
        for &o in outliers {
            range(&x[start..o], &mut lo, &mut hi);
            start = o + 1;
        }
        range(&x[start.min(k)..], &mut lo, &mut hi);
        let (lo, hi) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        q[k..].fill(0);
        if hi <= lo {
            q[..k].fill(0);
            return (1.0, 0);
        }
        let s = (hi - lo) / 255.0;
        let inv = 1.0 / s;
        let z = super::round(-lo * inv).clamp(0.0, 255.0) as i32;
        let (vinv, vz, half) = (_mm512_set1_ps(inv), _mm512_set1_epi32(z), _mm512_set1_ps(0.499_999_97));
        let sign = _mm512_set1_epi32(i32::MIN);
        let mut p = 0;
        while p < k {
            let mk = tail(k - p);
            let t = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x.as_ptr().add(p)), vinv);
            let h = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_and_si512(_mm512_castps_si512(t), sign),
                _mm512_castps_si512(half),
            ));
            let r = _mm512_cvttps_epi32(_mm512_add_ps(t, h));
            let v = _mm512_max_epi32(_mm512_add_epi32(r, vz), _mm512_setzero_si512());
            _mm_mask_storeu_epi8(q.as_mut_ptr().add(p).cast(), mk, _mm512_cvtusepi32_epi8(v));
            p += 16;
        }
        (s, z)
    }
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
mod packed {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::{PackedI8, NB};

    /// Rows per register tile.
    const MR: usize = 8;
    /// Rows and packed blocks per parallel task.
    const TASK_ROWS: usize = 32;
    const TASK_BLOCKS: usize = 4;

    /// Where tiles go: int32 sums `acc - z_i·wsum_j` into `out [m, n]`, or
    /// W8A8 outputs (row scales `xs [m]` and zero points `z [m]`, weight
    /// scales `ws [n_pad]`, optional `bias [n]` (null: none), outlier
    /// activations `xo [m, c]` and weights `owt [c, n_pad]`, `y [m, n]`).
    /// Shared by tasks that write disjoint tiles.
    #[derive(Clone, Copy)]
    pub enum Epilogue {
        Int {
            out: *mut i32,
            z: *const i32,
        },
        W8A8 {
            xs: *const f32,
            z: *const i32,
            ws: *const f32,
            bias: *const f32,
            xo: *const f32,
            owt: *const f32,
            c: usize,
            n_pad: usize,
            y: *mut f32,
        },
    }
    // SAFETY: tasks write disjoint elements (see `gemm`) and only read the rest.
    unsafe impl Send for Epilogue {}
    // SAFETY: shared across tasks only under the same disjoint-write rule as Send.
    unsafe impl Sync for Epilogue {}

    /// The caller checked that `xu` holds `m` rows of `k4` bytes (`w.k`
    /// rounded up to 4) and that the epilogue's buffers hold what
    /// [`Epilogue`] lists.
    pub fn gemm(xu: &[u8], m: usize, w: &PackedI8, epi: Epilogue) {
        let (n, k) = (w.n, w.k);
        let (k4, blocks) = (k.div_ceil(4) * 4, n.div_ceil(NB));
        if m == 0 || n == 0 || xu.len() < m * k4 {
            return;
        }
        let big = m * n * k >= 1 << 20 && rayon::current_num_threads() > 1;
        let (row_tasks, blk_tasks) = (m.div_ceil(TASK_ROWS), blocks.div_ceil(TASK_BLOCKS));
        let task = |t: usize| {
            let (i0, b0) = ((t / blk_tasks) * TASK_ROWS, (t % blk_tasks) * TASK_BLOCKS);
            let (i1, b1) = ((i0 + TASK_ROWS).min(m), (b0 + TASK_BLOCKS).min(blocks));
            for b in b0..b1 {
                let cols = (n - b * NB).min(NB);
                let mut i = i0;
                while i < i1 {
                    let rows = (i1 - i).min(MR);
                    // SAFETY: VNNI was detected when `w` was packed. Rows i..i+rows
                    // of xu (k4 bytes each), block b of the packed weights
                    // (k4·NB bytes) and its NB sums are in bounds; the tile
                    // reads the epilogue's per-row and per-output values and
                    // writes rows i..i+rows, columns b·NB..b·NB+cols of the
                    // m × n output, which no other task writes.
                    unsafe {
                        let args = Tile {
                            x: xu.as_ptr().add(i * k4),
                            k4,
                            w: w.data.as_ptr().add(b * k4 * NB),
                            wsum: w.wsum.as_ptr().add(b * NB),
                            row: i,
                            col: b * NB,
                            ld: n,
                            cols,
                            epi,
                        };
                        match rows {
                            8 => tile::<8>(args),
                            7 => tile::<7>(args),
                            6 => tile::<6>(args),
                            5 => tile::<5>(args),
                            4 => tile::<4>(args),
                            3 => tile::<3>(args),
                            2 => tile::<2>(args),
                            _ => tile::<1>(args),
                        }
                    }
                    i += rows;
                }
            }
        };
        let tasks = row_tasks * blk_tasks;
        if big {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }

    /// One tile: `x` at its first row, `w` at its packed block, the output
    /// position `(row, col)` in the `ld`-wide output, `cols` valid outputs.
    struct Tile {
        x: *const u8,
        k4: usize,
        w: *const i8,
        wsum: *const i32,
        row: usize,
        col: usize,
        ld: usize,
        cols: usize,
        epi: Epilogue,
    }

    /// `R` rows × up to 32 outputs: for every 4 inputs, two 64-byte weight
    /// loads and `2R` `vpdpbusd` against the rows' 4 bytes broadcast.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize>(t: Tile) {
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        for q in 0..t.k4 / 4 {
            let wp = t.w.add(q * 4 * NB);
            let w0 = _mm512_loadu_si512(wp.cast());
            let w1 = _mm512_loadu_si512(wp.add(64).cast());
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_epi32(t.x.add(r * t.k4 + q * 4).cast::<i32>().read_unaligned());
                a[0] = _mm512_dpbusd_epi32(a[0], xv, w0);
                a[1] = _mm512_dpbusd_epi32(a[1], xv, w1);
            }
        }
        let s0 = _mm512_loadu_si512(t.wsum.cast());
        let s1 = _mm512_loadu_si512(t.wsum.add(16).cast());
        let m0 = ((1u32 << t.cols.min(16)) - 1) as __mmask16;
        let m1 = ((1u32 << t.cols.saturating_sub(16)) - 1) as __mmask16;
        // acc - z·wsum, exact.
        let centered =
            |a: __m512i, s: __m512i, z: i32| _mm512_sub_epi32(a, _mm512_mullo_epi32(_mm512_set1_epi32(z), s));
        match t.epi {
            Epilogue::Int { out, z } => {
                for (r, a) in acc.iter().enumerate() {
                    let zr = *z.add(t.row + r);
                    let o = out.add((t.row + r) * t.ld + t.col);
                    _mm512_mask_storeu_epi32(o, m0, centered(a[0], s0, zr));
                    _mm512_mask_storeu_epi32(o.add(16), m1, centered(a[1], s1, zr));
                }
            }
            Epilogue::W8A8 {
                xs,
                z,
                ws,
                bias,
                xo,
                owt,
                c,
                n_pad,
                y,
            } => {
                // Scales are padded to whole blocks: plain loads.
                let (ws0, ws1) = (_mm512_loadu_ps(ws.add(t.col)), _mm512_loadu_ps(ws.add(t.col + 16)));
                let (b0, b1) = if bias.is_null() {
                    (_mm512_setzero_ps(), _mm512_setzero_ps())
                } else {
                    (
                        _mm512_maskz_loadu_ps(m0, bias.add(t.col)),
                        _mm512_maskz_loadu_ps(m1, bias.add(t.col + 16)),
                    )
                };
                for (r, a) in acc.iter().enumerate() {
                    let (sx, zr) = (_mm512_set1_ps(*xs.add(t.row + r)), *z.add(t.row + r));
                    // The outlier products, left to right over the outliers
                    // (row by row: no registers held across rows).
                    let (mut o0, mut o1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                    for tt in 0..c {
                        let ow = owt.add(tt * n_pad + t.col);
                        let xv = _mm512_set1_ps(*xo.add((t.row + r) * c + tt));
                        o0 = _mm512_add_ps(o0, _mm512_mul_ps(xv, _mm512_loadu_ps(ow)));
                        o1 = _mm512_add_ps(o1, _mm512_mul_ps(xv, _mm512_loadu_ps(ow.add(16))));
                    }
                    let f = |v: __m512i, s: __m512i, wv: __m512, ov: __m512, bv: __m512| {
                        let v = _mm512_cvtepi32_ps(centered(v, s, zr));
                        _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(v, _mm512_mul_ps(sx, wv)), ov), bv)
                    };
                    let dst = y.add((t.row + r) * t.ld + t.col);
                    _mm512_mask_storeu_ps(dst, m0, f(a[0], s0, ws0, o0, b0));
                    _mm512_mask_storeu_ps(dst.add(16), m1, f(a[1], s1, ws1, o1, b1));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    /// Output columns (weight rows) per parallel task.
    const COLS_PER_TASK: usize = 32;

    /// Unsigned rows `xu` against signed rows `w`; the caller checked sizes and CPU features.
    pub fn gemm(xu: &[u8], m: usize, w: &[i8], n: usize, k: usize, out: &mut [i32]) {
        let big = m * n * k >= 1 << 20;
        let tasks: Vec<usize> = (0..n).step_by(COLS_PER_TASK).collect();
        // Each task fills a column block [m, cols] of its own.
        let run = |&j0: &usize| -> Vec<i32> {
            let j1 = (j0 + COLS_PER_TASK).min(n);
            let cols = j1 - j0;
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
pub(crate) mod tests {
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
        for (m, n, k) in [
            (1, 1, 1),
            (3, 5, 17),
            (5, 9, 64),
            (7, 3, 130),
            (1, 70, 1000),
            (19, 33, 7),
            (70, 300, 100),
            (130, 70, 515),
        ] {
            let x: Vec<i8> = (0..m * k).map(|_| (rng.next_u64() % 255) as i64 as i8).collect();
            let w: Vec<i8> = (0..n * k).map(|_| (rng.next_u64() % 255) as i64 as i8).collect();
            let mut got = vec![0; m * n];
            gemm_i8(&x, m, &w, n, k, &mut got);
            if let Some(p) = PackedI8::new(&w, n, k) {
                let mut packed = vec![0; m * n];
                gemm_i8_packed(&x, m, &p, &mut packed);
                assert_eq!(packed, got, "packed {m}x{n}x{k}");
            }
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

    /// The AVX2 kernel's int32 sums equal a plain loop's on odd shapes, with
    /// the extreme codes (255 × ±127, -128) where `vpmaddubsw` would saturate.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_gemm_is_exact() {
        let mut rng = crate::ops::CaseRng::new(11);
        for (m, n, k) in [
            (1, 1, 1),
            (2, 3, 3),
            (7, 17, 5),
            (13, 16, 9),
            (6, 31, 72),
            (19, 33, 127),
            (70, 9, 1001),
            (131, 70, 515),
        ] {
            for extreme in [false, true] {
                let x: Vec<u8> = (0..m * k)
                    .map(|_| if extreme { 255 } else { (rng.next_u64() % 256) as u8 })
                    .collect();
                let w: Vec<i8> = (0..n * k)
                    .map(|i| match (extreme, i % 3) {
                        (true, 0) => 127,
                        (true, 1) => -127,
                        (true, _) => -128,
                        _ => (rng.next_u64() % 256) as u8 as i8,
                    })
                    .collect();
                let Some(p) = avx2::PackedI16::new(&w, n, k) else {
                    eprintln!("SKIPPED avx2_gemm_is_exact: no AVX2");
                    return;
                };
                let mut got = vec![7; m * n];
                avx2::gemm_u8i8_packed(&x, m, &p, &mut got);
                for i in 0..m {
                    for j in 0..n {
                        let want: i32 = (0..k).map(|p| x[i * k + p] as i32 * w[j * k + p] as i32).sum();
                        assert_eq!(got[i * n + j], want, "{m}x{n}x{k} extreme {extreme} at ({i}, {j})");
                    }
                }
            }
        }
    }

    /// The AVX2 row quantizer gives [`quantize_rows_u8`]'s scales, zero
    /// points and codes (outlier codes are don't-cares), with zeroed padding.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_activation_quantization_matches_portable() {
        if !avx2::available() {
            eprintln!("SKIPPED avx2_activation_quantization_matches_portable: no AVX2");
            return;
        }
        let mut rng = crate::ops::CaseRng::new(13);
        for k in [2, 5, 8, 9, 16, 17, 72, 300, 385] {
            let mut x = activation_rows(&mut rng, 12, k);
            x[5] = f32::NAN;
            for outliers in [vec![], vec![k / 2], vec![0, k - 1]] {
                let (q, s, z) = quantize_rows_u8(&x, k, &outliers);
                for i in 0..12 {
                    let mut fast = vec![7i16; k + 3];
                    // SAFETY: AVX2 checked above; `fast` holds k + 3 codes.
                    let (fs, fz) = unsafe { avx2::quantize_row(&x[i * k..(i + 1) * k], &outliers, &mut fast) };
                    assert_eq!((fs.to_bits(), fz), (s[i].to_bits(), z[i]), "k {k} row {i} {outliers:?}");
                    for p in 0..k + 3 {
                        let want = if p >= k { 0 } else { q[i * k + p] as i16 };
                        if !outliers.contains(&p) {
                            assert_eq!(fast[p], want, "k {k} row {i} col {p} {outliers:?}");
                        }
                    }
                }
            }
        }
    }

    /// Rows that exercise the activation quantizer: random, all zero, one
    /// sign only, exact .5 ties (range 0..255 gives s = 1), huge outliers.
    pub(crate) fn activation_rows(rng: &mut crate::ops::CaseRng, m: usize, k: usize) -> Vec<f32> {
        let mut x = rng.tensor(&[m, k], -3.0, 2.0).to_f32_vec();
        for (i, row) in x.chunks_mut(k).enumerate() {
            match i % 5 {
                1 => row.fill(0.0),
                2 => row.iter_mut().for_each(|v| *v = v.abs() + 0.25),
                3 => {
                    for (p, v) in row.iter_mut().enumerate() {
                        *v = (p % 255) as f32 + 0.5;
                    }
                    row[0] = 0.0;
                    row[k - 1] = 255.0;
                }
                4 => row[k / 2] = 1e6,
                _ => {}
            }
        }
        x
    }

    #[test]
    fn fast_activation_quantization_matches_portable() {
        let mut rng = crate::ops::CaseRng::new(7);
        for k in [1, 5, 16, 17, 300, 384] {
            let x = activation_rows(&mut rng, 10, k.max(2));
            let k = k.max(2);
            for outliers in [vec![], vec![k / 2], vec![0, k - 1]] {
                let (q, s, z) = quantize_rows_u8(&x, k, &outliers);
                let k4 = k.div_ceil(4) * 4;
                for i in 0..10 {
                    let mut fast = vec![7u8; k4];
                    let (fs, fz) = quantize_row_padded(&x[i * k..(i + 1) * k], &outliers, &mut fast);
                    assert_eq!((fs.to_bits(), fz), (s[i].to_bits(), z[i]), "k {k} row {i} {outliers:?}");
                    for p in 0..k4 {
                        if p >= k {
                            assert_eq!(fast[p], 0, "padding");
                        } else if !outliers.contains(&p) {
                            assert_eq!(fast[p], q[i * k + p], "k {k} row {i} col {p} {outliers:?}");
                        }
                    }
                }
            }
        }
    }
}
