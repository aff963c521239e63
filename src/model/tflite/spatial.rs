//! Convolutions and pools: TFLite's are NHWC with OHWI weights, so their
//! inputs are read in NHWC form and their outputs bound as NHWC (the
//! builder transposes at the edges of a conv stack). Explicit pads are
//! `SAME` when TFLite's `SAME` rule gives the same pads, `VALID` when zero,
//! and otherwise a `PAD` op in front (convolutions and average pools that
//! count padding). A W8A8 `QConv` is the hybrid `CONV_2D` over its int8
//! weight.

use super::builder::{Builder, Layout};
use super::ops::unsupported;
use super::schema::{BuiltinOp, Options, Padding, Quantization};
use super::ExportError;
use crate::graph::Node;
use crate::ops::conv::{Conv, Window};
use crate::ops::pool::Pool;
use crate::ops::qconv::QConv;
use crate::quant::WeightFormat;
use crate::tensor::{DType, Tensor};

/// How a window's explicit padding is written.
enum Pads {
    /// TFLite's own `SAME` or `VALID`.
    Builtin(Padding),
    /// `[top, bottom, left, right]` by a `PAD` op, then `VALID`.
    Explicit([usize; 4]),
}

/// TFLite's `SAME` pads (before, after) of one axis.
fn same_pads(len: usize, k: usize, s: usize, d: usize) -> (usize, usize) {
    let out = len.div_ceil(s);
    let span = (k.max(1) - 1) * d + 1;
    let total = ((out.max(1) - 1) * s + span).saturating_sub(len);
    (total / 2, total - total / 2)
}

/// The padding of a 2-D window over an NHWC input with spatial `hw` and kernel `k`.
fn pads(n: &Node, w: &Window, hw: [Option<i32>; 2], k: [usize; 2]) -> Result<Pads, ExportError> {
    if w.rank() != 2 {
        return Err(unsupported(n, "TFLite's convolutions and pools are 2-D"));
    }
    let mut resolved = [(0, 0); 2];
    let mut same = true;
    for i in 0..2 {
        let Some(len) = hw[i] else {
            let (b, e) = (w.pads[i], w.pads[i + 2]);
            if w.auto_pad != crate::ops::conv::AutoPad::NotSet || w.ceil_mode {
                return Err(unsupported(n, "automatic padding needs known spatial sizes"));
            }
            resolved[i] = (b, e);
            same = false;
            continue;
        };
        let a = w.axis(i, len as usize, k[i]).map_err(ExportError::Op)?;
        let floor_out = (len as usize + a.begin + a.end - ((k[i].max(1) - 1) * w.dilations[i] + 1)) / w.strides[i] + 1;
        if a.out != floor_out {
            return Err(unsupported(
                n,
                "ceil_mode changes the output size, which TFLite cannot express",
            ));
        }
        resolved[i] = (a.begin, a.end);
        same &= same_pads(len as usize, k[i], w.strides[i], w.dilations[i]) == (a.begin, a.end);
    }
    Ok(if resolved == [(0, 0); 2] {
        Pads::Builtin(Padding::Valid)
    } else if same {
        Pads::Builtin(Padding::Same)
    } else {
        Pads::Explicit([resolved[0].0, resolved[0].1, resolved[1].0, resolved[1].1])
    })
}

/// The NHWC input of `n`, padded by a `PAD` op when `pads` says so; returns
/// the tensor and the builtin padding to use.
fn padded_input(b: &mut Builder<'_>, n: &Node, pads: Pads) -> Result<(i32, Padding), ExportError> {
    let x = b.get(&n.inputs[0], Layout::Nhwc)?;
    let [t, bo, l, r] = match pads {
        Pads::Builtin(p) => return Ok((x, p)),
        Pads::Explicit(p) => p,
    };
    let p: Vec<i32> = [0, 0, t, bo, l, r, 0, 0].iter().map(|&v| v as i32).collect();
    let pt = b.ints(&format!("{}.paddings", n.name), vec![4, 2], &p)?;
    let mut d = b.dims_of(x);
    d[1] = d[1].map(|h| h + (t + bo) as i32);
    d[2] = d[2].map(|w| w + (l + r) as i32);
    let ty = b.value_type(&n.inputs[0])?.dtype;
    let y = b.activation(&format!("{}.padded", n.name), ty, &d)?;
    b.op(BuiltinOp::PAD, &[x, pt], &[y], Options::Pad);
    Ok((y, Padding::Valid))
}

/// `Conv` with one group: `CONV_2D` with the weight `[O, I, kh, kw]` as OHWI.
pub(super) fn conv(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let Some(c) = n.op.downcast_ref::<Conv>() else {
        return Err(unsupported(n, "not wginfer's Conv"));
    };
    if c.group != 1 {
        return Err(unsupported(
            n,
            format!("group = {} (only group = 1 is CONV_2D)", c.group),
        ));
    }
    let Some(wt) = b.model().param(&n.inputs[1]) else {
        return Err(unsupported(n, "the weight must be a parameter"));
    };
    let &[o, i, kh, kw] = wt.shape() else {
        return Err(unsupported(n, "a 2-D convolution has a 4-D weight"));
    };
    let ohwi = Tensor::from_vec(vec![o, kh, kw, i], to_ohwi(&wt.to_f32_vec(), [o, i, kh, kw]))?;
    let w = b.constant(&format!("{}.ohwi", n.inputs[1]), &ohwi)?;
    let bias = bias_tensor(b, n, n.inputs.get(2), o)?;
    conv_2d(b, n, &c.window, (w, bias), [kh, kw], None)
}

