//! `Linear`: `y = x · Wᵀ + b`, with `W` stored `[out, in]` (PyTorch's layout).

use std::sync::Arc;

use super::{check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Prepared, Validation};
use crate::error::OpError;
use crate::linalg::{self, f32gemm::PackedF32, MatRef};
use crate::tensor::{Dim, Tensor, ValueType};

/// A fully connected layer. Inputs: `x [..., in]`, `weight [out, in]`,
/// optional `bias [out]`; output `[..., out]`.
#[derive(Clone, Debug, Default)]
pub struct Linear;

/// An f32 weight `[n, k]` prepared for the fast CPU product: packed for
/// [`linalg::f32gemm`] with AVX-512 or AVX2 + FMA (see `examples/f32_gemm_speed.rs` for its
/// speed against `gemm`), elsewhere transposed to `[k, n]` row-major, the
/// layout the `gemm` crate reads fastest as its right-hand side (1.1-1.4x on
/// the 784-512-512-10 MLP's layers at batch 1-64 here). Used by `Linear` and
/// by the weight-only `QLinear` formats once decoded.
pub(crate) enum PreparedF32 {
    /// For the AVX-512 kernel.
    Packed(PackedF32),
    /// For `gemm`.
    Transposed {
        /// Outputs.
        n: usize,
        /// Inputs.
        k: usize,
        /// `[k, n]` row-major.
        data: Vec<f32>,
    },
}

impl PreparedF32 {
    /// Prepares `w` (`n` rows of `k`, PyTorch's `[out, in]`).
    pub(crate) fn new(w: &[f32], n: usize, k: usize) -> Self {
        if let Some(p) = PackedF32::new(w, n, k) {
            return Self::Packed(p);
        }
        let mut data = vec![0.0f32; n * k];
        for (o, row) in w.chunks_exact(k.max(1)).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                data[i * n + o] = v;
            }
        }
        Self::Transposed { n, k, data }
    }

    /// `(n, k)`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        match self {
            Self::Packed(p) => (p.n(), p.k()),
            Self::Transposed { n, k, .. } => (*n, *k),
        }
    }

    /// `x [m, k] · Wᵀ (+ bias [n])`, `[m, n]`, then ReLU when `relu`.
    pub(crate) fn run(&self, x: &[f32], m: usize, bias: Option<&[f32]>, relu: bool) -> Result<Vec<f32>, OpError> {
        let (n, k) = self.dims();
        if x.len() < m * k || bias.is_some_and(|b| b.len() < n) {
            return Err(OpError::Shape(format!(
                "{m} rows of {k} inputs and a bias of {n} needed; got {} values and a bias of {:?}",
                x.len(),
                bias.map(<[f32]>::len)
            )));
        }
        match self {
            Self::Packed(p) => Ok(p.apply(x, m, bias, relu)),
            Self::Transposed { data, .. } => {
                let mut y = vec![0.0f32; m * n];
                let accumulate = match bias {
                    Some(b) => {
                        for row in y.chunks_mut(n.max(1)) {
                            row.copy_from_slice(&b[..n]);
                        }
                        true
                    }
                    None => false,
                };
                linalg::sgemm(
                    MatRef::row_major(x, m, k),
                    MatRef::row_major(data, k, n),
                    &mut y,
                    accumulate,
                )?;
                if relu {
                    linalg::relu_in_place(&mut y);
                }
                Ok(y)
            }
        }
    }
}

/// `x · w + bias` through the `gemm` crate, `w` a `[k, n]` view of the
/// weight (the stored `[n, k]` transposed, or a prepared copy).
fn gemm_with_bias(inputs: &[&Tensor], m: usize, k: usize, n: usize, w: MatRef<'_>) -> Result<Vec<Tensor>, OpError> {
    let x = f32_input(inputs, 0)?;
    let mut y = vec![0.0f32; m * n];
    let accumulate = if inputs.len() == 3 {
        let b = f32_input(inputs, 2)?;
        for row in y.chunks_mut(n.max(1)) {
            row.copy_from_slice(b);
        }
        true
    } else {
        false
    };
    linalg::sgemm(MatRef::row_major(x, m, k), w, &mut y, accumulate)?;
    Ok(vec![Tensor::from_vec(out_shape(inputs[0].shape(), n), y)?])
}

