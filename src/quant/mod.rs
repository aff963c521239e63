//! Weight formats as data: what a quantized weight is (value type,
//! granularity, packing), how to pack an f32 `[out, in]` weight into it, and
//! the reference dequantization every kernel is checked against.
//!
//! Packed bits live in `u8` tensors whose bytes are little-endian `u32`
//! words (WGSL has no 8-bit storage type), so a GPU kernel binds the same
//! bytes the model file stores. Rows are padded to a whole number of words
//! (int4: of blocks; binary: of 32 bits); padding is zero.
#![forbid(unsafe_code)]

pub mod gptq;
pub mod gptq_ggml;
mod pack;

use std::fmt;
use std::str::FromStr;

use half::f16;
use serde::{Deserialize, Serialize};

pub use crate::linalg::round;
pub use pack::{pack_bits, pack_nibbles, unpack_bits, unpack_nibbles};

use crate::error::OpError;
use crate::tensor::{DType, Tensor};

/// A weight format. Every format quantizes a 2-D `[out, in]` weight along
/// its input axis; scales are per output channel unless the format says
/// otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WeightFormat {
    /// IEEE half floats. Tensors: `weight f16 [out, in]`.
    F16,
    /// int8 per output channel. Symmetric: `w = q·s`, q in [-127, 127];
    /// tensors `q i8 [out, in]`, `scale f32 [out]`. Affine: `w = (q - z)·s`,
    /// q and z in [0, 255]; tensors `q u8 [out, in]`, `scale f32 [out]`, `zero u8 [out]`.
    Int8 {
        /// Affine (with a zero point) rather than symmetric.
        affine: bool,
    },
    /// Power-of-two fixed point: `x_int = round(x·2^p)` in int8, so
    /// `w = q·2^-p` (dequantization is an exponent shift). `p` per channel or
    /// per tensor, chosen as the largest that uses the int8 range without
    /// clipping unless fixed. Tensors: `q i8 [out, in]`, `shift i8 [out]` (or `[1]`).
    Pow2 {
        /// One `p` per output channel (else one for the tensor).
        per_channel: bool,
        /// A user-fixed `p` (values beyond int8 are clipped).
        fixed_shift: Option<i8>,
    },
    /// int4 in blocks of `block` inputs with an f16 scale per block.
    /// Symmetric: `w = q·s`, q in [-8, 7] stored as `q + 8`. With a per-block
    /// minimum: `w = q·s + min`, q in [0, 15]. Tensors: `q u8 [out, padded_in/2]`,
    /// `scale f16 [out, blocks]` (and `min f16 [out, blocks]`).
    Int4 {
        /// Inputs per block: 32, 64 or 128.
        block: u32,
        /// Blocks carry a minimum (asymmetric) rather than being symmetric.
        with_min: bool,
    },
    /// One sign bit per weight, `w ≈ α·sign(w)` with `α = mean|w|` per
    /// channel. With `xnor`, activations are binarized at run time too
    /// (`x ≈ β·sign(x)`, `β = mean|x|` per row) and the dot product is
    /// XNOR + popcount. Tensors: `bits u8 [out, words·4]`, `alpha f32 [out]`.
    Binary {
        /// Binarize activations too.
        xnor: bool,
    },
    /// int8 weights (symmetric, per channel) and u8 activations quantized
    /// per row at run time (asymmetric: a scale and a zero point per row);
    /// int32 accumulation. `outliers` input channels (chosen at quantize
    /// time) stay in f32 on both sides. Tensors: `q i8 [out, in]` (outlier
    /// columns 0), `scale f32 [out]`, `wsum i32 [out]` (`Σ_k q[j, k]`), and
    /// with outliers `outlier_index i32 [c]` (strictly ascending) and
    /// `outlier_weight f32 [out, c]`. The arithmetic:
    /// [`quantize_rows_u8`](crate::linalg::int8::quantize_rows_u8)
    /// and `QLinear`'s reference (`src/ops/qlinear.rs`).
    #[serde(rename = "w8a8", alias = "w8-a8")]
    W8A8 {
        /// Input channels kept in f32 (0: none).
        #[serde(default)]
        outliers: u32,
    },
    /// N:M structured sparsity: in every group of `m` consecutive inputs at
    /// most `n` weights are non-zero; only those are stored, as f32 values
    /// with their positions in the group (4-bit indices, two per byte).
    /// Tensors: `values f32 [out, groups·n]`, `index u8 [out, ⌈groups·n/2⌉]`.
    /// Packing keeps the `n` largest |w| of each group (a pruning step).
    NM {
        /// Kept weights per group.
        n: u8,
        /// Group size (at most 16).
        m: u8,
    },
}

impl WeightFormat {
    /// The name used on the command line (`int8`, `int4`, `w8a8`, ...).
    pub fn name(&self) -> String {
        match self {
            WeightFormat::F16 => "f16".into(),
            WeightFormat::Int8 { affine: false } => "int8".into(),
            WeightFormat::Int8 { affine: true } => "int8-affine".into(),
            WeightFormat::Pow2 {
                per_channel,
                fixed_shift,
            } => {
                let mut s = if *per_channel {
                    "pow2".to_string()
                } else {
                    "pow2-tensor".to_string()
                };
                if let Some(p) = fixed_shift {
                    s.push_str(&format!("(p={p})"));
                }
                s
            }
            WeightFormat::Int4 { block, with_min } => {
                format!(
                    "int4{}{}",
                    if *with_min { "-min" } else { "" },
                    if *block == 32 {
                        String::new()
                    } else {
                        format!("/{block}")
                    }
                )
            }
            WeightFormat::Binary { xnor: false } => "binary".into(),
            WeightFormat::Binary { xnor: true } => "binary-xnor".into(),
            WeightFormat::W8A8 { outliers: 0 } => "w8a8".into(),
            WeightFormat::W8A8 { outliers } => format!("w8a8+o{outliers}"),
            WeightFormat::NM { n, m } => format!("{n}:{m}"),
        }
    }

