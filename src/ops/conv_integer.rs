//! `ConvInteger` (ONNX opset 10): a 2-D convolution of 8-bit operands minus
//! their zero points, with i32 sums. Exact: integer products and sums
//! (wrapping past the i32 range, as ONNX's reference does).

use std::sync::Arc;

use super::conv::{Axis, Window};
use super::{attr_i64, check_arity, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{DType, Dim, Storage, Tensor, ValueType};

/// `ConvInteger(x, w, x_zero_point?, w_zero_point?)`: `x [N, C, H, W]` and
/// `w [M, C/group, kH, kW]`, each u8 or i8; `x_zero_point` one value of x's
/// dtype, `w_zero_point` one value or one per output channel (`[M]`) of
/// w's dtype. Output i32 `[N, M, oH, oW]`: per output pixel,
/// `Σ (x - x_zp)·(w - w_zp)` over its patch, the padding counting as
/// `x_zp` (adding 0), as ONNX's reference and onnxruntime compute it.
#[derive(Clone, Debug)]
pub struct ConvInteger {
    /// Window geometry (`kernel` empty: taken from the weight).
    pub window: Window,
    /// Number of groups.
    pub group: usize,
}

/// The sizes of one product.
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    cg: usize,
    kh: usize,
    kw: usize,
    y: Axis,
    x: Axis,
}

impl Geometry {
    fn pixels(&self) -> usize {
        self.y.out * self.x.out
    }

    /// Input `(channel, iy, ix)` of tap `(ky, kx)` for output pixel `(oy, ox)`,
    /// `None` in the padding.
    fn tap(&self, win: &Window, (oy, ox): (usize, usize), (ky, kx): (usize, usize)) -> Option<usize> {
        let (s, d) = (&win.strides, &win.dilations);
        let iy = (oy * s[0] + ky * d[0]).checked_sub(self.y.begin)?;
        let ix = (ox * s[1] + kx * d[1]).checked_sub(self.x.begin)?;
        (iy < self.h && ix < self.w).then_some(iy * self.w + ix)
    }
}

fn is_byte(d: DType) -> bool {
    matches!(d, DType::U8 | DType::I8)
}

/// Fails unless x and w are u8 or i8 and each zero point has its operand's dtype.
fn check_types(d: &[DType]) -> Result<(), OpError> {
    for (index, &got) in d.iter().enumerate() {
        let ok = if index < 2 { is_byte(got) } else { got == d[index - 2] };
        if !ok {
            return Err(OpError::DType {
                index,
                expected: if index < 2 {
                    "u8 or i8"
                } else {
                    "its operand's dtype (u8 or i8)"
                },
                got,
            });
        }
    }
    Ok(())
}

/// The values of a u8 or i8 tensor minus `zp` (one value, or one per row of
/// `row` values), as i16.
fn centered(t: &Tensor, zp: &[i16], row: usize, index: usize) -> Result<Vec<i16>, OpError> {
    let v: Vec<i16> = match t.storage() {
        Storage::U8(v) => v.iter().map(|&x| x as i16).collect(),
        Storage::I8(v) => v.iter().map(|&x| x as i16).collect(),
        _ => {
            return Err(OpError::DType {
                index,
                expected: "u8 or i8",
                got: t.dtype(),
            })
        }
    };
    let row = row.max(1);
    Ok(v.iter()
        .enumerate()
        .map(|(i, &x)| x - zp[if zp.len() == 1 { 0 } else { i / row }])
        .collect())
}

/// A zero point's values: absent is 0; x's is one value, w's one or `m`.
fn zero_points(zp: Option<&Tensor>, m: usize, index: usize) -> Result<Vec<i16>, OpError> {
    let Some(z) = zp else { return Ok(vec![0]) };
    let v: Vec<i16> = z.to_i64_vec().iter().map(|&x| x as i16).collect();
    let one = v.len() == 1 && z.rank() <= 1;
    let per_channel = index == 3 && z.shape() == [m];
    if !(one || per_channel) {
        let what = if index == 2 {
            "x_zero_point must be one value".to_string()
        } else {
            format!("w_zero_point must be one value or [{m}]")
        };
        return Err(OpError::Shape(format!("{what}; got shape {:?}", z.shape())));
    }
    Ok(v)
}

