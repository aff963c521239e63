//! `QConv` (a W8A8 convolution) → ONNX in wginfer's arithmetic: per image
//! and group, the group's input values quantized to u8 as one W8A8
//! activation row (the ops of [`quantize_rows`] over `x` reshaped to
//! `[N, group, C/group·H·W]`), `ConvInteger` of the codes with the weight
//! as u8 with zero point 128, and wginfer's epilogue.
//!
//! wginfer pads the codes with the image's zero point `z`, which differs
//! per image; `ConvInteger` pads with its one `x_zero_point`. So the codes
//! are padded with 0 (`x_zero_point` 0) and the sum corrected exactly:
//! `Σ_patch (q - z)·w = acc₀ - z·Σ_in-bounds w`, where `acc₀` is the
//! `ConvInteger` sum and `Σ_in-bounds w` (per output channel and pixel) is
//! `ConvInteger` of a constant image of ones (`wsum` when there are no
//! pads). The rest is int32 and then wginfer's f32 operations in its
//! order: `(acc₀ - z·Σw) as f32 · (s · scale_j) + b_j`.

use super::builder::{Attr, Builder};
use super::ops::{param, unsupported};
use super::quant::quantize_rows;
use super::ExportError;
use crate::graph::Node;
use crate::model::Model;
use crate::ops::qconv::QConv;
use crate::quant::WeightFormat;
use crate::tensor::{Dim, Tensor};

/// ONNX's INT32 and FLOAT type codes (`Cast`'s `to`).
const INT32: i64 = 6;
const FLOAT: i64 = 1;

/// The sizes the export needs.
struct Shape {
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    g: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    /// `[top, left, bottom, right]`, resolved from the window.
    pads: [usize; 4],
}

fn format_error(n: &Node, op: &QConv, reason: &str) -> ExportError {
    ExportError::Format {
        node: n.name.clone(),
        format: op.format.name(),
        target: "ONNX",
        reason: reason.into(),
    }
}

/// The input's channels and spatial sizes (they must be known) and the
/// resolved window.
fn shape(model: &Model, n: &Node, op: &QConv) -> Result<Shape, ExportError> {
    let ty = model
        .graph()
        .value_type(&n.inputs[0])
        .ok_or_else(|| unsupported(n, "the input's type is unknown"))?;
    let known: Vec<usize> = ty.shape.iter().skip(1).filter_map(Dim::known).collect();
    let (&[c, h, w], 4) = (known.as_slice(), ty.rank()) else {
        return Err(unsupported(
            n,
            format!("needs x [N, C, H, W] with C, H, W known; got {ty}"),
        ));
    };
    let (kh, kw) = match op.window.kernel.as_slice() {
        &[kh, kw] => (kh, kw),
        k => return Err(unsupported(n, format!("kernel {k:?} is not 2-D"))),
    };
    let (y, x) = (op.window.axis(0, h, kh)?, op.window.axis(1, w, kw)?);
    let (m, g) = (op.out_channels, op.group);
    if g == 0 || c != op.in_channels || c % g != 0 || m % g != 0 {
        return Err(unsupported(
            n,
            format!("{c} input and {m} output channels do not divide into {g} groups"),
        ));
    }
    Ok(Shape {
        c,
        h,
        w,
        m,
        g,
        kh,
        kw,
        oh: y.out,
        ow: x.out,
        pads: [y.begin, x.begin, y.end, x.end],
    })
}

