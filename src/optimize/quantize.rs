//! Quantize a model's linear layers into packed weight formats.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, OpError};
use crate::graph::{Graph, Node, ParamInfo};
use crate::model::Model;
use crate::ops::binary::{Binary, BinaryKind};
use crate::ops::conv::Conv;
use crate::ops::linear::Linear;
use crate::ops::movement::Gather;
use crate::ops::qconv::QConv;
use crate::ops::qlinear::QLinear;
use crate::quant::gptq::{self, GptqOptions};
use crate::quant::{self, WeightFormat};

use super::calibrate::{self, Calibration, InputStats};
use crate::tensor::{DType, Tensor};
use half::f16;

/// What to quantize and how.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// The format for every linear layer not otherwise named.
    pub format: WeightFormat,
    /// Node names to keep in f32.
    pub keep: Vec<String>,
    /// Per-node formats that override `format`.
    pub layers: HashMap<String, WeightFormat>,
    /// Calibration inputs. With them, int4, int8 and W8A8 weights are
    /// quantized by GPTQ ([`quant::gptq`]) on the layers' input statistics
    /// instead of round-to-nearest.
    pub calibration: Option<Calibration>,
    /// GPTQ settings (used with `calibration`).
    pub gptq: GptqOptions,
    /// W8A8 input channels kept in f32 per layer when calibrating: the
    /// channels with the largest mean square input over the calibration
    /// set, at most `in/16`. `None`: the format's count, or
    /// [`DEFAULT_OUTLIERS`] where that is 0. Without calibration the
    /// format's count is used (columns chosen from the weights).
    ///
    /// int4 layers quantized by GPTQ keep the same channels (at most
    /// `in/16`; `None`: [`DEFAULT_INT4_OUTLIERS`]) in a separate f16
    /// `QLinear` on the gathered channels whose output is added to the
    /// int4 `QLinear`'s (the "outlier split"; the packed weight holds 0 there).
    /// Without calibration int4 keeps none.
    pub outliers: Option<u32>,
    /// With a W8A8 format, 2-D `Conv` layers (f32 weight parameters) become
    /// [`QConv`]s too: int8 weights per output channel by round-to-nearest,
    /// no outlier channels, activations quantized per output pixel's patch
    /// at run time. Default true; false keeps them f32 (e.g. for an export
    /// format that has no form for them).
    pub convolutions: bool,
}

/// f32 input channels per int4 layer quantized by GPTQ, unless told
/// otherwise ([`QuantizeOptions::outliers`]). (MiniLM, 347 calibration
/// texts, 18 test texts: int4-min min cosine to f32 0.9875 with none,
/// 0.9892 with 8, 0.9919 with 12, 0.9917 with 16, 0.9920 with 24; each
/// channel adds `4·out` bytes per layer.)
pub const DEFAULT_INT4_OUTLIERS: u32 = 16;

/// W8A8 outlier channels per layer chosen from calibration data unless told
/// otherwise. (MiniLM, RTN weights, 18 test texts: min cosine to f32 0.99742
/// with none, 0.99925 with 4, 0.99935 with 8, 0.99955 with 16.)
pub const DEFAULT_OUTLIERS: u32 = 8;

/// The outlier channels of a W8A8 layer with `k` inputs: the `count`
/// (at most `k/16`) with the largest `diag H` (Σx² over the calibration rows).
pub fn outlier_channels(stats: &InputStats, count: u32) -> Vec<usize> {
    let k = stats.features;
    let c = (count as usize).min(k / 16);
    let diag: Vec<f32> = (0..k)
        .map(|i| stats.h.get(i * k + i).copied().unwrap_or(0.0) as f32)
        .collect();
    quant::top_columns(&diag, c)
}

impl QuantizeOptions {
    /// Every linear layer in `format`.
    pub fn new(format: WeightFormat) -> Self {
        Self {
            format,
            keep: Vec::new(),
            layers: HashMap::new(),
            calibration: None,
            gptq: GptqOptions::default(),
            outliers: None,
            convolutions: true,
        }
    }
}

