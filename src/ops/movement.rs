//! Data movement: `Transpose`, `Concat` and `Gather` (with ONNX semantics:
//! `Gather` picks slices of `data` along `axis` at the positions `indices`
//! names; an embedding lookup is `Gather` on axis 0). They take any dtype.

use std::sync::Arc;

use rayon::prelude::*;

use super::{attr_i64, attr_ints, axis_in, check_arity, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
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
                (Some(s), Some(d)) => Some(s.checked_add(d).ok_or_else(|| {
                    OpError::Shape(format!(
                        "the concat axis {a} overflows a {}-bit size at input {i}",
                        usize::BITS
                    ))
                })?),
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

/// `Gather`: `out[a.., i.., b..] = data[a.., indices[i..], b..]` with `a..` the axes
/// before `axis` and `b..` the axes after it.
///
/// Inputs: `data` (any dtype) and `indices` (`i64` or `i32`, any shape).
/// The output has `data`'s dtype and shape
/// `data[..axis] ++ indices.shape ++ data[axis + 1..]`. A negative index
/// counts from the end once (`-1` is the last slice); an index outside
/// `-len..len` is an error naming it and the bound.
#[derive(Clone, Debug)]
pub struct Gather {
    /// The axis of `data` to index (negative counts from the end).
    pub axis: i64,
}

impl Gather {
    fn axis_for(&self, rank: usize) -> Result<usize, OpError> {
        let r = rank as i64;
        let a = if self.axis < 0 { self.axis + r } else { self.axis };
        if a < 0 || a >= r {
            return Err(OpError::Attribute {
                name: "axis".into(),
                message: format!("{} is out of range for a rank-{rank} data input", self.axis),
            });
        }
        Ok(a as usize)
    }

    /// The indices, wrapped into `0..len`; an error names the first bad one.
    pub fn resolve_indices(indices: &Tensor, len: usize) -> Result<Vec<usize>, OpError> {
        let raw = match indices.dtype() {
            DType::I64 | DType::I32 => indices.to_i64_vec(),
            got => {
                return Err(OpError::DType {
                    index: 1,
                    expected: "i64 or i32 indices",
                    got,
                })
            }
        };
        raw.iter()
            .enumerate()
            .map(|(pos, &i)| {
                let j = if i < 0 { i + len as i64 } else { i };
                if j < 0 || j >= len as i64 {
                    return Err(OpError::Shape(format!(
                        "Gather index {i} (position {pos} of the indices) is out of range: the axis has {len} entries, so indices must be in -{len}..{len}"
                    )));
                }
                Ok(j as usize)
            })
            .collect()
    }

    /// (outer, axis length, inner, output shape) for concrete inputs.
    fn geometry(&self, data: &Tensor, indices: &Tensor) -> Result<(usize, usize, usize, Vec<usize>), OpError> {
        let s = data.shape();
        let a = self.axis_for(s.len())?;
        let mut out = s[..a].to_vec();
        out.extend_from_slice(indices.shape());
        out.extend_from_slice(&s[a + 1..]);
        Ok((s[..a].iter().product(), s[a], s[a + 1..].iter().product(), out))
    }
}

impl Op for Gather {
    fn op_type(&self) -> &'static str {
        "Gather"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("axis".into(), self.axis.into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (data, indices)")?;
        let (data, idx) = (&inputs[0], &inputs[1]);
        if !matches!(idx.dtype, DType::I64 | DType::I32) {
            return Err(OpError::DType {
                index: 1,
                expected: "i64 or i32 indices",
                got: idx.dtype,
            });
        }
        let a = self.axis_for(data.rank())?;
        let mut shape: Vec<Dim> = data.shape[..a].to_vec();
        shape.extend(idx.shape.iter().cloned());
        shape.extend(data.shape[a + 1..].iter().cloned());
        Ok(vec![ValueType {
            dtype: data.dtype,
            shape,
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (data, indices)")?;
        let (outer, len, inner, out) = self.geometry(inputs[0], inputs[1])?;
        let ids = Self::resolve_indices(inputs[1], len)?;
        let mut flat = Vec::with_capacity(outer * ids.len() * inner);
        for o in 0..outer {
            for &j in &ids {
                for k in 0..inner {
                    flat.push((o * len + j) * inner + k);
                }
            }
        }
        Ok(vec![gather_flat(inputs[0], &flat, out)?])
    }

    /// f32 data: whole rows copied in parallel (an embedding lookup is a
    /// `memcpy` per token). Other dtypes take the reference.
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (data, indices)")?;
        let Ok(data) = inputs[0].as_f32() else {
            return self.reference(inputs);
        };
        let (outer, len, inner, out) = self.geometry(inputs[0], inputs[1])?;
        let ids = Self::resolve_indices(inputs[1], len)?;
        let mut y = vec![0.0f32; outer * ids.len() * inner];
        if inner > 0 {
            let copy = |(r, row): (usize, &mut [f32])| {
                let (o, j) = (r / ids.len(), ids[r % ids.len()]);
                row.copy_from_slice(&data[(o * len + j) * inner..][..inner]);
            };
            if y.len() >= 1 << 15 {
                y.par_chunks_mut(inner).enumerate().for_each(copy);
            } else {
                y.chunks_mut(inner).enumerate().for_each(copy);
            }
        }
        Ok(vec![Tensor::from_vec(out, y)?])
    }

    /// The gradient of `data` adds each output row's gradient back into the
    /// row it was read from (repeated indices accumulate); the indices have none.
    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (data, indices)")?;
        f32_input(inputs, 0)?;
        let dy = f32_input(grads, 0)?;
        let (outer, len, inner, _) = self.geometry(inputs[0], inputs[1])?;
        let ids = Self::resolve_indices(inputs[1], len)?;
        let mut dx = vec![0.0f32; inputs[0].numel()];
        for o in 0..outer {
            for (p, &j) in ids.iter().enumerate() {
                let src = &dy[(o * ids.len() + p) * inner..][..inner];
                let dst = &mut dx[(o * len + j) * inner..][..inner];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += s;
                }
            }
        }
        Ok(vec![Some(Tensor::from_vec(inputs[0].shape().to_vec(), dx)?), None])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }
}

fn case(rng: &mut CaseRng, data: &[usize], axis: i64, idx_shape: &[usize], i32_indices: bool) -> OpCase {
    let r = data.len() as i64;
    let len = data[(if axis < 0 { axis + r } else { axis }) as usize] as i64;
    let n: usize = idx_shape.iter().product();
    // Negative indices too, to exercise the wrap.
    let ids: Vec<i64> = (0..n)
        .map(|_| rng.range(0, 2 * len as usize - 1) as i64 - len)
        .collect();
    let indices = if i32_indices {
        Tensor::from_vec(idx_shape.to_vec(), ids.iter().map(|&i| i as i32).collect::<Vec<_>>())
    } else {
        Tensor::from_vec(idx_shape.to_vec(), ids)
    }
    .unwrap_or_else(|_| unreachable!("numel matches"));
    let kind = if i32_indices { "i32" } else { "i64" };
    OpCase::new(
        format!("gather {data:?} axis {axis} {kind} indices {idx_shape:?}"),
        Arc::new(Gather { axis }),
        vec![rng.tensor(data, -1.0, 1.0), indices],
    )
}

/// `Gather`: attribute `axis` (default 0); inputs `data`, `indices` (i64 or i32).
pub const GATHER: OpDef = OpDef {
    op_type: "Gather",
    build: |attrs: &Attrs| {
        Ok(Arc::new(Gather {
            axis: attr_i64(attrs, "axis", Some(0))?,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(91);
        vec![
            case(&mut rng, &[1], 0, &[1], false),
            case(&mut rng, &[1000, 17], 0, &[3, 33], false),
            case(&mut rng, &[3, 17, 5], 1, &[7], true),
            case(&mut rng, &[5, 3], -1, &[], false),
            case(&mut rng, &[2, 3, 5, 7], 2, &[2, 2], false),
        ]
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.dim(17)).collect();
        let axis = rng.range(0, s.len() - 1) as i64 - if rng.unit() < 0.3 { s.len() as i64 } else { 0 };
        let idx: Vec<usize> = (0..rng.range(0, 2)).map(|_| rng.dim(9)).collect();
        let i32_indices = rng.unit() < 0.3;
        case(rng, &s, axis, &idx, i32_indices)
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_lookup_with_negative_and_repeated_indices() {
        let data = Tensor::from_vec(vec![3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let idx = Tensor::from_vec(vec![2, 2], vec![2i64, 0, -1, 0]).unwrap();
        let op = Gather { axis: 0 };
        for y in [op.reference(&[&data, &idx]).unwrap(), op.cpu(&[&data, &idx]).unwrap()] {
            assert_eq!(y[0].shape(), &[2, 2, 2]);
            assert_eq!(y[0].as_f32().unwrap(), &[5.0, 6.0, 1.0, 2.0, 5.0, 6.0, 1.0, 2.0]);
        }
    }

    #[test]
    fn inner_axis_and_scalar_index() {
        let data = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let idx = Tensor::from_vec(vec![], vec![-2i32]).unwrap();
        let y = Gather { axis: 1 }.cpu(&[&data, &idx]).unwrap();
        assert_eq!(y[0].shape(), &[2]);
        assert_eq!(y[0].as_f32().unwrap(), &[2.0, 5.0]);
    }

    #[test]
    fn integer_data_goes_through_the_reference() {
        let data = Tensor::from_vec(vec![4], vec![10i64, 20, 30, 40]).unwrap();
        let idx = Tensor::from_vec(vec![2], vec![3i64, -4]).unwrap();
        let y = Gather { axis: 0 }.cpu(&[&data, &idx]).unwrap();
        assert_eq!(y[0].as_slice::<i64>().unwrap(), &[40, 10]);
    }

    #[test]
    fn out_of_range_index_is_an_error_naming_it_and_the_bound() {
        let data = Tensor::from_vec(vec![3, 2], vec![0.0f32; 6]).unwrap();
        for bad in [3i64, -4, 30522] {
            let idx = Tensor::from_vec(vec![2], vec![0, bad]).unwrap();
            for r in [
                Gather { axis: 0 }.reference(&[&data, &idx]),
                Gather { axis: 0 }.cpu(&[&data, &idx]),
            ] {
                let msg = r.unwrap_err().to_string();
                assert!(msg.contains(&bad.to_string()) && msg.contains("3 entries"), "{msg}");
            }
        }
    }

    #[test]
    fn float_indices_are_rejected() {
        let data = ValueType::known(DType::F32, &[3, 2]);
        let idx = ValueType::known(DType::F32, &[2]);
        assert!(Gather { axis: 0 }.infer(&[data, idx]).is_err());
    }

    #[test]
    fn symbolic_dims_pass_through() {
        let data = ValueType::known(DType::F32, &[30522, 384]);
        let idx = ValueType {
            dtype: DType::I64,
            shape: vec![Dim::Sym("batch".into()), Dim::Sym("seq".into())],
        };
        let t = Gather { axis: 0 }.infer(&[data, idx]).unwrap();
        assert_eq!(
            t[0].shape,
            vec![Dim::Sym("batch".into()), Dim::Sym("seq".into()), Dim::Known(384)]
        );
    }

    #[test]
    fn backward_accumulates_repeated_rows() {
        let data = Tensor::from_vec(vec![3, 2], vec![0.0f32; 6]).unwrap();
        let idx = Tensor::from_vec(vec![3], vec![1i64, -2, 0]).unwrap();
        let dy = Tensor::from_vec(vec![3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let op = Gather { axis: 0 };
        let y = op.reference(&[&data, &idx]).unwrap();
        let g = op.backward(&[&data, &idx], &[&y[0]], &[&dy]).unwrap();
        assert_eq!(
            g[0].as_ref().unwrap().as_f32().unwrap(),
            &[5.0, 6.0, 4.0, 6.0, 0.0, 0.0]
        );
        assert!(g[1].is_none());
    }
}