/// What [`Linear::prepare_cpu`](Op::prepare_cpu) derives: the weight as a
/// [`PreparedF32`], and whether a ReLU that reads only this Linear runs on
/// its output (see [`Linear::with_relu`]).
struct PreparedLinear {
    w: Arc<PreparedF32>,
    relu: bool,
}

impl Linear {
    /// `prepared` (what [`Op::prepare_cpu`] returned) with ReLU applied to
    /// the product: [`Op::cpu_prepared`] then returns `Relu(Linear(x))`, the
    /// CPU backend's fusion of a Linear and the Relu that alone reads it.
    /// `None` when `prepared` is not this op's.
    pub fn with_relu(&self, prepared: &Prepared) -> Option<Prepared> {
        let p = prepared.0.downcast_ref::<PreparedLinear>()?;
        Some(Prepared(Arc::new(PreparedLinear {
            w: Arc::clone(&p.w),
            relu: true,
        })))
    }
}

/// Rows, inner and output sizes of a concrete Linear call.
fn dims(inputs: &[&Tensor]) -> Result<(usize, usize, usize), OpError> {
    check_arity(inputs.len(), 2, 3, "2 or 3 (x, weight, optional bias)")?;
    let (x, w) = (inputs[0].shape(), inputs[1].shape());
    if x.is_empty() || w.len() != 2 {
        return Err(OpError::Shape(format!(
            "needs x of rank >= 1 and weight [out, in]; got x {x:?}, weight {w:?}"
        )));
    }
    let k = x[x.len() - 1];
    if w[1] != k {
        return Err(OpError::Shape(format!(
            "x has {k} features (shape {x:?}) but weight {w:?} takes {}",
            w[1]
        )));
    }
    if let Some(b) = inputs.get(2) {
        if b.shape() != [w[0]] {
            return Err(OpError::Shape(format!(
                "bias has shape {:?}; it must be [{}]",
                b.shape(),
                w[0]
            )));
        }
    }
    let rows = inputs[0].numel().checked_div(k).unwrap_or(0);
    Ok((rows, k, w[0]))
}

fn out_shape(x: &[usize], n: usize) -> Vec<usize> {
    let mut s = x.to_vec();
    if let Some(last) = s.last_mut() {
        *last = n;
    }
    s
}

