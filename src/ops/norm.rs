//! Normalisation for inference: `BatchNormalization` (per channel, axis 1,
//! running statistics) and `LayerNormalization` (over the trailing axes).

use std::borrow::Cow;
use std::sync::Arc;

use super::{attr_i64, check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{Dim, Tensor, ValueType};

fn attr_f32(attrs: &Attrs, name: &str, default: f32) -> Result<f32, OpError> {
    match attrs.get(name) {
        None => Ok(default),
        Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| OpError::Attribute {
            name: name.to_string(),
            message: format!("must be a number, got {v}"),
        }),
    }
}

/// `y = (x - mean) / sqrt(var + epsilon) · scale + bias`, per channel (axis 1).
/// Inputs: `x [N, C, ...]`, `scale`, `bias`, `mean`, `var` (each `[C]`).
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// Added to the variance.
    pub epsilon: f32,
}

/// BatchNormalization's inputs: the shape of x [N, C, ...], x, and the four
/// [C] statistics (scale, bias, mean, var).
type BatchNormInputs<'a> = (&'a [usize], &'a [f32], [&'a [f32]; 4]);

/// BatchNormalization's inputs, checked.
fn batchnorm_inputs<'a>(inputs: &[&'a Tensor]) -> Result<BatchNormInputs<'a>, OpError> {
    check_arity(inputs.len(), 5, 5, "5 (x, scale, bias, mean, var)")?;
    let s = inputs[0].shape();
    let x = f32_input(inputs, 0)?;
    let stats = [
        f32_input(inputs, 1)?,
        f32_input(inputs, 2)?,
        f32_input(inputs, 3)?,
        f32_input(inputs, 4)?,
    ];
    if s.len() < 2 || stats.iter().any(|t| t.len() != s[1]) {
        return Err(OpError::Shape(format!(
            "needs x [N, C, ...] and [C] statistics; got x {s:?}"
        )));
    }
    Ok((s, x, stats))
}

impl BatchNorm {
    /// Per-channel multiplier and offset: `y = x · a + b`.
    pub fn affine(&self, inputs: &[&Tensor]) -> Result<(Vec<f32>, Vec<f32>), OpError> {
        let (scale, bias, mean, var) = (
            f32_input(inputs, 1)?,
            f32_input(inputs, 2)?,
            f32_input(inputs, 3)?,
            f32_input(inputs, 4)?,
        );
        let c = scale.len();
        if [bias.len(), mean.len(), var.len()].iter().any(|&l| l != c) {
            return Err(OpError::Shape(
                "scale, bias, mean and var must have one value per channel".into(),
            ));
        }
        let a: Vec<f32> = (0..c)
            .map(|i| (scale[i] as f64 / (var[i] as f64 + self.epsilon as f64).sqrt()) as f32)
            .collect();
        let b = (0..c).map(|i| bias[i] - mean[i] * a[i]).collect();
        Ok((a, b))
    }
}

impl Op for BatchNorm {
    fn op_type(&self) -> &'static str {
        "BatchNormalization"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("epsilon".into(), (self.epsilon as f64).into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 5, 5, "5 (x, scale, bias, mean, var)")?;
        check_f32(inputs)?;
        let x = &inputs[0];
        if x.rank() < 2 {
            return Err(OpError::Shape(format!("needs x [N, C, ...]; got {}", x.shape_string())));
        }
        for (i, p) in inputs.iter().enumerate().skip(1) {
            let ok = p.rank() == 1
                && match (p.shape[0].known(), x.shape[1].known()) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                };
            if !ok {
                return Err(OpError::Shape(format!(
                    "input {i} is {}; it must be [{}] (one value per channel)",
                    p.shape_string(),
                    x.shape[1]
                )));
            }
        }
        Ok(vec![x.clone()])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (s, x, [scale, bias, mean, var]) = batchnorm_inputs(inputs)?;
        let inner: usize = s[2..].iter().product();
        let y = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / inner.max(1)) % s[1];
                let n = (v as f64 - mean[c] as f64) / (var[c] as f64 + self.epsilon as f64).sqrt();
                (n * scale[c] as f64 + bias[c] as f64) as f32
            })
            .collect();
        Ok(vec![Tensor::from_vec(s.to_vec(), y)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 5, 5, "5 (x, scale, bias, mean, var)")?;
        let s = inputs[0].shape();
        let x = f32_input(inputs, 0)?;
        let (a, b) = self.affine(inputs)?;
        if s.len() < 2 || a.len() != s[1] {
            return Err(OpError::Shape(format!(
                "needs x [N, C, ...] and [C] statistics; got x {s:?}"
            )));
        }
        let inner: usize = s[2..].iter().product::<usize>().max(1);
        let y = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / inner) % s[1];
                v * a[c] + b[c]
            })
            .collect();
        Ok(vec![Tensor::from_vec(s.to_vec(), y)?])
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }
}