    /// Names of the packed tensors, in the order the `QLinear` op takes them.
    pub fn tensor_names(&self) -> &'static [&'static str] {
        match self {
            WeightFormat::F16 => &["weight"],
            WeightFormat::Int8 { affine: false } => &["q", "scale"],
            WeightFormat::W8A8 { outliers: 0 } => &["q", "scale", "wsum"],
            WeightFormat::W8A8 { .. } => &["q", "scale", "wsum", "outlier_index", "outlier_weight"],
            WeightFormat::Int8 { affine: true } => &["q", "scale", "zero"],
            WeightFormat::Pow2 { .. } => &["q", "shift"],
            WeightFormat::Int4 { with_min: false, .. } => &["q", "scale"],
            WeightFormat::Int4 { with_min: true, .. } => &["q", "scale", "min"],
            WeightFormat::Binary { .. } => &["bits", "alpha"],
            WeightFormat::NM { .. } => &["values", "index"],
        }
    }

    /// Checks parameters (block sizes).
    pub fn validate(&self) -> Result<(), OpError> {
        if let WeightFormat::NM { n, m } = self {
            if *n == 0 || n > m || *m > 16 {
                return Err(OpError::Attribute {
                    name: "format".into(),
                    message: format!("N:M sparsity needs 0 < N <= M <= 16, got {n}:{m}"),
                });
            }
        }
        if let WeightFormat::Int4 { block, .. } = self {
            if ![32, 64, 128].contains(block) {
                return Err(OpError::Attribute {
                    name: "format.block".into(),
                    message: format!("int4 block must be 32, 64 or 128, got {block}"),
                });
            }
        }
        Ok(())
    }

    /// The expected dtype and shape of each packed tensor for `[out, in]`.
    pub fn tensor_specs(&self, out: usize, inp: usize) -> Vec<(DType, Vec<usize>)> {
        match *self {
            WeightFormat::F16 => vec![(DType::F16, vec![out, inp])],
            WeightFormat::Int8 { affine: false } => vec![(DType::I8, vec![out, inp]), (DType::F32, vec![out])],
            WeightFormat::W8A8 { outliers } => {
                let mut v = vec![
                    (DType::I8, vec![out, inp]),
                    (DType::F32, vec![out]),
                    (DType::I32, vec![out]),
                ];
                if outliers > 0 {
                    v.push((DType::I32, vec![outliers as usize]));
                    v.push((DType::F32, vec![out, outliers as usize]));
                }
                v
            }
            WeightFormat::Int8 { affine: true } => {
                vec![
                    (DType::U8, vec![out, inp]),
                    (DType::F32, vec![out]),
                    (DType::U8, vec![out]),
                ]
            }
            WeightFormat::Pow2 { per_channel, .. } => {
                vec![
                    (DType::I8, vec![out, inp]),
                    (DType::I8, vec![if per_channel { out } else { 1 }]),
                ]
            }
            WeightFormat::Int4 { block, with_min } => {
                let blocks = inp.div_ceil(block as usize);
                let mut v = vec![
                    (DType::U8, vec![out, blocks * block as usize / 2]),
                    (DType::F16, vec![out, blocks]),
                ];
                if with_min {
                    v.push((DType::F16, vec![out, blocks]));
                }
                v
            }
            WeightFormat::Binary { .. } => vec![(DType::U8, vec![out, inp.div_ceil(32) * 4]), (DType::F32, vec![out])],
            WeightFormat::NM { n, m } => {
                let kept = inp.div_ceil(m as usize) * n as usize;
                vec![(DType::F32, vec![out, kept]), (DType::U8, vec![out, kept.div_ceil(2)])]
            }
        }
    }

    /// Bytes of packed storage for an `[out, in]` weight.
    pub fn packed_bytes(&self, out: usize, inp: usize) -> usize {
        self.tensor_specs(out, inp)
            .iter()
            .map(|(d, s)| d.size_in_bytes() * s.iter().product::<usize>())
            .sum()
    }

    /// The half-width of one quantization step for each weight, as a bound on
    /// the rounding error of in-range values (`None`: no such bound, binary).
    pub fn step_bound(&self, packed: &[Tensor], out: usize, inp: usize) -> Option<Vec<f32>> {
        let scales = |t: &Tensor| t.to_f32_vec();
        Some(match *self {
            WeightFormat::F16 => return None,
            WeightFormat::Int8 { .. } => {
                let s = scales(&packed[1]);
                (0..out * inp).map(|i| s[i / inp] / 2.0).collect()
            }
            WeightFormat::W8A8 { outliers } => {
                let s = scales(&packed[1]);
                let mut b: Vec<f32> = (0..out * inp).map(|i| s[i / inp] / 2.0).collect();
                // Outlier columns are stored exactly.
                if outliers > 0 {
                    for c in packed.get(3)?.to_i64_vec() {
                        let c = usize::try_from(c).ok().filter(|&c| c < inp)?;
                        for r in 0..out {
                            b[r * inp + c] = 0.0;
                        }
                    }
                }
                b
            }
            WeightFormat::Pow2 { per_channel, .. } => {
                let p = packed[1].to_i64_vec();
                (0..out * inp)
                    .map(|i| 0.5 * (2.0f32).powi(-(p[if per_channel { i / inp } else { 0 }] as i32)))
                    .collect()
            }
            WeightFormat::Int4 { block, .. } => {
                let s = scales(&packed[1]);
                let blocks = inp.div_ceil(block as usize);
                (0..out * inp)
                    .map(|i| s[(i / inp) * blocks + (i % inp) / block as usize] / 2.0)
                    .collect()
            }
            WeightFormat::Binary { .. } | WeightFormat::NM { .. } => return None,
        })
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = String;

    /// `f16`, `int8`, `int8-affine`, `pow2`, `pow2-tensor`, `int4`, `int4-min`
    /// (block 32; `int4/64`, `int4-min/128` choose the block), `binary`,
    /// `binary-xnor`, `w8a8` (`w8a8+o8`: 8 input channels kept in f32).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let (base, block) = match s.split_once('/') {
            Some((b, n)) => (
                b.to_string(),
                Some(n.parse::<u32>().map_err(|_| format!("bad block size in `{s}`"))?),
            ),
            None => (s.clone(), None),
        };
        let f = match base.as_str() {
            "f16" | "fp16" => WeightFormat::F16,
            "int8" | "i8" => WeightFormat::Int8 { affine: false },
            "int8-affine" | "uint8" => WeightFormat::Int8 { affine: true },
            "pow2" => WeightFormat::Pow2 { per_channel: true, fixed_shift: None },
            "pow2-tensor" => WeightFormat::Pow2 { per_channel: false, fixed_shift: None },
            "int4" => WeightFormat::Int4 { block: block.unwrap_or(32), with_min: false },
            "int4-min" => WeightFormat::Int4 { block: block.unwrap_or(32), with_min: true },
            "binary" => WeightFormat::Binary { xnor: false },
            "binary-xnor" | "xnor" => WeightFormat::Binary { xnor: true },
            "w8a8" => WeightFormat::W8A8 { outliers: 0 },
            w if w.starts_with("w8a8+o") => WeightFormat::W8A8 {
                outliers: w["w8a8+o".len()..]
                    .parse::<u32>()
                    .map_err(|_| format!("bad outlier count in `{s}` (w8a8+o<count>)"))?,
            },
            nm if nm.contains(':') => {
                let (n, m) = nm.split_once(':').unwrap_or_default();
                let parse = |v: &str| v.parse::<u8>().map_err(|_| format!("bad N:M pattern `{nm}`"));
                WeightFormat::NM { n: parse(n)?, m: parse(m)? }
            }
            _ => {
                return Err(format!(
                    "unknown weight format `{s}`; choose f16, int8, int8-affine, pow2, pow2-tensor, int4, int4-min, binary, binary-xnor, w8a8 or w8a8+o<outliers>"
                ))
            }
        };
        if block.is_some() && !matches!(f, WeightFormat::Int4 { .. }) {
            return Err(format!("`{s}`: only int4 formats take a block size"));
        }
        f.validate().map_err(|e| e.to_string())?;
        Ok(f)
    }
}