impl Op for Linear {
    fn op_type(&self) -> &'static str {
        "Linear"
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (x, weight, optional bias)")?;
        check_f32(inputs)?;
        let (x, w) = (&inputs[0], &inputs[1]);
        if x.rank() == 0 || w.rank() != 2 {
            return Err(OpError::Shape(format!(
                "needs x of rank >= 1 and weight [out, in]; got x {}, weight {}",
                x.shape_string(),
                w.shape_string()
            )));
        }
        let k = &x.shape[x.rank() - 1];
        if let (Some(k), Some(wk)) = (k.known(), w.shape[1].known()) {
            if k != wk {
                return Err(OpError::Shape(format!(
                    "x has {k} features ({}) but weight {} takes {wk}",
                    x.shape_string(),
                    w.shape_string()
                )));
            }
        }
        if let Some(b) = inputs.get(2) {
            if b.rank() != 1
                || (b.shape[0].known().is_some() && w.shape[0].known().is_some() && b.shape[0] != w.shape[0])
            {
                return Err(OpError::Shape(format!(
                    "bias is {}; it must be [{}]",
                    b.shape_string(),
                    w.shape[0]
                )));
            }
        }
        let mut shape: Vec<Dim> = x.shape.clone();
        let last = shape.len() - 1;
        shape[last] = w.shape[0].clone();
        Ok(vec![ValueType { dtype: x.dtype, shape }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (m, k, n) = dims(inputs)?;
        let (x, w) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let b = if inputs.len() == 3 {
            Some(f32_input(inputs, 2)?)
        } else {
            None
        };
        let mut y = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    acc += x[i * k + p] as f64 * w[j * k + p] as f64;
                }
                if let Some(b) = b {
                    acc += b[j] as f64;
                }
                y[i * n + j] = acc as f32;
            }
        }
        Ok(vec![Tensor::from_vec(out_shape(inputs[0].shape(), n), y)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (m, k, n) = dims(inputs)?;
        let w = f32_input(inputs, 1)?;
        gemm_with_bias(inputs, m, k, n, MatRef::transposed(w, k, n))
    }

    /// The weight as a [`PreparedF32`].
    fn prepare_cpu(&self, consts: &[Option<&Tensor>]) -> Option<Prepared> {
        let w = (*consts.get(1)?)?;
        let (&[n, k], Ok(data)) = (w.shape(), w.as_f32()) else {
            return None;
        };
        Some(Prepared(Arc::new(PreparedLinear {
            w: Arc::new(PreparedF32::new(data, n, k)),
            relu: false,
        })))
    }

    fn cpu_prepared(&self, inputs: &[&Tensor], prepared: &Prepared) -> Result<Vec<Tensor>, OpError> {
        let (m, k, n) = dims(inputs)?;
        let x = f32_input(inputs, 0)?;
        let pl = prepared.0.downcast_ref::<PreparedLinear>();
        let relu = pl.is_some_and(|p| p.relu);
        let b = if inputs.len() == 3 {
            Some(f32_input(inputs, 2)?)
        } else {
            None
        };
        if m == 1 {
            // One row: dot products over the [out, in] weight's contiguous
            // rows (gemm packs for its microkernel and reaches half this speed).
            let mut y = vec![0.0f32; n];
            linalg::gemv::gemv(x, f32_input(inputs, 1)?, b, relu, &mut y);
            return Ok(vec![Tensor::from_vec(out_shape(inputs[0].shape(), n), y)?]);
        }
        let y = if let Some(p) = pl.filter(|p| p.w.dims() == (n, k)) {
            p.w.run(x, m, b, relu)?
        } else {
            let w = f32_input(inputs, 1)?;
            let out = gemm_with_bias(inputs, m, k, n, MatRef::transposed(w, k, n))?;
            let mut y = out.into_iter().next().map(|t| t.to_f32_vec()).unwrap_or_default();
            if relu {
                linalg::relu_in_place(&mut y);
            }
            y
        };
        Ok(vec![Tensor::from_vec(out_shape(inputs[0].shape(), n), y)?])
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        let (m, k, n) = dims(inputs)?;
        let (x, w) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let dy = f32_input(grads, 0)?;
        let mut dx = vec![0.0f32; m * k];
        linalg::sgemm(MatRef::row_major(dy, m, n), MatRef::row_major(w, n, k), &mut dx, false)?;
        let mut dw = vec![0.0f32; n * k];
        linalg::sgemm(MatRef::transposed(dy, n, m), MatRef::row_major(x, m, k), &mut dw, false)?;
        let mut out = vec![
            Some(Tensor::from_vec(inputs[0].shape().to_vec(), dx)?),
            Some(Tensor::from_vec(vec![n, k], dw)?),
        ];
        if inputs.len() == 3 {
            let mut db = vec![0.0f32; n];
            for row in dy.chunks(n.max(1)) {
                for (d, &g) in db.iter_mut().zip(row) {
                    *d += g;
                }
            }
            out.push(Some(Tensor::from_vec(vec![n], db)?));
        }
        Ok(out)
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        match inputs {
            [x, w, ..] if !x.is_empty() && w.len() == 2 => {
                let rows: usize = x[..x.len() - 1].iter().product();
                2 * (rows * w[0] * w[1]) as u64
            }
            _ => 0,
        }
    }
}