impl ConvInteger {
    fn geometry(&self, x: &[usize], w: &[usize]) -> Result<Geometry, OpError> {
        let (&[n, c, h, wd], &[m, cg, kh, kw]) = (x, w) else {
            return Err(OpError::Shape(format!(
                "needs x [N, C, H, W] and w [M, C/group, kH, kW] (2-D only); got x {x:?}, w {w:?}"
            )));
        };
        let g = self.group;
        if cg.checked_mul(g) != Some(c) || m % g != 0 {
            return Err(OpError::Shape(format!(
                "x has {c} channels and w is {w:?} with group {g}: need C = {cg}·group and M divisible by group"
            )));
        }
        if !self.window.kernel.is_empty() && self.window.kernel != [kh, kw] {
            return Err(OpError::Shape(format!(
                "kernel_shape {:?} does not match the weight {w:?}",
                self.window.kernel
            )));
        }
        Ok(Geometry {
            n,
            c,
            h,
            w: wd,
            m,
            cg,
            kh,
            kw,
            y: self.window.axis(0, h, kh)?,
            x: self.window.axis(1, wd, kw)?,
        })
    }

    /// The geometry and the centered operands (x as is, w as `[M, cg·kh·kw]`).
    fn operands(&self, inputs: &[&Tensor]) -> Result<(Geometry, Vec<i16>, Vec<i16>), OpError> {
        check_arity(inputs.len(), 2, 4, "2 to 4 (x, w, x_zero_point?, w_zero_point?)")?;
        check_types(&inputs.iter().map(|t| t.dtype()).collect::<Vec<_>>())?;
        let g = self.geometry(inputs[0].shape(), inputs[1].shape())?;
        let zx = zero_points(inputs.get(2).copied(), g.m, 2)?;
        let zw = zero_points(inputs.get(3).copied(), g.m, 3)?;
        let k = g.cg * g.kh * g.kw;
        Ok((g, centered(inputs[0], &zx, 1, 0)?, centered(inputs[1], &zw, k, 1)?))
    }

    fn output(g: &Geometry, y: Vec<i32>) -> Result<Vec<Tensor>, OpError> {
        Ok(vec![Tensor::from_vec(vec![g.n, g.m, g.y.out, g.x.out], y)?])
    }
}

