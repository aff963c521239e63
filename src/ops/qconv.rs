//! `QConv`: a 2-D convolution (NCHW) whose weight is stored W8A8 — int8
//! per output channel, the activations quantized at run time to uint8 with
//! one range per image and group, int32 sums. What `quantize --format
//! w8a8` makes of a `Conv`. The kernels: [`crate::linalg::int8::conv`].

use std::sync::Arc;

use super::conv::{AutoPad, Window};
use super::{attr_i64, check_arity, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Prepared, Validation};
use crate::error::OpError;
use crate::linalg::conv::{ConvShape, Im2col};
use crate::linalg::int8::conv::{conv2d_w8a8, gathered_weight, W8A8Gemm};
use crate::linalg::int8::{PackedW8A8, W8A8Weights};
use crate::quant::{self, WeightFormat};
use crate::tensor::{DType, Dim, Tensor, ValueType};

/// A convolution over a W8A8 weight. Inputs: `x [N, C, H, W]` (f32), the
/// format's packed tensors for the weight viewed as `[M, C/group·kH·kW]`
/// (taps in `(c, ky, kx)` order; [`WeightFormat::tensor_names`] order), and
/// an optional `bias [M]`. Output `[N, M, oH, oW]`. Per image and group,
/// the group's input values are quantized as one W8A8 activation row
/// ([`crate::linalg::int8::quantize_row_u8`]: scale `s`, zero point `z`);
/// output pixel `p`, channel `j` is `(Σ_t q_t·w[j, t] - z·wsum_j)·s·scale_j + b_j`
/// over `p`'s patch of codes (`z` in the padding).
#[derive(Clone, Debug)]
pub struct QConv {
    /// Window geometry; `kernel` is `[kH, kW]`.
    pub window: Window,
    /// Number of groups.
    pub group: usize,
    /// The weight format (W8A8).
    pub format: WeightFormat,
    /// Input channels `C`.
    pub in_channels: usize,
    /// Output channels `M`.
    pub out_channels: usize,
}

/// The geometry, `x`, the packed weight tensors, the optional bias.
type Split<'a> = (ConvShape, &'a [f32], Vec<&'a Tensor>, Option<&'a [f32]>);

/// Each group's W8A8 weight packed for the fast kernel; `relu` when a ReLU
/// that reads only this op runs in its epilogue (see [`QConv::with_relu`]).
struct PreparedQConv {
    groups: Arc<[PackedW8A8]>,
    /// Packed by [`gathered_weight`] (read in place by the AVX2 kernel).
    gathered: bool,
    relu: bool,
}

impl QConv {
    fn n_packed(&self) -> usize {
        self.format.tensor_names().len()
    }

    /// The weight as a matrix: `(M, C/group·kH·kW)`.
    pub fn matrix_dims(&self) -> (usize, usize) {
        let taps: usize = self.window.kernel.iter().product();
        (self.out_channels, self.in_channels / self.group.max(1) * taps)
    }

    /// The geometry for an input of shape `x`, checked against the attributes.
    fn shape(&self, x: &[usize]) -> Result<ConvShape, OpError> {
        let &[n, c, h, w] = x else {
            return Err(OpError::Shape(format!("needs x [N, C, H, W]; got {x:?}")));
        };
        if c != self.in_channels {
            return Err(OpError::Shape(format!(
                "x has {c} channels; the layer takes {}",
                self.in_channels
            )));
        }
        let (kh, kw) = (self.window.kernel[0], self.window.kernel[1]);
        let (y, xa) = (self.window.axis(0, h, kh)?, self.window.axis(1, w, kw)?);
        let (s, d) = (&self.window.strides, &self.window.dilations);
        Ok(ConvShape {
            n,
            c,
            m: self.out_channels,
            group: self.group,
            geom: Im2col {
                h,
                w,
                kh,
                kw,
                s: [s[0], s[1]],
                d: [d[0], d[1]],
                pad: [y.begin, xa.begin],
                oh: y.out,
                ow: xa.out,
            },
        })
    }