/// The bias value `bias`, or `o` zeros when absent.
fn bias_tensor(b: &mut Builder<'_>, n: &Node, bias: Option<&String>, o: usize) -> Result<i32, ExportError> {
    match bias {
        Some(v) => b.get(v, Layout::Own),
        None => b.constant(&format!("{}.bias", n.name), &Tensor::from_vec(vec![o], vec![0f32; o])?),
    }
}

/// `[O, I, kh, kw]` values reordered as OHWI.
fn to_ohwi<T: Copy + Default>(v: &[T], [o, i, kh, kw]: [usize; 4]) -> Vec<T> {
    let mut ohwi = vec![T::default(); o * i * kh * kw];
    for (idx, x) in v.iter().enumerate().take(ohwi.len()) {
        let (oo, ii, y, xx) = (idx / (i * kh * kw), idx / (kh * kw) % i, idx / kw % kh, idx % kw);
        ohwi[((oo * kh + y) * kw + xx) * i + ii] = *x;
    }
    ohwi
}

/// `CONV_2D` of `n`'s NHWC input with the OHWI weight tensor `w` and the
/// bias tensor, the window's pads (a `PAD` op when TFLite's rules cannot
/// say them). `keep: Some(o)`: the weight has one zero output channel more
/// than the node, and a `SLICE` keeps the first `o`.
fn conv_2d(
    b: &mut Builder<'_>,
    n: &Node,
    win: &Window,
    (w, bias): (i32, i32),
    [kh, kw]: [usize; 2],
    keep: Option<usize>,
) -> Result<(), ExportError> {
    let hw = spatial_dims(b, n)?;
    let p = pads(n, win, hw, [kh, kw])?;
    let (x, padding) = padded_input(b, n, p)?;
    let y = b.output(&n.outputs[0], Layout::Nhwc)?;
    let options = Options::Conv2D {
        padding,
        stride: [win.strides[0] as i32, win.strides[1] as i32],
        dilation: [win.dilations[0] as i32, win.dilations[1] as i32],
    };
    let Some(o) = keep else {
        b.op(BuiltinOp::CONV_2D, &[x, w, bias], &[y], options);
        return Ok(());
    };
    let mut d = b.dims_of(y);
    if let Some(c) = d.last_mut() {
        *c = Some(o as i32 + 1);
    }
    let nm = n.name.as_str();
    let wide = b.step(
        &format!("{nm}.widened"),
        BuiltinOp::CONV_2D,
        &[x, w, bias],
        options,
        DType::F32,
        &d,
    )?;
    let begin = b.ints(&format!("{nm}.slice_begin"), vec![4], &[0; 4])?;
    let size = b.ints(&format!("{nm}.slice_size"), vec![4], &[-1, -1, -1, o as i32])?;
    b.op(BuiltinOp::SLICE, &[wide, begin, size], &[y], Options::Slice);
    Ok(())
}

