//! Prune a model: unstructured masks (magnitude or Taylor importance, global
//! or per layer), N:M sparsity packed for a sparse kernel, structured channel
//! removal that physically shrinks layers, and layer dropping, with optional
//! recovery fine-tuning (SGD with the masks held fixed).
//!
//! The building blocks on plain weights (importance scores, masks, N:M) are
//! in [`scores`]; residual blocks for layer dropping in [`blocks`].

pub mod blocks;
pub mod scores;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, OpError};
use crate::graph::{Graph, Node, ParamInfo};
use crate::model::Model;
use crate::ops::linear::Linear;
use crate::ops::qlinear::QLinear;
use crate::ops::unary::Unary;
use crate::ops::CaseRng;
use crate::quant::{self, WeightFormat};
use crate::tensor::{DType, Tensor};
use crate::train;

pub use scores::Importance;

/// What to prune.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PruneMethod {
    /// Unstructured, by the given importance, to `sparsity`.
    Unstructured(Importance),
    /// N:M sparsity (e.g. 2:4) by the given importance, packed as [`WeightFormat::NM`].
    NM {
        /// Kept per group.
        n: u8,
        /// Group size.
        m: u8,
        /// How weights are ranked within a group.
        importance: Importance,
    },
    /// Remove `sparsity` of the output channels of each hidden linear layer
    /// (and the matching inputs of the layers it feeds).
    Channels(Importance),
    /// Replace the `count` least important shape-preserving nodes by identity.
    Layers {
        /// How many to drop.
        count: usize,
    },
}

/// Whether an unstructured sparsity target holds per layer or across all layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scope {
    /// One threshold over every prunable weight.
    #[default]
    Global,
    /// The same sparsity in every layer.
    PerLayer,
}

/// Labelled samples (first axis of `input` = samples).
#[derive(Clone, Debug)]
pub struct Labelled {
    /// Graph input name.
    pub input_name: String,
    /// Inputs.
    pub input: Tensor,
    /// One class index per sample.
    pub labels: Vec<i64>,
}

/// Recovery fine-tuning.
#[derive(Clone, Debug)]
pub struct Finetune {
    /// Training data.
    pub data: Labelled,
    /// Passes over the data.
    pub epochs: usize,
    /// SGD learning rate.
    pub lr: f32,
    /// Samples per step.
    pub batch: usize,
}

/// Pruning options.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// The method.
    pub method: PruneMethod,
    /// Target fraction removed (unstructured and channels).
    pub sparsity: f32,
    /// Global or per-layer target (unstructured).
    pub scope: Scope,
    /// Node names never pruned.
    pub keep: Vec<String>,
    /// Calibration data for Taylor and layer importance.
    pub calibration: Option<Labelled>,
    /// Unlabelled calibration inputs by graph-input name: layer dropping of
    /// residual blocks ranks them by block influence on these (see [`blocks`]).
    pub inputs: Option<Vec<(String, Tensor)>>,
    /// Optional recovery fine-tuning.
    pub finetune: Option<Finetune>,
    /// Channels: remove the pruned rows and columns (a smaller dense model).
    /// When false, they are only zeroed and masked (same results, same size).
    pub shrink: bool,
}

impl PruneOptions {
    /// Options for `method` at `sparsity`, everything else default.
    pub fn new(method: PruneMethod, sparsity: f32) -> Self {
        Self {
            method,
            sparsity,
            scope: Scope::Global,
            keep: Vec::new(),
            calibration: None,
            inputs: None,
            finetune: None,
            shrink: true,
        }
    }
}

/// One layer's outcome.
#[derive(Clone, Debug)]
pub struct PrunedLayer {
    /// Node name.
    pub node: String,
    /// Weight parameters before.
    pub params_before: usize,
    /// Non-zero (or physically present) weight parameters after.
    pub params_after: usize,
    /// Bytes of this layer's parameters before.
    pub bytes_before: usize,
    /// Bytes after (masks and indices included).
    pub bytes_after: usize,
}

impl PrunedLayer {
    /// Fraction of weights removed.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.params_after as f64 / self.params_before.max(1) as f64
    }
}