    /// Checks the inputs: x, the packed tensors (contents too when
    /// `contents`), the bias.
    fn split<'a>(&self, inputs: &[&'a Tensor], contents: bool) -> Result<Split<'a>, OpError> {
        let np = self.n_packed();
        check_arity(
            inputs.len(),
            1 + np,
            2 + np,
            "x, the format's packed tensors, optional bias",
        )?;
        let s = self.shape(inputs[0].shape())?;
        let x = f32_input(inputs, 0)?;
        let packed = inputs[1..1 + np].to_vec();
        let (n, k) = self.matrix_dims();
        if contents {
            quant::check_packed(&self.format, &packed, n, k)?;
        } else {
            quant::check_packed_shapes(&self.format, &packed, n, k)?;
        }
        let bias = match inputs.get(1 + np) {
            Some(b) if b.shape() != [n] => {
                return Err(OpError::Shape(format!(
                    "bias has shape {:?}; it must be [{n}]",
                    b.shape()
                )))
            }
            Some(_) => Some(f32_input(inputs, 1 + np)?),
            None => None,
        };
        Ok((s, x, packed, bias))
    }

    /// Group `g`'s rows of the W8A8 weight (`packed` checked).
    fn group_weights<'a>(&self, packed: &[&'a Tensor], g: usize) -> Result<W8A8Weights<'a>, OpError> {
        let (n, k) = self.matrix_dims();
        let all = W8A8Weights::new(packed, n, k)?;
        let (mg, c) = (n / self.group, all.outliers.len());
        Ok(W8A8Weights {
            q: &all.q[g * mg * k..][..mg * k],
            scale: &all.scale[g * mg..][..mg],
            wsum: &all.wsum[g * mg..][..mg],
            outlier_weight: &all.outlier_weight[g * mg * c..][..mg * c],
            outliers: all.outliers,
            n: mg,
            k,
        })
    }

    /// `prepared` (what [`Op::prepare_cpu`] returned) with ReLU applied in
    /// the epilogue: [`Op::cpu_prepared`] then returns `Relu(QConv(x))`.
    /// `None` when `prepared` is not this op's.
    pub fn with_relu(&self, prepared: &Prepared) -> Option<Prepared> {
        let pc = prepared.0.downcast_ref::<PreparedQConv>()?;
        Some(Prepared(Arc::new(PreparedQConv {
            groups: Arc::clone(&pc.groups),
            gathered: pc.gathered,
            relu: true,
        })))
    }

    fn output(s: &ConvShape, y: Vec<f32>) -> Result<Vec<Tensor>, OpError> {
        Ok(vec![Tensor::from_vec(vec![s.n, s.m, s.geom.oh, s.geom.ow], y)?])
    }
}