/// The signed int4 code (-8..=7) of `x` under scale `s`.
#[inline]
fn int4_code(x: f32, s: f32) -> f32 {
    round(x / s).clamp(-8.0, 7.0)
}

/// The unsigned int4 code (0..=15) of `x` under scale `s` and minimum `m`.
#[inline]
fn int4_min_code(x: f32, s: f32, m: f32) -> u8 {
    round((x - m) / s).clamp(0.0, 15.0) as u8
}

/// A usable f16 scale near `s`: finite and non-zero (tiny blocks get the
/// smallest f16 step, huge ones the largest).
fn f16_scale(s: f32) -> f16 {
    let h = f16::from_f32(s);
    if !h.is_finite() {
        f16::MAX
    } else if h.to_f32() <= 0.0 {
        f16::from_bits(1)
    } else {
        h
    }
}

/// Squared reconstruction error of a block under signed int4 scale `s`.
fn int4_sq_error(vals: &[f32], s: f32) -> f32 {
    vals.iter().map(|&x| (x - int4_code(x, s) * s).powi(2)).sum()
}

/// Candidate divisors of max|w| for the symmetric int4 scale: 7 (no clipping,
/// plain round-to-nearest) up to 10 (the largest values clip, the rest get a
/// finer step), in steps of 0.1.
const INT4_DIVISORS: std::ops::RangeInclusive<u32> = 70..=100;

/// The f16 scale of a signed int4 block: the candidate with the least squared
/// reconstruction error, computed with the f16-rounded scale (as llama.cpp's
/// `make_qx_quants` searches). Candidates are max|w|/c for c in 7.0..=10.0;
/// c = 7 is plain round-to-nearest, so the block's error is never above it.
/// (Refitting each candidate's scale by least squares, Σw·q/Σq², doubled the
/// cost and did not move MiniLM's cosines.)
fn int4_block_scale(vals: &[f32]) -> f16 {
    let max = vals.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    if max <= 0.0 || !max.is_finite() {
        return f16::ONE;
    }
    let mut best = f16_scale(max / 7.0);
    let mut best_err = int4_sq_error(vals, best.to_f32());
    for c in INT4_DIVISORS {
        let s = f16_scale(max * 10.0 / c as f32);
        let e = int4_sq_error(vals, s.to_f32());
        if e < best_err {
            (best, best_err) = (s, e);
        }
    }
    best
}

/// Squared reconstruction error of a block under scale `s` and minimum `m`.
fn int4_min_sq_error(vals: &[f32], s: f32, m: f32) -> f32 {
    vals.iter()
        .map(|&x| (x - (int4_min_code(x, s, m) as f32 * s + m)).powi(2))
        .sum()
}

/// The f16 (scale, minimum) of an int4-min block: the candidate with the
/// least squared reconstruction error, computed with f16-rounded values.
/// Candidates: the block's [min, max] in 15 steps (plain round-to-nearest, so
/// the block's error is never above it), and for 21 inverse scales
/// (14 + 0.1·k)/(max - min) the codes they give with the scale and minimum
/// refitted to them by least squares (llama.cpp's `make_qkx2_quants`).
fn int4_min_block(vals: &[f32]) -> (f16, f16) {
    let lo = vals.iter().fold(f32::INFINITY, |m, &x| m.min(x));
    let hi = vals.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let min = f16::from_f32(lo);
    if hi <= lo || !(hi - lo).is_finite() {
        return (f16::ONE, min);
    }
    let mut best = (f16_scale((hi - min.to_f32()) / 15.0), min);
    let mut best_err = int4_min_sq_error(vals, best.0.to_f32(), best.1.to_f32());
    let n = vals.len() as f32;
    let (sum_x, range) = (vals.iter().sum::<f32>(), hi - lo);
    for k in 0..=20 {
        let iscale = (14.0 + 0.1 * k as f32) / range;
        let (mut sq, mut sqq, mut sxq) = (0.0f32, 0.0f32, 0.0f32);
        for &x in vals {
            let q = round(iscale * (x - lo)).clamp(0.0, 15.0);
            sq += q;
            sqq += q * q;
            sxq += x * q;
        }
        let det = n * sqq - sq * sq;
        if det <= 0.0 {
            continue;
        }
        let s = (n * sxq - sq * sum_x) / det;
        if !s.is_finite() || s <= 0.0 {
            continue;
        }
        let m = (sum_x - s * sq) / n;
        let (sh, mh) = (f16_scale(s), f16::from_f32(m));
        if !mh.is_finite() {
            continue;
        }
        let e = int4_min_sq_error(vals, sh.to_f32(), mh.to_f32());
        if e < best_err {
            best_err = e;
            best = (sh, mh);
        }
    }
    best
}

