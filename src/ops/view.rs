//! Views: ops that change a shape and move no data — `Reshape`, `Flatten`,
//! `Squeeze` and `Unsqueeze`. They take any dtype.

use std::sync::Arc;

use super::{attr_i64, attr_ints, axis_in, check_arity, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::tensor::{checked_numel, numel, Dim, Tensor, ValueType};

/// `Reshape` to a fixed target: `0` copies the input's dimension at that
/// position, `-1` (at most one) takes whatever size remains (ONNX semantics).
#[derive(Clone, Debug)]
pub struct Reshape {
    /// The target shape.
    pub shape: Vec<i64>,
    /// A `0` in `shape` is a size of zero, not a copy of the input's
    /// dimension (ONNX `allowzero = 1`).
    pub allowzero: bool,
}

impl Reshape {
    fn validate(&self) -> Result<(), OpError> {
        let bad = |m: String| OpError::Attribute {
            name: "shape".into(),
            message: m,
        };
        if self.shape.iter().filter(|&&d| d == -1).count() > 1 {
            return Err(bad(format!("{:?} has more than one -1", self.shape)));
        }
        if let Some(d) = self.shape.iter().find(|&&d| d < -1) {
            return Err(bad(format!("{:?} has the invalid size {d}", self.shape)));
        }
        if self.allowzero && self.shape.contains(&0) && self.shape.contains(&-1) {
            return Err(bad(format!(
                "{:?} has both 0 and -1 with allowzero = 1 (the -1 cannot be inferred)",
                self.shape
            )));
        }
        Ok(())
    }

    /// The output shape for a concrete input shape.
    pub fn concrete(&self, input: &[usize]) -> Result<Vec<usize>, OpError> {
        self.validate()?;
        let total = checked_numel(input)?;
        let mut out = Vec::with_capacity(self.shape.len());
        let mut hole = None;
        for (i, &d) in self.shape.iter().enumerate() {
            out.push(match d {
                0 if self.allowzero => 0,
                0 => *input.get(i).ok_or_else(|| {
                    OpError::Shape(format!(
                        "target {:?} copies dimension {i}, but the input {input:?} has none",
                        self.shape
                    ))
                })?,
                -1 => {
                    hole = Some(i);
                    1
                }
                d => d as usize,
            });
        }
        let known = checked_numel(&out)?;
        if let Some(h) = hole {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(OpError::Shape(format!(
                    "cannot reshape {input:?} ({total} elements) to {:?}",
                    self.shape
                )));
            }
            out[h] = total / known;
        } else if known != total {
            return Err(OpError::Shape(format!(
                "cannot reshape {input:?} ({total} elements) to {:?}",
                self.shape
            )));
        }
        Ok(out)
    }
}