impl Op for QConv {
    fn op_type(&self) -> &'static str {
        "QConv"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        self.window.write(&mut a);
        a.insert("group".into(), self.group.into());
        a.insert("format".into(), serde_json::to_value(self.format).unwrap_or_default());
        a.insert("in_channels".into(), self.in_channels.into());
        a.insert("out_channels".into(), self.out_channels.into());
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
        if x.dtype != DType::F32 || x.rank() != 4 {
            return Err(OpError::Shape(format!("x must be f32 [N, C, H, W], got {x}")));
        }
        let known = |i: usize| {
            x.shape[i]
                .known()
                .ok_or_else(|| OpError::Shape(format!("x's channels, height and width must be known, got {x}")))
        };
        let s = self.shape(&[1, known(1)?, known(2)?, known(3)?])?;
        let (n, k) = self.matrix_dims();
        for (i, ((dt, shape), name)) in (self.format.tensor_specs(n, k).iter())
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
        Ok(vec![ValueType {
            dtype: DType::F32,
            shape: vec![
                x.shape[0].clone(),
                Dim::Known(n),
                Dim::Known(s.geom.oh),
                Dim::Known(s.geom.ow),
            ],
        }])
    }

    /// The spec in plain loops: per image and group, W8A8's activation
    /// quantization of the group's input values (one range), then per
    /// output pixel the integer dot of its patch's codes (the zero point in
    /// the padding) with each weight row, minus `z·wsum`, scaled in f64.
    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (s, x, packed, bias) = self.split(inputs, true)?;
        let g = &s.geom;
        let (cg, mg, k) = (s.c / s.group, s.m / s.group, self.matrix_dims().1);
        let pix = g.oh * g.ow;
        let mut y = vec![0.0f32; s.n * s.m * pix];
        for gi in 0..s.group {
            let w = self.group_weights(&packed, gi)?;
            for im in 0..s.n {
                let planes = &x[(im * s.c + gi * cg) * g.h * g.w..][..cg * g.h * g.w];
                let (sc, z, codes) = reference_codes(planes);
                let rows = reference_patches(&s, &codes, z, cg);
                for (p, row) in rows.chunks(k.max(1)).enumerate() {
                    for j in 0..mg {
                        let dot: i64 = row
                            .iter()
                            .zip(&w.q[j * k..(j + 1) * k])
                            .map(|(&a, &b)| a * b as i64)
                            .sum();
                        let acc = dot - z * w.wsum[j] as i64;
                        let b = bias.map_or(0.0, |b| b[gi * mg + j] as f64);
                        y[(im * s.m + gi * mg + j) * pix + p] = (acc as f64 * sc as f64 * w.scale[j] as f64 + b) as f32;
                    }
                }
            }
        }
        Self::output(&s, y)
    }

    /// The portable integer loop on im2col rows of codes ([`conv2d_w8a8`]).
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (s, x, packed, bias) = self.split(inputs, true)?;
        let groups = (0..self.group)
            .map(|g| self.group_weights(&packed, g).map(W8A8Gemm::Portable))
            .collect::<Result<Vec<_>, _>>()?;
        Self::output(&s, conv2d_w8a8(&s, x, &groups, bias, false))
    }

    /// Each group's weight packed for the VNNI kernel (over im2col rows of
    /// codes), else for the AVX2 kernel reading patches in place (unit
    /// horizontal dilation; else over im2col rows); `None` on CPUs with
    /// neither (the portable loop runs).
    fn prepare_cpu(&self, consts: &[Option<&Tensor>]) -> Option<Prepared> {
        let packed: Vec<&Tensor> = consts
            .get(1..1 + self.n_packed())?
            .iter()
            .copied()
            .collect::<Option<_>>()?;
        let (n, k) = self.matrix_dims();
        quant::check_packed(&self.format, &packed, n, k).ok()?;
        let weights = (0..self.group)
            .map(|g| self.group_weights(&packed, g).ok())
            .collect::<Option<Vec<_>>>()?;
        let groups = weights.iter().map(PackedW8A8::new).collect::<Option<Vec<_>>>()?;
        let (cg, kh, kw) = (
            self.in_channels / self.group,
            self.window.kernel[0],
            self.window.kernel[1],
        );
        if groups.iter().any(PackedW8A8::is_vnni) || self.window.dilations[1] != 1 {
            return Some(Prepared(Arc::new(PreparedQConv {
                groups: groups.into(),
                gathered: false,
                relu: false,
            })));
        }
        let groups = weights
            .iter()
            .map(|w| gathered_weight(w, cg, kh, kw))
            .collect::<Option<Arc<[PackedW8A8]>>>()?;
        Some(Prepared(Arc::new(PreparedQConv {
            groups,
            gathered: true,
            relu: false,
        })))
    }

    /// [`conv2d_w8a8`] on the packed weights: the same bits as [`Op::cpu`].
    fn cpu_prepared(&self, inputs: &[&Tensor], prepared: &Prepared) -> Result<Vec<Tensor>, OpError> {
        let pc = prepared.0.downcast_ref::<PreparedQConv>();
        let (n, k) = self.matrix_dims();
        let kw = self.window.kernel[1];
        let fits = |p: &PreparedQConv| {
            // The gathered weight's taps: kw rounded up to even.
            let k = if p.gathered { k / kw * kw.div_ceil(2) * 2 } else { k };
            p.groups.len() == self.group && p.groups.iter().all(|g| (g.n() * self.group, g.k()) == (n, k))
        };
        let Some(pc) = pc.filter(|p| fits(p)) else {
            let y = self.cpu(inputs)?;
            return if pc.is_some_and(|p| p.relu) {
                relu_outputs(y)
            } else {
                Ok(y)
            };
        };
        let (s, x, _, bias) = self.split(inputs, false)?;
        let kernel = if pc.gathered {
            W8A8Gemm::Gathered
        } else {
            W8A8Gemm::Packed
        };
        let groups: Vec<W8A8Gemm> = pc.groups.iter().map(kernel).collect();
        Self::output(&s, conv2d_w8a8(&s, x, &groups, bias, pc.relu))
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        match inputs.first().map(|x| self.shape(x)) {
            Some(Ok(s)) => 2 * (s.n * s.m * s.geom.oh * s.geom.ow * self.matrix_dims().1) as u64,
            _ => 0,
        }
    }
}

/// Each output with ReLU applied (a fused QConv's fallback).
fn relu_outputs(outputs: Vec<Tensor>) -> Result<Vec<Tensor>, OpError> {
    outputs
        .into_iter()
        .map(|t| {
            let mut y = t.as_f32()?.to_vec();
            crate::linalg::relu_in_place(&mut y);
            Ok(Tensor::from_vec(t.shape().to_vec(), y)?)
        })
        .collect()
}