/// Packs an f32 `[out, in]` weight (row-major) into `format`'s tensors.
pub fn quantize_weight(format: &WeightFormat, w: &[f32], out: usize, inp: usize) -> Result<Vec<Tensor>, OpError> {
    format.validate()?;
    if w.len() != out * inp {
        return Err(OpError::Shape(format!(
            "weight has {} elements, not {out}x{inp}",
            w.len()
        )));
    }
    let rows = || w.chunks(inp.max(1));
    let t = |shape: Vec<usize>, v: crate::tensor::Storage| Tensor::new(shape, v).map_err(OpError::from);
    use crate::tensor::Storage as S;
    Ok(match *format {
        WeightFormat::F16 => vec![t(
            vec![out, inp],
            S::F16(w.iter().map(|&x| f16::from_f32(x)).collect()),
        )?],
        WeightFormat::W8A8 { outliers } => {
            let cols = default_outlier_columns(w, out, inp, outliers as usize)?;
            quantize_w8a8(w, out, inp, &cols)?
        }
        WeightFormat::Int8 { affine: false } => {
            let mut q = Vec::with_capacity(w.len());
            let mut scales = Vec::with_capacity(out);
            for row in rows() {
                let max = row.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
                let s = if max > 0.0 { max / 127.0 } else { 1.0 };
                scales.push(s);
                q.extend(row.iter().map(|&x| round(x / s).clamp(-127.0, 127.0) as i8));
            }
            vec![t(vec![out, inp], S::I8(q))?, t(vec![out], S::F32(scales))?]
        }
        WeightFormat::Int8 { affine: true } => {
            let (mut q, mut scales, mut zeros) = (Vec::with_capacity(w.len()), Vec::new(), Vec::new());
            for row in rows() {
                // The range includes 0 so that 0 is exactly representable.
                let lo = row.iter().fold(0.0f32, |m, &x| m.min(x));
                let hi = row.iter().fold(0.0f32, |m, &x| m.max(x));
                let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
                let z = round(-lo / s).clamp(0.0, 255.0);
                scales.push(s);
                zeros.push(z as u8);
                q.extend(row.iter().map(|&x| (round(x / s) + z).clamp(0.0, 255.0) as u8));
            }
            vec![
                t(vec![out, inp], S::U8(q))?,
                t(vec![out], S::F32(scales))?,
                t(vec![out], S::U8(zeros))?,
            ]
        }
        WeightFormat::Pow2 {
            per_channel,
            fixed_shift,
        } => {
            let choose = |max: f32| -> i8 {
                if let Some(p) = fixed_shift {
                    return p;
                }
                if max <= 0.0 {
                    return 0;
                }
                // Largest p with max·2^p <= 127 (so round() stays in range).
                let p = (127.0 / max).log2().floor();
                p.clamp(-128.0, 127.0) as i8
            };
            let shifts: Vec<i8> = if per_channel {
                rows()
                    .map(|r| choose(r.iter().fold(0.0f32, |m, &x| m.max(x.abs()))))
                    .collect()
            } else {
                vec![choose(w.iter().fold(0.0f32, |m, &x| m.max(x.abs())))]
            };
            let mut q = Vec::with_capacity(w.len());
            for (i, row) in rows().enumerate() {
                let p = shifts[if per_channel { i } else { 0 }] as i32;
                q.extend(
                    row.iter()
                        .map(|&x| round(libm::ldexpf(x, p)).clamp(-128.0, 127.0) as i8),
                );
            }
            let n = shifts.len();
            vec![t(vec![out, inp], S::I8(q))?, t(vec![n], S::I8(shifts))?]
        }
        WeightFormat::Int4 { block, with_min } => {
            let block = block as usize;
            let blocks = inp.div_ceil(block);
            let padded = blocks * block;
            let mut nibbles = Vec::with_capacity(out * padded);
            let (mut scales, mut mins) = (Vec::with_capacity(out * blocks), Vec::new());
            // The per-block search is the costly part: blocks in parallel.
            let block_vals = |i: usize| {
                let (r, b) = (i / blocks, i % blocks);
                &w[r * inp + b * block..r * inp + ((b + 1) * block).min(inp)]
            };
            let chosen: Vec<(f16, f16)> = {
                use rayon::prelude::*;
                (0..out * blocks)
                    .into_par_iter()
                    .map(|i| {
                        if with_min {
                            int4_min_block(block_vals(i))
                        } else {
                            (int4_block_scale(block_vals(i)), f16::ZERO)
                        }
                    })
                    .collect()
            };
            for (r, row) in rows().enumerate() {
                for b in 0..blocks {
                    let vals = &row[b * block..((b + 1) * block).min(inp)];
                    let (s, min) = chosen[r * blocks + b];
                    if with_min {
                        let (sf, mf) = (s.to_f32(), min.to_f32());
                        nibbles.extend(vals.iter().map(|&x| int4_min_code(x, sf, mf)));
                        scales.push(s);
                        mins.push(min);
                    } else {
                        let sf = s.to_f32();
                        nibbles.extend(vals.iter().map(|&x| (int4_code(x, sf) + 8.0) as u8));
                        scales.push(s);
                    }
                    // Padding of the last block: the stored value of zero.
                    let pad = block - vals.len();
                    nibbles.extend(std::iter::repeat_n(if with_min { 0 } else { 8 }, pad));
                }
            }
            let mut v = vec![
                t(vec![out, padded / 2], S::U8(pack_nibbles(&nibbles)))?,
                t(vec![out, blocks], S::F16(scales))?,
            ];
            if with_min {
                v.push(t(vec![out, blocks], S::F16(mins))?);
            }
            v
        }
        WeightFormat::NM { n, m } => {
            let (n, m) = (n as usize, m as usize);
            let groups = inp.div_ceil(m);
            let (mut values, mut index) = (
                Vec::with_capacity(out * groups * n),
                Vec::with_capacity(out * groups * n),
            );
            for row in rows() {
                let mut idx_row = Vec::with_capacity(groups * n);
                for g in 0..groups {
                    let group = &row[g * m..((g + 1) * m).min(inp)];
                    let mut order: Vec<usize> = (0..group.len()).collect();
                    // Largest |w| first; ties keep the earlier position.
                    order.sort_by(|&a, &b| group[b].abs().total_cmp(&group[a].abs()).then(a.cmp(&b)));
                    let mut kept: Vec<usize> = order.into_iter().take(n).collect();
                    kept.sort_unstable();
                    for t in 0..n {
                        match kept.get(t) {
                            Some(&c) => {
                                values.push(group[c]);
                                idx_row.push(c as u8);
                            }
                            None => {
                                values.push(0.0);
                                idx_row.push(0);
                            }
                        }
                    }
                }
                index.extend(pack_nibbles(&idx_row));
            }
            let kept = groups * n;
            vec![
                t(vec![out, kept], S::F32(values))?,
                t(vec![out, kept.div_ceil(2)], S::U8(index))?,
            ]
        }
        WeightFormat::Binary { .. } => {
            let words = inp.div_ceil(32);
            let mut bytes = Vec::with_capacity(out * words * 4);
            let mut alpha = Vec::with_capacity(out);
            for row in rows() {
                alpha.push(if inp == 0 {
                    0.0
                } else {
                    row.iter().map(|x| x.abs()).sum::<f32>() / inp as f32
                });
                let signs: Vec<bool> = row.iter().map(|&x| x >= 0.0).collect();
                bytes.extend(pack_bits(&signs, words));
            }
            vec![t(vec![out, words * 4], S::U8(bytes))?, t(vec![out], S::F32(alpha))?]
        }
    })
}