fn bn_case(rng: &mut CaseRng, s: &[usize]) -> OpCase {
    let c = s[1];
    let inputs = vec![
        rng.tensor(s, -2.0, 2.0),
        rng.tensor(&[c], 0.5, 1.5),
        rng.tensor(&[c], -1.0, 1.0),
        rng.tensor(&[c], -1.0, 1.0),
        rng.tensor(&[c], 0.1, 2.0),
    ];
    OpCase::new(
        format!("batchnorm {s:?}"),
        Arc::new(BatchNorm { epsilon: 1e-5 }),
        inputs,
    )
}

/// `BatchNormalization` (inference): attribute `epsilon` (default 1e-5).
pub const BATCH_NORM: OpDef = OpDef {
    op_type: "BatchNormalization",
    build: |attrs| {
        Ok(Arc::new(BatchNorm {
            epsilon: attr_f32(attrs, "epsilon", 1e-5)?,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(61);
        vec![
            bn_case(&mut rng, &[1, 1]),
            bn_case(&mut rng, &[2, 3, 17, 13]),
            bn_case(&mut rng, &[3, 5, 7]),
        ]
    },
    sample: |rng| {
        let s = [rng.range(1, 3), rng.range(1, 5), rng.dim(9), rng.dim(9)];
        bn_case(rng, &s)
    },
};

/// `BatchNormalization` in training mode: `x` is normalised with its own
/// per-channel (axis 1) batch mean and (population) variance, and the
/// running statistics are updated: `running = input · momentum + batch ·
/// (1 - momentum)`. Inputs as [`BatchNorm`]; outputs `y`, the running mean
/// and the running variance (each `[C]`).
#[derive(Clone, Debug)]
pub struct BatchNormTraining {
    /// Added to the variance.
    pub epsilon: f32,
    /// Weight of the input running statistics.
    pub momentum: f32,
}

impl Op for BatchNormTraining {
    fn op_type(&self) -> &'static str {
        "BatchNormTraining"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("epsilon".into(), (self.epsilon as f64).into());
        a.insert("momentum".into(), (self.momentum as f64).into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        let y = BatchNorm { epsilon: self.epsilon }.infer(inputs)?;
        let stat = inputs[3].clone();
        Ok(vec![y[0].clone(), stat.clone(), stat])
    }

    /// Statistics in f64, two passes (mean, then squared deviations).
    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (s, x, [scale, bias, mean, var]) = batchnorm_inputs(inputs)?;
        let c = s[1];
        let inner: usize = s[2..].iter().product();
        let count = (s[0] * inner).max(1) as f64;
        let channel = |i: usize| (i / inner.max(1)) % c;
        let mut sum = vec![0.0f64; c];
        for (i, &v) in x.iter().enumerate() {
            sum[channel(i)] += v as f64;
        }
        let bmean: Vec<f64> = sum.iter().map(|&t| t / count).collect();
        let mut sq = vec![0.0f64; c];
        for (i, &v) in x.iter().enumerate() {
            let ch = channel(i);
            sq[ch] += (v as f64 - bmean[ch]).powi(2);
        }
        let bvar: Vec<f64> = sq.iter().map(|&t| t / count).collect();
        let y = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = channel(i);
                let n = (v as f64 - bmean[ch]) / (bvar[ch] + self.epsilon as f64).sqrt();
                (n * scale[ch] as f64 + bias[ch] as f64) as f32
            })
            .collect();
        let m = self.momentum as f64;
        let running = |old: &[f32], batch: &[f64]| -> Vec<f32> {
            old.iter()
                .zip(batch)
                .map(|(&o, &b)| (o as f64 * m + b * (1.0 - m)) as f32)
                .collect()
        };
        Ok(vec![
            Tensor::from_vec(s.to_vec(), y)?,
            Tensor::from_vec(vec![c], running(mean, &bmean))?,
            Tensor::from_vec(vec![c], running(var, &bvar))?,
        ])
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }
}

