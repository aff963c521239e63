//! `QLinear` → ONNX, one form per [`WeightFormat`] (see the module docs of
//! [`super`]). The weight reaches `Gemm(transB = 1)` as `[out, in]` when `x`
//! is 2-D, else `MatMul` as `[in, out]`.

use super::builder::{Attr, Builder};
use super::ops::{is_2d, matmul_bias, transpose2, unsupported};
use super::{ExportError, Int4Export, OnnxExportOptions};
use crate::graph::Node;
use crate::model::Model;
use crate::ops::qlinear::QLinear;
use crate::quant::{self, WeightFormat};
use crate::tensor::{DType, Tensor};

/// The node and what the weight forms need to know about it.
struct Q<'a> {
    n: &'a Node,
    op: &'a QLinear,
    packed: Vec<&'a Tensor>,
    /// The weight goes to `Gemm` as `[out, in]` (else `MatMul` as `[in, out]`).
    gemm: bool,
}

impl Q<'_> {
    /// The packed tensor `i`'s parameter name (a base for derived names).
    fn pname(&self, i: usize) -> &str {
        &self.n.inputs[1 + i]
    }

    fn format_error(&self, reason: &str) -> ExportError {
        ExportError::Format {
            node: self.n.name.clone(),
            format: self.op.format.name(),
            target: "ONNX",
            reason: reason.into(),
        }
    }

    /// `[out, in]` data as the layout the product reads.
    fn oriented(&self, t: Tensor) -> Result<Tensor, ExportError> {
        if self.gemm {
            Ok(t)
        } else {
            transpose2(&t)
        }
    }

    /// The `DequantizeLinear` axis of per-output-channel scales.
    fn channel_axis(&self) -> i64 {
        if self.gemm {
            0
        } else {
            1
        }
    }

    fn dequantized(&self) -> Result<Vec<f32>, ExportError> {
        let (k, n) = (self.op.in_features, self.op.out_features);
        Ok(quant::dequantize(&self.op.format, &self.packed, n, k)?)
    }
}

/// Writes a `QLinear` node.
pub(super) fn qlinear(b: &mut Builder, model: &Model, n: &Node, opts: &OnnxExportOptions) -> Result<(), ExportError> {
    let Some(op) = n.op.downcast_ref::<QLinear>() else {
        return Err(unsupported(n, "not wginfer's QLinear"));
    };
    let np = op.format.tensor_names().len();
    let mut packed = Vec::with_capacity(np);
    for name in n.inputs.iter().skip(1).take(np) {
        packed.push(
            model
                .param(name)
                .ok_or_else(|| unsupported(n, format!("packed weight `{name}` must be a parameter")))?,
        );
    }
    let bias = n.inputs.get(1 + np).map(String::as_str);
    if let Some(bn) = bias {
        super::ops::param(b, model, bn)?;
    }
    let q = Q {
        n,
        op,
        packed,
        gemm: is_2d(model, &n.inputs[0]),
    };
    match op.format {
        WeightFormat::W8A8 { .. } => return w8a8(b, &q, bias),
        WeightFormat::Int4 { .. } if opts.int4 == Int4Export::MatMulNBits => return matmul_nbits(b, &q, bias),
        _ => {}
    }
    let w = weight(b, &q)?;
    product(b, &q, &w, bias);
    Ok(())
}

/// `Gemm` or `MatMul (+ bias)` of `x` and the weight value `w`.
fn product(b: &mut Builder, q: &Q<'_>, w: &str, bias: Option<&str>) {
    let (x, out) = (q.n.inputs[0].as_str(), q.n.outputs[0].as_str());
    if q.gemm {
        let mut ins = vec![x, w];
        ins.extend(bias);
        b.node(&q.n.name, "Gemm", &ins, &[out], vec![("transB", Attr::Int(1))]);
    } else {
        matmul_bias(b, q.n, x, w, bias, out);
    }
}

