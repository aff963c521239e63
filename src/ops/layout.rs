//! Data-movement ops added for ONNX import: `Transpose`, `Squeeze`,
//! `Unsqueeze`, `Concat` and `Cast`. They take any dtype.

use std::any::Any;
use std::sync::Arc;

use super::{attr_i64, attr_ints, check_arity, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::tensor::{numel, strides, DType, Dim, Tensor, ValueType};

/// The elements of `t` at flat positions `idx`, as a tensor of `shape`.
pub(crate) fn gather_flat(t: &Tensor, idx: &[usize], shape: Vec<usize>) -> Result<Tensor, OpError> {
    fn pick<T: Copy>(v: &[T], idx: &[usize]) -> Vec<T> {
        idx.iter().map(|&i| v[i]).collect()
    }
    let storage = crate::tensor::map_storage!(t.storage(), v => pick(v, idx));
    Ok(Tensor::new(shape, storage)?)
}

fn axis_in(axis: i64, rank: usize, what: &str) -> Result<usize, OpError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(OpError::Attribute {
            name: what.into(),
            message: format!("axis {axis} is out of range for rank {rank}"),
        });
    }
    Ok(a as usize)
}

/// `Transpose`: output axis `i` is input axis `perm[i]`.
#[derive(Clone, Debug)]
pub struct Transpose {
    /// The permutation; empty reverses the axes.
    pub perm: Vec<i64>,
}

impl Transpose {
    fn perm_for(&self, rank: usize) -> Result<Vec<usize>, OpError> {
        if self.perm.is_empty() {
            return Ok((0..rank).rev().collect());
        }
        let mut seen = vec![false; rank];
        let mut out = Vec::with_capacity(rank);
        for &p in &self.perm {
            let a = if p >= 0 && (p as usize) < rank {
                p as usize
            } else {
                rank
            };
            if a == rank || seen[a] || self.perm.len() != rank {
                return Err(OpError::Attribute {
                    name: "perm".into(),
                    message: format!("{:?} is not a permutation of the {rank} axes", self.perm),
                });
            }
            seen[a] = true;
            out.push(a);
        }
        Ok(out)
    }
}