/// Checks packed tensors against the format's specs for `[out, in]`: their
/// dtypes and shapes ([`check_packed_shapes`]) and, for W8A8, their contents
/// (`wsum` is the row sums of `q`; the outlier index is strictly ascending
/// and in range, and `q` is zero in those columns).
pub fn check_packed(format: &WeightFormat, packed: &[&Tensor], out: usize, inp: usize) -> Result<(), OpError> {
    check_packed_shapes(format, packed, out, inp)?;
    if let WeightFormat::W8A8 { outliers } = *format {
        check_w8a8(packed, out, inp, outliers as usize)?;
    }
    Ok(())
}

fn check_w8a8(packed: &[&Tensor], out: usize, inp: usize, c: usize) -> Result<(), OpError> {
    let bad = |tensor: &str, message: String| OpError::PackedData {
        tensor: tensor.into(),
        message,
    };
    let (q, wsum) = (packed[0].as_slice::<i8>()?, packed[2].as_slice::<i32>()?);
    if c > 0 {
        let idx = packed[3].as_slice::<i32>()?;
        for (t, &col) in idx.iter().enumerate() {
            if col < 0 || col as usize >= inp {
                return Err(bad("outlier_index", format!("entry {t} is {col}, outside 0..{inp}")));
            }
            if t > 0 && col <= idx[t - 1] {
                return Err(bad(
                    "outlier_index",
                    format!("must be strictly ascending; entry {t} is {col} after {}", idx[t - 1]),
                ));
            }
        }
        for r in 0..out {
            for &col in idx {
                let v = q[r * inp + col as usize];
                if v != 0 {
                    return Err(bad(
                        "q",
                        format!("row {r} has {v} in outlier column {col}; outlier columns must be 0"),
                    ));
                }
            }
        }
    }
    for (r, row) in q.chunks_exact(inp.max(1)).take(out).enumerate() {
        let sum: i64 = row.iter().map(|&v| v as i64).sum();
        if sum != wsum[r] as i64 {
            return Err(bad(
                "wsum",
                format!("row {r} is {}, but the row of q sums to {sum}", wsum[r]),
            ));
        }
    }
    Ok(())
}

/// Checks the packed tensors' count, dtypes and shapes against the format's
/// specs for `[out, in]` (not their contents: see [`check_packed`]).
pub fn check_packed_shapes(format: &WeightFormat, packed: &[&Tensor], out: usize, inp: usize) -> Result<(), OpError> {
    let specs = format.tensor_specs(out, inp);
    if packed.len() != specs.len() {
        return Err(OpError::Shape(format!(
            "format {format} takes {} tensors ({}), got {}",
            specs.len(),
            format.tensor_names().join(", "),
            packed.len()
        )));
    }
    for ((t, (dt, shape)), name) in packed.iter().zip(&specs).zip(format.tensor_names()) {
        if t.dtype() != *dt || t.shape() != shape.as_slice() {
            return Err(OpError::Shape(format!(
                "format {format}: tensor `{name}` must be {dt}{shape:?}, got {}{:?}",
                t.dtype(),
                t.shape()
            )));
        }
    }
    Ok(())
}