/// What happened to one layer.
#[derive(Clone, Debug)]
pub struct LayerReport {
    /// Node name.
    pub node: String,
    /// The format it now has (`None`: kept in f32).
    pub format: Option<WeightFormat>,
    /// Weight parameters.
    pub params: usize,
    /// Weight bytes before.
    pub bytes_before: usize,
    /// Weight bytes after (packed tensors, scales included).
    pub bytes_after: usize,
    /// Largest |w - dequant(quant(w))|.
    pub max_abs_err: f32,
    /// Mean |w - dequant(quant(w))|.
    pub mean_abs_err: f32,
    /// Quantized by GPTQ on calibration data (else round-to-nearest).
    pub gptq: bool,
    /// Input channels split off into an f16 `QLinear` beside the packed
    /// weight (int4 with calibration; their weights and indices are in
    /// `bytes_after`).
    pub split_outliers: usize,
}

/// The whole transform's report.
#[derive(Clone, Debug, Default)]
pub struct QuantizeReport {
    /// One entry per linear layer, in graph order.
    pub layers: Vec<LayerReport>,
    /// All parameter bytes before.
    pub bytes_before: usize,
    /// All parameter bytes after.
    pub bytes_after: usize,
    /// Rows (samples or tokens) the calibration ran over (0 without calibration).
    pub calibration_rows: usize,
    /// Time spent on the calibration forward passes and input statistics.
    pub calibration_time: std::time::Duration,
}

