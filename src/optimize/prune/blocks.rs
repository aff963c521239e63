//! Residual blocks for layer dropping: groups of nodes that share a numbered
//! name prefix (`encoder.layer.3.…`, `/encoder/layer.3/…`, `blocks.3.…`),
//! read the residual stream from one value outside the group and hand one
//! value of the same type to the rest of the graph. Dropping a block
//! replaces its output by its input. Block importance without labels is the
//! block influence of ShortGPT: `1 − cos(x_in, x_out)`, averaged over the
//! rows (tokens) of calibration inputs.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{Error, OpError};
use crate::graph::{Graph, ParamInfo, ValueInfo};
use crate::model::Model;
use crate::session::{Device, Session};
use crate::tensor::Tensor;

/// One residual block.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// The shared name prefix, e.g. `encoder.layer.3`.
    pub name: String,
    /// Its nodes' names, in graph order.
    pub nodes: Vec<String>,
    /// The residual stream entering the block.
    pub input: String,
    /// The value the block hands on (same type as `input`).
    pub output: String,
}

/// The prefix of `name` up to and including its first all-digit component
/// (components split at `.` and `/`), if any.
fn numbered_prefix(name: &str) -> Option<&str> {
    let mut start = 0;
    for (i, c) in name.char_indices().chain(std::iter::once((name.len(), '.'))) {
        if c == '.' || c == '/' {
            let comp = &name[start..i];
            if !comp.is_empty() && comp.bytes().all(|b| b.is_ascii_digit()) && start > 0 {
                return Some(&name[..i]);
            }
            // `layer.3` inside a `/`-separated name (`/encoder/layer.3/…`) counts too.
            start = i + 1;
        }
    }
    None
}

/// The graph's residual blocks, in graph order (empty when it has none).
pub fn residual_blocks(g: &Graph) -> Vec<Block> {
    let mut groups: BTreeMap<usize, (String, Vec<usize>)> = BTreeMap::new();
    let mut first: HashMap<String, usize> = HashMap::new();
    for (i, n) in g.nodes().iter().enumerate() {
        if let Some(p) = numbered_prefix(&n.name) {
            let f = *first.entry(p.to_string()).or_insert(i);
            groups.entry(f).or_insert_with(|| (p.to_string(), Vec::new())).1.push(i);
        }
    }
    let graph_outputs: HashSet<&str> = g.outputs().iter().map(|o| o.name.as_str()).collect();
    let mut blocks = Vec::new();
    for (_, (name, idx)) in groups {
        let members: HashSet<usize> = idx.iter().copied().collect();
        let produced: HashSet<&str> = idx
            .iter()
            .flat_map(|&i| g.nodes()[i].outputs.iter().map(String::as_str))
            .collect();
        let mut ext_in: Vec<&str> = Vec::new();
        for &i in &idx {
            for v in &g.nodes()[i].inputs {
                if !produced.contains(v.as_str()) && !g.is_param(v) && !ext_in.contains(&v.as_str()) {
                    ext_in.push(v);
                }
            }
        }
        let mut ext_out: HashSet<&str> = HashSet::new();
        for (j, n) in g.nodes().iter().enumerate() {
            if members.contains(&j) {
                continue;
            }
            for v in &n.inputs {
                if produced.contains(v.as_str()) {
                    ext_out.insert(v);
                }
            }
        }
        for o in &produced {
            if graph_outputs.contains(o) {
                ext_out.insert(o);
            }
        }
        if ext_out.len() != 1 {
            continue;
        }
        let Some(&out) = ext_out.iter().next() else { continue };
        let ty = g.value_type(out);
        let same: Vec<&str> = ext_in.into_iter().filter(|v| g.value_type(v) == ty).collect();
        if same.len() != 1 {
            continue;
        }
        blocks.push(Block {
            name,
            nodes: idx.iter().map(|&i| g.nodes()[i].name.clone()).collect(),
            input: same[0].to_string(),
            output: out.to_string(),
        });
    }
    blocks
}