impl Op for ConvInteger {
    fn op_type(&self) -> &'static str {
        "ConvInteger"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        self.window.write(&mut a);
        a.insert("group".into(), self.group.into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 4, "2 to 4 (x, w, x_zero_point?, w_zero_point?)")?;
        check_types(&inputs.iter().map(|t| t.dtype).collect::<Vec<_>>())?;
        let (x, w) = (&inputs[0], &inputs[1]);
        let ws = w
            .concrete_shape()
            .ok_or_else(|| OpError::Shape(format!("the weight's shape must be known, got {w}")))?;
        if x.rank() != 4 {
            return Err(OpError::Shape(format!("needs x [N, C, H, W]; got {x}")));
        }
        let known = |i: usize| {
            x.shape[i]
                .known()
                .ok_or_else(|| OpError::Shape(format!("x's channels, height and width must be known, got {x}")))
        };
        let g = self.geometry(&[1, known(1)?, known(2)?, known(3)?], &ws)?;
        Ok(vec![ValueType {
            dtype: DType::I32,
            shape: vec![
                x.shape[0].clone(),
                Dim::Known(g.m),
                Dim::Known(g.y.out),
                Dim::Known(g.x.out),
            ],
        }])
    }

    /// Plain loops: per output value, the sum over its patch in i64,
    /// wrapped to i32.
    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (g, x, w) = self.operands(inputs)?;
        let (mg, pix, ow) = (g.m / self.group, g.pixels(), g.x.out);
        let mut y = vec![0i32; g.n * g.m * pix];
        for n in 0..g.n {
            for m in 0..g.m {
                let c0 = m / mg * g.cg;
                for p in 0..pix {
                    let mut acc = 0i64;
                    for ci in 0..g.cg {
                        let plane = &x[(n * g.c + c0 + ci) * g.h * g.w..][..g.h * g.w];
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                if let Some(i) = g.tap(&self.window, (p / ow, p % ow), (ky, kx)) {
                                    let wv = w[((m * g.cg + ci) * g.kh + ky) * g.kw + kx];
                                    acc += plane[i] as i64 * wv as i64;
                                }
                            }
                        }
                    }
                    y[(n * g.m + m) * pix + p] = acc as i32;
                }
            }
        }
        Self::output(&g, y)
    }

    /// Per image and group, the patches as rows of centered i16 values (0
    /// in the padding) and one i16 product with the weight rows.
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (g, x, w) = self.operands(inputs)?;
        let (mg, pix, ow) = (g.m / self.group, g.pixels(), g.x.out);
        let k = g.cg * g.kh * g.kw;
        let mut y = vec![0i32; g.n * g.m * pix];
        let mut rows = vec![0i16; pix * k];
        for n in 0..g.n {
            for gi in 0..self.group {
                let planes = &x[(n * g.c + gi * g.cg) * g.h * g.w..][..g.cg * g.h * g.w];
                for (p, row) in rows.chunks_mut(k.max(1)).enumerate() {
                    for (t, v) in row.iter_mut().enumerate() {
                        let (ci, ky, kx) = (t / (g.kh * g.kw), t / g.kw % g.kh, t % g.kw);
                        *v = g
                            .tap(&self.window, (p / ow, p % ow), (ky, kx))
                            .map_or(0, |i| planes[ci * g.h * g.w + i]);
                    }
                }
                let out = &mut y[(n * g.m + gi * mg) * pix..][..mg * pix];
                linalg::int16::gemm_i16_nt(&w[gi * mg * k..][..mg * k], mg, &rows, pix, k, out);
            }
        }
        Self::output(&g, y)
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        match inputs {
            [x, w, ..] => self
                .geometry(x, w)
                .map(|g| 2 * (g.n * g.m * g.pixels() * g.cg * g.kh * g.kw) as u64)
                .unwrap_or(0),
            _ => 0,
        }
    }
}

fn build(attrs: &Attrs) -> Result<Arc<dyn Op>, OpError> {
    let group = attr_i64(attrs, "group", Some(1))?;
    if group < 1 {
        return Err(OpError::Attribute {
            name: "group".into(),
            message: format!("{group} must be at least 1"),
        });
    }
    let window = Window::from_attrs(attrs, false)?;
    if window.rank() != 2 {
        return Err(OpError::Attribute {
            name: "kernel_shape".into(),
            message: format!(
                "ConvInteger takes 2-D windows only; this one has {} axes",
                window.rank()
            ),
        });
    }
    Ok(Arc::new(ConvInteger {
        window,
        group: group as usize,
    }))
}

/// Random u8 or i8 values of `shape`.
fn bytes(rng: &mut CaseRng, shape: &[usize], dt: DType) -> Tensor {
    let (lo, hi) = if dt == DType::U8 { (0.0, 256.0) } else { (-128.0, 128.0) };
    rng.tensor(shape, lo, hi).cast(dt)
}

/// A `ConvInteger` case: x `[n, c, h, w]` of `tx`, `m` output channels,
/// kernel `k`, `group`, the window attributes `attrs`, and zero points
/// (`zw`: w's shape, `None` for none).
#[allow(clippy::too_many_arguments)]
fn case(
    rng: &mut CaseRng,
    (tx, tw): (DType, DType),
    x: [usize; 4],
    m: usize,
    k: [usize; 2],
    group: usize,
    attrs: serde_json::Value,
    zw: Option<&[usize]>,
) -> OpCase {
    let mut a: Attrs = match attrs {
        serde_json::Value::Object(o) => o,
        _ => Attrs::new(),
    };
    a.insert("group".into(), group.into());
    let op = build(&a).unwrap_or_else(|e| unreachable!("case attributes: {e}"));
    let mut inputs = vec![
        bytes(rng, &x, tx),
        bytes(rng, &[m, x[1] / group, k[0], k[1]], tw),
        bytes(rng, &[], tx),
    ];
    if let Some(zw) = zw {
        inputs.push(bytes(rng, zw, tw));
    }
    OpCase::new(
        format!("convinteger {tx}{x:?} x {tw} m {m} k {k:?} group {group} {a:?} w zero point {zw:?}"),
        op,
        inputs,
    )
}