impl Op for Transpose {
    fn op_type(&self) -> &'static str {
        "Transpose"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("perm".into(), self.perm.clone().into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let perm = self.perm_for(inputs[0].rank())?;
        Ok(vec![ValueType {
            dtype: inputs[0].dtype,
            shape: perm.iter().map(|&p| inputs[0].shape[p].clone()).collect(),
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let s = inputs[0].shape();
        let perm = self.perm_for(s.len())?;
        let out: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
        let st = strides(s);
        let n = numel(&out);
        let mut idx = Vec::with_capacity(n);
        for i in 0..n {
            let mut rem = i;
            let mut off = 0;
            for ax in (0..out.len()).rev() {
                let c = rem % out[ax];
                rem /= out[ax];
                off += c * st[perm[ax]];
            }
            idx.push(off);
        }
        Ok(vec![gather_flat(inputs[0], &idx, out)?])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `Transpose`: attribute `perm` (default: reverse the axes).
pub const TRANSPOSE: OpDef = OpDef {
    op_type: "Transpose",
    build: |attrs: &Attrs| {
        let perm = if attrs.contains_key("perm") {
            attr_ints(attrs, "perm")?
        } else {
            Vec::new()
        };
        Ok(Arc::new(Transpose { perm }))
    },
    cases: || {
        let mut rng = CaseRng::new(31);
        let cases: [(&[usize], Vec<i64>); 4] = [
            (&[1], vec![0]),
            (&[3, 17], vec![]),
            (&[2, 3, 5, 7], vec![0, 2, 3, 1]),
            (&[17, 33, 3], vec![2, 0, 1]),
        ];
        cases
            .into_iter()
            .map(|(s, perm)| {
                OpCase::new(
                    format!("transpose {s:?} {perm:?}"),
                    Arc::new(Transpose { perm }),
                    vec![rng.tensor(s, -1.0, 1.0)],
                )
            })
            .collect()
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 4)).map(|_| rng.dim(9)).collect();
        let mut perm: Vec<i64> = (0..s.len() as i64).collect();
        for i in (1..perm.len()).rev() {
            let j = rng.range(0, i);
            perm.swap(i, j);
        }
        let x = rng.tensor(&s, -1.0, 1.0);
        OpCase::new(
            format!("transpose {s:?} {perm:?}"),
            Arc::new(Transpose { perm }),
            vec![x],
        )
    },
};

/// `Squeeze` (remove size-1 axes) or `Unsqueeze` (insert them).
#[derive(Clone, Debug)]
pub struct Axes {
    /// True for `Unsqueeze`.
    pub unsqueeze: bool,
    /// The axes; for `Squeeze`, empty removes every size-1 axis.
    pub axes: Vec<i64>,
}

impl Axes {
    fn out_shape(&self, shape: &[Dim]) -> Result<Vec<Dim>, OpError> {
        if self.unsqueeze {
            let rank = shape.len() + self.axes.len();
            let mut marks = vec![false; rank];
            for &a in &self.axes {
                let a = axis_in(a, rank, "axes")?;
                if marks[a] {
                    return Err(OpError::Attribute {
                        name: "axes".into(),
                        message: format!("{:?} repeats an axis", self.axes),
                    });
                }
                marks[a] = true;
            }
            let mut it = shape.iter();
            Ok(marks
                .iter()
                .map(|&m| {
                    if m {
                        Dim::Known(1)
                    } else {
                        it.next().cloned().unwrap_or(Dim::Known(1))
                    }
                })
                .collect())
        } else {
            let mut drop = vec![false; shape.len()];
            if self.axes.is_empty() {
                for (i, d) in shape.iter().enumerate() {
                    match d {
                        Dim::Known(1) => drop[i] = true,
                        Dim::Known(_) => {}
                        Dim::Sym(s) => {
                            return Err(OpError::Shape(format!(
                                "Squeeze without axes needs known dimensions; dimension {i} is `{s}`"
                            )))
                        }
                    }
                }
            }
            for &a in &self.axes {
                let a = axis_in(a, shape.len(), "axes")?;
                if let Dim::Known(n) = shape[a] {
                    if n != 1 {
                        return Err(OpError::Shape(format!("cannot squeeze axis {a} of size {n}")));
                    }
                }
                drop[a] = true;
            }
            Ok(shape
                .iter()
                .zip(&drop)
                .filter(|(_, &d)| !d)
                .map(|(d, _)| d.clone())
                .collect())
        }
    }
}

impl Op for Axes {
    fn op_type(&self) -> &'static str {
        if self.unsqueeze {
            "Unsqueeze"
        } else {
            "Squeeze"
        }
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("axes".into(), self.axes.clone().into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        Ok(vec![ValueType {
            dtype: inputs[0].dtype,
            shape: self.out_shape(&inputs[0].shape)?,
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let dims: Vec<Dim> = inputs[0].shape().iter().map(|&d| Dim::Known(d)).collect();
        let shape = self.out_shape(&dims)?.iter().map(|d| d.known().unwrap_or(1)).collect();
        Ok(vec![inputs[0].clone().reshape(shape)?])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn axes_attr(attrs: &Attrs) -> Result<Vec<i64>, OpError> {
    if attrs.contains_key("axes") {
        attr_ints(attrs, "axes")
    } else {
        Ok(Vec::new())
    }
}

/// `Squeeze`: attribute `axes` (empty: every size-1 axis).
pub const SQUEEZE: OpDef = OpDef {
    op_type: "Squeeze",
    build: |attrs: &Attrs| {
        Ok(Arc::new(Axes {
            unsqueeze: false,
            axes: axes_attr(attrs)?,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(32);
        vec![
            OpCase::new(
                "squeeze [1,3,1,17] [0,-2]",
                Arc::new(Axes {
                    unsqueeze: false,
                    axes: vec![0, -2],
                }),
                vec![rng.tensor(&[1, 3, 1, 17], -1.0, 1.0)],
            ),
            OpCase::new(
                "squeeze [1,1] all",
                Arc::new(Axes {
                    unsqueeze: false,
                    axes: vec![],
                }),
                vec![rng.tensor(&[1, 1], -1.0, 1.0)],
            ),
        ]
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 4))
            .map(|_| if rng.range(0, 1) == 0 { 1 } else { rng.dim(9) })
            .collect();
        let axes: Vec<i64> = s
            .iter()
            .enumerate()
            .filter(|(_, &d)| d == 1)
            .map(|(i, _)| i as i64)
            .collect();
        let x = rng.tensor(&s, -1.0, 1.0);
        OpCase::new(
            format!("squeeze {s:?} {axes:?}"),
            Arc::new(Axes { unsqueeze: false, axes }),
            vec![x],
        )
    },
};

/// `Unsqueeze`: attribute `axes` (positions in the output).
pub const UNSQUEEZE: OpDef = OpDef {
    op_type: "Unsqueeze",
    build: |attrs: &Attrs| {
        Ok(Arc::new(Axes {
            unsqueeze: true,
            axes: attr_ints(attrs, "axes")?,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(33);
        vec![
            OpCase::new(
                "unsqueeze [3,17] [0,-1]",
                Arc::new(Axes {
                    unsqueeze: true,
                    axes: vec![0, -1],
                }),
                vec![rng.tensor(&[3, 17], -1.0, 1.0)],
            ),
            OpCase::new(
                "unsqueeze [] [0]",
                Arc::new(Axes {
                    unsqueeze: true,
                    axes: vec![0],
                }),
                vec![rng.tensor(&[], -1.0, 1.0)],
            ),
        ]
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(0, 3)).map(|_| rng.dim(9)).collect();
        let axes = vec![rng.range(0, s.len()) as i64];
        let x = rng.tensor(&s, -1.0, 1.0);
        OpCase::new(
            format!("unsqueeze {s:?} {axes:?}"),
            Arc::new(Axes { unsqueeze: true, axes }),
            vec![x],
        )
    },
};

/// `Concat`: joins any number of inputs along `axis`.
#[derive(Clone, Debug)]
pub struct Concat {
    /// The axis (negative counts from the end).
    pub axis: i64,
}

impl Op for Concat {
    fn op_type(&self) -> &'static str {
        "Concat"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("axis".into(), self.axis.into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, usize::MAX, "at least 1")?;
        let first = &inputs[0];
        let a = axis_in(self.axis, first.rank(), "axis")?;
        let mut shape = first.shape.clone();
        let mut total = Some(0usize);
        for (i, t) in inputs.iter().enumerate() {
            if t.dtype != first.dtype || t.rank() != first.rank() {
                return Err(OpError::Shape(format!(
                    "input {i} is {t}, but input 0 is {first}: Concat needs one dtype and rank"
                )));
            }
            for (ax, (x, y)) in t.shape.iter().zip(&first.shape).enumerate() {
                if ax != a {
                    if let (Some(x), Some(y)) = (x.known(), y.known()) {
                        if x != y {
                            return Err(OpError::Shape(format!(
                                "input {i} is {t}, input 0 is {first}: they differ off the concat axis"
                            )));
                        }
                    }
                }
            }
            total = match (total, t.shape[a].known()) {
                (Some(s), Some(d)) => Some(s + d),
                _ => None,
            };
        }
        shape[a] = match total {
            Some(n) => Dim::Known(n),
            None => Dim::Sym(format!("concat{a}")),
        };
        Ok(vec![ValueType {
            dtype: first.dtype,
            shape,
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let types: Vec<ValueType> = inputs.iter().map(|t| ValueType::known(t.dtype(), t.shape())).collect();
        self.infer(&types)?;
        let first = inputs[0].shape();
        let a = axis_in(self.axis, first.len(), "axis")?;
        let outer: usize = first[..a].iter().product();
        let inner: usize = first[a + 1..].iter().product();
        let mut shape = first.to_vec();
        shape[a] = inputs.iter().map(|t| t.shape()[a]).sum();
        // Concatenate through an index map into one flat list of all inputs.
        let mut base = Vec::with_capacity(inputs.len());
        let mut acc = 0;
        for t in inputs {
            base.push(acc);
            acc += t.numel();
        }
        let mut idx = Vec::with_capacity(numel(&shape));
        for o in 0..outer {
            for (t, b) in inputs.iter().zip(&base) {
                let chunk = t.shape()[a] * inner;
                idx.extend((0..chunk).map(|j| b + o * chunk + j));
            }
        }
        let joined = join(inputs)?;
        Ok(vec![gather_flat(&joined, &idx, shape)?])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// All inputs' elements in one flat tensor (same dtype).
fn join(inputs: &[&Tensor]) -> Result<Tensor, OpError> {
    let n: usize = inputs.iter().map(|t| t.numel()).sum();
    let dtype = inputs[0].dtype();
    let mut bytes = Vec::with_capacity(n * dtype.size_in_bytes());
    for t in inputs {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    Ok(Tensor::from_le_bytes(dtype, vec![n], &bytes)?)
}

/// `Concat`: attribute `axis` (required).
pub const CONCAT: OpDef = OpDef {
    op_type: "Concat",
    build: |attrs: &Attrs| {
        Ok(Arc::new(Concat {
            axis: attr_i64(attrs, "axis", None)?,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(34);
        vec![
            OpCase::new(
                "concat [1]+[3] axis 0",
                Arc::new(Concat { axis: 0 }),
                vec![rng.tensor(&[1], -1.0, 1.0), rng.tensor(&[3], -1.0, 1.0)],
            ),
            OpCase::new(
                "concat [2,3,5]+[2,17,5]+[2,1,5] axis 1",
                Arc::new(Concat { axis: 1 }),
                vec![
                    rng.tensor(&[2, 3, 5], -1.0, 1.0),
                    rng.tensor(&[2, 17, 5], -1.0, 1.0),
                    rng.tensor(&[2, 1, 5], -1.0, 1.0),
                ],
            ),
            OpCase::new(
                "concat [3,7]+[3,1] axis -1",
                Arc::new(Concat { axis: -1 }),
                vec![rng.tensor(&[3, 7], -1.0, 1.0), rng.tensor(&[3, 1], -1.0, 1.0)],
            ),
        ]
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.dim(7)).collect();
        let axis = rng.range(0, s.len() - 1);
        let mut t = s.clone();
        t[axis] = rng.dim(7);
        let xs = vec![rng.tensor(&s, -1.0, 1.0), rng.tensor(&t, -1.0, 1.0)];
        OpCase::new(
            format!("concat {s:?}+{t:?} axis {axis}"),
            Arc::new(Concat { axis: axis as i64 }),
            xs,
        )
    },
};

/// `Cast` to another dtype (float to integer truncates toward zero and saturates).
#[derive(Clone, Debug)]
pub struct Cast {
    /// The target dtype.
    pub to: DType,
}

impl Op for Cast {
    fn op_type(&self) -> &'static str {
        "Cast"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("to".into(), self.to.name().into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        Ok(vec![ValueType {
            dtype: self.to,
            shape: inputs[0].shape.clone(),
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        Ok(vec![inputs[0].cast(self.to)])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Values that probe float conversions: infinities, signed zero, f16
/// overflow and subnormals, exact ties (1 + 2^-11 rounds to even in f16,
/// 1 + 2^-8 in bf16) and random values over a wide range; an odd count (two
/// 16-bit values share a word on the GPU). No NaN: cases are compared with
/// `==` elsewhere (the ONNX node tests cover NaN).
/// i64 values whose f32 is exact (|v| <= 2^24, or a multiple of a power of
/// two above it, beyond the i32 range when `wide`), so that every backend
/// agrees bit for bit.
fn int_values(rng: &mut CaseRng, wide: bool) -> Tensor {
    let mut v: Vec<i64> = vec![
        0,
        1,
        0,
        1,
        1,
        -1,
        16_777_216,
        -16_777_216,
        123_456,
        -7,
        1 << 30,
        -(1 << 31),
    ];
    if wide {
        v.extend([1i64 << 40, -(1i64 << 40), 3 << 33, -(5 << 45), (1 << 32) + (1 << 31)]);
    }
    for _ in 0..20 {
        v.push(rng.uniform(-1e6, 1e6) as i64);
    }
    let n = v.len();
    Tensor::from_vec(vec![n], v).unwrap_or_else(|e| unreachable!("a vector of n values: {e}"))
}

fn cast_values(rng: &mut CaseRng) -> Tensor {
    let mut v = vec![
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        65504.0,
        65520.0,
        -1e6,
        1e38,
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        6e-8,
        2.9e-8,
        1e-5,
        -3.3e-6,
        1e-40,
        -1e-30,
    ];
    for _ in 0..20 {
        let e = rng.uniform(-30.0, 20.0);
        v.push(rng.uniform(-1.0, 1.0) * 2f32.powf(e));
    }
    let n = v.len();
    Tensor::from_vec(vec![n], v).unwrap_or_else(|e| unreachable!("a vector of n values: {e}"))
}

/// `Cast`: attribute `to` (a dtype name: f32, f16, i64, ...).
pub const CAST: OpDef = OpDef {
    op_type: "Cast",
    build: |attrs: &Attrs| {
        let name = super::attr_str(attrs, "to", "")?;
        let to = DType::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| OpError::Attribute {
                name: "to".into(),
                message: format!("`{name}` is not a dtype wginfer knows (f32 f16 bf16 i8 u8 i32 i64 bool)"),
            })?;
        Ok(Arc::new(Cast { to }))
    },
    cases: || {
        let mut rng = CaseRng::new(35);
        vec![
            OpCase::new(
                "cast [3,17] f32->i64",
                Arc::new(Cast { to: DType::I64 }),
                vec![rng.tensor(&[3, 17], -9.0, 9.0)],
            ),
            OpCase::new(
                "cast [17] f32->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![rng.tensor(&[17], -9.0, 9.0)],
            ),
            OpCase::new(
                "cast f32->f16 (specials, ties, subnormals)",
                Arc::new(Cast { to: DType::F16 }),
                vec![cast_values(&mut rng)],
            ),
            OpCase::new(
                "cast f32->bf16 (specials, ties)",
                Arc::new(Cast { to: DType::BF16 }),
                vec![cast_values(&mut rng)],
            ),
            OpCase::new(
                "cast f16->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![cast_values(&mut rng).cast(DType::F16)],
            ),
            OpCase::new(
                "cast bf16->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![cast_values(&mut rng).cast(DType::BF16)],
            ),
            OpCase::new(
                "cast f16->bf16",
                Arc::new(Cast { to: DType::BF16 }),
                vec![cast_values(&mut rng).cast(DType::F16)],
            ),
            OpCase::new(
                "cast i64->f32 (a mask, i32-range and large values)",
                Arc::new(Cast { to: DType::F32 }),
                vec![int_values(&mut rng, true)],
            ),
            OpCase::new(
                "cast i32->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![int_values(&mut rng, false).cast(DType::I32)],
            ),
            OpCase::new(
                "cast i8->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![rng.tensor(&[5, 7], -128.0, 127.0).cast(DType::I8)],
            ),
            OpCase::new(
                "cast u8->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![rng.tensor(&[3, 11], 0.0, 255.0).cast(DType::U8)],
            ),
            OpCase::new(
                "cast bool->f32 (an attention mask)",
                Arc::new(Cast { to: DType::F32 }),
                vec![rng.tensor(&[2, 13], -1.0, 1.0).cast(DType::Bool)],
            ),
        ]
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.dim(9)).collect();
        let x = rng.tensor(&s, -9.0, 9.0);
        OpCase::new(format!("cast {s:?} -> i32"), Arc::new(Cast { to: DType::I32 }), vec![x])
    },
};