/// The reference dequantization: packed tensors back to an f32 `[out, in]`
/// weight, one plain loop per format.
pub fn dequantize(format: &WeightFormat, packed: &[&Tensor], out: usize, inp: usize) -> Result<Vec<f32>, OpError> {
    check_packed(format, packed, out, inp)?;
    let mut w = vec![0.0f32; out * inp];
    match *format {
        WeightFormat::F16 => w = packed[0].to_f32_vec(),
        WeightFormat::Int8 { affine: false } => {
            let (q, s) = (packed[0].as_slice::<i8>()?, packed[1].as_f32()?);
            for i in 0..out * inp {
                w[i] = q[i] as f32 * s[i / inp];
            }
        }
        WeightFormat::W8A8 { outliers } => {
            let (q, s) = (packed[0].as_slice::<i8>()?, packed[1].as_f32()?);
            for i in 0..out * inp {
                w[i] = q[i] as f32 * s[i / inp];
            }
            if outliers > 0 {
                let (idx, ow) = (packed[3].as_slice::<i32>()?, packed[4].as_f32()?);
                let c = idx.len();
                for r in 0..out {
                    for (t, &col) in idx.iter().enumerate() {
                        w[r * inp + col as usize] = ow[r * c + t];
                    }
                }
            }
        }
        WeightFormat::Int8 { affine: true } => {
            let (q, s, z) = (
                packed[0].as_slice::<u8>()?,
                packed[1].as_f32()?,
                packed[2].as_slice::<u8>()?,
            );
            for i in 0..out * inp {
                let r = i / inp;
                w[i] = (q[i] as f32 - z[r] as f32) * s[r];
            }
        }
        WeightFormat::Pow2 { per_channel, .. } => {
            let (q, p) = (packed[0].as_slice::<i8>()?, packed[1].as_slice::<i8>()?);
            for i in 0..out * inp {
                let shift = p[if per_channel { i / inp } else { 0 }] as i32;
                w[i] = libm::ldexpf(q[i] as f32, -shift);
            }
        }
        WeightFormat::Int4 { block, with_min } => {
            let block = block as usize;
            let blocks = inp.div_ceil(block);
            let nib = unpack_nibbles(packed[0].as_slice::<u8>()?);
            let s = packed[1].to_f32_vec();
            let m = if with_min { packed[2].to_f32_vec() } else { Vec::new() };
            for r in 0..out {
                for c in 0..inp {
                    let b = r * blocks + c / block;
                    let q = nib[r * blocks * block + c] as f32;
                    w[r * inp + c] = if with_min { q * s[b] + m[b] } else { (q - 8.0) * s[b] };
                }
            }
        }
        WeightFormat::NM { n, m } => {
            let (n, m) = (n as usize, m as usize);
            let kept = inp.div_ceil(m) * n;
            let (values, index) = (packed[0].as_f32()?, packed[1].as_slice::<u8>()?);
            for r in 0..out {
                let idx = unpack_nibbles(&index[r * kept.div_ceil(2)..(r + 1) * kept.div_ceil(2)]);
                for t in 0..kept {
                    let c = (t / n) * m + idx[t] as usize;
                    if c < inp {
                        w[r * inp + c] += values[r * kept + t];
                    }
                }
            }
        }
        WeightFormat::Binary { .. } => {
            let words = inp.div_ceil(32);
            let (bytes, alpha) = (packed[0].as_slice::<u8>()?, packed[1].as_f32()?);
            for r in 0..out {
                let bits = unpack_bits(&bytes[r * words * 4..(r + 1) * words * 4], inp);
                for c in 0..inp {
                    w[r * inp + c] = if bits[c] { alpha[r] } else { -alpha[r] };
                }
            }
        }
    }
    Ok(w)
}

/// The input columns a W8A8 weight keeps in f32 when no calibration data
/// chose them: the `count` columns of largest max|w| (ascending; ties to the
/// lower column). Calibration picks them from the activations instead
/// (`optimize::quantize`).
pub fn default_outlier_columns(w: &[f32], out: usize, inp: usize, count: usize) -> Result<Vec<usize>, OpError> {
    if count > inp {
        return Err(OpError::Attribute {
            name: "format.outliers".into(),
            message: format!("{count} outlier channels but the layer has only {inp} inputs"),
        });
    }
    if w.len() != out * inp {
        return Err(OpError::Shape(format!(
            "weight has {} elements, not {out}x{inp}",
            w.len()
        )));
    }
    let mut colmax = vec![0.0f32; inp];
    for row in w.chunks_exact(inp.max(1)) {
        for (m, &v) in colmax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    Ok(top_columns(&colmax, count))
}

/// The positions of the `count` largest scores (NaN lowest; ties to the
/// lower position), ascending.
pub fn top_columns(score: &[f32], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    order.sort_by(|&a, &b| key(score[b]).total_cmp(&key(score[a])).then(a.cmp(&b)));
    order.truncate(count);
    order.sort_unstable();
    order
}

/// Packs an f32 `[out, in]` weight as W8A8 with the given outlier input
/// columns (strictly ascending, each < `in`): the other columns get
/// symmetric per-row int8 (the scale from their max|w|), the outlier columns
/// are stored in f32 and zeroed in `q`.
pub fn quantize_w8a8(w: &[f32], out: usize, inp: usize, outliers: &[usize]) -> Result<Vec<Tensor>, OpError> {
    if w.len() != out * inp {
        return Err(OpError::Shape(format!(
            "weight has {} elements, not {out}x{inp}",
            w.len()
        )));
    }
    let mut is_outlier = vec![false; inp];
    for &c in outliers {
        if c >= inp {
            return Err(OpError::Attribute {
                name: "format.outliers".into(),
                message: format!("outlier column {c} is outside 0..{inp}"),
            });
        }
        is_outlier[c] = true;
    }
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(out);
    for row in w.chunks(inp.max(1)).take(out) {
        let max = row
            .iter()
            .zip(&is_outlier)
            .filter(|(_, &o)| !o)
            .fold(0.0f32, |m, (&x, _)| m.max(x.abs()));
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(s);
        q.extend(
            row.iter()
                .zip(&is_outlier)
                .map(|(&x, &o)| if o { 0 } else { round(x / s).clamp(-127.0, 127.0) as i8 }),
        );
    }
    w8a8_tensors(q, scales, w, out, inp, outliers)
}

/// W8A8's packed tensors from int8 codes `q [out, in]` (zero in the outlier
/// columns) and per-row scales: adds `wsum` and, with outliers, their index
/// and the original weights `w [out, in]` of those columns.
pub fn w8a8_tensors(
    q: Vec<i8>,
    scales: Vec<f32>,
    w: &[f32],
    out: usize,
    inp: usize,
    outliers: &[usize],
) -> Result<Vec<Tensor>, OpError> {
    use crate::tensor::Storage as S;
    let t = |shape: Vec<usize>, v: S| Tensor::new(shape, v).map_err(OpError::from);
    if q.len() != out * inp || w.len() != out * inp || scales.len() != out {
        return Err(OpError::Shape(format!(
            "W8A8 packing: q has {}, w {} and scales {} elements for {out}x{inp}",
            q.len(),
            w.len(),
            scales.len()
        )));
    }
    let wsum: Vec<i32> = q
        .chunks(inp.max(1))
        .take(out)
        .map(|r| r.iter().map(|&v| v as i32).sum())
        .collect();
    let c = outliers.len();
    let mut v = vec![
        t(vec![out, inp], S::I8(q))?,
        t(vec![out], S::F32(scales))?,
        t(vec![out], S::I32(wsum))?,
    ];
    if c > 0 {
        let idx = outliers
            .iter()
            .map(|&o| i32::try_from(o).map_err(|_| OpError::Shape(format!("outlier column {o} too large"))))
            .collect::<Result<Vec<i32>, _>>()?;
        let ow: Vec<f32> = (0..out * c).map(|i| w[(i / c) * inp + outliers[i % c]]).collect();
        v.push(t(vec![c], S::I32(idx))?);
        v.push(t(vec![out, c], S::F32(ow))?);
    }
    Ok(v)
}

/// The formats a user can pick, in the order tables list them.
pub fn all_formats() -> Vec<WeightFormat> {
    vec![
        WeightFormat::F16,
        WeightFormat::Int8 { affine: false },
        WeightFormat::Int8 { affine: true },
        WeightFormat::Pow2 {
            per_channel: true,
            fixed_shift: None,
        },
        WeightFormat::Pow2 {
            per_channel: false,
            fixed_shift: None,
        },
        WeightFormat::Int4 {
            block: 32,
            with_min: false,
        },
        WeightFormat::Int4 {
            block: 32,
            with_min: true,
        },
        WeightFormat::Int4 {
            block: 128,
            with_min: false,
        },
        WeightFormat::Binary { xnor: false },
        WeightFormat::Binary { xnor: true },
        WeightFormat::W8A8 { outliers: 0 },
        WeightFormat::W8A8 { outliers: 4 },
    ]
}

/// Decodes rows of a packed weight to f32, for the fast CPU paths (the
/// reference is [`dequantize`]). Borrows the packed data once.
#[derive(Debug)]
pub struct RowDecoder<'a> {
    format: WeightFormat,
    inp: usize,
    data: RowData<'a>,
}