impl Op for Reshape {
    fn op_type(&self) -> &'static str {
        "Reshape"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("shape".into(), self.shape.clone().into());
        if self.allowzero {
            a.insert("allowzero".into(), 1.into());
        }
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        self.validate()?;
        let x = &inputs[0];
        if let Some(s) = x.concrete_shape() {
            return Ok(vec![ValueType::known(x.dtype, &self.concrete(&s)?)]);
        }
        // Symbolic input: the symbols must be copied through by `0`.
        let mut out = Vec::with_capacity(self.shape.len());
        let mut copied = vec![false; x.rank()];
        for (i, &d) in self.shape.iter().enumerate() {
            out.push(match d {
                0 if self.allowzero => Dim::Known(0),
                0 => {
                    let dim = x.shape.get(i).ok_or_else(|| {
                        OpError::Shape(format!(
                            "target {:?} copies dimension {i}, but the input {} has none",
                            self.shape,
                            x.shape_string()
                        ))
                    })?;
                    copied[i] = true;
                    dim.clone()
                }
                -1 => Dim::Sym(String::new()),
                d => Dim::Known(d as usize),
            });
        }
        let uncopied_sym = x.shape.iter().zip(&copied).any(|(d, &c)| !c && d.known().is_none());
        let rest_in: Vec<usize> = x
            .shape
            .iter()
            .zip(&copied)
            .filter(|(_, &c)| !c)
            .filter_map(|(d, _)| d.known())
            .collect();
        let rest_in = checked_numel(&rest_in)?;
        let rest_out: Vec<usize> = self.shape.iter().filter(|&&d| d > 0).map(|&d| d as usize).collect();
        let rest_out = checked_numel(&rest_out)?;
        for d in out.iter_mut() {
            if *d == Dim::Sym(String::new()) {
                *d = if uncopied_sym || rest_out == 0 || !rest_in.is_multiple_of(rest_out) {
                    Dim::Sym(format!("reshape({})", x.shape_string()))
                } else {
                    Dim::Known(rest_in / rest_out)
                };
            }
        }
        Ok(vec![ValueType {
            dtype: x.dtype,
            shape: out,
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let shape = self.concrete(inputs[0].shape())?;
        Ok(vec![inputs[0].clone().reshape(shape)?])
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let g = grads.first().ok_or(OpError::Arity {
            expected: "1 gradient",
            got: 0,
        })?;
        Ok(vec![Some((*g).clone().reshape(inputs[0].shape().to_vec())?)])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }
}

/// `Flatten`: `[d0..d(axis-1)] × [d(axis)..]` into a 2-D tensor.
#[derive(Clone, Debug)]
pub struct Flatten {
    /// Where to split; negative counts from the end.
    pub axis: i64,
}

impl Flatten {
    fn split(&self, rank: usize) -> Result<usize, OpError> {
        let r = rank as i64;
        let a = if self.axis < 0 { self.axis + r } else { self.axis };
        if a < 0 || a > r {
            return Err(OpError::Attribute {
                name: "axis".into(),
                message: format!("{} is out of range for a rank-{rank} input", self.axis),
            });
        }
        Ok(a as usize)
    }
}

fn group(dims: &[Dim]) -> Dim {
    match dims {
        [single] => single.clone(),
        _ if dims.iter().all(|d| d.known().is_some()) => {
            Dim::Known(numel(&dims.iter().filter_map(Dim::known).collect::<Vec<_>>()))
        }
        _ => Dim::Sym(dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("*")),
    }
}

impl Op for Flatten {
    fn op_type(&self) -> &'static str {
        "Flatten"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("axis".into(), self.axis.into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = &inputs[0];
        let a = self.split(x.rank())?;
        Ok(vec![ValueType {
            dtype: x.dtype,
            shape: vec![group(&x.shape[..a]), group(&x.shape[a..])],
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let s = inputs[0].shape();
        let a = self.split(s.len())?;
        let shape = vec![s[..a].iter().product(), s[a..].iter().product()];
        Ok(vec![inputs[0].clone().reshape(shape)?])
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let g = grads.first().ok_or(OpError::Arity {
            expected: "1 gradient",
            got: 0,
        })?;
        Ok(vec![Some((*g).clone().reshape(inputs[0].shape().to_vec())?)])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }
}

/// `Reshape`: attributes `shape` (list; `0` copies, `-1` infers) and
/// `allowzero` (1: a `0` is a size of zero).
pub const RESHAPE: OpDef = OpDef {
    op_type: "Reshape",
    build: |attrs: &Attrs| {
        let op = Reshape {
            shape: attr_ints(attrs, "shape")?,
            allowzero: super::attr_i64(attrs, "allowzero", Some(0))? != 0,
        };
        op.validate()?;
        Ok(Arc::new(op))
    },
    cases: || {
        let mut rng = CaseRng::new(5);
        let mk = |rng: &mut CaseRng, s: &[usize], t: Vec<i64>| {
            OpCase::new(
                format!("reshape {s:?} -> {t:?}"),
                Arc::new(Reshape {
                    shape: t,
                    allowzero: false,
                }),
                vec![rng.tensor(s, -1.0, 1.0)],
            )
        };
        vec![
            mk(&mut rng, &[1], vec![1, 1]),
            mk(&mut rng, &[3, 17], vec![17, 3]),
            mk(&mut rng, &[17, 1000], vec![0, -1, 8]),
            mk(&mut rng, &[2, 3, 4], vec![-1]),
            OpCase::new(
                "reshape [0, 3, 4] -> [3, 4, 0] (allowzero)",
                Arc::new(Reshape {
                    shape: vec![3, 4, 0],
                    allowzero: true,
                }),
                vec![rng.tensor(&[0, 3, 4], -1.0, 1.0)],
            ),
        ]
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 4)).map(|_| rng.dim(9)).collect();
        let total: usize = s.iter().product();
        let target = if rng.next_u64().is_multiple_of(2) {
            vec![-1]
        } else {
            vec![s[0] as i64, -1]
        };
        let x = rng.tensor(&s, -1.0, 1.0);
        OpCase::new(
            format!("reshape {s:?} ({total}) -> {target:?}"),
            Arc::new(Reshape {
                shape: target,
                allowzero: false,
            }),
            vec![x],
        )
    },
};

/// `Flatten`: attribute `axis` (default 1).
pub const FLATTEN: OpDef = OpDef {
    op_type: "Flatten",
    build: |attrs: &Attrs| {
        Ok(Arc::new(Flatten {
            axis: attr_i64(attrs, "axis", Some(1))?,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(6);
        vec![
            OpCase::new(
                "flatten [3,17,5] axis 1",
                Arc::new(Flatten { axis: 1 }),
                vec![rng.tensor(&[3, 17, 5], -1.0, 1.0)],
            ),
            OpCase::new(
                "flatten [1,8,8] axis 0",
                Arc::new(Flatten { axis: 0 }),
                vec![rng.tensor(&[1, 8, 8], -1.0, 1.0)],
            ),
        ]
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 4)).map(|_| rng.dim(9)).collect();
        let axis = rng.range(0, s.len()) as i64;
        let x = rng.tensor(&s, -1.0, 1.0);
        OpCase::new(
            format!("flatten {s:?} axis {axis}"),
            Arc::new(Flatten { axis }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn reshape_symbolic_batch() {
        let x = ValueType {
            dtype: DType::F32,
            shape: vec![Dim::Sym("batch".into()), Dim::Known(8), Dim::Known(8)],
        };
        let y = Reshape {
            shape: vec![0, -1],
            allowzero: false,
        }
        .infer(std::slice::from_ref(&x))
        .unwrap();
        assert_eq!(y[0].shape, vec![Dim::Sym("batch".into()), Dim::Known(64)]);
        let y = Flatten { axis: 1 }.infer(&[x]).unwrap();
        assert_eq!(y[0].shape, vec![Dim::Sym("batch".into()), Dim::Known(64)]);
    }

    #[test]
    fn reshape_errors() {
        assert!(Reshape {
            shape: vec![-1, -1],
            allowzero: false
        }
        .concrete(&[4])
        .is_err());
        assert!(Reshape {
            shape: vec![3],
            allowzero: false
        }
        .concrete(&[4])
        .is_err());
        assert_eq!(
            Reshape {
                shape: vec![2, -1],
                allowzero: false
            }
            .concrete(&[4, 3])
            .unwrap(),
            vec![2, 6]
        );
    }
}
