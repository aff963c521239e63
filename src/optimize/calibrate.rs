//! Calibration for quantization: runs the f32 model on the CPU over a set of
//! inputs and gathers, for chosen values (the inputs of linear layers), the
//! second-moment matrix `H = Σ x xᵀ` over every row `x` (GPTQ's Hessian) and
//! the largest |x| (a static activation range for W8A8).
//!
//! The forward pass is an ordinary CPU [`Session`] on the graph with the
//! wanted values added as outputs (as [`super::prune::blocks::block_influence`]
//! does). Rows that are padding — where a graph input named `attention_mask`
//! `[batch, seq]` is 0, for values shaped `[batch, seq, features]` — are left
//! out.

use std::collections::HashMap;
#[cfg(feature = "text")]
use std::path::Path;

#[cfg(feature = "text")]
use crate::embed::Embedder;
use crate::error::{Error, OpError, RunError};
use crate::graph::{Graph, ValueInfo};
use crate::linalg::{self, MatRef};
#[cfg(feature = "text")]
use crate::model::bert::TOKEN_TYPE_IDS;
use crate::model::bert::{ATTENTION_MASK, POSITION_IDS};
use crate::model::Model;
use crate::session::{Device, Session};
use crate::tensor::{Dim, Tensor};

/// Calibration inputs: one entry per forward pass, each the graph's inputs by name.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// The forward passes.
    pub passes: Vec<Vec<(String, Tensor)>>,
}

/// Samples per forward pass when a tensor file is split.
pub const PASS_ROWS: usize = 256;

/// Texts per forward pass (padded to the longest; padding rows are masked out).
pub const PASS_TEXTS: usize = 16;

fn bad(msg: String) -> Error {
    OpError::Shape(msg).into()
}