fn case(rng: &mut CaseRng, lead: &[usize], k: usize, n: usize, bias: bool) -> OpCase {
    let mut xs = lead.to_vec();
    xs.push(k);
    let mut inputs = vec![rng.tensor(&xs, -1.0, 1.0), rng.tensor(&[n, k], -1.0, 1.0)];
    if bias {
        inputs.push(rng.tensor(&[n], -1.0, 1.0));
    }
    let name = format!("linear {xs:?} -> {n}{}", if bias { " +bias" } else { "" });
    OpCase::new(name, Arc::new(Linear), inputs)
}

/// `Linear`: fully connected layer, weight `[out, in]`, optional bias.
pub const LINEAR: OpDef = OpDef {
    op_type: "Linear",
    build: |_: &Attrs| Ok(Arc::new(Linear)),
    cases: || {
        let mut rng = CaseRng::new(1);
        vec![
            case(&mut rng, &[1], 1, 1, true),
            case(&mut rng, &[3], 17, 5, true),
            case(&mut rng, &[1], 1000, 17, true),
            case(&mut rng, &[17], 1000, 3, false),
            case(&mut rng, &[2, 3], 64, 33, true),
            case(&mut rng, &[1000], 3, 17, true),
        ]
    },
    sample: |rng| {
        let lead: Vec<usize> = (0..rng.range(1, 2)).map(|_| rng.dim(24)).collect();
        let (k, n, bias) = (rng.dim(300), rng.dim(80), rng.next_u64() % 4 != 0);
        case(rng, &lead, k, n, bias)
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let x = Tensor::from_vec(vec![1, 2], vec![1.0f32, 2.0]).unwrap();
        let w = Tensor::from_vec(vec![3, 2], vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
        let b = Tensor::from_vec(vec![3], vec![0.5f32, 0.0, -3.0]).unwrap();
        for y in [
            Linear.reference(&[&x, &w, &b]).unwrap(),
            Linear.cpu(&[&x, &w, &b]).unwrap(),
        ] {
            assert_eq!(y[0].shape(), &[1, 3]);
            assert_eq!(y[0].as_f32().unwrap(), &[1.5, 2.0, 0.0]);
        }
    }

    /// The prepared path (the AVX-512 packed kernel where the CPU has it,
    /// else `gemm` on the transposed weight) against the f64 reference on
    /// shapes that are not multiples of the kernel's tiles.
    #[test]
    fn prepared_matches_reference_on_odd_shapes() {
        let mut rng = CaseRng::new(3);
        for &(lead, k, n) in &[
            (&[1usize][..], 1usize, 1usize),
            (&[2], 1, 5),
            (&[9], 17, 47),
            (&[3, 7], 129, 49),
            (&[33], 300, 97),
            (&[7], 257, 16),
            (&[128], 384, 100),
            (&[130], 5, 200),
            (&[1], 700, 400),
            (&[1], 3, 100),
        ] {
            for bias in [false, true] {
                let c = case(&mut rng, lead, k, n, bias);
                let refs: Vec<&Tensor> = c.inputs.iter().collect();
                let consts: Vec<Option<&Tensor>> =
                    refs.iter().enumerate().map(|(i, t)| (i > 0).then_some(*t)).collect();
                let p = Linear.prepare_cpu(&consts).unwrap();
                let got = Linear.cpu_prepared(&refs, &p).unwrap();
                let want = Linear.reference(&refs).unwrap();
                assert_eq!(got[0].shape(), want[0].shape());
                for (g, w) in got[0].as_f32().unwrap().iter().zip(want[0].as_f32().unwrap()) {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + k as f32).sqrt() * (1.0 + w.abs()),
                        "{}: {g} vs {w}",
                        c.name
                    );
                }
            }
        }
    }

    #[test]
    fn wrong_feature_count_is_an_error() {
        let x = Tensor::from_vec(vec![1, 3], vec![1.0f32; 3]).unwrap();
        let w = Tensor::from_vec(vec![2, 2], vec![1.0f32; 4]).unwrap();
        let e = Linear.cpu(&[&x, &w]).unwrap_err();
        assert!(e.to_string().contains("3 features"), "{e}");
    }
}