/// Replaces every `Linear` whose weight is a 2-D f32 parameter by a
/// `QLinear` over the packed weight (unless kept), and with a W8A8 format
/// every 2-D `Conv` with an f32 weight parameter by a [`QConv`] (see
/// [`QuantizeOptions::convolutions`]). Biases stay f32.
/// With `opts.calibration`, int4/int8/W8A8 weights are quantized by GPTQ on
/// the f32 model's layer inputs over that data, others by round-to-nearest.
/// `progress(done, total)` is called after each layer.
pub fn quantize(
    model: &Model,
    opts: &QuantizeOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Model, QuantizeReport), Error> {
    let g = model.graph();
    for name in opts.keep.iter().chain(opts.layers.keys()) {
        if !g.nodes().iter().any(|n| &n.name == name) {
            return Err(OpError::Attribute {
                name: "layer".into(),
                message: format!(
                    "no node named `{name}`; linear and convolution layers are: {}",
                    linear_nodes(g)
                        .iter()
                        .chain(conv_nodes(g).iter().map(|(n, _, _)| n))
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
            .into());
        }
    }
    let format_of = |node: &Node| -> Option<WeightFormat> {
        (!opts.keep.contains(&node.name)).then(|| *opts.layers.get(&node.name).unwrap_or(&opts.format))
    };
    let w8a8_convs = |node: &Node| opts.convolutions && matches!(format_of(node), Some(WeightFormat::W8A8 { .. }));
    let convs: Vec<(&Node, &Conv, &str)> = conv_nodes(g).into_iter().filter(|(n, _, _)| w8a8_convs(n)).collect();
    let total = linear_nodes(g).len() + convs.len();
    let mut params: HashMap<String, Tensor> = g
        .params()
        .iter()
        .filter_map(|p| model.param(&p.name).map(|t| (p.name.clone(), t.clone())))
        .collect();
    let mut infos: Vec<ParamInfo> = g.params().to_vec();
    let mut nodes: Vec<Node> = Vec::with_capacity(g.nodes().len());
    let mut report = QuantizeReport {
        bytes_before: model.param_bytes(),
        ..Default::default()
    };
    // Calibration: the input statistics of every layer GPTQ will quantize.
    let mut stats: HashMap<String, InputStats> = HashMap::new();
    if let Some(cal) = &opts.calibration {
        let start = std::time::Instant::now();
        let mut wanted: Vec<String> = Vec::new();
        for node in linear_nodes(g) {
            let calibrated = |f: WeightFormat| gptq::supports(&f) || matches!(f, WeightFormat::W8A8 { .. });
            if format_of(node).is_some_and(calibrated) && !wanted.contains(&node.inputs[0]) {
                wanted.push(node.inputs[0].clone());
            }
        }
        if !wanted.is_empty() {
            stats = calibrate::input_stats(model, &wanted, cal)?;
        }
        report.calibration_rows = cal.rows();
        report.calibration_time = start.elapsed();
    }
    // GPTQ's factor of H⁻¹, once per distinct layer input (Q, K and V share one).
    let mut factors: HashMap<String, gptq::Factor> = HashMap::new();
    let mut done = 0;
    let mut replaced_weights = HashSet::new();
    for node in g.nodes() {
        if let Some((_, conv, weight_name)) = convs.iter().find(|(n, _, _)| std::ptr::eq(*n, node)) {
            let w = params
                .get(*weight_name)
                .ok_or_else(|| OpError::Shape(format!("missing weight `{weight_name}`")))?;
            let (qnode, layer, packed) = quantize_conv(node, conv, weight_name, w)?;
            for (info, t) in packed {
                params.insert(info.name.clone(), t);
                infos.push(info);
            }
            report.layers.push(layer);
            replaced_weights.insert(weight_name.to_string());
            nodes.push(qnode);
            done += 1;
            progress(done, total);
            continue;
        }
        let Some(weight_name) = quantizable_weight(g, node) else {
            nodes.push(node.clone());
            continue;
        };
        let w = params
            .get(weight_name)
            .cloned()
            .ok_or_else(|| OpError::Shape(format!("missing weight `{weight_name}`")))?;
        let (n, k) = (w.shape()[0], w.shape()[1]);
        let Some(mut format) = format_of(node) else {
            report.layers.push(LayerReport {
                node: node.name.clone(),
                format: None,
                params: n * k,
                bytes_before: w.size_in_bytes(),
                bytes_after: w.size_in_bytes(),
                max_abs_err: 0.0,
                mean_abs_err: 0.0,
                gptq: false,
                split_outliers: 0,
            });
            nodes.push(node.clone());
            done += 1;
            progress(done, total);
            continue;
        };
        let wf = w.as_f32()?;
        let input = &node.inputs[0];
        let layer_stats = stats.get(input).filter(|s| s.features == k && s.rows > 0);
        let w8a8 = match (format, layer_stats) {
            (WeightFormat::W8A8 { outliers }, Some(st)) => {
                let count = opts
                    .outliers
                    .unwrap_or(if outliers > 0 { outliers } else { DEFAULT_OUTLIERS });
                let cols = outlier_channels(st, count);
                format = WeightFormat::W8A8 {
                    outliers: cols.len() as u32,
                };
                Some((st, cols))
            }
            (WeightFormat::W8A8 { .. }, None) => {
                if let Some(c) = opts.outliers {
                    format = WeightFormat::W8A8 {
                        outliers: c.min(k as u32),
                    };
                }
                None
            }
            _ => None,
        };
        let by_gptq = w8a8.is_some() || (gptq::supports(&format) && layer_stats.is_some());
        // The int4 outlier split: (channels, f32 weights `[n, channels]`).
        let mut split: Option<(Vec<usize>, Vec<f32>)> = None;
        let packed = if let Some((st, cols)) = &w8a8 {
            // GPTQ on the non-outlier columns (the sub-matrices of W and H),
            // then the outlier columns back in f32.
            let key = format!("{input}\u{0}w8a8{cols:?}");
            let keep: Vec<usize> = (0..k).filter(|c| !cols.contains(c)).collect();
            let ks = keep.len();
            if !factors.contains_key(&key) {
                let h: Vec<f64> = (0..ks * ks).map(|i| st.h[keep[i / ks] * k + keep[i % ks]]).collect();
                factors.insert(key.clone(), gptq::Factor::new(&h, ks, &opts.gptq)?);
            }
            let sub: Vec<f32> = (0..n * ks)
                .map(|i| wf[(i / ks.max(1)) * k + keep[i % ks.max(1)]])
                .collect();
            let int8 = WeightFormat::Int8 { affine: false };
            let res = gptq::quantize_weight_gptq(&int8, &sub, n, ks, &factors[&key], &opts.gptq)?;
            let (qs, scales) = (res[0].as_slice::<i8>()?, res[1].as_f32()?.to_vec());
            let mut q = vec![0i8; n * k];
            for r in 0..n {
                for (t, &c) in keep.iter().enumerate() {
                    q[r * k + c] = qs[r * ks + t];
                }
            }
            quant::w8a8_tensors(q, scales, wf, n, k, cols)?
        } else if let (true, Some(st)) = (by_gptq, layer_stats) {
            // int4: the outlier split (the chosen channels kept in f16, last
            // in GPTQ's order so they absorb the others' error).
            let cols = match format {
                WeightFormat::Int4 { .. } => outlier_channels(st, opts.outliers.unwrap_or(DEFAULT_INT4_OUTLIERS)),
                _ => Vec::new(),
            };
            let key = format!("{input}\u{0}exact{cols:?}");
            if !factors.contains_key(&key) {
                factors.insert(key.clone(), gptq::Factor::with_exact(&st.h, k, &opts.gptq, &cols)?);
            }
            let f = &factors[&key];
            let (packed, kept) = gptq::quantize_weight_gptq_split(&format, wf, n, k, f, &opts.gptq)?;
            if !kept.is_empty() {
                // Stored as f16: its rounding (relative 2⁻¹¹) is far below
                // the int4 steps, and it halves the split's size.
                let kept = kept.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
                split = Some((f.exact_columns().to_vec(), kept));
            }
            packed
        } else {
            quant::quantize_weight(&format, wf, n, k)?
        };
        let refs: Vec<&Tensor> = packed.iter().collect();
        let mut back = quant::dequantize(&format, &refs, n, k)?;
        if let Some((cols, kept)) = &split {
            for r in 0..n {
                for (t, &c) in cols.iter().enumerate() {
                    back[r * k + c] += kept[r * cols.len() + t];
                }
            }
        }
        let errs: Vec<f32> = wf.iter().zip(&back).map(|(a, b)| (a - b).abs()).collect();
        let max_abs_err = errs.iter().fold(0.0f32, |m, &e| m.max(e));
        let mean_abs_err = errs.iter().sum::<f32>() / errs.len().max(1) as f32;
        let mut inputs = vec![node.inputs[0].clone()];
        let mut bytes_after = 0;
        for (suffix, t) in format.tensor_names().iter().zip(packed) {
            let name = format!("{weight_name}.{suffix}");
            bytes_after += t.size_in_bytes();
            infos.push(ParamInfo {
                name: name.clone(),
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                format: format.name(),
            });
            params.insert(name.clone(), t);
            inputs.push(name);
        }
        inputs.extend(node.inputs.iter().skip(2).cloned());
        let mut outputs = node.outputs.clone();
        let mut extra: Vec<Node> = Vec::new();
        let split_outliers = split.as_ref().map_or(0, |(cols, _)| cols.len());
        if let Some((cols, kept)) = split {
            // y = QLinear(x) + QLinear_f16(Gather(x, cols, axis -1), W[:, cols]).
            let c = cols.len();
            let y = node.outputs.first().cloned().unwrap_or_default();
            let (idx_name, w_name) = (
                format!("{weight_name}.outlier_index"),
                format!("{weight_name}.outlier_weight"),
            );
            let (xo, yq, yo) = (
                format!("{y}.outlier_x"),
                format!("{y}.packed"),
                format!("{y}.outlier_y"),
            );
            let idx = Tensor::from_vec(vec![c], cols.iter().map(|&v| v as i64).collect::<Vec<i64>>())?;
            let f16w = WeightFormat::F16;
            let wo = quant::quantize_weight(&f16w, &kept, n, c)?.remove(0);
            for (name, t) in [(&idx_name, idx), (&w_name, wo)] {
                bytes_after += t.size_in_bytes();
                let mut info = ParamInfo::plain(name.clone(), t.dtype(), t.shape().to_vec());
                if *name == w_name {
                    info.format = f16w.name();
                }
                infos.push(info);
                params.insert(name.clone(), t);
            }
            outputs[0] = yq.clone();
            extra.push(Node {
                name: format!("{}.outlier_gather", node.name),
                op: Arc::new(Gather { axis: -1 }),
                inputs: vec![input.clone(), idx_name],
                outputs: vec![xo.clone()],
            });
            extra.push(Node {
                name: format!("{}.outlier_linear", node.name),
                op: Arc::new(QLinear {
                    format: WeightFormat::F16,
                    in_features: c,
                    out_features: n,
                }),
                inputs: vec![xo, w_name],
                outputs: vec![yo.clone()],
            });
            extra.push(Node {
                name: format!("{}.outlier_add", node.name),
                op: Arc::new(Binary { kind: BinaryKind::Add }),
                inputs: vec![yq, yo],
                outputs: vec![y],
            });
        }
        report.layers.push(LayerReport {
            node: node.name.clone(),
            format: Some(format),
            params: n * k,
            bytes_before: w.size_in_bytes(),
            bytes_after,
            max_abs_err,
            mean_abs_err,
            gptq: by_gptq,
            split_outliers,
        });
        replaced_weights.insert(weight_name.to_string());
        nodes.push(Node {
            name: node.name.clone(),
            op: Arc::new(QLinear {
                format,
                in_features: k,
                out_features: n,
            }),
            inputs,
            outputs,
        });
        nodes.extend(extra);
        done += 1;
        progress(done, total);
    }
    // Drop f32 weights that no node reads any more.
    let still_read: HashSet<&str> = nodes.iter().flat_map(|n| n.inputs.iter().map(String::as_str)).collect();
    infos.retain(|p| !replaced_weights.contains(&p.name) || still_read.contains(p.name.as_str()));
    params.retain(|name, _| infos.iter().any(|p| &p.name == name));
    let graph = Graph::new(g.name(), g.inputs().to_vec(), g.outputs().to_vec(), infos, nodes)?;
    let out = Model::new(graph, params)?;
    report.bytes_after = out.param_bytes();
    Ok((out, report))
}

fn linear_nodes(g: &Graph) -> Vec<&Node> {
    g.nodes()
        .iter()
        .filter(|n| quantizable_weight(g, n).is_some())
        .collect()
}

/// The 2-D `Conv` nodes whose weight is a 4-D f32 parameter matching the
/// kernel, with their op and weight name.
fn conv_nodes(g: &Graph) -> Vec<(&Node, &Conv, &str)> {
    g.nodes()
        .iter()
        .filter_map(|n| {
            let conv = n.op.downcast_ref::<Conv>()?;
            let w = n.inputs.get(1)?;
            let p = g.params().iter().find(|p| &p.name == w)?;
            let fits = p.dtype == DType::F32
                && p.shape.len() == 4
                && conv.window.rank() == 2
                && (conv.window.kernel.is_empty() || conv.window.kernel == p.shape[2..]);
            fits.then_some((n, conv, w.as_str()))
        })
        .collect()
}

/// Parameters a transform adds: their descriptions and tensors.
type NewParams = Vec<(ParamInfo, Tensor)>;

/// A `Conv` as a [`QConv`] over its weight `[M, C/group, kH, kW]` packed as
/// W8A8 (viewed as `[M, C/group·kH·kW]`, round-to-nearest, no outliers): the
/// node, its report, and the new parameters.
fn quantize_conv(
    node: &Node,
    conv: &Conv,
    weight_name: &str,
    w: &Tensor,
) -> Result<(Node, LayerReport, NewParams), Error> {
    let &[m, cg, kh, kw] = w.shape() else {
        return Err(OpError::Shape(format!("conv weight `{weight_name}` must be 4-D")).into());
    };
    let (k, wf) = (cg * kh * kw, w.as_f32()?);
    let format = WeightFormat::W8A8 { outliers: 0 };
    let packed = quant::quantize_weight(&format, wf, m, k)?;
    let refs: Vec<&Tensor> = packed.iter().collect();
    let back = quant::dequantize(&format, &refs, m, k)?;
    let errs: Vec<f32> = wf.iter().zip(&back).map(|(a, b)| (a - b).abs()).collect();
    let mut inputs = vec![node.inputs[0].clone()];
    let mut params = Vec::new();
    for (suffix, t) in format.tensor_names().iter().zip(packed) {
        let name = format!("{weight_name}.{suffix}");
        let info = ParamInfo {
            name: name.clone(),
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            format: format.name(),
        };
        params.push((info, t));
        inputs.push(name);
    }
    inputs.extend(node.inputs.iter().skip(2).cloned());
    let layer = LayerReport {
        node: node.name.clone(),
        format: Some(format),
        params: m * k,
        bytes_before: w.size_in_bytes(),
        bytes_after: params.iter().map(|(_, t)| t.size_in_bytes()).sum(),
        max_abs_err: errs.iter().fold(0.0f32, |a, &e| a.max(e)),
        mean_abs_err: errs.iter().sum::<f32>() / errs.len().max(1) as f32,
        gptq: false,
        split_outliers: 0,
    };
    let op = QConv {
        window: crate::ops::conv::Window {
            kernel: vec![kh, kw],
            ..conv.window.clone()
        },
        group: conv.group,
        format,
        in_channels: cg * conv.group,
        out_channels: m,
    };
    let qnode = Node {
        name: node.name.clone(),
        op: Arc::new(op),
        inputs,
        outputs: node.outputs.clone(),
    };
    Ok((qnode, layer, params))
}

/// The weight parameter of a `Linear` node whose weight is a 2-D f32 parameter.
fn quantizable_weight<'a>(g: &Graph, node: &'a Node) -> Option<&'a str> {
    node.op.downcast_ref::<Linear>()?;
    let w = node.inputs.get(1)?;
    let p = g.params().iter().find(|p| &p.name == w)?;
    (p.dtype == DType::F32 && p.shape.len() == 2).then_some(w.as_str())
}