/// What pruning did.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    /// Per pruned layer.
    pub layers: Vec<PrunedLayer>,
    /// Σ ∂L/∂out · out per node over the calibration set (when one was given).
    pub layer_importance: Vec<(String, f64)>,
    /// Nodes replaced by identity.
    pub dropped: Vec<String>,
    /// Mean training loss after each fine-tuning epoch.
    pub finetune_loss: Vec<f64>,
    /// Parameter bytes before.
    pub bytes_before: usize,
    /// Parameter bytes after.
    pub bytes_after: usize,
}

fn bad(msg: String) -> Error {
    OpError::Shape(msg).into()
}

/// A linear layer with a prunable f32 weight.
struct Layer {
    node: usize,
    weight: String,
    bias: Option<String>,
    out: usize,
    inp: usize,
}

fn linear_layers(g: &Graph, keep: &[String]) -> Vec<Layer> {
    g.nodes()
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op.is::<Linear>() && !keep.contains(&n.name))
        .filter_map(|(i, n)| {
            let w = n.inputs.get(1)?;
            let p = g.params().iter().find(|p| &p.name == w)?;
            (p.dtype == DType::F32 && p.shape.len() == 2).then(|| Layer {
                node: i,
                weight: w.clone(),
                bias: n.inputs.get(2).filter(|b| g.is_param(b)).cloned(),
                out: p.shape[0],
                inp: p.shape[1],
            })
        })
        .collect()
}

/// Samples per calibration step.
const CALIB_BATCH: usize = 16;

/// Per-weight Taylor importance Σ_batches |Σ ∂L/∂w · w|, and Σ ∂L/∂out·out
/// per node and per output channel (also summed as absolute batch values).
struct Calibrated {
    /// Taylor importance per weight (already multiplied by the weight).
    grads: HashMap<String, Vec<f32>>,
    node_importance: Vec<(String, f64)>,
    channel_importance: HashMap<String, Vec<f64>>,
}

fn calibrate(g: &Graph, params: &HashMap<String, Tensor>, data: &Labelled) -> Result<Calibrated, Error> {
    let n = data.labels.len();
    let mut grads: HashMap<String, Vec<f32>> = HashMap::new();
    let mut node_imp: HashMap<String, f64> = HashMap::new();
    let mut chan_imp: HashMap<String, Vec<f64>> = HashMap::new();
    let logits = train::logits_value(g).ok_or_else(|| bad("the graph has no outputs".into()))?;
    // Importance is accumulated per mini-batch of CALIB_BATCH samples as
    // |Σ_batch ∂L/∂w · w| (and |Σ ∂L/∂out · out|), summed over batches: the
    // gradient of the whole set is ~0 at a trained optimum, a batch's is not.
    for start in (0..n).step_by(CALIB_BATCH) {
        let end = (start + CALIB_BATCH).min(n);
        let x = data.input.slice_rows(start, end)?;
        let values = train::forward(g, params, vec![(data.input_name.clone(), x)])?;
        let z = values.get(&logits).ok_or_else(|| bad(format!("no value `{logits}`")))?;
        let (_, dz) = train::cross_entropy(z, &data.labels[start..end])?;
        // Sum, not mean, over samples: scale the mean-loss gradient by the batch size.
        let scale = (end - start) as f32;
        let dz = Tensor::from_vec(dz.shape().to_vec(), dz.to_f32_vec().iter().map(|v| v * scale).collect())?;
        let gr = train::backward(g, &values, HashMap::from([(logits.clone(), dz)]))?;
        for p in g.params() {
            let (Some(t), Some(w)) = (gr.get(&p.name), params.get(&p.name)) else {
                continue;
            };
            let acc = grads.entry(p.name.clone()).or_insert_with(|| vec![0.0; t.numel()]);
            for ((a, gv), wv) in acc.iter_mut().zip(t.to_f32_vec()).zip(w.to_f32_vec()) {
                *a += (gv * wv).abs();
            }
        }
        for node in g.nodes() {
            let Some(o) = node.outputs.first() else { continue };
            let (Some(out), Some(d)) = (values.get(o), gr.get(o)) else {
                continue;
            };
            let (ov, dv) = (out.to_f32_vec(), d.to_f32_vec());
            *node_imp.entry(node.name.clone()).or_default() += ov
                .iter()
                .zip(&dv)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
                .abs();
            let c = out.shape().last().copied().unwrap_or(1).max(1);
            let mut batch = vec![0.0f64; c];
            for (i, (a, b)) in ov.iter().zip(&dv).enumerate() {
                batch[i % c] += *a as f64 * *b as f64;
            }
            let acc = chan_imp.entry(node.name.clone()).or_insert_with(|| vec![0.0; c]);
            for (a, b) in acc.iter_mut().zip(batch) {
                *a += b.abs();
            }
        }
    }
    let node_importance = g
        .nodes()
        .iter()
        .filter_map(|nd| node_imp.get(&nd.name).map(|v| (nd.name.clone(), v.abs())))
        .collect();
    Ok(Calibrated {
        grads,
        node_importance,
        channel_importance: chan_imp
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().map(f64::abs).collect()))
            .collect(),
    })
}