/// The f32 weight value of a weight-only format, dequantized by ONNX ops.
fn weight(b: &mut Builder, q: &Q<'_>) -> Result<String, ExportError> {
    let nm = &q.n.name;
    let (k, n) = (q.op.in_features, q.op.out_features);
    let dq_out = format!("{nm}.weight");
    match q.op.format {
        WeightFormat::F16 => {
            let w = b.constant(&format!("{}.oriented", q.pname(0)), &q.oriented(q.packed[0].clone())?)?;
            Ok(b.op(
                &format!("{nm}.cast"),
                "Cast",
                &[&w],
                &dq_out,
                vec![("to", Attr::Int(1))],
            ))
        }
        WeightFormat::Int8 { affine } => {
            let w = b.constant(&format!("{}.oriented", q.pname(0)), &q.oriented(q.packed[0].clone())?)?;
            let s = b.constant(q.pname(1), q.packed[1])?;
            let mut ins = vec![w, s];
            if affine {
                ins.push(b.constant(q.pname(2), q.packed[2])?);
            }
            Ok(dequantize(b, q, &ins, q.channel_axis(), 0, &dq_out))
        }
        WeightFormat::Pow2 { per_channel, .. } => {
            let w = b.constant(&format!("{}.oriented", q.pname(0)), &q.oriented(q.packed[0].clone())?)?;
            let shifts = q.packed[1].to_f32_vec();
            let scales: Vec<f32> = shifts.iter().map(|&p| (-p).exp2()).collect();
            let shape = if per_channel { vec![n] } else { vec![] };
            let s = b.constant(&format!("{}.scale", q.pname(1)), &Tensor::from_vec(shape, scales)?)?;
            Ok(dequantize(b, q, &[w, s], q.channel_axis(), 0, &dq_out))
        }
        WeightFormat::Binary { xnor: false } => {
            let w = q.dequantized()?;
            // ±1 as INT4 (ONNX has no 1-bit type): half a byte per weight.
            let signs: Vec<u8> = w.iter().map(|&v| if v < 0.0 { 0xff } else { 1 }).collect();
            let t = q.oriented(Tensor::from_le_bytes(DType::I4, vec![n, k], &signs)?)?;
            let w = b.constant(&format!("{}.signs", q.pname(0)), &t)?;
            let s = b.constant(q.pname(1), q.packed[1])?;
            Ok(dequantize(b, q, &[w, s], q.channel_axis(), 0, &dq_out))
        }
        WeightFormat::Binary { xnor: true } => {
            Err(q.format_error("activations binarized at run time (XNOR) have no ONNX form; re-quantize as `binary`"))
        }
        WeightFormat::NM { .. } => {
            let dense = q.oriented(Tensor::from_vec(vec![n, k], q.dequantized()?)?)?;
            b.constant(&format!("{}.dense", q.pname(0)), &dense)
        }
        WeightFormat::Int4 { block, with_min } => int4_dequantize(b, q, block as usize, with_min, &dq_out),
        WeightFormat::W8A8 { .. } => Err(q.format_error("W8A8 has no weight-only form")),
    }
}

/// A `DequantizeLinear` node; returns its output.
fn dequantize(b: &mut Builder, q: &Q<'_>, ins: &[String], axis: i64, block: usize, out: &str) -> String {
    let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
    let mut attrs = vec![("axis", Attr::Int(axis))];
    if block > 0 {
        attrs.push(("block_size", Attr::Int(block as i64)));
    }
    b.op(
        &format!("{}.dequantize", q.n.name),
        "DequantizeLinear",
        &ins,
        out,
        attrs,
    )
}

/// Symmetric int4 blocks as an INT4 initializer (unpadded) and f32 block
/// scales, dequantized with `block_size` along the input axis.
fn int4_dequantize(b: &mut Builder, q: &Q<'_>, block: usize, with_min: bool, out: &str) -> Result<String, ExportError> {
    if with_min {
        return Err(q.format_error(
            "DequantizeLinear has integer zero points only, so a per-block minimum does not fit; export with --int4 matmulnbits",
        ));
    }
    let (k, n) = (q.op.in_features, q.op.out_features);
    let blocks = k.div_ceil(block);
    let nib = quant::unpack_nibbles(q.packed[0].as_slice::<u8>()?);
    let vals: Vec<u8> = (0..n * k)
        .map(|i| ((nib[(i / k) * blocks * block + i % k] as i8) - 8) as u8)
        .collect();
    let w = q.oriented(Tensor::from_le_bytes(DType::I4, vec![n, k], &vals)?)?;
    let s = q.oriented(Tensor::from_vec(vec![n, blocks], q.packed[1].to_f32_vec())?)?;
    let w = b.constant(&format!("{}.int4", q.pname(0)), &w)?;
    let s = b.constant(&format!("{}.f32", q.pname(1)), &s)?;
    let axis = if q.gemm { 1 } else { 0 };
    Ok(dequantize(b, q, &[w, s], axis, block, out))
}