/// Block influence `1 − cos(x_in, x_out)` per block, averaged over the rows
/// (last axis = features) of a forward pass on `inputs` on the CPU. Rows
/// that are zero in both (padding after masking) are skipped.
pub fn block_influence(model: &Model, blocks: &[Block], inputs: &[(String, Tensor)]) -> Result<Vec<f64>, Error> {
    let g = model.graph();
    let mut outputs: Vec<ValueInfo> = g.outputs().to_vec();
    for b in blocks {
        for v in [&b.input, &b.output] {
            if !outputs.iter().any(|o| &o.name == v) {
                let ty = g
                    .value_type(v)
                    .cloned()
                    .ok_or_else(|| Error::Op(OpError::Shape(format!("no value `{v}`"))))?;
                outputs.push(ValueInfo { name: v.clone(), ty });
            }
        }
    }
    let probe = Graph::new(
        g.name(),
        g.inputs().to_vec(),
        outputs,
        g.params().to_vec(),
        g.nodes().to_vec(),
    )?;
    let params: HashMap<String, Tensor> = g
        .params()
        .iter()
        .filter_map(|p| model.param(&p.name).map(|t| (p.name.clone(), t.clone())))
        .collect();
    let probe = Model::new(probe, params)?;
    let session = Session::new(&probe, Device::Cpu)?;
    let values = session.run(inputs.iter().cloned())?;
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        let (x, y) = (&values[&b.input], &values[&b.output]);
        let d = x.shape().last().copied().unwrap_or(1).max(1);
        let (xv, yv) = (x.to_f32_vec(), y.to_f32_vec());
        let (mut sum, mut rows) = (0.0f64, 0usize);
        for (a, c) in xv.chunks(d).zip(yv.chunks(d)) {
            let c = crate::embed::cosine(a, c) as f64;
            if a.iter().all(|v| *v == 0.0) {
                continue;
            }
            sum += 1.0 - c;
            rows += 1;
        }
        out.push(sum / rows.max(1) as f64);
    }
    Ok(out)
}

/// The model with the named blocks removed (each block's output replaced by its input).
pub fn drop_blocks(model: &Model, blocks: &[Block]) -> Result<Model, Error> {
    let g = model.graph();
    let dropped: HashSet<&str> = blocks.iter().flat_map(|b| b.nodes.iter().map(String::as_str)).collect();
    let mut rename: HashMap<String, String> = HashMap::new();
    for b in blocks {
        let src = rename.get(&b.input).cloned().unwrap_or_else(|| b.input.clone());
        rename.insert(b.output.clone(), src);
    }
    // Chains of dropped blocks: resolve to the first surviving value.
    let resolve = |v: &String| {
        let mut v = v.clone();
        while let Some(n) = rename.get(&v) {
            v = n.clone();
        }
        v
    };
    let mut nodes = Vec::new();
    for n in g.nodes() {
        if dropped.contains(n.name.as_str()) {
            continue;
        }
        let mut n = n.clone();
        n.inputs = n.inputs.iter().map(resolve).collect();
        nodes.push(n);
    }
    let mut outputs = g.outputs().to_vec();
    for o in &mut outputs {
        if rename.contains_key(&o.name) {
            return Err(Error::Op(OpError::Shape(format!(
                "block output `{}` is a graph output; dropping it would rename the output",
                o.name
            ))));
        }
    }
    let used: HashSet<&String> = nodes.iter().flat_map(|n| n.inputs.iter()).collect();
    let infos: Vec<ParamInfo> = g.params().iter().filter(|p| used.contains(&p.name)).cloned().collect();
    let params: HashMap<String, Tensor> = infos
        .iter()
        .filter_map(|p| model.param(&p.name).map(|t| (p.name.clone(), t.clone())))
        .collect();
    let graph = Graph::new(g.name(), g.inputs().to_vec(), outputs, infos, nodes)?;
    Ok(Model::new(graph, params)?)
}

#[cfg(test)]
mod tests {
    use super::numbered_prefix;

    #[test]
    fn prefixes() {
        assert_eq!(
            numbered_prefix("encoder.layer.3.attention.self"),
            Some("encoder.layer.3")
        );
        assert_eq!(numbered_prefix("/encoder/layer.3/q"), Some("/encoder/layer.3"));
        assert_eq!(numbered_prefix("blocks.10"), Some("blocks.10"));
        assert_eq!(numbered_prefix("fc1"), None);
        assert_eq!(numbered_prefix("3.x"), None);
    }
}