/// `BatchNormTraining` (ONNX BatchNormalization with `training_mode = 1`):
/// attributes `epsilon` (1e-5) and `momentum` (0.9).
pub const BATCH_NORM_TRAINING: OpDef = OpDef {
    op_type: "BatchNormTraining",
    build: |attrs| {
        Ok(Arc::new(BatchNormTraining {
            epsilon: attr_f32(attrs, "epsilon", 1e-5)?,
            momentum: attr_f32(attrs, "momentum", 0.9)?,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(63);
        [&[1usize, 1][..], &[2, 3, 17, 13], &[3, 5, 7]]
            .iter()
            .map(|s| {
                let mut case = bn_case(&mut rng, s);
                case.name = format!("batchnorm training {s:?}");
                case.op = Arc::new(BatchNormTraining {
                    epsilon: 1e-5,
                    momentum: 0.9,
                });
                case
            })
            .collect()
    },
    sample: |rng| {
        let s = [rng.range(1, 3), rng.range(1, 5), rng.dim(9), rng.dim(9)];
        let mut case = bn_case(rng, &s);
        case.op = Arc::new(BatchNormTraining {
            epsilon: 1e-5,
            momentum: 0.9,
        });
        case
    },
};

/// `LayerNormalization`: normalises over axes `axis..`, then `· scale + bias`.
/// Inputs `x`, `scale`, optional `bias` (broadcast to the normalised axes).
/// With `outputs = 3` it also returns the mean and `1/sqrt(var + epsilon)`
/// (shape of `x` with the normalised axes set to 1).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// First normalised axis (negative counts from the end).
    pub axis: i64,
    /// Added to the variance.
    pub epsilon: f32,
    /// 1 (`y`) or 3 (`y`, mean, inverse standard deviation).
    pub outputs: usize,
}

impl LayerNorm {
    fn split(&self, rank: usize) -> Result<usize, OpError> {
        let r = rank as i64;
        let a = if self.axis < 0 { self.axis + r } else { self.axis };
        if a < 0 || a >= r {
            return Err(OpError::Attribute {
                name: "axis".into(),
                message: format!("{} is out of range for rank {rank}", self.axis),
            });
        }
        Ok(a as usize)
    }

    fn run<'a>(&self, inputs: &[&'a Tensor], wide: bool) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (x, scale, optional bias)")?;
        let s = inputs[0].shape();
        let a = self.split(s.len())?;
        let x = f32_input(inputs, 0)?;
        let inner: usize = s[a..].iter().product();
        let scale = f32_input(inputs, 1)?;
        let bias = if inputs.len() == 3 {
            Some(f32_input(inputs, 2)?)
        } else {
            None
        };
        let inner_shape = &s[a..];
        let bshape = |t: &Tensor| super::binary::broadcast_shapes(t.shape(), inner_shape);
        if bshape(inputs[1])? != inner_shape || (inputs.len() == 3 && bshape(inputs[2])? != inner_shape) {
            return Err(OpError::Shape(format!(
                "scale {:?} and bias must broadcast to the normalised shape {inner_shape:?}",
                inputs[1].shape()
            )));
        }
        // Scale and bias broadcast to the row once, not per element (the
        // offset computation allocates; it was a quarter of a BERT run). One
        // that already has a value per element (the usual case) is used as is.
        let row_of = |t: &Tensor, v: &'a [f32]| -> Cow<'a, [f32]> {
            if v.len() == inner {
                Cow::Borrowed(v)
            } else {
                let at = |j: usize| v[super::binary::broadcast_offset(j, inner_shape, t.shape())];
                Cow::Owned((0..inner).map(at).collect())
            }
        };
        let scale_row = row_of(inputs[1], scale);
        let bias_row: Option<Cow<'a, [f32]>> = match (bias, inputs.get(2)) {
            (Some(b), Some(t)) => Some(row_of(t, b)),
            _ => None,
        };
        let rows = x.len() / inner.max(1);
        if !wide && self.outputs == 1 && inner > 0 {
            if let Some(y) = linalg::norm::layer_norm_avx512(x, inner, &scale_row, bias_row.as_deref(), self.epsilon) {
                return Ok(vec![Tensor::from_vec(s.to_vec(), y)?]);
            }
        }
        let mut y = vec![0.0f32; x.len()];
        if !wide && self.outputs == 1 && inner > 0 {
            // The fast path: f32 throughout, rows in parallel, AVX2 where available.
            let eps = self.epsilon;
            linalg::for_each_row_pair(&mut y, x, inner, |yr, xr| {
                linalg::norm::layer_norm_row(yr, xr, &scale_row, bias_row.as_deref(), eps)
            });
            return Ok(vec![Tensor::from_vec(s.to_vec(), y)?]);
        }
        let (mut means, mut invs) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        for r in 0..rows {
            let row = &x[r * inner..][..inner];
            let (mean, inv) = if wide {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / inner as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / inner as f64;
                (mean, 1.0 / (var + self.epsilon as f64).sqrt())
            } else {
                let mean = row.iter().sum::<f32>() / inner as f32;
                let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / inner as f32;
                (mean as f64, (1.0 / (var + self.epsilon).sqrt()) as f64)
            };
            for (j, &v) in row.iter().enumerate() {
                let n = (v as f64 - mean) * inv;
                let mut o = n * scale_row[j] as f64;
                if let Some(b) = &bias_row {
                    o += b[j] as f64;
                }
                y[r * inner + j] = o as f32;
            }
            means.push(mean as f32);
            invs.push(inv as f32);
        }
        let mut out = vec![Tensor::from_vec(s.to_vec(), y)?];
        if self.outputs == 3 {
            let mut st = s.to_vec();
            for d in st.iter_mut().skip(a) {
                *d = 1;
            }
            out.push(Tensor::from_vec(st.clone(), means)?);
            out.push(Tensor::from_vec(st, invs)?);
        }
        Ok(out)
    }
}