/// `ConvInteger`: attributes `kernel_shape`, `pads`, `strides`,
/// `dilations`, `group`, `auto_pad`.
pub const CONV_INTEGER: OpDef = OpDef {
    op_type: "ConvInteger",
    build,
    cases: || {
        let mut rng = CaseRng::new(63);
        let (u, i) = (DType::U8, DType::I8);
        vec![
            case(
                &mut rng,
                (u, u),
                [1, 1, 5, 5],
                1,
                [3, 3],
                1,
                serde_json::json!({}),
                Some(&[]),
            ),
            case(
                &mut rng,
                (u, u),
                [2, 3, 17, 13],
                5,
                [3, 3],
                1,
                serde_json::json!({"pads": [1, 1, 1, 1]}),
                Some(&[5]),
            ),
            case(
                &mut rng,
                (u, i),
                [1, 4, 9, 7],
                6,
                [3, 2],
                2,
                serde_json::json!({"strides": [2, 1], "dilations": [1, 2], "pads": [0, 1, 2, 0]}),
                None,
            ),
            case(
                &mut rng,
                (i, u),
                [3, 3, 8, 8],
                3,
                [3, 3],
                3,
                serde_json::json!({"auto_pad": "SAME_UPPER"}),
                Some(&[]),
            ),
            case(
                &mut rng,
                (i, i),
                [2, 8, 6, 6],
                16,
                [3, 3],
                1,
                serde_json::json!({"pads": [1, 1, 1, 1], "strides": [2, 2]}),
                Some(&[16]),
            ),
        ]
    },
    sample: |rng| {
        let group = rng.range(1, 2);
        let (c, m) = (group * rng.dim(4), group * rng.dim(5));
        let k = [rng.range(1, 3), rng.range(1, 3)];
        let (h, w) = (k[0] + rng.dim(9), k[1] + rng.dim(9));
        let p = rng.range(0, 1);
        let attrs = serde_json::json!({"pads": [p, 0, p, 1], "strides": [rng.range(1, 2), 1]});
        case(
            rng,
            (DType::U8, DType::U8),
            [2, c, h, w],
            m,
            k,
            group,
            attrs,
            Some(&[m]),
        )
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_padded_product_by_hand() {
        // x - 1 = [[1, 2], [3, 4]] with pads of 1 on the left and right
        // (counting as x's zero point); w - 2 = [[1, -1]].
        let x = Tensor::from_vec(vec![1, 1, 2, 2], vec![2u8, 3, 4, 5]).unwrap();
        let w = Tensor::from_vec(vec![1, 1, 1, 2], vec![3u8, 1]).unwrap();
        let (zx, zw) = (
            Tensor::from_vec(vec![], vec![1u8]).unwrap(),
            Tensor::from_vec(vec![1], vec![2u8]).unwrap(),
        );
        let mut a = Attrs::new();
        a.insert("pads".into(), vec![0, 1, 0, 1].into());
        let op = build(&a).unwrap();
        // Rows [0, 1, 2, 0] and [0, 3, 4, 0]: windows of two, times (1, -1).
        let want = [-1, -1, 2, -3, -1, 4];
        for y in [op.reference(&[&x, &w, &zx, &zw]), op.cpu(&[&x, &w, &zx, &zw])] {
            assert_eq!(y.unwrap()[0].as_slice::<i32>().unwrap(), &want);
        }
        let bad = Tensor::from_vec(vec![2], vec![0u8, 0]).unwrap();
        assert!(matches!(op.reference(&[&x, &w, &bad]), Err(OpError::Shape(_))));
        assert!(matches!(
            op.reference(&[&x, &w, &zx, &zx.cast(DType::I8)]),
            Err(OpError::DType { index: 3, .. })
        ));
    }
}