impl Calibration {
    /// Samples from tensors named after the graph's inputs (a model with one
    /// input also takes a tensor named `input`), split along the first axis
    /// into passes of [`PASS_ROWS`]. A missing rank-1 `position_ids` (BERT)
    /// is `0..seq`. Other tensors (labels) are ignored.
    pub fn from_tensors(model: &Model, data: &[(String, Tensor)]) -> Result<Self, Error> {
        let g = model.graph();
        let find = |n: &str| data.iter().find(|(k, _)| k == n).map(|(_, t)| t);
        let mut batched = Vec::new();
        let mut constant = Vec::new();
        for i in g.inputs() {
            let t = find(&i.name).or_else(|| (g.inputs().len() == 1).then(|| find("input")).flatten());
            match t {
                Some(t) if t.rank() >= 1 => batched.push((i.name.clone(), t)),
                _ if i.name == POSITION_IDS && i.ty.rank() == 1 => constant.push(i.name.clone()),
                _ => {
                    return Err(bad(format!(
                        "calibration data has no `{}` tensor (the model's inputs need one each; found {})",
                        i.name,
                        data.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
        let n = batched.first().map(|(_, t)| t.shape()[0]).unwrap_or(0);
        if let Some((name, t)) = batched.iter().find(|(_, t)| t.shape()[0] != n) {
            return Err(bad(format!(
                "calibration tensor `{name}` has {} samples, others {n}",
                t.shape()[0]
            )));
        }
        let seq = batched.iter().find(|(_, t)| t.rank() == 2).map(|(_, t)| t.shape()[1]);
        let mut passes = Vec::new();
        for start in (0..n).step_by(PASS_ROWS) {
            let end = (start + PASS_ROWS).min(n);
            let mut pass = Vec::new();
            for (name, t) in &batched {
                pass.push((name.clone(), t.slice_rows(start, end)?));
            }
            for name in &constant {
                let s = seq.ok_or_else(|| bad(format!("cannot infer `{name}` without a [batch, seq] input")))?;
                pass.push((name.clone(), Tensor::from_vec(vec![s], (0..s as i64).collect())?));
            }
            passes.push(pass);
        }
        Ok(Self { passes })
    }

    /// Texts for a text model (BERT: `input_ids`, `attention_mask`, ...),
    /// tokenized with `tokenizer_json` as [`Embedder`] does, in passes of
    /// [`PASS_TEXTS`] texts of similar token counts.
    #[cfg(feature = "text")]
    pub fn from_texts(model: &Model, tokenizer_json: &Path, texts: &[&str]) -> Result<Self, Error> {
        let embedder = Embedder::new(model, tokenizer_json, Device::Cpu)?;
        let g = model.graph();
        // Texts of similar length share a pass (less padding to compute and mask).
        let counts = embedder.tokenize(texts)?.token_counts;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| counts[i]);
        let sorted: Vec<&str> = order.iter().map(|&i| texts[i]).collect();
        let mut passes = Vec::new();
        for chunk in sorted.chunks(PASS_TEXTS) {
            let batch = embedder.tokenize(chunk)?;
            let shape = batch.input_ids.shape().to_vec();
            let (rows, seq) = (shape[0], shape.get(1).copied().unwrap_or(0));
            let mut pass = vec![
                (crate::model::bert::INPUT_IDS.to_string(), batch.input_ids.clone()),
                (ATTENTION_MASK.to_string(), batch.attention_mask.clone()),
            ];
            for i in g.inputs() {
                if i.name == POSITION_IDS {
                    let shape = if i.ty.rank() == 2 { vec![1, seq] } else { vec![seq] };
                    pass.push((i.name.clone(), Tensor::from_vec(shape, (0..seq as i64).collect())?));
                } else if i.name == TOKEN_TYPE_IDS {
                    pass.push((
                        i.name.clone(),
                        Tensor::from_vec(vec![rows, seq], vec![0i64; rows * seq])?,
                    ));
                }
            }
            passes.push(pass);
        }
        Ok(Self { passes })
    }

    /// Rows (samples or tokens) over all passes, padding excluded.
    pub fn rows(&self) -> usize {
        self.passes
            .iter()
            .map(|p| match p.iter().find(|(k, _)| k == ATTENTION_MASK) {
                Some((_, m)) => m.to_i64_vec().iter().filter(|&&v| v != 0).count(),
                None => p
                    .first()
                    .map(|(_, t)| t.shape().first().copied().unwrap_or(1))
                    .unwrap_or(0),
            })
            .sum()
    }
}

/// One value's statistics over the calibration set.
#[derive(Clone, Debug)]
pub struct InputStats {
    /// Features (the last axis).
    pub features: usize,
    /// Rows seen.
    pub rows: usize,
    /// `Σ x xᵀ`, `features × features`, row-major.
    pub h: Vec<f64>,
    /// The largest |x|.
    pub abs_max: f32,
}

/// Runs `model` on the CPU over `cal` and returns the statistics of each of
/// `values` (f32 values whose last axis is the feature axis).
pub fn input_stats(model: &Model, values: &[String], cal: &Calibration) -> Result<HashMap<String, InputStats>, Error> {
    let g = model.graph();
    let mut outputs: Vec<ValueInfo> = g.outputs().to_vec();
    let mut features = HashMap::new();
    for v in values {
        let ty = g
            .value_type(v)
            .cloned()
            .ok_or_else(|| bad(format!("calibration: no value `{v}` in the graph")))?;
        let f = match ty.shape.last() {
            Some(Dim::Known(d)) => *d,
            _ => return Err(bad(format!("calibration: `{v}` has no known feature size ({ty})"))),
        };
        features.insert(v.clone(), f);
        if !outputs.iter().any(|o| &o.name == v) {
            outputs.push(ValueInfo { name: v.clone(), ty });
        }
    }
    let probe = Graph::new(
        g.name(),
        g.inputs().to_vec(),
        outputs,
        g.params().to_vec(),
        g.nodes().to_vec(),
    )?;
    let params = g
        .params()
        .iter()
        .filter_map(|p| model.param(&p.name).map(|t| (p.name.clone(), t.clone())))
        .collect();
    let session = Session::new(&Model::new(probe, params)?, Device::Cpu)?;
    let mut acc: HashMap<String, (Vec<f32>, usize, f32)> = values
        .iter()
        .map(|v| (v.clone(), (vec![0.0f32; features[v] * features[v]], 0, 0.0f32)))
        .collect();
    for pass in &cal.passes {
        let mask = pass
            .iter()
            .find(|(k, t)| k == ATTENTION_MASK && t.rank() == 2)
            .map(|(_, t)| (t.shape().to_vec(), t.to_i64_vec()));
        let out = session.run(pass.iter().cloned())?;
        for v in values {
            let t = out.get(v).ok_or_else(|| {
                Error::Run(RunError::UnknownOutput {
                    name: v.clone(),
                    expected: String::new(),
                })
            })?;
            let f = features[v];
            let x = t.as_f32()?;
            // Padding rows out: a value [batch, seq, f] under a [batch, seq] mask.
            let kept: Vec<f32>;
            let x = match &mask {
                Some((ms, m)) if t.rank() == 3 && t.shape()[..2] == ms[..] => {
                    kept = x
                        .chunks(f.max(1))
                        .zip(m)
                        .filter(|(_, &keep)| keep != 0)
                        .flat_map(|(r, _)| r.iter().copied())
                        .collect();
                    &kept[..]
                }
                _ => x,
            };
            let rows = x.len() / f.max(1);
            let (h, n, amax) = acc
                .get_mut(v)
                .ok_or_else(|| bad(format!("calibration: no accumulator for `{v}`")))?;
            if rows > 0 {
                linalg::sgemm(MatRef::transposed(x, f, rows), MatRef::row_major(x, rows, f), h, true)?;
            }
            *n += rows;
            *amax = x.iter().fold(*amax, |m, &y| m.max(y.abs()));
        }
    }
    Ok(acc
        .into_iter()
        .map(|(v, (h, rows, abs_max))| {
            let f = features[&v];
            (
                v,
                InputStats {
                    features: f,
                    rows,
                    h: h.into_iter().map(f64::from).collect(),
                    abs_max,
                },
            )
        })
        .collect())
}