/// Writes a `QConv` node.
pub(super) fn qconv(b: &mut Builder, model: &Model, n: &Node) -> Result<(), ExportError> {
    let Some(op) = n.op.downcast_ref::<QConv>() else {
        return Err(unsupported(n, "not wginfer's QConv"));
    };
    if op.format != (WeightFormat::W8A8 { outliers: 0 }) {
        return Err(format_error(n, op, "a QConv's ONNX form is W8A8 without outliers"));
    }
    let mut packed = Vec::with_capacity(3);
    for name in n.inputs.iter().skip(1).take(3) {
        packed.push(
            model
                .param(name)
                .ok_or_else(|| unsupported(n, format!("packed weight `{name}` must be a parameter")))?,
        );
    }
    let &[q, ws, _] = packed.as_slice() else {
        return Err(unsupported(n, "needs the W8A8 weight's q, scale and wsum"));
    };
    let s = shape(model, n, op)?;
    let (g, mg, cg) = (s.g as i64, (s.m / s.g) as i64, s.c / s.g);
    let nm = n.name.as_str();
    // One activation row per image and group.
    let rows = b.ints(&format!("{nm}.group_rows"), &[0, g, -1])?;
    let xg = b.step(nm, "x_groups", "Reshape", &[&n.inputs[0], &rows], vec![]);
    let [xq, sx, z] = quantize_rows(b, nm, &xg, &[], cg * s.h * s.w)?;
    let image = b.ints(&format!("{nm}.image_shape"), &[0, s.c as i64, s.h as i64, s.w as i64])?;
    let codes = b.step(nm, "codes", "Reshape", &[&xq, &image], vec![]);
    let wq = weight_u8(b, n, q, &s)?;
    let zeros = b.constant(&format!("{nm}.x_zero"), &Tensor::from_vec(vec![], vec![0u8])?)?;
    let w_zero = b.constant(&format!("{nm}.weight_zero"), &Tensor::from_vec(vec![], vec![128u8])?)?;
    let conv = |b: &mut Builder, tag: &str, x: &str| {
        let attrs = conv_attrs(op, &s);
        b.step(nm, tag, "ConvInteger", &[x, &wq, &zeros, &w_zero], attrs)
    };
    let acc = conv(b, "acc", &codes);
    let per_group = b.ints(&format!("{nm}.group_pixels"), &[0, g, mg, -1])?;
    let acc = b.step(nm, "acc_groups", "Reshape", &[&acc, &per_group], vec![]);
    // Σ of the in-bounds weights, [group, M/group, pixels] (or [.., 1]).
    let inb = if s.pads == [0; 4] {
        let wsum = Tensor::from_vec(
            vec![s.g, s.m / s.g, 1],
            packed[2].to_i64_vec().iter().map(|&v| v as i32).collect(),
        )?;
        b.constant(&format!("{}.groups", n.inputs[3]), &wsum)?
    } else {
        let ones = Tensor::from_vec(vec![1, s.c, s.h, s.w], vec![1u8; s.c * s.h * s.w])?;
        let ones = b.constant(&format!("{nm}.ones"), &ones)?;
        let t = conv(b, "inbounds", &ones);
        let shape = b.ints(&format!("{nm}.inbounds_shape"), &[g, mg, -1])?;
        b.step(nm, "inbounds_groups", "Reshape", &[&t, &shape], vec![])
    };
    let last = b.ints(&format!("{nm}.last_axis"), &[-1])?;
    let z = b.step(nm, "z_groups", "Unsqueeze", &[&z, &last], vec![]);
    let z = b.step(nm, "z_int32", "Cast", &[&z], vec![("to", Attr::Int(INT32))]);
    let corr = b.step(nm, "padding_corr", "Mul", &[&z, &inb], vec![]);
    let centered = b.step(nm, "centered", "Sub", &[&acc, &corr], vec![]);
    let centered = b.step(nm, "centered_f32", "Cast", &[&centered], vec![("to", Attr::Int(FLOAT))]);
    let sx = b.step(nm, "sx_groups", "Unsqueeze", &[&sx, &last], vec![]);
    let ws = Tensor::from_vec(vec![s.g, s.m / s.g, 1], ws.to_f32_vec())?;
    let ws = b.constant(&format!("{}.groups", n.inputs[2]), &ws)?;
    let scale = b.step(nm, "scale", "Mul", &[&sx, &ws], vec![]);
    let mut y = b.step(nm, "y_groups", "Mul", &[&centered, &scale], vec![]);
    if let Some(bias) = n.inputs.get(4) {
        let b3 = bias_groups(b, model, nm, bias, &s)?;
        y = b.step(nm, "y_biased", "Add", &[&y, &b3], vec![]);
    }
    let out = b.ints(&format!("{nm}.out_shape"), &[0, s.m as i64, s.oh as i64, s.ow as i64])?;
    b.node(&format!("{nm}.out"), "Reshape", &[&y, &out], &[&n.outputs[0]], vec![]);
    Ok(())
}

/// `ConvInteger`'s attributes: the window with its pads resolved.
fn conv_attrs(op: &QConv, s: &Shape) -> Vec<(&'static str, Attr)> {
    let ints = |v: &[usize]| Attr::Ints(v.iter().map(|&x| x as i64).collect());
    vec![
        ("kernel_shape", ints(&op.window.kernel)),
        ("strides", ints(&op.window.strides)),
        ("dilations", ints(&op.window.dilations)),
        ("pads", ints(&s.pads)),
        ("group", Attr::Int(s.g as i64)),
    ]
}

/// The int8 weight `[M, C/group·kH·kW]` as u8 `[M, C/group, kH, kW]` with
/// zero point 128 (onnxruntime's u8·u8 kernels do not saturate; see the
/// W8A8 `QLinear`).
fn weight_u8(b: &mut Builder, n: &Node, q: &Tensor, s: &Shape) -> Result<String, ExportError> {
    let shifted: Vec<u8> = q.as_slice::<i8>()?.iter().map(|&v| (v as i16 + 128) as u8).collect();
    let t = Tensor::from_vec(vec![s.m, s.c / s.g, s.kh, s.kw], shifted)?;
    b.constant(&format!("{}.u8", n.inputs[1]), &t)
}

/// The bias `[M]` as `[group, M/group, 1]`: a reshaped initializer when it
/// is a parameter, else a `Reshape`.
fn bias_groups(b: &mut Builder, model: &Model, nm: &str, bias: &str, s: &Shape) -> Result<String, ExportError> {
    let shape = [s.g, s.m / s.g, 1];
    if let Some(t) = model.param(bias) {
        let t = Tensor::from_vec(shape.to_vec(), t.to_f32_vec())?;
        return b.constant(&format!("{bias}.groups"), &t);
    }
    param(b, model, bias)?;
    let shape: Vec<i64> = shape.iter().map(|&v| v as i64).collect();
    let shape = b.ints(&format!("{nm}.bias_shape"), &shape)?;
    Ok(b.step(nm, "bias_groups", "Reshape", &[bias, &shape], vec![]))
}
