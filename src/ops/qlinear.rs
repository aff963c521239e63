//! `QLinear`: a fully connected layer whose weight is stored in a packed
//! [`WeightFormat`]: `y = x · dequant(W)ᵀ + b` (W8A8 and binary-XNOR also
//! quantize the activations at run time).

use std::sync::Arc;

use rayon::prelude::*;

use super::linear::PreparedF32;
use super::{check_arity, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Prepared, Validation};
use crate::error::OpError;
use crate::linalg::{self, MatRef};
use crate::quant::{self, RowDecoder, WeightFormat};
use crate::tensor::{DType, Dim, Tensor, ValueType};

/// A linear layer over a packed weight. Inputs: `x [..., in]` (f32), the
/// format's packed tensors in [`WeightFormat::tensor_names`] order, and an
/// optional `bias [out]`.
#[derive(Clone, Debug)]
pub struct QLinear {
    /// The weight format.
    pub format: WeightFormat,
    /// Input features (`in`).
    pub in_features: usize,
    /// Output features (`out`).
    pub out_features: usize,
}

/// `x`, its rows, the packed weight tensors, and the optional bias.
type Split<'a> = (&'a [f32], usize, Vec<&'a Tensor>, Option<&'a [f32]>);

impl QLinear {
    fn n_packed(&self) -> usize {
        self.format.tensor_names().len()
    }

    /// Splits inputs into x, packed tensors and bias, checking them.
    fn split<'a>(&self, inputs: &[&'a Tensor]) -> Result<Split<'a>, OpError> {
        self.split_with(inputs, true)
    }

    /// [`Self::split`]; with `contents` false the packed tensors' contents are
    /// not checked (their dtypes and shapes are): for weights whose contents
    /// `prepare_cpu` checked.
    fn split_with<'a>(&self, inputs: &[&'a Tensor], contents: bool) -> Result<Split<'a>, OpError> {
        let np = self.n_packed();
        check_arity(
            inputs.len(),
            1 + np,
            2 + np,
            "x, the format's packed tensors, optional bias",
        )?;
        let (k, n) = (self.in_features, self.out_features);
        let xs = inputs[0].shape();
        if xs.last() != Some(&k) {
            return Err(OpError::Shape(format!(
                "x has shape {xs:?}; its last dimension must be {k}"
            )));
        }
        let x = f32_input(inputs, 0)?;
        let packed: Vec<&Tensor> = inputs[1..1 + np].to_vec();
        if contents {
            quant::check_packed(&self.format, &packed, n, k)?;
        } else {
            quant::check_packed_shapes(&self.format, &packed, n, k)?;
        }
        let bias = if inputs.len() == 2 + np {
            if inputs[1 + np].shape() != [n] {
                return Err(OpError::Shape(format!(
                    "bias has shape {:?}; it must be [{n}]",
                    inputs[1 + np].shape()
                )));
            }
            Some(f32_input(inputs, 1 + np)?)
        } else {
            None
        };
        let rows = x.len().checked_div(k).unwrap_or(0);
        Ok((x, rows, packed, bias))
    }

    fn out_shape(&self, x: &Tensor) -> Vec<usize> {
        let mut s = x.shape().to_vec();
        if let Some(l) = s.last_mut() {
            *l = self.out_features;
        }
        s
    }
}

/// Fills every row of `y` (rows of `n`) with `bias` and says whether it did:
/// the f32 GEMM then accumulates onto the bias.
fn fill_bias_rows(y: &mut [f32], bias: Option<&[f32]>, n: usize) -> bool {
    let Some(b) = bias else { return false };
    for row in y.chunks_mut(n.max(1)) {
        row.copy_from_slice(b);
    }
    true
}