/// int4 blocks as `com.microsoft.MatMulNBits`: wginfer's packed bytes are its
/// `B` (`[N, blocks, block/2]`, low nibble first, implicit zero point 8);
/// with a block minimum, float zero points `-min/scale`.
fn matmul_nbits(b: &mut Builder, q: &Q<'_>, bias: Option<&str>) -> Result<(), ExportError> {
    let WeightFormat::Int4 { block, with_min } = q.op.format else {
        return Err(q.format_error("not int4"));
    };
    let (k, n, block) = (q.op.in_features, q.op.out_features, block as usize);
    let blocks = k.div_ceil(block);
    let bytes = Tensor::from_le_bytes(DType::U8, vec![n, blocks, block / 2], &q.packed[0].to_le_bytes())?;
    let scales = q.packed[1].to_f32_vec();
    let mut ins = vec![
        q.n.inputs[0].clone(),
        b.constant(&format!("{}.nbits", q.pname(0)), &bytes)?,
        b.constant(
            &format!("{}.f32", q.pname(1)),
            &Tensor::from_vec(vec![n * blocks], scales.clone())?,
        )?,
    ];
    if with_min {
        let mins = q.packed[2].to_f32_vec();
        let mut zp = Vec::with_capacity(mins.len());
        for (s, m) in scales.iter().zip(&mins) {
            if *s == 0.0 && *m != 0.0 {
                return Err(q.format_error("a block with scale 0 and a non-zero minimum has no MatMulNBits zero point"));
            }
            zp.push(if *s == 0.0 { 0.0 } else { -m / s });
        }
        ins.push(b.constant(
            &format!("{}.zero", q.pname(2)),
            &Tensor::from_vec(vec![n * blocks], zp)?,
        )?);
    }
    if !b.extra_domains.iter().any(|(d, _)| d == "com.microsoft") {
        b.extra_domains.push(("com.microsoft".into(), 1));
    }
    let attrs = vec![
        ("K", Attr::Int(k as i64)),
        ("N", Attr::Int(n as i64)),
        ("bits", Attr::Int(4)),
        ("block_size", Attr::Int(block as i64)),
    ];
    let out = q.n.outputs[0].as_str();
    let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
    match bias {
        None => b.node_in("com.microsoft", &q.n.name, "MatMulNBits", &ins, &[out], attrs),
        Some(bias) => {
            let y = b.fresh(&format!("{out}.matmul"));
            b.node_in("com.microsoft", &q.n.name, "MatMulNBits", &ins, &[&y], attrs);
            b.node(&format!("{}.bias", q.n.name), "Add", &[&y, bias], &[out], vec![]);
        }
    }
    Ok(())
}

/// Rounds half away from zero as wginfer does (`sign(v)·floor(|v| + 0.5)`);
/// ONNX `Round` rounds half to even, which would give a tie the other code.
fn round_away(b: &mut Builder, nm: &str, v: &str, tag: &str) -> Result<String, ExportError> {
    let p = format!("{nm}.{tag}");
    let half = b.scalar(&format!("{p}.half"), 0.5)?;
    let a = b.step(&p, "abs", "Abs", &[v], vec![]);
    let a = b.step(&p, "add", "Add", &[&a, &half], vec![]);
    let a = b.step(&p, "floor", "Floor", &[&a], vec![]);
    let sign = b.step(&p, "sign", "Sign", &[v], vec![]);
    Ok(b.step(nm, tag, "Mul", &[&sign, &a], vec![]))
}

/// wginfer's W8A8 activation quantization of each row (the last axis) of
/// `x [..., K]` with the `outliers` channels counted as 0: returns the u8
/// codes, the row scales `s [..., 1]` and the zero points `z [..., 1]` (f32).
pub(super) fn quantize_rows(
    b: &mut Builder,
    nm: &str,
    x: &str,
    outliers: &[i64],
    k: usize,
) -> Result<[String; 3], ExportError> {
    let mut xm = x.to_string();
    if !outliers.is_empty() {
        let mut keep = vec![1.0f32; k];
        for &c in outliers {
            if let Some(v) = keep.get_mut(c as usize) {
                *v = 0.0;
            }
        }
        let keep = b.constant(&format!("{nm}.keep"), &Tensor::from_vec(vec![k], keep)?)?;
        xm = b.step(nm, "xm", "Mul", &[x, &keep], vec![]);
    }
    let axes = b.ints(&format!("{nm}.axes"), &[-1])?;
    let zero = b.scalar(&format!("{nm}.zero"), 0.0)?;
    let c255 = b.scalar(&format!("{nm}.c255"), 255.0)?;
    let tiny = b.scalar(&format!("{nm}.tiny"), 1e-30)?;
    let keepdims = || vec![("keepdims", Attr::Int(1))];
    let lo = b.step(nm, "min", "ReduceMin", &[&xm, &axes], keepdims());
    let lo = b.step(nm, "lo", "Min", &[&lo, &zero], vec![]);
    let hi = b.step(nm, "max", "ReduceMax", &[&xm, &axes], keepdims());
    let hi = b.step(nm, "hi", "Max", &[&hi, &zero], vec![]);
    let range = b.step(nm, "range", "Sub", &[&hi, &lo], vec![]);
    let s = b.step(nm, "sx", "Div", &[&range, &c255], vec![]);
    // A row of zeros (hi = lo) gets codes z = 0 and any scale: its products are 0.
    let s = b.step(nm, "sx_safe", "Max", &[&s, &tiny], vec![]);
    let inv = b.step(nm, "inv", "Reciprocal", &[&s], vec![]);
    let neg = b.step(nm, "neg_lo", "Neg", &[&lo], vec![]);
    let z = b.step(nm, "z_raw", "Mul", &[&neg, &inv], vec![]);
    let z = round_away(b, nm, &z, "z_round")?;
    let z = b.step(nm, "zx", "Clip", &[&z, &zero, &c255], vec![]);
    let xs = b.step(nm, "xs", "Mul", &[&xm, &inv], vec![]);
    let xr = round_away(b, nm, &xs, "xr")?;
    let xz = b.step(nm, "xz", "Add", &[&xr, &z], vec![]);
    let xc = b.step(nm, "xc", "Clip", &[&xz, &zero, &c255], vec![]);
    let xq = b.step(nm, "xq", "Cast", &[&xc], vec![("to", Attr::Int(2))]);
    Ok([xq, s, z])
}