/// Nodes fed (through unary activations only) by `node`'s output, if every
/// path ends at a Linear layer taking it as its data input.
fn channel_consumers(g: &Graph, node: usize) -> Option<Vec<usize>> {
    let mut frontier = vec![g.nodes()[node].outputs.first()?.clone()];
    let mut linears = Vec::new();
    while let Some(v) = frontier.pop() {
        if g.outputs().iter().any(|o| o.name == v) {
            return None;
        }
        for (i, n) in g.nodes().iter().enumerate() {
            let Some(pos) = n.inputs.iter().position(|x| x == &v) else {
                continue;
            };
            if n.op.is::<Linear>() && pos == 0 {
                linears.push(i);
            } else if n.op.is::<Unary>() {
                frontier.push(n.outputs.first()?.clone());
            } else {
                return None;
            }
        }
    }
    (!linears.is_empty()).then_some(linears)
}

/// Prunes `model` as `opts` says. `progress(step, total)` reports phases.
pub fn prune(
    model: &Model,
    opts: &PruneOptions,
    mut progress: impl FnMut(&str),
) -> Result<(Model, PruneReport), Error> {
    let g = model.graph();
    for k in &opts.keep {
        if !g.nodes().iter().any(|n| &n.name == k) {
            return Err(bad(format!("--keep names no node `{k}`")));
        }
    }
    let mut params: HashMap<String, Tensor> = g
        .params()
        .iter()
        .filter_map(|p| model.param(&p.name).map(|t| (p.name.clone(), t.clone())))
        .collect();
    let mut report = PruneReport {
        bytes_before: model.param_bytes(),
        ..Default::default()
    };
    if let PruneMethod::Layers { count } = opts.method {
        let blocks = blocks::residual_blocks(g);
        if blocks.len() >= 2 {
            return drop_residual_blocks(model, blocks, opts, count, report);
        }
    }
    let needs_calibration = matches!(
        opts.method,
        PruneMethod::Unstructured(Importance::Taylor)
            | PruneMethod::NM {
                importance: Importance::Taylor,
                ..
            }
            | PruneMethod::Channels(Importance::Taylor)
            | PruneMethod::Layers { .. }
    );
    let calibrated = match &opts.calibration {
        Some(data) => {
            progress("calibrating (forward + backward over the calibration set)");
            Some(calibrate(g, &params, data)?)
        }
        None if needs_calibration => {
            return Err(bad(
                "this method needs labelled calibration data (--calibration DATA)".into()
            ));
        }
        None => None,
    };
    if let Some(c) = &calibrated {
        report.layer_importance = c.node_importance.clone();
    }
    let layers = linear_layers(g, &opts.keep);
    let w_of = |params: &HashMap<String, Tensor>, name: &str| -> Result<Vec<f32>, Error> {
        Ok(params
            .get(name)
            .ok_or_else(|| bad(format!("missing `{name}`")))?
            .to_f32_vec())
    };
    let scores = |params: &HashMap<String, Tensor>, l: &Layer, imp: Importance| -> Result<Vec<f32>, Error> {
        let w = w_of(params, &l.weight)?;
        Ok(match imp {
            Importance::Magnitude => scores::magnitude(&w),
            Importance::Taylor => calibrated
                .as_ref()
                .and_then(|c| c.grads.get(&l.weight))
                .ok_or_else(|| bad(format!("no gradient for `{}`", l.weight)))?
                .clone(),
        })
    };

    // Masks over weights (keep = true), per weight parameter name.
    let mut masks: HashMap<String, Vec<bool>> = HashMap::new();
    match opts.method {
        PruneMethod::Unstructured(imp) => {
            progress("scoring weights");
            let all: Vec<(String, Vec<f32>)> = layers
                .iter()
                .map(|l| Ok((l.weight.clone(), scores(&params, l, imp)?)))
                .collect::<Result<_, Error>>()?;
            match opts.scope {
                Scope::PerLayer => {
                    for (name, s) in all {
                        masks.insert(name, scores::mask_lowest(&s, opts.sparsity));
                    }
                }
                Scope::Global => {
                    let flat: Vec<f32> = all.iter().flat_map(|(_, s)| s.iter().copied()).collect();
                    let keep = scores::mask_lowest(&flat, opts.sparsity);
                    let mut at = 0;
                    for (name, s) in all {
                        masks.insert(name, keep[at..at + s.len()].to_vec());
                        at += s.len();
                    }
                }
            }
        }
        PruneMethod::NM { n, m, importance } => {
            WeightFormat::NM { n, m }.validate()?;
            progress("scoring weights (N:M)");
            for l in &layers {
                let s = scores(&params, l, importance)?;
                masks.insert(l.weight.clone(), scores::mask_nm(&s, l.inp, n as usize, m as usize));
            }
        }
        PruneMethod::Channels(imp) => {
            progress("scoring channels");
            for l in &layers {
                let Some(consumers) = channel_consumers(g, l.node) else {
                    continue;
                };
                let w = w_of(&params, &l.weight)?;
                let chan: Vec<f32> = match imp {
                    Importance::Magnitude => w
                        .chunks(l.inp.max(1))
                        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
                        .collect(),
                    Importance::Taylor => calibrated
                        .as_ref()
                        .and_then(|c| c.channel_importance.get(&g.nodes()[l.node].name))
                        .ok_or_else(|| bad("no channel importance".into()))?
                        .iter()
                        .map(|&v| v as f32)
                        .collect(),
                };
                let keep_ch = scores::mask_lowest(&chan, opts.sparsity);
                // Rows of this layer, columns of each consumer.
                let own = masks
                    .entry(l.weight.clone())
                    .or_insert_with(|| vec![true; l.out * l.inp]);
                for (i, k) in own.iter_mut().enumerate() {
                    *k &= keep_ch[i / l.inp.max(1)];
                }
                if let Some(b) = &l.bias {
                    masks.insert(b.clone(), keep_ch.clone());
                }
                for &c in &consumers {
                    let cw = &g.nodes()[c].inputs[1];
                    let cols = keep_ch.len();
                    let rows = params.get(cw).map(|t| t.numel() / cols.max(1)).unwrap_or(0);
                    let entry = masks.entry(cw.clone()).or_insert_with(|| vec![true; rows * cols]);
                    for (i, k) in entry.iter_mut().enumerate() {
                        *k &= keep_ch[i % cols];
                    }
                }
            }
            if masks.is_empty() {
                return Err(bad("no layer has prunable channels (a linear layer feeding, through activations, only other linear layers)".into()));
            }
        }
        PruneMethod::Layers { count } => {
            let c = calibrated
                .as_ref()
                .ok_or_else(|| bad("layer dropping needs --calibration".into()))?;
            return drop_layers(model, g, params, c, count, report);
        }
    }
    let apply = |params: &mut HashMap<String, Tensor>, masks: &HashMap<String, Vec<bool>>| -> Result<(), Error> {
        for (name, keep) in masks {
            let t = params.get(name).ok_or_else(|| bad(format!("missing `{name}`")))?;
            let v: Vec<f32> = t
                .to_f32_vec()
                .iter()
                .zip(keep)
                .map(|(&w, &k)| if k { w } else { 0.0 })
                .collect();
            let shape = t.shape().to_vec();
            params.insert(name.clone(), Tensor::from_vec(shape, v)?);
        }
        Ok(())
    };
    apply(&mut params, &masks)?;

    if let Some(ft) = &opts.finetune {
        let mut rng = CaseRng::new(0x5eed);
        let n = ft.data.labels.len();
        for epoch in 0..ft.epochs {
            progress(&format!("fine-tuning epoch {}/{}", epoch + 1, ft.epochs));
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, rng.range(0, i));
            }
            let mut total = 0.0;
            let row = ft.data.input.numel() / n.max(1);
            let xs = ft.data.input.to_f32_vec();
            for chunk in order.chunks(ft.batch.max(1)) {
                let mut shape = ft.data.input.shape().to_vec();
                shape[0] = chunk.len();
                let x: Vec<f32> = chunk
                    .iter()
                    .flat_map(|&i| xs[i * row..(i + 1) * row].iter().copied())
                    .collect();
                let labels: Vec<i64> = chunk.iter().map(|&i| ft.data.labels[i]).collect();
                let (loss, _, grads) =
                    train::loss_and_grads(g, &params, (&ft.data.input_name, Tensor::from_vec(shape, x)?), &labels)?;
                total += loss * chunk.len() as f64;
                for p in g.params() {
                    let (Some(gr), Some(w)) = (grads.get(&p.name), params.get(&p.name)) else {
                        continue;
                    };
                    if w.dtype() != DType::F32 {
                        continue;
                    }
                    let v: Vec<f32> = w
                        .to_f32_vec()
                        .iter()
                        .zip(gr.to_f32_vec())
                        .map(|(a, b)| a - ft.lr * b)
                        .collect();
                    let shape = w.shape().to_vec();
                    params.insert(p.name.clone(), Tensor::from_vec(shape, v)?);
                }
                apply(&mut params, &masks)?;
            }
            report.finetune_loss.push(total / n.max(1) as f64);
        }
    }

    progress("writing the pruned model");
    let (graph, params) = match opts.method {
        PruneMethod::NM { n, m, .. } => materialize_nm(g, params, &layers, n, m, &mut report)?,
        PruneMethod::Channels(_) if opts.shrink => materialize_channels(g, params, &masks, &mut report)?,
        _ => materialize_masks(g, params, &layers, &masks, &mut report)?,
    };
    let out = Model::new(graph, params)?;
    report.bytes_after = out.param_bytes();
    Ok((out, report))
}

