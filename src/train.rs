//! Training utilities on the CPU: a forward pass that keeps every value, a
//! reverse-mode backward pass through the graph (each op's
//! [`Op::backward`](crate::ops::Op::backward)), cross-entropy, and SGD. Used
//! by pruning for Taylor importance and for recovery fine-tuning.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use crate::error::{Error, OpError, RunError};
use crate::graph::Graph;
use crate::tensor::Tensor;

/// Every value of one forward pass, by name (inputs, parameters and node outputs).
pub type Values = HashMap<String, Tensor>;

/// Runs the graph on the CPU fast paths and keeps every value.
pub fn forward(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    inputs: Vec<(String, Tensor)>,
) -> Result<Values, Error> {
    let mut values: Values = params.clone();
    for (n, t) in inputs {
        values.insert(n, t);
    }
    for i in graph.inputs() {
        if !values.contains_key(&i.name) {
            return Err(RunError::MissingInput {
                name: i.name.clone(),
                expected: i.name.clone(),
            }
            .into());
        }
    }
    for node in graph.nodes() {
        let ins: Vec<&Tensor> = node.inputs.iter().filter_map(|v| values.get(v)).collect();
        let outs = node.op.cpu(&ins).map_err(|source| RunError::Node {
            node: node.name.clone(),
            op: node.op.op_type().to_string(),
            source,
        })?;
        for (name, t) in node.outputs.iter().zip(outs) {
            values.insert(name.clone(), t);
        }
    }
    Ok(values)
}

/// Back-propagates `seeds` (∂L/∂value for some values, usually one output)
/// through the graph and returns ∂L/∂v for every value that receives a
/// gradient, parameters included.
pub fn backward(graph: &Graph, values: &Values, seeds: Values) -> Result<Values, Error> {
    let mut grads = seeds;
    for node in graph.nodes().iter().rev() {
        let outs_grads: Vec<Option<&Tensor>> = node.outputs.iter().map(|o| grads.get(o)).collect();
        if outs_grads.iter().all(Option::is_none) {
            continue;
        }
        let node_err = |source: OpError| RunError::Node {
            node: node.name.clone(),
            op: node.op.op_type().to_string(),
            source,
        };
        let ins: Vec<&Tensor> = node.inputs.iter().filter_map(|v| values.get(v)).collect();
        let outs: Vec<&Tensor> = node.outputs.iter().filter_map(|v| values.get(v)).collect();
        let zeros: Vec<Tensor> = outs
            .iter()
            .map(|t| Tensor::zeros(t.dtype(), t.shape().to_vec()))
            .collect();
        let g: Vec<&Tensor> = outs_grads.iter().zip(&zeros).map(|(g, z)| g.unwrap_or(z)).collect();
        let in_grads = node.op.backward(&ins, &outs, &g).map_err(node_err)?;
        for (name, dg) in node.inputs.iter().zip(in_grads) {
            let Some(dg) = dg else { continue };
            match grads.get_mut(name) {
                Some(acc) => {
                    let sum: Vec<f32> = acc
                        .to_f32_vec()
                        .iter()
                        .zip(dg.to_f32_vec())
                        .map(|(a, b)| a + b)
                        .collect();
                    *acc = Tensor::from_vec(dg.shape().to_vec(), sum)?;
                }
                None => {
                    grads.insert(name.clone(), dg);
                }
            }
        }
    }
    Ok(grads)
}

/// Mean cross-entropy of `logits [N, C]` against integer `labels [N]`, and its
/// gradient with respect to the logits (`(softmax − onehot) / N`).
pub fn cross_entropy(logits: &Tensor, labels: &[i64]) -> Result<(f64, Tensor), OpError> {
    let c = logits.shape().last().copied().unwrap_or(1).max(1);
    let z = logits.as_f32()?;
    let n = z.len() / c;
    if labels.len() != n {
        return Err(OpError::Shape(format!(
            "{n} rows of logits but {} labels",
            labels.len()
        )));
    }
    let mut grad = vec![0.0f32; z.len()];
    let mut loss = 0.0f64;
    for (i, row) in z.chunks(c).enumerate() {
        let label = usize::try_from(labels[i]).ok().filter(|&l| l < c).ok_or_else(|| {
            OpError::Shape(format!(
                "label {} of sample {i} is not a class index in 0..{c}",
                labels[i]
            ))
        })?;
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        loss += -(row[label] as f64 - max - sum.ln());
        for (j, &v) in row.iter().enumerate() {
            let p = (v as f64 - max).exp() / sum;
            grad[i * c + j] = ((p - if j == label { 1.0 } else { 0.0 }) / n as f64) as f32;
        }
    }
    Ok((loss / n.max(1) as f64, Tensor::from_vec(logits.shape().to_vec(), grad)?))
}

/// The name of the graph value holding logits: an output named `logits`, or
/// the input of a final Softmax, or the first output.
pub fn logits_value(graph: &Graph) -> Option<String> {
    if let Some(o) = graph.outputs().iter().find(|o| o.name == "logits") {
        return Some(o.name.clone());
    }
    for o in graph.outputs() {
        if let Some(n) = graph
            .nodes()
            .iter()
            .find(|n| n.outputs.contains(&o.name) && n.op.op_type() == "Softmax")
        {
            return n.inputs.first().cloned();
        }
    }
    graph.outputs().first().map(|o| o.name.clone())
}

/// Loss and the gradient of every value for one labelled batch.
pub fn loss_and_grads(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    input: (&str, Tensor),
    labels: &[i64],
) -> Result<(f64, Values, Values), Error> {
    let logits = logits_value(graph).ok_or_else(|| OpError::Shape("the graph has no outputs".into()))?;
    let values = forward(graph, params, vec![(input.0.to_string(), input.1)])?;
    let z = values
        .get(&logits)
        .ok_or_else(|| OpError::Shape(format!("no value `{logits}`")))?;
    let (loss, dz) = cross_entropy(z, labels)?;
    let grads = backward(graph, &values, HashMap::from([(logits, dz)]))?;
    Ok((loss, values, grads))
}