/// `QConv` (W8A8, one group, undilated): `CONV_2D` with the int8 weight as
/// OHWI and its per-output-channel scales as the tensor's quantization
/// (zero points 0, `quantized_dimension = 0`). LiteRT runs that with f32
/// activations as its hybrid per-channel kernel: each image's input is
/// quantized at run time with its own asymmetric scale and zero point, and
/// padded with that zero point (a `PAD` op's zeros do not change the
/// range, which includes 0), as wginfer quantizes and pads each image.
pub(super) fn qconv(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let Some(c) = n.op.downcast_ref::<QConv>() else {
        return Err(unsupported(n, "not wginfer's QConv"));
    };
    if c.format != (WeightFormat::W8A8 { outliers: 0 }) {
        return Err(ExportError::Format {
            node: n.name.clone(),
            format: c.format.name(),
            target: "TFLite",
            reason: "a QConv's TFLite form is W8A8 without outliers".into(),
        });
    }
    if c.group != 1 {
        return Err(unsupported(
            n,
            format!(
                "group = {}: wginfer quantizes each group's input with its own range, TFLite's hybrid CONV_2D one range per image",
                c.group
            ),
        ));
    }
    if c.window.dilations.iter().any(|&d| d != 1) {
        return Err(unsupported(n, "LiteRT's hybrid CONV_2D kernel ignores dilation"));
    }
    let (q, scale) = match (b.model().param(&n.inputs[1]), b.model().param(&n.inputs[2])) {
        (Some(q), Some(s)) => (q, s),
        _ => return Err(unsupported(n, "the packed weight must be parameters")),
    };
    let (o, i) = (c.out_channels, c.in_channels);
    let (kh, kw) = match c.window.kernel.as_slice() {
        &[kh, kw] => (kh, kw),
        k => return Err(unsupported(n, format!("kernel {k:?} is not 2-D"))),
    };
    let mut scales = scale.to_f32_vec();
    // One scale for every channel (one channel, say) makes LiteRT take its
    // per-tensor hybrid kernel, which quantizes the input symmetrically
    // (3.2e-2 off on a one-channel test): a zero channel with another scale
    // keeps the per-channel kernel.
    let widened = scales.windows(2).all(|p| p[0] == p[1]);
    let rows = o + widened as usize;
    let mut v = to_ohwi(q.as_slice::<i8>()?, [o, i, kh, kw]);
    v.resize(rows * kh * kw * i, 0);
    let first = scales.first().copied().unwrap_or(1.0);
    scales.resize(rows, if first == 0.0 { 1.0 } else { 2.0 * first });
    let quant = Quantization {
        scale: scales,
        zero_point: vec![0; rows],
        dim: 0,
    };
    let ohwi = Tensor::from_vec(vec![rows, kh, kw, i], v)?;
    let w = b.quantized(&format!("{}.ohwi", n.inputs[1]), &ohwi, quant)?;
    let bias = match (widened, n.inputs.get(4)) {
        (false, bias) => bias_tensor(b, n, bias, o)?,
        (true, None) => bias_tensor(b, n, None, rows)?,
        (true, Some(v)) => {
            let Some(t) = b.model().param(v) else {
                return Err(unsupported(
                    n,
                    "the bias of a QConv whose channels share one scale must be a parameter",
                ));
            };
            let mut t = t.to_f32_vec();
            t.resize(rows, 0.0);
            b.constant(&format!("{v}.widened"), &Tensor::from_vec(vec![rows], t)?)?
        }
    };
    conv_2d(b, n, &c.window, (w, bias), [kh, kw], widened.then_some(o))
}

/// The spatial sizes of `n`'s NCHW input.
fn spatial_dims(b: &Builder<'_>, n: &Node) -> Result<[Option<i32>; 2], ExportError> {
    let d = super::builder::dims(&b.value_type(&n.inputs[0])?);
    match d.as_slice() {
        [_, _, h, w] => Ok([*h, *w]),
        _ => Err(unsupported(
            n,
            "TFLite's convolutions and pools take 4-D NCHW inputs here",
        )),
    }
}

/// `MaxPool`/`AveragePool`: `MAX_POOL_2D`/`AVERAGE_POOL_2D`. TFLite's
/// average pool divides by the window's count inside the input (ONNX
/// `count_include_pad = 0`) under `SAME`; counting the pads is a `PAD` op.
pub(super) fn pool(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let Some(p) = n.op.downcast_ref::<Pool>() else {
        return Err(unsupported(n, "not wginfer's pool"));
    };
    let w = &p.window;
    if w.rank() != 2 || w.dilations.iter().any(|&d| d != 1) || p.indices {
        return Err(unsupported(n, "TFLite pools are 2-D, undilated, without indices"));
    }
    let k = [w.kernel[0], w.kernel[1]];
    let hw = spatial_dims(b, n)?;
    let pads = match pads(n, w, hw, k)? {
        Pads::Builtin(Padding::Same) if !p.max && p.count_include_pad => {
            let [h, wd] = hw.map(|d| d.unwrap_or(0) as usize);
            let (t, bo) = same_pads(h, k[0], w.strides[0], 1);
            let (l, r) = same_pads(wd, k[1], w.strides[1], 1);
            Pads::Explicit([t, bo, l, r])
        }
        Pads::Explicit(_) if p.max => {
            return Err(unsupported(
                n,
                "pads other than TFLite's SAME rule (a PAD op would pad with 0, not -inf)",
            ))
        }
        Pads::Explicit(_) if !p.count_include_pad => {
            return Err(unsupported(
                n,
                "pads other than TFLite's SAME rule with count_include_pad = 0",
            ))
        }
        other => other,
    };
    let (x, padding) = padded_input(b, n, pads)?;
    let y = b.output(&n.outputs[0], Layout::Nhwc)?;
    let options = Options::Pool2D {
        padding,
        stride: [w.strides[0] as i32, w.strides[1] as i32],
        filter: [k[0] as i32, k[1] as i32],
    };
    let code = if p.max {
        BuiltinOp::MAX_POOL_2D
    } else {
        BuiltinOp::AVERAGE_POOL_2D
    };
    b.op(code, &[x], &[y], options);
    Ok(())
}

/// `GlobalAveragePool`: `MEAN` over H and W of the NHWC form, dims kept.
pub(super) fn global_average_pool(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    spatial_dims(b, n)?;
    let x = b.get(&n.inputs[0], Layout::Nhwc)?;
    let axes = b.ints(&format!("{}.axes", n.name), vec![2], &[1, 2])?;
    let y = b.output(&n.outputs[0], Layout::Nhwc)?;
    b.op(BuiltinOp::MEAN, &[x, axes], &[y], Options::Reducer { keep_dims: true });
    Ok(())
}