/// Unstructured: zeroed dense weights plus a bit-packed mask beside each.
fn materialize_masks(
    g: &Graph,
    mut params: HashMap<String, Tensor>,
    layers: &[Layer],
    masks: &HashMap<String, Vec<bool>>,
    report: &mut PruneReport,
) -> Result<(Graph, HashMap<String, Tensor>), Error> {
    let mut infos = g.params().to_vec();
    for l in layers {
        let Some(keep) = masks.get(&l.weight) else { continue };
        let words = l.inp.div_ceil(32);
        let bits: Vec<u8> = keep
            .chunks(l.inp.max(1))
            .flat_map(|r| quant::pack_bits(r, words))
            .collect();
        let name = format!("{}.mask", l.weight);
        let t = Tensor::from_vec(vec![l.out, words * 4], bits)?;
        infos.retain(|p| p.name != name);
        infos.push(ParamInfo {
            name: name.clone(),
            dtype: DType::U8,
            shape: t.shape().to_vec(),
            format: "mask".into(),
        });
        let bytes = l.out * l.inp * 4;
        report.layers.push(PrunedLayer {
            node: g.nodes()[l.node].name.clone(),
            params_before: l.out * l.inp,
            params_after: keep.iter().filter(|&&k| k).count(),
            bytes_before: bytes,
            bytes_after: bytes + t.size_in_bytes(),
        });
        params.insert(name, t);
    }
    let graph = Graph::new(
        g.name(),
        g.inputs().to_vec(),
        g.outputs().to_vec(),
        infos,
        g.nodes().to_vec(),
    )?;
    Ok((graph, params))
}