impl Op for LayerNorm {
    fn op_type(&self) -> &'static str {
        "LayerNormalization"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("axis".into(), self.axis.into());
        a.insert("epsilon".into(), (self.epsilon as f64).into());
        a.insert("outputs".into(), self.outputs.into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (x, scale, optional bias)")?;
        check_f32(inputs)?;
        let x = &inputs[0];
        let a = self.split(x.rank())?;
        let mut out = vec![x.clone()];
        if self.outputs == 3 {
            let mut shape = x.shape.clone();
            for d in shape.iter_mut().skip(a) {
                *d = Dim::Known(1);
            }
            let t = ValueType { dtype: x.dtype, shape };
            out.push(t.clone());
            out.push(t);
        }
        Ok(out)
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        self.run(inputs, true)
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        self.run(inputs, false)
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }
}

fn ln_case(rng: &mut CaseRng, s: &[usize], axis: i64, outputs: usize) -> OpCase {
    let a = if axis < 0 {
        (axis + s.len() as i64) as usize
    } else {
        axis as usize
    };
    let inputs = vec![
        rng.tensor(s, -2.0, 2.0),
        rng.tensor(&s[a..], 0.5, 1.5),
        rng.tensor(&s[a..], -1.0, 1.0),
    ];
    OpCase::new(
        format!("layernorm {s:?} axis {axis}"),
        Arc::new(LayerNorm {
            axis,
            epsilon: 1e-5,
            outputs,
        }),
        inputs,
    )
}

/// `LayerNormalization`: attributes `axis` (-1), `epsilon` (1e-5), `outputs` (1 or 3).
pub const LAYER_NORM: OpDef = OpDef {
    op_type: "LayerNormalization",
    build: |attrs| {
        let outputs = attr_i64(attrs, "outputs", Some(1))?;
        if outputs != 1 && outputs != 3 {
            return Err(OpError::Attribute {
                name: "outputs".into(),
                message: format!("{outputs}: must be 1 or 3"),
            });
        }
        Ok(Arc::new(LayerNorm {
            axis: attr_i64(attrs, "axis", Some(-1))?,
            epsilon: attr_f32(attrs, "epsilon", 1e-5)?,
            outputs: outputs as usize,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(62);
        vec![
            ln_case(&mut rng, &[1, 3], -1, 1),
            ln_case(&mut rng, &[17, 1000], -1, 3),
            ln_case(&mut rng, &[2, 3, 5], 1, 1),
            ln_case(&mut rng, &[4, 3, 7], 1, 3),
        ]
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.dim(40)).collect();
        let axis = rng.range(0, s.len() - 1) as i64;
        ln_case(rng, &s, axis, 1)
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layernorm_cpu_broadcasts_a_short_scale() {
        // scale [1] broadcasts over the normalised axis.
        let x = Tensor::from_vec(vec![2, 4], vec![1.0f32, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 2.0]).unwrap();
        let s = Tensor::from_vec(vec![1], vec![2.0f32]).unwrap();
        let b = Tensor::from_vec(vec![4], vec![0.0f32, 1.0, 2.0, 3.0]).unwrap();
        let op = LayerNorm {
            axis: -1,
            epsilon: 1e-5,
            outputs: 1,
        };
        let got = op.cpu(&[&x, &s, &b]).unwrap();
        let want = op.reference(&[&x, &s, &b]).unwrap();
        for (g, w) in got[0].as_f32().unwrap().iter().zip(want[0].as_f32().unwrap()) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