#[derive(Debug)]
enum RowData<'a> {
    F16(&'a [f16]),
    Int8(&'a [i8], &'a [f32]),
    /// W8A8: q, scales, outlier columns, their f32 weights `[out, c]`.
    W8A8(&'a [i8], &'a [f32], &'a [i32], &'a [f32]),
    Affine(&'a [u8], &'a [f32], &'a [u8]),
    Pow2(&'a [i8], &'a [i8]),
    Int4(&'a [u8], Vec<f32>, Option<Vec<f32>>),
    Binary(&'a [u8], &'a [f32]),
    NM(&'a [f32], &'a [u8], usize, usize),
}

impl<'a> RowDecoder<'a> {
    /// Checks the packed tensors and borrows them.
    pub fn new(format: &WeightFormat, packed: &[&'a Tensor], out: usize, inp: usize) -> Result<Self, OpError> {
        check_packed(format, packed, out, inp)?;
        let data = match *format {
            WeightFormat::F16 => RowData::F16(packed[0].as_slice()?),
            WeightFormat::Int8 { affine: false } => RowData::Int8(packed[0].as_slice()?, packed[1].as_f32()?),
            WeightFormat::W8A8 { outliers } => {
                let (idx, ow): (&[i32], &[f32]) = if outliers > 0 {
                    (packed[3].as_slice()?, packed[4].as_f32()?)
                } else {
                    (&[], &[])
                };
                RowData::W8A8(packed[0].as_slice()?, packed[1].as_f32()?, idx, ow)
            }
            WeightFormat::Int8 { affine: true } => {
                RowData::Affine(packed[0].as_slice()?, packed[1].as_f32()?, packed[2].as_slice()?)
            }
            WeightFormat::Pow2 { .. } => RowData::Pow2(packed[0].as_slice()?, packed[1].as_slice()?),
            WeightFormat::Int4 { with_min, .. } => RowData::Int4(
                packed[0].as_slice()?,
                packed[1].to_f32_vec(),
                with_min.then(|| packed[2].to_f32_vec()),
            ),
            WeightFormat::Binary { .. } => RowData::Binary(packed[0].as_slice()?, packed[1].as_f32()?),
            WeightFormat::NM { n, m } => {
                RowData::NM(packed[0].as_f32()?, packed[1].as_slice()?, n as usize, m as usize)
            }
        };
        Ok(Self {
            format: *format,
            inp,
            data,
        })
    }

    /// Writes row `r` (one output channel, `in` values) to `dst`.
    pub fn row(&self, r: usize, dst: &mut [f32]) {
        let k = self.inp;
        let dst = &mut dst[..k];
        match &self.data {
            RowData::F16(w) => {
                for (d, &v) in dst.iter_mut().zip(&w[r * k..]) {
                    *d = v.to_f32();
                }
            }
            RowData::Int8(q, s) => {
                let s = s[r];
                for (d, &v) in dst.iter_mut().zip(&q[r * k..]) {
                    *d = v as f32 * s;
                }
            }
            RowData::W8A8(q, s, idx, ow) => {
                let s = s[r];
                for (d, &v) in dst.iter_mut().zip(&q[r * k..]) {
                    *d = v as f32 * s;
                }
                let c = idx.len();
                for (&col, &v) in idx.iter().zip(&ow[r * c..(r + 1) * c]) {
                    dst[col as usize] = v;
                }
            }
            RowData::Affine(q, s, z) => {
                let (s, z) = (s[r], z[r] as f32);
                for (d, &v) in dst.iter_mut().zip(&q[r * k..]) {
                    *d = (v as f32 - z) * s;
                }
            }
            RowData::Pow2(q, p) => {
                let shift = p[if p.len() == 1 { 0 } else { r }] as i32;
                let f = libm::ldexpf(1.0, -shift);
                for (d, &v) in dst.iter_mut().zip(&q[r * k..]) {
                    *d = v as f32 * f;
                }
            }
            RowData::Int4(q, s, m) => {
                let WeightFormat::Int4 { block, .. } = self.format else {
                    return;
                };
                let block = block as usize;
                let blocks = k.div_ceil(block);
                let row = &q[r * blocks * block / 2..(r + 1) * blocks * block / 2];
                for b in 0..blocks {
                    let (scale, offset) = match m {
                        Some(m) => (s[r * blocks + b], m[r * blocks + b]),
                        None => (s[r * blocks + b], -8.0 * s[r * blocks + b]),
                    };
                    let lo = b * block;
                    let hi = (lo + block).min(k);
                    let bytes = &row[lo / 2..hi.div_ceil(2)];
                    for (pair, &byte) in dst[lo..hi].chunks_mut(2).zip(bytes) {
                        pair[0] = (byte & 0xf) as f32 * scale + offset;
                        if let Some(second) = pair.get_mut(1) {
                            *second = (byte >> 4) as f32 * scale + offset;
                        }
                    }
                }
            }
            RowData::NM(values, index, n, m) => {
                let (n, m) = (*n, *m);
                let kept = k.div_ceil(m) * n;
                let stride = kept.div_ceil(2);
                dst.fill(0.0);
                let idx = &index[r * stride..(r + 1) * stride];
                for t in 0..kept {
                    let byte = idx[t / 2];
                    let c = (t / n) * m + if t % 2 == 0 { byte & 0xf } else { byte >> 4 } as usize;
                    if c < k {
                        dst[c] += values[r * kept + t];
                    }
                }
            }
            RowData::Binary(bits, alpha) => {
                let words = k.div_ceil(32);
                let row = &bits[r * words * 4..(r + 1) * words * 4];
                let a = alpha[r];
                for (c, d) in dst.iter_mut().enumerate() {
                    *d = if row[c / 8] >> (c % 8) & 1 == 1 { a } else { -a };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The VNNI kernel on weights packed by [`super::quantize_w8a8`] equals the
    /// portable kernel bit for bit.
    #[test]
    fn prepared_w8a8_matches_portable_bit_for_bit() {
        let mut rng = crate::ops::CaseRng::new(8);
        for (m, n, k, c) in [
            (1, 1, 2, 0),
            (3, 5, 17, 1),
            (9, 33, 64, 3),
            (1, 70, 1000, 8),
            (70, 300, 100, 0),
            (130, 70, 515, 5),
        ] {
            let wf = rng.tensor(&[n, k], -1.0, 1.0).to_f32_vec();
            let cols = super::default_outlier_columns(&wf, n, k, c).expect("columns");
            let packed = super::quantize_w8a8(&wf, n, k, &cols).expect("pack");
            let refs: Vec<&crate::tensor::Tensor> = packed.iter().collect();
            let w = crate::linalg::int8::W8A8Weights::new(&refs, n, k).expect("weights");
            let Some(p) = crate::linalg::int8::PackedW8A8::new(&w) else {
                return;
            };
            let x = crate::linalg::int8::tests::activation_rows(&mut rng, m, k);
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1 - 1.0).collect();
            for b in [None, Some(&bias[..])] {
                let (mut want, mut got) = (vec![0.0f32; m * n], vec![1.0f32; m * n]);
                crate::linalg::int8::w8a8_portable(&x, m, &w, b, &mut want);
                p.run(&x, m, b, &mut got);
                for (e, (g, v)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), v.to_bits(), "{m}x{k}->{n} c {c} at {e}: {g} vs {v}");
                }
            }
        }
    }

    /// The AVX2 W8A8 layer gives [`w8a8_portable`](crate::linalg::int8::w8a8_portable)'s bits (outliers, bias,
    /// odd sizes, rows that are zero, one-signed, ties or outlier-heavy).
    #[test]
    fn avx2_w8a8_matches_portable_bit_for_bit() {
        let mut rng = crate::ops::CaseRng::new(12);
        for (m, n, k, c) in [
            (1, 1, 2, 0),
            (5, 7, 9, 0),
            (3, 5, 17, 1),
            (9, 33, 64, 3),
            (64, 16, 72, 0),
            (1, 70, 1000, 8),
            (70, 300, 100, 0),
            (130, 70, 515, 5),
            (1100, 24, 1027, 2),
        ] {
            let wf = rng.tensor(&[n, k], -1.0, 1.0).to_f32_vec();
            let cols = super::default_outlier_columns(&wf, n, k, c).expect("columns");
            let packed = super::quantize_w8a8(&wf, n, k, &cols).expect("pack");
            let refs: Vec<&crate::tensor::Tensor> = packed.iter().collect();
            let w = crate::linalg::int8::W8A8Weights::new(&refs, n, k).expect("weights");
            let Some(p) = crate::linalg::int8::PackedW8A8::new_avx2(&w) else {
                eprintln!("SKIPPED avx2_w8a8_matches_portable_bit_for_bit: no AVX2");
                return;
            };
            assert!(!p.is_vnni());
            let x = crate::linalg::int8::tests::activation_rows(&mut rng, m, k);
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1 - 1.0).collect();
            for b in [None, Some(&bias[..])] {
                let (mut want, mut got) = (vec![0.0f32; m * n], vec![1.0f32; m * n]);
                crate::linalg::int8::w8a8_portable(&x, m, &w, b, &mut want);
                p.run(&x, m, b, &mut got);
                for (e, (g, v)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), v.to_bits(), "{m}x{k}->{n} c {c} at {e}: {g} vs {v}");
                }
            }
        }
    }
}