/// W8A8's activation quantization of `x` as one range: `(s, z, codes)`.
fn reference_codes(x: &[f32]) -> (f32, i64, Vec<i64>) {
    let lo = x.iter().fold(0.0f32, |a, &v| a.min(v));
    let hi = x.iter().fold(0.0f32, |a, &v| a.max(v));
    if hi <= lo {
        return (1.0, 0, vec![0; x.len()]);
    }
    let s = (hi - lo) / 255.0;
    let inv = 1.0 / s;
    let z = quant::round(-lo * inv).clamp(0.0, 255.0);
    let q = x
        .iter()
        .map(|&v| (quant::round(v * inv) + z).clamp(0.0, 255.0) as u8 as i64)
        .collect();
    (s, z as i64, q)
}

/// The patch rows (`oh·ow` rows of `cg·kh·kw` codes, `z` in the padding)
/// of one image's group, as plain loops over output pixels and taps.
fn reference_patches(s: &ConvShape, codes: &[i64], z: i64, cg: usize) -> Vec<i64> {
    let g = &s.geom;
    let k = cg * g.kh * g.kw;
    let mut rows = vec![z; g.oh * g.ow * k];
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            for ci in 0..cg {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let iy = (oy * g.s[0] + ky * g.d[0]) as isize - g.pad[0] as isize;
                        let ix = (ox * g.s[1] + kx * g.d[1]) as isize - g.pad[1] as isize;
                        if iy >= 0 && iy < g.h as isize && ix >= 0 && ix < g.w as isize {
                            rows[(oy * g.ow + ox) * k + (ci * g.kh + ky) * g.kw + kx] =
                                codes[(ci * g.h + iy as usize) * g.w + ix as usize];
                        }
                    }
                }
            }
        }
    }
    rows
}

/// Builds a `QConv` case: a random f32 weight `[m, c/group, kh, kw]` packed
/// as W8A8.
pub fn case(
    rng: &mut CaseRng,
    x: [usize; 4],
    m: usize,
    k: [usize; 2],
    group: usize,
    window: Window,
    bias: bool,
) -> OpCase {
    let kk = x[1] / group * k[0] * k[1];
    let format = WeightFormat::W8A8 { outliers: 0 };
    let w = rng.tensor(&[m, kk], -1.0, 1.0);
    let packed = match w
        .as_f32()
        .map_err(OpError::from)
        .and_then(|w| quant::quantize_weight(&format, w, m, kk))
    {
        Ok(p) => p,
        Err(e) => unreachable!("packing a valid weight: {e}"),
    };
    let mut inputs = vec![rng.tensor(&x, -1.0, 1.0)];
    inputs.extend(packed);
    if bias {
        inputs.push(rng.tensor(&[m], -1.0, 1.0));
    }
    let op = QConv {
        window: Window {
            kernel: k.to_vec(),
            ..window
        },
        group,
        format,
        in_channels: x[1],
        out_channels: m,
    };
    OpCase::new(
        format!("qconv {format} x{x:?} m{m} k{k:?} g{group} {:?}", op.window),
        Arc::new(op),
        inputs,
    )
}

fn build(attrs: &Attrs) -> Result<Arc<dyn Op>, OpError> {
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
    if format != (WeightFormat::W8A8 { outliers: 0 }) {
        return Err(OpError::Attribute {
            name: "format".into(),
            message: format!("QConv takes w8a8 weights without outlier channels, not {format}"),
        });
    }
    let window = Window::from_attrs(attrs, true)?;
    if window.rank() != 2 {
        return Err(OpError::Attribute {
            name: "kernel_shape".into(),
            message: format!("QConv takes 2-D windows only; this one has {} axes", window.rank()),
        });
    }
    let dim = |name: &str, default: Option<i64>| {
        attr_i64(attrs, name, default).and_then(|v| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| OpError::Attribute {
                    name: name.into(),
                    message: format!("must be >= 1, got {v}"),
                })
        })
    };
    let (group, in_channels, out_channels) = (
        dim("group", Some(1))?,
        dim("in_channels", None)?,
        dim("out_channels", None)?,
    );
    if in_channels % group != 0 || out_channels % group != 0 {
        return Err(OpError::Attribute {
            name: "group".into(),
            message: format!("{group} must divide in_channels {in_channels} and out_channels {out_channels}"),
        });
    }
    Ok(Arc::new(QConv {
        window,
        group,
        format,
        in_channels,
        out_channels,
    }))
}