/// Per-row `β = mean|x|` and sign bits packed like binary weights.
fn binarize_rows(x: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let words = k.div_ceil(32);
    let mut bits = vec![0u32; x.len().checked_div(k).unwrap_or(0) * words];
    let mut beta = Vec::new();
    for (i, row) in x.chunks(k.max(1)).enumerate() {
        beta.push(row.iter().map(|v| v.abs()).sum::<f32>() / k.max(1) as f32);
        for (c, &v) in row.iter().enumerate() {
            if v >= 0.0 {
                bits[i * words + c / 32] |= 1 << (c % 32);
            }
        }
    }
    (bits, beta)
}

/// What [`QLinear`]'s fast CPU path prepares from its constant weight.
enum PreparedQ {
    /// W8A8: the codes packed for the VNNI kernel (with scales and outliers).
    W8A8(linalg::int8::PackedW8A8),
    /// Weight-only formats: the weight decoded to f32 on the first run with
    /// more than 4 rows. Runs with fewer rows decode weight rows on the fly
    /// and never make this copy, so a session that only sees short inputs
    /// keeps just the packed weight in memory.
    Decoded(std::sync::OnceLock<PreparedF32>),
}

impl Op for QLinear {
    fn op_type(&self) -> &'static str {
        "QLinear"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("format".into(), serde_json::to_value(self.format).unwrap_or_default());
        a.insert("in_features".into(), self.in_features.into());
        a.insert("out_features".into(), self.out_features.into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        let np = self.n_packed();
        check_arity(
            inputs.len(),
            1 + np,
            2 + np,
            "x, the format's packed tensors, optional bias",
        )?;
        let x = &inputs[0];
        if x.dtype != DType::F32 {
            return Err(OpError::DType {
                index: 0,
                expected: "f32",
                got: x.dtype,
            });
        }
        let (k, n) = (self.in_features, self.out_features);
        match x.shape.last() {
            Some(Dim::Known(d)) if *d != k => {
                return Err(OpError::Shape(format!(
                    "x has {d} features ({}) but the layer takes {k}",
                    x.shape_string()
                )))
            }
            None => return Err(OpError::Shape("x must have rank >= 1".into())),
            _ => {}
        }
        for (i, ((dt, shape), name)) in self
            .format
            .tensor_specs(n, k)
            .iter()
            .zip(self.format.tensor_names())
            .enumerate()
        {
            let t = &inputs[1 + i];
            if t.dtype != *dt || t.concrete_shape().as_deref() != Some(shape.as_slice()) {
                return Err(OpError::Shape(format!(
                    "format {}: tensor `{name}` must be {dt}{shape:?}, got {t}",
                    self.format
                )));
            }
        }
        if let Some(b) = inputs.get(1 + np) {
            if b.concrete_shape().as_deref() != Some(&[n][..]) || b.dtype != DType::F32 {
                return Err(OpError::Shape(format!("bias must be f32[{n}], got {b}")));
            }
        }
        let mut shape = x.shape.clone();
        let last = shape.len() - 1;
        shape[last] = Dim::Known(n);
        Ok(vec![ValueType {
            dtype: DType::F32,
            shape,
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (x, m, packed, bias) = self.split(inputs)?;
        let (k, n) = (self.in_features, self.out_features);
        let b = |j: usize| bias.map_or(0.0, |b| b[j] as f64);
        let mut y = vec![0.0f32; m * n];
        match self.format {
            WeightFormat::W8A8 { .. } => {
                // The spec, one plain loop: asymmetric u8 activations per row
                // (outlier inputs count as 0), exact integer sums, outliers in f64.
                let w = linalg::int8::W8A8Weights::new(&packed, n, k)?;
                let c = w.outliers.len();
                for i in 0..m {
                    let row = &x[i * k..(i + 1) * k];
                    let mut xp = row.to_vec();
                    for &o in &w.outliers {
                        xp[o] = 0.0;
                    }
                    let lo = xp.iter().fold(0.0f32, |a, &v| a.min(v));
                    let hi = xp.iter().fold(0.0f32, |a, &v| a.max(v));
                    let (s, z, q): (f32, i64, Vec<i64>) = if hi == lo {
                        (1.0, 0, vec![0; k])
                    } else {
                        let s = (hi - lo) / 255.0;
                        let inv = 1.0 / s;
                        let z = quant::round(-lo * inv).clamp(0.0, 255.0);
                        let q = xp
                            .iter()
                            .map(|&v| (quant::round(v * inv) + z).clamp(0.0, 255.0) as i64)
                            .collect();
                        (s, z as i64, q)
                    };
                    for j in 0..n {
                        let dot: i64 = (0..k).map(|p| q[p] * w.q[j * k + p] as i64).sum();
                        let acc = dot - z * w.wsum[j] as i64;
                        let outl: f64 = (0..c)
                            .map(|t| row[w.outliers[t]] as f64 * w.outlier_weight[j * c + t] as f64)
                            .sum();
                        y[i * n + j] = (acc as f64 * s as f64 * w.scale[j] as f64 + outl + b(j)) as f32;
                    }
                }
            }
            WeightFormat::Binary { xnor: true } => {
                let w = quant::dequantize(&self.format, &packed, n, k)?;
                let alpha = packed[1].as_f32()?;
                for i in 0..m {
                    let row = &x[i * k..(i + 1) * k];
                    let beta = row.iter().map(|v| v.abs() as f64).sum::<f64>() / k.max(1) as f64;
                    for j in 0..n {
                        let dot: i64 = (0..k)
                            .map(|p| {
                                if (row[p] >= 0.0) == (w[j * k + p] >= 0.0) {
                                    1
                                } else {
                                    -1
                                }
                            })
                            .sum();
                        y[i * n + j] = (alpha[j] as f64 * beta * dot as f64 + b(j)) as f32;
                    }
                }
            }
            _ => {
                let w = quant::dequantize(&self.format, &packed, n, k)?;
                for i in 0..m {
                    for j in 0..n {
                        let acc: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum();
                        y[i * n + j] = (acc + b(j)) as f32;
                    }
                }
            }
        }
        Ok(vec![Tensor::from_vec(self.out_shape(inputs[0]), y)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (x, m, packed, bias) = self.split(inputs)?;
        let (k, n) = (self.in_features, self.out_features);
        let mut y = vec![0.0f32; m * n];
        match self.format {
            WeightFormat::W8A8 { .. } => {
                let w = linalg::int8::W8A8Weights::new(&packed, n, k)?;
                // With VNNI and enough rows to repay it, the weight is packed
                // here (the prepared path packs it once); both give the
                // portable path's bits.
                match (m >= 32).then(|| linalg::int8::PackedW8A8::new(&w)).flatten() {
                    Some(p) => p.run(x, m, bias, &mut y),
                    None => linalg::int8::w8a8_portable(x, m, &w, bias, &mut y),
                }
            }
            WeightFormat::Binary { xnor: true } => {
                let words = k.div_ceil(32);
                let (xb, beta) = binarize_rows(x, k);
                let (wbytes, alpha) = (packed[0].as_slice::<u8>()?, packed[1].as_f32()?);
                let wb: Vec<u32> = wbytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                for i in 0..m {
                    let xr = &xb[i * words..(i + 1) * words];
                    for j in 0..n {
                        let wr = &wb[j * words..(j + 1) * words];
                        let diff: u32 = xr.iter().zip(wr).map(|(a, b)| (a ^ b).count_ones()).sum();
                        let dot = k as i64 - 2 * diff as i64;
                        y[i * n + j] = alpha[j] * beta[i] * dot as f32 + bias.map_or(0.0, |b| b[j]);
                    }
                }
            }
            _ => {
                let dec = RowDecoder::new(&self.format, &packed, n, k)?;
                if m <= 4 {
                    // Few rows: decode each weight row once and dot it with every x
                    // row; outputs are gathered transposed, [n, m].
                    let mut yt = vec![0.0f32; n * m];
                    let work = |buf: &mut Vec<f32>, (j, out): (usize, &mut [f32])| {
                        dec.row(j, buf);
                        for (i, o) in out.iter_mut().enumerate() {
                            *o = linalg::dot(&x[i * k..(i + 1) * k], buf);
                        }
                    };
                    if n * k >= 1 << 18 {
                        yt.par_chunks_mut(m.max(1))
                            .enumerate()
                            .with_min_len(32)
                            .for_each_init(|| vec![0.0f32; k], work);
                    } else {
                        // Small layers stay on this thread: waking workers costs more.
                        let mut buf = vec![0.0f32; k];
                        yt.chunks_mut(m.max(1))
                            .enumerate()
                            .for_each(|item| work(&mut buf, item));
                    }
                    for j in 0..n {
                        for i in 0..m {
                            y[i * n + j] = yt[j * m + i] + bias.map_or(0.0, |b| b[j]);
                        }
                    }
                } else {
                    let mut w = vec![0.0f32; n * k];
                    if n * k >= 1 << 18 {
                        w.par_chunks_mut(k.max(1))
                            .enumerate()
                            .for_each(|(j, row)| dec.row(j, row));
                    } else {
                        w.chunks_mut(k.max(1)).enumerate().for_each(|(j, row)| dec.row(j, row));
                    }
                    let accumulate = fill_bias_rows(&mut y, bias, n);
                    linalg::sgemm(
                        MatRef::row_major(x, m, k),
                        MatRef::transposed(&w, k, n),
                        &mut y,
                        accumulate,
                    )?;
                }
            }
        }
        Ok(vec![Tensor::from_vec(self.out_shape(inputs[0]), y)?])
    }

    fn prepare_cpu(&self, consts: &[Option<&Tensor>]) -> Option<Prepared> {
        let prepared = match self.format {
            WeightFormat::W8A8 { .. } => {
                let (n, k) = (self.out_features, self.in_features);
                let packed: Vec<&Tensor> = consts
                    .get(1..1 + self.n_packed())?
                    .iter()
                    .copied()
                    .collect::<Option<Vec<_>>>()?;
                // The full check (wsum, outlier index) once here; runs check shapes only.
                quant::check_packed(&self.format, &packed, n, k).ok()?;
                PreparedQ::W8A8(linalg::int8::PackedW8A8::new(
                    &linalg::int8::W8A8Weights::new(&packed, n, k).ok()?,
                )?)
            }
            WeightFormat::Binary { xnor: true } => return None,
            _ => PreparedQ::Decoded(std::sync::OnceLock::new()),
        };
        Some(Prepared(Arc::new(prepared)))
    }

    fn cpu_prepared(&self, inputs: &[&Tensor], prepared: &Prepared) -> Result<Vec<Tensor>, OpError> {
        let Some(p) = prepared.0.downcast_ref::<PreparedQ>() else {
            return self.cpu(inputs);
        };
        let (x, m, packed, bias) = self.split_with(inputs, !matches!(p, PreparedQ::W8A8(_)))?;
        let (k, n) = (self.in_features, self.out_features);
        let mut y = vec![0.0f32; m * n];
        match p {
            PreparedQ::W8A8(pw) if (pw.n(), pw.k()) == (n, k) => pw.run(x, m, bias, &mut y),
            PreparedQ::Decoded(cell)
                if m > 4
                    && !matches!(
                        self.format,
                        WeightFormat::W8A8 { .. } | WeightFormat::Binary { xnor: true }
                    ) =>
            {
                let decoded = match cell.get() {
                    Some(d) => d,
                    None => {
                        let dec = RowDecoder::new(&self.format, &packed, n, k)?;
                        let mut w = vec![0.0f32; n * k];
                        w.par_chunks_mut(k.max(1))
                            .enumerate()
                            .for_each(|(j, row)| dec.row(j, row));
                        cell.get_or_init(|| PreparedF32::new(&w, n, k))
                    }
                };
                if decoded.dims() != (n, k) {
                    return self.cpu(inputs);
                }
                y = decoded.run(x, m, bias, false)?;
            }
            _ => return self.cpu(inputs),
        }
        Ok(vec![Tensor::from_vec(self.out_shape(inputs[0]), y)?])
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        inputs
            .first()
            .map(|x| {
                2 * (x.iter().product::<usize>() / self.in_features.max(1) * self.in_features * self.out_features)
                    as u64
            })
            .unwrap_or(0)
    }
}

/// Builds a QLinear case: a random f32 weight packed into `format`.
pub fn case(rng: &mut CaseRng, format: WeightFormat, m: usize, k: usize, n: usize, bias: bool) -> OpCase {
    // No more W8A8 outlier channels than inputs.
    let format = match format {
        WeightFormat::W8A8 { outliers } => WeightFormat::W8A8 {
            outliers: outliers.min(k as u32),
        },
        f => f,
    };
    let w = rng.tensor(&[n, k], -1.0, 1.0);
    let packed = match w
        .as_f32()
        .map_err(OpError::from)
        .and_then(|w| quant::quantize_weight(&format, w, n, k))
    {
        Ok(p) => p,
        Err(e) => unreachable!("packing a valid weight: {e}"),
    };
    let mut inputs = vec![rng.tensor(&[m, k], -1.0, 1.0)];
    inputs.extend(packed);
    if bias {
        inputs.push(rng.tensor(&[n], -1.0, 1.0));
    }
    let op = QLinear {
        format,
        in_features: k,
        out_features: n,
    };
    OpCase::new(
        format!("qlinear {format} {m}x{k}->{n}{}", if bias { " +bias" } else { "" }),
        Arc::new(op),
        inputs,
    )
}

/// `QLinear`: attributes `format` (a [`WeightFormat`] object), `in_features`, `out_features`.
pub const QLINEAR: OpDef = OpDef {
    op_type: "QLinear",
    build: |attrs: &Attrs| {
        let format: WeightFormat = attrs
            .get("format")
            .cloned()
            .ok_or_else(|| OpError::Attribute {
                name: "format".into(),
                message: "is required".into(),
            })
            .and_then(|v| {
                serde_json::from_value(v).map_err(|e| OpError::Attribute {
                    name: "format".into(),
                    message: e.to_string(),
                })
            })?;
        format.validate()?;
        let dim = |name: &str| {
            super::attr_i64(attrs, name, None).and_then(|v| {
                usize::try_from(v).map_err(|_| OpError::Attribute {
                    name: name.into(),
                    message: format!("must be >= 0, got {v}"),
                })
            })
        };
        Ok(Arc::new(QLinear {
            format,
            in_features: dim("in_features")?,
            out_features: dim("out_features")?,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(12);
        let mut v = Vec::new();
        let mut formats = quant::all_formats();
        formats.extend([WeightFormat::NM { n: 2, m: 4 }, WeightFormat::NM { n: 4, m: 8 }]);
        for f in formats {
            v.push(case(&mut rng, f, 1, 17, 5, true));
            v.push(case(&mut rng, f, 3, 64, 33, true));
            v.push(case(&mut rng, f, 17, 1000, 3, false));
            v.push(case(&mut rng, f, 1, 1000, 17, true));
        }
        v
    },
    sample: |rng| {
        let mut formats = quant::all_formats();
        formats.push(WeightFormat::NM { n: 2, m: 4 });
        let f = formats[rng.range(0, formats.len() - 1)];
        let (m, k, n) = (rng.dim(20), rng.dim(300), rng.dim(40));
        let bias = rng.next_u64().is_multiple_of(2);
        case(rng, f, m, k, n, bias)
    },
};