/// N:M: each pruned Linear becomes a QLinear over the packed N:M weight.
fn materialize_nm(
    g: &Graph,
    mut params: HashMap<String, Tensor>,
    layers: &[Layer],
    n: u8,
    m: u8,
    report: &mut PruneReport,
) -> Result<(Graph, HashMap<String, Tensor>), Error> {
    let format = WeightFormat::NM { n, m };
    let mut infos = g.params().to_vec();
    let mut nodes = g.nodes().to_vec();
    for l in layers {
        let w = params
            .remove(&l.weight)
            .ok_or_else(|| bad(format!("missing `{}`", l.weight)))?;
        let packed = quant::quantize_weight(&format, &w.to_f32_vec(), l.out, l.inp)?;
        infos.retain(|p| p.name != l.weight);
        let node = &mut nodes[l.node];
        let mut inputs = vec![node.inputs[0].clone()];
        let mut bytes_after = 0;
        for (suffix, t) in format.tensor_names().iter().zip(packed) {
            let name = format!("{}.{suffix}", l.weight);
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
        let nz = w.to_f32_vec().iter().filter(|v| **v != 0.0).count();
        report.layers.push(PrunedLayer {
            node: node.name.clone(),
            params_before: l.out * l.inp,
            params_after: nz,
            bytes_before: w.size_in_bytes(),
            bytes_after,
        });
        *node = Node {
            name: node.name.clone(),
            op: Arc::new(QLinear {
                format,
                in_features: l.inp,
                out_features: l.out,
            }),
            inputs,
            outputs: node.outputs.clone(),
        };
    }
    let graph = Graph::new(g.name(), g.inputs().to_vec(), g.outputs().to_vec(), infos, nodes)?;
    Ok((graph, params))
}

/// Channels: rows (and bias entries) whose mask is all-false are removed, and
/// the matching columns of consumers; the result is a smaller dense model.
fn materialize_channels(
    g: &Graph,
    mut params: HashMap<String, Tensor>,
    masks: &HashMap<String, Vec<bool>>,
    report: &mut PruneReport,
) -> Result<(Graph, HashMap<String, Tensor>), Error> {
    let mut infos = g.params().to_vec();
    let mut before: HashMap<String, (usize, usize)> = HashMap::new();
    // Which rows and columns of every masked weight survive.
    for p in g.params() {
        let Some(keep) = masks.get(&p.name) else { continue };
        let t = params
            .get(&p.name)
            .ok_or_else(|| bad(format!("missing `{}`", p.name)))?;
        before.insert(p.name.clone(), (t.numel(), t.size_in_bytes()));
        let v = t.to_f32_vec();
        let (rows, cols) = match p.shape.as_slice() {
            [r, c] => (*r, *c),
            [r] => (*r, 1),
            _ => continue,
        };
        let row_alive: Vec<bool> = (0..rows)
            .map(|r| keep[r * cols..(r + 1) * cols].iter().any(|&k| k))
            .collect();
        let col_alive: Vec<bool> = (0..cols).map(|c| (0..rows).any(|r| keep[r * cols + c])).collect();
        let new: Vec<f32> = (0..rows)
            .filter(|&r| row_alive[r])
            .flat_map(|r| (0..cols).filter(|&c| col_alive[c]).map(move |c| r * cols + c))
            .map(|i| v[i])
            .collect();
        let (nr, nc) = (
            row_alive.iter().filter(|&&a| a).count(),
            col_alive.iter().filter(|&&a| a).count(),
        );
        let shape = if p.shape.len() == 2 { vec![nr, nc] } else { vec![nr] };
        for info in infos.iter_mut().filter(|i| i.name == p.name) {
            info.shape = shape.clone();
        }
        params.insert(p.name.clone(), Tensor::from_vec(shape, new)?);
    }
    let graph = Graph::new(
        g.name(),
        g.inputs().to_vec(),
        g.outputs().to_vec(),
        infos,
        g.nodes().to_vec(),
    )?;
    for node in graph.nodes() {
        let Some(w) = node.inputs.get(1).filter(|w| before.contains_key(*w)) else {
            continue;
        };
        let (n_before, b_before) = before[w];
        let t = &params[w];
        let mut bytes_after = t.size_in_bytes();
        let mut b_before_total = b_before;
        if let Some(b) = node.inputs.get(2).filter(|b| before.contains_key(*b)) {
            bytes_after += params[b].size_in_bytes();
            b_before_total += before[b].1;
        }
        report.layers.push(PrunedLayer {
            node: node.name.clone(),
            params_before: n_before,
            params_after: t.numel(),
            bytes_before: b_before_total,
            bytes_after,
        });
    }
    Ok((graph, params))
}

/// Layer dropping in a model of residual blocks (a transformer's layers):
/// the `count` blocks of least block influence on the calibration inputs go.
fn drop_residual_blocks(
    model: &Model,
    blocks: Vec<blocks::Block>,
    opts: &PruneOptions,
    count: usize,
    mut report: PruneReport,
) -> Result<(Model, PruneReport), Error> {
    let names = || blocks.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ");
    if count >= blocks.len() {
        return Err(bad(format!(
            "asked to drop {count} layers but the model has {} residual blocks: {}",
            blocks.len(),
            names()
        )));
    }
    let inputs = opts.inputs.as_ref().ok_or_else(|| {
        bad(format!(
            "dropping residual blocks ({}) needs calibration inputs (--calibration DATA with tensors named after the model's inputs)",
            names()
        ))
    })?;
    let influence = blocks::block_influence(model, &blocks, inputs)?;
    report.layer_importance = blocks
        .iter()
        .map(|b| b.name.clone())
        .zip(influence.iter().copied())
        .collect();
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by(|&a, &b| influence[a].total_cmp(&influence[b]));
    let mut drop: Vec<usize> = order.into_iter().take(count).collect();
    drop.sort_unstable();
    let chosen: Vec<blocks::Block> = drop.iter().map(|&i| blocks[i].clone()).collect();
    let out = blocks::drop_blocks(model, &chosen)?;
    report.dropped = chosen.into_iter().map(|b| b.name).collect();
    report.bytes_after = out.param_bytes();
    Ok((out, report))
}

/// Layer dropping: the `count` least important nodes whose (single data)
/// input and output have the same type are replaced by identity.
fn drop_layers(
    model: &Model,
    g: &Graph,
    params: HashMap<String, Tensor>,
    c: &Calibrated,
    count: usize,
    mut report: PruneReport,
) -> Result<(Model, PruneReport), Error> {
    let outputs: HashSet<&str> = g.outputs().iter().map(|o| o.name.as_str()).collect();
    let mut candidates: Vec<(f64, usize)> = g
        .nodes()
        .iter()
        .enumerate()
        .filter(|(_, n)| n.outputs.len() == 1 && !outputs.contains(n.outputs[0].as_str()))
        .filter_map(|(i, n)| {
            let data_in = n.inputs.first()?;
            (g.value_type(data_in)? == g.value_type(&n.outputs[0])? && !g.is_param(data_in)).then_some(i)
        })
        .filter_map(|i| {
            c.node_importance
                .iter()
                .find(|(k, _)| k == &g.nodes()[i].name)
                .map(|(_, v)| (*v, i))
        })
        .collect();
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    if candidates.len() < count {
        return Err(bad(format!(
            "asked to drop {count} layers but only {} nodes keep their input's shape (residual blocks): {}",
            candidates.len(),
            candidates
                .iter()
                .map(|(_, i)| g.nodes()[*i].name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let drop: HashSet<usize> = candidates.iter().take(count).map(|(_, i)| *i).collect();
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut nodes = Vec::new();
    for (i, n) in g.nodes().iter().enumerate() {
        let resolve = |v: &String| rename.get(v).cloned().unwrap_or_else(|| v.clone());
        if drop.contains(&i) {
            rename.insert(n.outputs[0].clone(), resolve(&n.inputs[0]));
            report.dropped.push(n.name.clone());
            continue;
        }
        let mut n = n.clone();
        n.inputs = n.inputs.iter().map(resolve).collect();
        nodes.push(n);
    }
    let used: HashSet<&String> = nodes.iter().flat_map(|n| n.inputs.iter()).collect();
    let infos: Vec<ParamInfo> = g.params().iter().filter(|p| used.contains(&p.name)).cloned().collect();
    let kept: HashMap<String, Tensor> = params
        .into_iter()
        .filter(|(k, _)| infos.iter().any(|p| &p.name == k))
        .collect();
    let graph = Graph::new(g.name(), g.inputs().to_vec(), g.outputs().to_vec(), infos, nodes)?;
    let out = Model::new(graph, kept)?;
    report.bytes_before = model.param_bytes();
    report.bytes_after = out.param_bytes();
    Ok((out, report))
}