fn window(pads: [usize; 4], strides: [usize; 2], dilations: [usize; 2], auto_pad: AutoPad) -> Window {
    Window {
        kernel: Vec::new(),
        strides: strides.to_vec(),
        dilations: dilations.to_vec(),
        pads: pads.to_vec(),
        auto_pad,
        ceil_mode: false,
    }
}

/// `QConv`: attributes `kernel_shape`, `pads`, `strides`, `dilations`,
/// `auto_pad`, `group`, `format` (a [`WeightFormat`] object, w8a8),
/// `in_channels`, `out_channels`.
pub const QCONV: OpDef = OpDef {
    op_type: "QConv",
    build,
    cases: || {
        let mut rng = CaseRng::new(43);
        let plain = window([0; 4], [1, 1], [1, 1], AutoPad::NotSet);
        vec![
            case(
                &mut rng,
                [1, 1, 8, 8],
                8,
                [3, 3],
                1,
                window([1; 4], [1, 1], [1, 1], AutoPad::NotSet),
                true,
            ),
            case(
                &mut rng,
                [3, 8, 4, 4],
                16,
                [3, 3],
                1,
                window([1; 4], [1, 1], [1, 1], AutoPad::NotSet),
                true,
            ),
            case(
                &mut rng,
                [2, 3, 17, 13],
                5,
                [3, 3],
                1,
                window([1, 0, 2, 1], [2, 1], [1, 1], AutoPad::NotSet),
                false,
            ),
            case(
                &mut rng,
                [1, 4, 9, 7],
                6,
                [3, 2],
                2,
                window([0; 4], [2, 1], [1, 2], AutoPad::NotSet),
                true,
            ),
            case(
                &mut rng,
                [2, 3, 8, 8],
                3,
                [3, 3],
                3,
                window([0; 4], [1, 1], [1, 1], AutoPad::SameUpper),
                true,
            ),
            case(&mut rng, [2, 16, 5, 7], 12, [1, 1], 4, plain.clone(), true),
            case(&mut rng, [1, 32, 6, 6], 40, [3, 3], 1, plain, true),
        ]
    },
    sample: |rng| {
        let group = rng.range(1, 2);
        let c = group * rng.range(1, 4);
        let m = group * rng.range(1, 5);
        let (h, w) = (rng.range(3, 12), rng.range(3, 12));
        let k = [rng.range(1, 3), rng.range(1, 3)];
        let (s, p) = (rng.range(1, 2), rng.range(0, 1));
        let n = rng.range(1, 3);
        let bias = rng.next_u64().is_multiple_of(2);
        let win = window([p, 0, 0, p], [s, s], [1, 1], AutoPad::NotSet);
        case(rng, [n, c, h, w], m, k, group, win, bias)
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::Conv;

    fn cases() -> Vec<OpCase> {
        let mut rng = CaseRng::new(9);
        let pad1 = window([1; 4], [1, 1], [1, 1], AutoPad::NotSet);
        let mut v = (QCONV.cases)();
        // The digits CNN's layers at batch 64 (threaded products), a wide
        // layer with odd sizes, a grouped strided one.
        v.push(case(&mut rng, [64, 1, 8, 8], 8, [3, 3], 1, pad1.clone(), true));
        v.push(case(&mut rng, [64, 8, 4, 4], 16, [3, 3], 1, pad1.clone(), true));
        v.push(case(&mut rng, [3, 19, 11, 9], 37, [3, 3], 1, pad1, true));
        let strided = window([0, 1, 1, 0], [2, 2], [1, 1], AutoPad::NotSet);
        v.push(case(&mut rng, [5, 6, 12, 12], 12, [3, 3], 6, strided, false));
        v
    }

    fn refs(c: &OpCase) -> Vec<&Tensor> {
        c.inputs.iter().collect()
    }

    /// The packed kernels (VNNI or AVX2) give the portable loop's bits, with
    /// and without the fused ReLU.
    #[test]
    fn prepared_gives_the_portable_bits() {
        for c in cases() {
            let inputs = refs(&c);
            let consts: Vec<Option<&Tensor>> = inputs.iter().enumerate().map(|(i, t)| (i > 0).then_some(*t)).collect();
            let Some(p) = c.op.prepare_cpu(&consts) else {
                eprintln!("SKIPPED {}: no VNNI or AVX2 kernel on this CPU", c.name);
                return;
            };
            let want = c.op.cpu(&inputs).unwrap();
            let got = c.op.cpu_prepared(&inputs, &p).unwrap();
            assert_eq!(got[0].shape(), want[0].shape(), "{}", c.name);
            let (g, w) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{} at {i}: {a} vs {b}", c.name);
            }
            let qc = c.op.downcast_ref::<QConv>().unwrap();
            // The AVX2 kernel too where VNNI would be chosen.
            let (s, x, packed, bias) = qc.split(&inputs, true).unwrap();
            let avx2: Option<Vec<PackedW8A8>> = (0..qc.group)
                .map(|g| PackedW8A8::new_avx2(&qc.group_weights(&packed, g).unwrap()))
                .collect();
            if let Some(avx2) = avx2 {
                let groups: Vec<W8A8Gemm> = avx2.iter().map(W8A8Gemm::Packed).collect();
                for (i, (a, b)) in conv2d_w8a8(&s, x, &groups, bias, false).iter().zip(w).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{} avx2 at {i}: {a} vs {b}", c.name);
                }
            }
            // And the AVX2 kernel reading patches in place.
            let (cg, kh, kw) = (qc.in_channels / qc.group, qc.window.kernel[0], qc.window.kernel[1]);
            let gathered: Option<Vec<PackedW8A8>> = (0..qc.group)
                .map(|g| gathered_weight(&qc.group_weights(&packed, g).unwrap(), cg, kh, kw))
                .collect();
            if let Some(gw) = gathered.filter(|_| s.geom.d[1] == 1) {
                let groups: Vec<W8A8Gemm> = gw.iter().map(W8A8Gemm::Gathered).collect();
                for (i, (a, b)) in conv2d_w8a8(&s, x, &groups, bias, false).iter().zip(w).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{} gathered at {i}: {a} vs {b}", c.name);
                }
            }
            let fused = c.op.cpu_prepared(&inputs, &qc.with_relu(&p).unwrap()).unwrap();
            for (i, (a, b)) in fused[0].as_f32().unwrap().iter().zip(w).enumerate() {
                let r = if *b < 0.0 { 0.0 } else { *b };
                assert_eq!(a.to_bits(), r.to_bits(), "{} relu at {i}", c.name);
            }
        }
    }

    /// Against the f32 convolution of the dequantized weight: each output
    /// differs by at most `s·Σ_k |ŵ_k|`, `s` its image and group's
    /// activation step (each code is within one step of its value: half a
    /// step of rounding, and the zero point's rounding or the clamp at 255
    /// at most another half; the padding's code is exactly 0.0).
    #[test]
    fn close_to_f32_conv_of_dequantized_weights() {
        for c in cases() {
            let inputs = refs(&c);
            let qc = c.op.downcast_ref::<QConv>().unwrap();
            let (n, k) = qc.matrix_dims();
            let np = qc.n_packed();
            let wdq = quant::dequantize(&qc.format, &inputs[1..1 + np], n, k).unwrap();
            let (kh, kw) = (qc.window.kernel[0], qc.window.kernel[1]);
            let cg = qc.in_channels / qc.group;
            let wt = Tensor::from_vec(vec![n, cg, kh, kw], wdq.clone()).unwrap();
            let conv = Conv {
                window: qc.window.clone(),
                group: qc.group,
            };
            let mut cin = vec![inputs[0], &wt];
            cin.extend(inputs.get(1 + np).copied());
            let want = conv.reference(&cin).unwrap();
            let got = c.op.cpu(&inputs).unwrap();
            let s = qc.shape(inputs[0].shape()).unwrap();
            let (pix, mg, x) = (s.geom.oh * s.geom.ow, n / qc.group, inputs[0].as_f32().unwrap());
            let plane = s.geom.h * s.geom.w;
            let (g, w) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
            for im in 0..s.n {
                for gi in 0..qc.group {
                    let planes = &x[(im * s.c + gi * cg) * plane..][..cg * plane];
                    let (lo, hi) = planes.iter().fold((0.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
                    let step = (hi - lo) / 255.0;
                    for j in gi * mg..(gi + 1) * mg {
                        let l1: f32 = wdq[j * k..(j + 1) * k].iter().map(|v| v.abs()).sum();
                        for p in 0..pix {
                            let e = (im * n + j) * pix + p;
                            let bound = step * l1 * 1.001 + 1e-5 * (1.0 + w[e].abs());
                            assert!(
                                (g[e] - w[e]).abs() <= bound,
                                "{}: y[{e}] = {} vs f32 {}, bound {bound}",
                                c.name,
                                g[e],
                                w[e]
                            );
                        }
                    }
                }
            }
        }
    }
}