/// W8A8: each row of `x [..., K]` quantized to u8 as wginfer does
/// ([`quantize_rows`]), `MatMulInteger` with the int8 weight (batched over
/// the leading axes, so no reshape), then `(acc - z · Σq_w) · (s_x · s_w)`,
/// plus the f32 product of the outlier channels, plus the bias: wginfer's
/// f32 operations in its order (the integer terms are exact in f32 while
/// `|acc| < 2^24`), so wginfer's importer reads back the same numbers.
fn w8a8(b: &mut Builder, q: &Q<'_>, bias: Option<&str>) -> Result<(), ExportError> {
    let (k, n) = (q.op.in_features, q.op.out_features);
    let nm = q.n.name.as_str();
    let x = q.n.inputs[0].as_str();
    let outliers: Vec<i64> = q.packed.get(3).map(|t| t.to_i64_vec()).unwrap_or_default();
    let [xq, s, z] = quantize_rows(b, nm, x, &outliers, k)?;
    // The weight as u8 with zero point 128: onnxruntime's u8·s8 kernel on
    // x86 without VNNI sums pairs of products in saturating int16
    // (vpmaddubsw), which made the digits MLP's logits differ by 3.3; its
    // u8·u8 kernel does not saturate.
    let shifted: Vec<u8> = q.packed[0]
        .as_slice::<i8>()?
        .iter()
        .map(|&v| (v as i16 + 128) as u8)
        .collect();
    let shifted = Tensor::from_vec(q.packed[0].shape().to_vec(), shifted)?;
    let wq = b.constant(&format!("{}.u8", q.pname(0)), &transpose2(&shifted)?)?;
    let wz = b.constant(&format!("{nm}.weight_zero"), &Tensor::from_vec(vec![], vec![128u8])?)?;
    let az = b.constant(&format!("{nm}.x_zero"), &Tensor::from_vec(vec![], vec![0u8])?)?;
    let acc = b.step(nm, "acc", "MatMulInteger", &[&xq, &wq, &az, &wz], vec![]);
    let acc = b.step(nm, "acc_f32", "Cast", &[&acc], vec![("to", Attr::Int(1))]);
    let wsum = Tensor::from_vec(vec![n], q.packed[2].to_f32_vec())?;
    let wsum = b.constant(&format!("{}.f32", q.pname(2)), &wsum)?;
    let corr = b.step(nm, "zero_corr", "Mul", &[&z, &wsum], vec![]);
    let centered = b.step(nm, "centered", "Sub", &[&acc, &corr], vec![]);
    let ws = b.constant(q.pname(1), q.packed[1])?;
    let scale = b.step(nm, "scale", "Mul", &[&s, &ws], vec![]);
    // The last step writes the node's output.
    let mut last = ("Mul", [centered, scale]);
    if !outliers.is_empty() {
        let y = b.step(nm, "y_int8", last.0, &[&last.1[0], &last.1[1]], vec![]);
        let idx = b.ints(&format!("{}.i64", q.pname(3)), &outliers)?;
        let xo = b.step(nm, "outlier_x", "Gather", &[x, &idx], vec![("axis", Attr::Int(-1))]);
        let wo = b.constant(&format!("{}.T", q.pname(4)), &transpose2(q.packed[4])?)?;
        let yo = b.step(nm, "outlier_y", "MatMul", &[&xo, &wo], vec![]);
        last = ("Add", [y, yo]);
    }
    if let Some(bias) = bias {
        let y = b.step(nm, "y_unbiased", last.0, &[&last.1[0], &last.1[1]], vec![]);
        last = ("Add", [y, bias.to_string()]);
    }
    b.node(
        &format!("{nm}.out"),
        last.0,
        &[&last.1[0], &last.1[1]],
        &[&q.n.outputs[0]],
        vec![],
    );
    Ok(())
}
