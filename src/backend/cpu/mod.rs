//! CPU execution: runs each node's fast CPU path (or its reference) in plan
//! order, freeing every intermediate value after its last reader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::RunError;
use crate::graph::Graph;
use crate::ops::conv::Conv;
use crate::ops::linear::Linear;
use crate::ops::pool::Pool;
use crate::ops::qconv::QConv;
use crate::ops::unary::{Unary, UnaryKind};
use crate::ops::view::Flatten;
use crate::ops::{Op, Prepared};
use crate::plan::{ExecPlan, Source};
use crate::tensor::{check_alloc, checked_bytes, Tensor, ValueType};

/// A run's outputs by name.
type Outputs = BTreeMap<String, Tensor>;

/// Which CPU implementation of each op to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuKernels {
    /// The fast paths (`gemm`, rayon). The default.
    #[default]
    Fast,
    /// The naive references (slow; what the tests trust).
    Reference,
}

/// A graph compiled for the CPU.
#[derive(Clone, Debug)]
pub struct CpuExecutor {
    plan: ExecPlan,
    kernels: CpuKernels,
    /// Per plan step, what the op prepared from its constant inputs.
    prepared: Vec<Option<Prepared>>,
    /// Per plan step, whether it is a Relu or MaxPool folded into the step
    /// that makes its input (see [`CpuExecutor::fuse_relus`] and
    /// [`CpuExecutor::fuse_pools`]): it hands its input on unchanged.
    passthrough: Vec<bool>,
    /// Per plan step, whether it is a Flatten whose input this step reads
    /// last: the tensor moves on with its new shape, not copied.
    reshape_in_place: Vec<bool>,
    /// Input shapes whose every intermediate value was checked against the
    /// allocation limit (see [`CpuExecutor::check_sizes`]).
    checked: Arc<Mutex<HashSet<Vec<Vec<usize>>>>>,
}

/// How many input-shape sets [`CpuExecutor`] remembers as checked.
const CHECKED_SHAPES: usize = 64;

impl CpuExecutor {
    /// Plans the graph.
    pub fn new(graph: &Graph, kernels: CpuKernels) -> Self {
        let plan = ExecPlan::new(graph);
        let prepared = vec![None; plan.steps.len()];
        let passthrough = vec![false; plan.steps.len()];
        let reshape_in_place = vec![false; plan.steps.len()];
        Self {
            plan,
            kernels,
            prepared,
            passthrough,
            reshape_in_place,
            checked: Arc::default(),
        }
    }

    /// Infers every value's shape for these inputs and refuses the run when
    /// one would not fit in memory (an element count that overflows, or more
    /// bytes than [`crate::tensor::alloc_limit`]), before any op allocates.
    /// A set of input shapes that passed is remembered, so a model served
    /// with the same shapes pays this once.
    fn check_sizes(&self, graph: &Graph, params: &HashMap<String, Tensor>, inputs: &[Tensor]) -> Result<(), RunError> {
        let key: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let seen = |set: &HashSet<Vec<Vec<usize>>>| set.contains(&key);
        if self.checked.lock().map(|s| seen(&s)).unwrap_or(false) {
            return Ok(());
        }
        let mut types: Vec<Option<ValueType>> = vec![None; self.plan.slot_count];
        for (&s, t) in self.plan.input_slots.iter().zip(inputs) {
            types[s] = Some(ValueType::known(t.dtype(), t.shape()));
        }
        for step in &self.plan.steps {
            let node = &graph.nodes()[step.node];
            let node_err = |source| RunError::Node {
                node: node.name.clone(),
                op: node.op.op_type().to_string(),
                source,
            };
            let mut ins = Vec::with_capacity(step.inputs.len());
            for src in &step.inputs {
                let t = match src {
                    Source::Slot(s) => types[*s].clone(),
                    Source::Param(p) => params.get(p).map(|t| ValueType::known(t.dtype(), t.shape())),
                };
                // A value this walk cannot type is left to the run itself to report.
                let Some(t) = t else { return Ok(()) };
                ins.push(t);
            }
            let outs = node.op.infer(&ins).map_err(node_err)?;
            for (&s, t) in step.outputs.iter().zip(outs) {
                if let Some(shape) = t.concrete_shape() {
                    let bytes = checked_bytes(t.dtype, &shape).map_err(|e| node_err(e.into()))?;
                    let what = || format!("output `{}` ({} {:?})", self.plan.slot_names[s], t.dtype, shape);
                    check_alloc(what, bytes as u64).map_err(|e| node_err(e.into()))?;
                }
                types[s] = Some(t);
            }
        }
        if let Ok(mut set) = self.checked.lock() {
            if set.len() >= CHECKED_SHAPES {
                set.clear();
            }
            set.insert(key);
        }
        Ok(())
    }

    /// Lets each op of the fast path derive what it needs from the model's
    /// parameters once (see [`crate::ops::Op::prepare_cpu`]), instead of on
    /// every run. Runs must then be given the same `params`. A no-op for the
    /// reference kernels, which stay the plain code the tests trust.
    pub fn prepare(&mut self, graph: &Graph, params: &HashMap<String, Tensor>) {
        self.passthrough.fill(false);
        self.reshape_in_place.fill(false);
        if self.kernels == CpuKernels::Reference {
            return;
        }
        for (i, step) in self.plan.steps.iter().enumerate() {
            let is_flatten = graph.nodes()[step.node].op.downcast_ref::<Flatten>().is_some();
            self.reshape_in_place[i] = is_flatten
                && step.outputs.len() == 1
                && matches!(step.inputs.as_slice(), [Source::Slot(s)] if step.free_after.contains(s));
        }
        for (i, step) in self.plan.steps.iter().enumerate() {
            let consts: Vec<Option<&Tensor>> = step
                .inputs
                .iter()
                .map(|src| match src {
                    Source::Param(p) => params.get(p),
                    Source::Slot(_) => None,
                })
                .collect();
            if consts.iter().any(Option::is_some) {
                self.prepared[i] = graph.nodes()[step.node].op.prepare_cpu(&consts);
            }
        }
        self.fuse_relus(graph);
        self.fuse_pools(graph);
    }

    /// Per value slot, the plan steps that read it (each once), and the
    /// slots that are graph outputs.
    fn readers(&self) -> (HashMap<usize, Vec<usize>>, HashSet<usize>) {
        let mut readers: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, step) in self.plan.steps.iter().enumerate() {
            for src in &step.inputs {
                if let Source::Slot(s) = src {
                    let r = readers.entry(*s).or_default();
                    if r.last() != Some(&i) {
                        r.push(i);
                    }
                }
            }
        }
        let outputs: HashSet<usize> = (self.plan.output_sources.iter())
            .filter_map(|src| match src {
                Source::Slot(s) => Some(*s),
                Source::Param(_) => None,
            })
            .collect();
        (readers, outputs)
    }

    /// Folds each Relu into the prepared Conv, QConv or Linear it reads, when it is
    /// that op's only reader and the op's output is no graph output: the op
    /// applies ReLU to its result ([`Conv::with_relu`], [`QConv::with_relu`], [`Linear::with_relu`])
    /// and the Relu step passes the value on.
    fn fuse_relus(&mut self, graph: &Graph) {
        let (readers, outputs) = self.readers();
        for i in 0..self.plan.steps.len() {
            let (step, Some(prepared)) = (&self.plan.steps[i], &self.prepared[i]) else {
                continue;
            };
            let &[out] = step.outputs.as_slice() else { continue };
            let Some(&[j]) = readers.get(&out).map(Vec::as_slice) else {
                continue;
            };
            let next = &self.plan.steps[j];
            let is_relu = graph.nodes()[next.node]
                .op
                .downcast_ref::<Unary>()
                .is_some_and(|u| matches!(u.kind, UnaryKind::Relu));
            if outputs.contains(&out) || !is_relu || next.inputs != [Source::Slot(out)] || next.outputs.len() != 1 {
                continue;
            }
            if let Some(fused) = with_relu(graph.nodes()[step.node].op.as_ref(), prepared) {
                self.prepared[i] = Some(fused);
                self.passthrough[j] = true;
            }
        }
    }

    /// Folds each 2-D MaxPool (without `Indices`) into the prepared Conv
    /// whose result it alone reads, directly or through a Relu already
    /// folded into that Conv, when no value between them is a graph output:
    /// the Conv returns the pooled result ([`Conv::with_max_pool`]) and the
    /// MaxPool step passes it on.
    fn fuse_pools(&mut self, graph: &Graph) {
        let (readers, outputs) = self.readers();
        let sole_reader = |s: usize| match readers.get(&s).map(Vec::as_slice) {
            Some(&[j]) if !outputs.contains(&s) => Some(j),
            _ => None,
        };
        for i in 0..self.plan.steps.len() {
            let (step, Some(prepared)) = (&self.plan.steps[i], &self.prepared[i]) else {
                continue;
            };
            let Some(conv) = graph.nodes()[step.node].op.downcast_ref::<Conv>() else {
                continue;
            };
            let &[mut last] = step.outputs.as_slice() else { continue };
            let Some(mut j) = sole_reader(last) else { continue };
            // Through the Relu this Conv applies already.
            if self.passthrough[j] {
                let &[out] = self.plan.steps[j].outputs.as_slice() else {
                    continue;
                };
                last = out;
                let Some(k) = sole_reader(last) else { continue };
                j = k;
            }
            let next = &self.plan.steps[j];
            let Some(pool) = graph.nodes()[next.node].op.downcast_ref::<Pool>() else {
                continue;
            };
            if self.passthrough[j] || next.inputs != [Source::Slot(last)] || next.outputs.len() != 1 {
                continue;
            }
            if let Some(fused) = conv.with_max_pool(prepared, pool) {
                self.prepared[i] = Some(fused);
                self.passthrough[j] = true;
            }
        }
    }

    /// The plan.
    pub fn plan(&self) -> &ExecPlan {
        &self.plan
    }

    /// Runs the graph. `inputs` are in graph-input order, already checked
    /// against the graph's input types.
    pub fn run(
        &self,
        graph: &Graph,
        params: &HashMap<String, Tensor>,
        inputs: Vec<Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, RunError> {
        self.run_inner(graph, params, inputs, None)
    }

    /// [`CpuExecutor::run`] that also times each plan step: the wall time of
    /// every node's kernel, as `(node index, time)` in plan order.
    pub fn run_timed(
        &self,
        graph: &Graph,
        params: &HashMap<String, Tensor>,
        inputs: Vec<Tensor>,
    ) -> Result<(Outputs, Vec<(usize, Duration)>), RunError> {
        let mut times = Vec::with_capacity(self.plan.steps.len());
        let out = self.run_inner(graph, params, inputs, Some(&mut times))?;
        Ok((out, times))
    }

    fn run_inner(
        &self,
        graph: &Graph,
        params: &HashMap<String, Tensor>,
        inputs: Vec<Tensor>,
        mut times: Option<&mut Vec<(usize, Duration)>>,
    ) -> Result<BTreeMap<String, Tensor>, RunError> {
        self.check_sizes(graph, params, &inputs)?;
        let mut slots: Vec<Option<Tensor>> = vec![None; self.plan.slot_count];
        for (&s, t) in self.plan.input_slots.iter().zip(inputs) {
            slots[s] = Some(t);
        }
        for (i, step) in self.plan.steps.iter().enumerate() {
            let node = &graph.nodes()[step.node];
            let node_err = |source| RunError::Node {
                node: node.name.clone(),
                op: node.op.op_type().to_string(),
                source,
            };
            let outputs = if self.reshape_in_place[i] {
                let t0 = times.is_some().then(Instant::now);
                let t = reshape_moved(node.op.as_ref(), &step.inputs[0], &mut slots).map_err(node_err)?;
                if let (Some(times), Some(t0)) = (times.as_deref_mut(), t0) {
                    times.push((step.node, t0.elapsed()));
                }
                vec![t]
            } else if self.passthrough[i] {
                // A Relu or MaxPool its producer already applied: its only input moves on.
                let t0 = times.is_some().then(Instant::now);
                let moved = match &step.inputs[0] {
                    Source::Slot(s) => slots[*s].take(),
                    Source::Param(_) => None,
                };
                let t = moved.ok_or_else(|| {
                    node_err(crate::error::OpError::Shape(
                        "internal error: a fused step lost its input".into(),
                    ))
                })?;
                if let (Some(times), Some(t0)) = (times.as_deref_mut(), t0) {
                    times.push((step.node, t0.elapsed()));
                }
                vec![t]
            } else {
                let mut ins: Vec<&Tensor> = Vec::with_capacity(step.inputs.len());
                for src in &step.inputs {
                    ins.push(fetch(src, &slots, params, &self.plan.slot_names).map_err(node_err)?);
                }
                let t0 = times.is_some().then(Instant::now);
                let outputs = match (self.kernels, &self.prepared[i]) {
                    (CpuKernels::Fast, Some(p)) => node.op.cpu_prepared(&ins, p),
                    (CpuKernels::Fast, None) => node.op.cpu(&ins),
                    (CpuKernels::Reference, _) => node.op.reference(&ins),
                }
                .map_err(node_err)?;
                if let (Some(times), Some(t0)) = (times.as_deref_mut(), t0) {
                    times.push((step.node, t0.elapsed()));
                }
                outputs
            };
            for (&s, t) in step.outputs.iter().zip(outputs) {
                slots[s] = Some(t);
            }
            for &s in &step.free_after {
                slots[s] = None;
            }
        }
        let mut out = BTreeMap::new();
        for (info, src) in graph.outputs().iter().zip(&self.plan.output_sources) {
            let t = match src {
                Source::Slot(s) => slots[*s].take(),
                Source::Param(p) => params.get(p).cloned(),
            };
            let t = t.ok_or_else(|| RunError::UnknownOutput {
                name: info.name.clone(),
                expected: String::new(),
            })?;
            out.insert(info.name.clone(), t);
        }
        Ok(out)
    }
}

/// The tensor in `src`'s slot, moved out and given the shape `op` (a
/// one-output shape op such as Flatten) infers for it.
fn reshape_moved(op: &dyn Op, src: &Source, slots: &mut [Option<Tensor>]) -> Result<Tensor, crate::error::OpError> {
    let lost = || crate::error::OpError::Shape("internal error: a reshape lost its input".into());
    let Source::Slot(s) = src else { return Err(lost()) };
    let t = slots[*s].take().ok_or_else(lost)?;
    let vt = op.infer(&[ValueType::known(t.dtype(), t.shape())])?;
    let shape: Option<Vec<usize>> = vt.first().and_then(|v| v.shape.iter().map(|d| d.known()).collect());
    let shape = shape.ok_or_else(|| crate::error::OpError::Shape("a reshape without a concrete shape".into()))?;
    Ok(t.reshape(shape)?)
}

/// `prepared` for `op` with ReLU folded in, for the ops that take it.
fn with_relu(op: &dyn Op, prepared: &Prepared) -> Option<Prepared> {
    if let Some(conv) = op.downcast_ref::<Conv>() {
        return conv.with_relu(prepared);
    }
    if let Some(conv) = op.downcast_ref::<QConv>() {
        return conv.with_relu(prepared);
    }
    op.downcast_ref::<Linear>()?.with_relu(prepared)
}

fn fetch<'a>(
    src: &Source,
    slots: &'a [Option<Tensor>],
    params: &'a HashMap<String, Tensor>,
    names: &[String],
) -> Result<&'a Tensor, crate::error::OpError> {
    let missing = |what: &str| crate::error::OpError::Shape(format!("internal error: value `{what}` is not available"));
    match src {
        Source::Slot(s) => slots[*s].as_ref().ok_or_else(|| missing(&names[*s])),
        Source::Param(p) => params.get(p).ok_or_else(|| missing(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Node, ParamInfo, ValueInfo};
    use crate::ops::conv::{AutoPad, Window};
    use crate::ops::CaseRng;
    use crate::tensor::DType;

    fn node(name: &str, op: Arc<dyn Op>, inputs: &[&str], output: &str) -> Node {
        Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.into()],
        }
    }

    /// The graph of `nodes` over f32 `params`, with `outputs` typed as a
    /// probe graph without outputs infers them.
    fn graph_with_outputs(
        name: &str,
        inputs: Vec<ValueInfo>,
        outputs: &[&str],
        params: &HashMap<String, Tensor>,
        nodes: Vec<Node>,
    ) -> Graph {
        let infos: Vec<ParamInfo> = params
            .iter()
            .map(|(n, t)| ParamInfo::plain(n.clone(), DType::F32, t.shape().to_vec()))
            .collect();
        let probe =
            Graph::new("probe", inputs.clone(), vec![], infos.clone(), nodes.clone()).unwrap_or_else(|e| panic!("{e}"));
        let outs = outputs
            .iter()
            .map(|&o| ValueInfo {
                name: o.into(),
                ty: probe
                    .value_type(o)
                    .cloned()
                    .unwrap_or_else(|| panic!("no type for {o}")),
            })
            .collect();
        Graph::new(name, inputs, outs, infos, nodes).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Conv → Relu and Linear → Relu (with a second Relu on the Linear when
    /// `two_readers`), the given values as outputs; the fast executor against
    /// the reference, and which Relu steps were folded.
    fn run(outputs: &[&str], two_readers: bool) -> Vec<bool> {
        let mut rng = CaseRng::new(5);
        let relu = || -> Arc<dyn Op> { Arc::new(Unary { kind: UnaryKind::Relu }) };
        let conv = Conv {
            window: Window {
                kernel: vec![],
                strides: vec![1, 2],
                dilations: vec![1, 1],
                pads: vec![1, 1, 1, 0],
                auto_pad: AutoPad::NotSet,
                ceil_mode: false,
            },
            group: 1,
        };
        let mut nodes = vec![
            node("conv", Arc::new(conv), &["x", "cw", "cb"], "c"),
            node("relu_c", relu(), &["c"], "r"),
            node("fc", Arc::new(Linear), &["z", "lw", "lb"], "l"),
            node("relu_l", relu(), &["l"], "s"),
        ];
        if two_readers {
            nodes.push(node("relu_l2", relu(), &["l"], "s2"));
        }
        let params: HashMap<String, Tensor> = [
            ("cw", rng.tensor(&[7, 3, 3, 3], -1.0, 1.0)),
            ("cb", rng.tensor(&[7], -1.0, 1.0)),
            ("lw", rng.tensor(&[5, 9], -1.0, 1.0)),
            ("lb", rng.tensor(&[5], -1.0, 1.0)),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        let inputs = vec![rng.tensor(&[2, 3, 6, 5], -1.0, 1.0), rng.tensor(&[1, 9], -1.0, 1.0)];
        let info = |name: &str, t: &Tensor| ValueInfo {
            name: name.into(),
            ty: ValueType::known(DType::F32, t.shape()),
        };
        let graph = graph_with_outputs(
            "fuse",
            vec![info("x", &inputs[0]), info("z", &inputs[1])],
            outputs,
            &params,
            nodes,
        );
        let mut fast = CpuExecutor::new(&graph, CpuKernels::Fast);
        fast.prepare(&graph, &params);
        let reference = CpuExecutor::new(&graph, CpuKernels::Reference);
        let got = fast
            .run(&graph, &params, inputs.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let want = reference.run(&graph, &params, inputs).unwrap_or_else(|e| panic!("{e}"));
        for (name, w) in &want {
            let g = got[name].as_f32().unwrap_or_else(|e| panic!("{e}"));
            for (a, b) in g.iter().zip(w.as_f32().unwrap_or_else(|e| panic!("{e}"))) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{name}: {a} vs {b}");
            }
        }
        fast.passthrough.clone()
    }

    #[test]
    fn relu_folds_into_its_only_producer() {
        // Steps: conv, relu_c, fc, relu_l (plan order follows the nodes).
        assert_eq!(run(&["r", "s"], false), [false, true, false, true]);
        // A producer's output that is also a graph output keeps its Relu.
        assert_eq!(run(&["r", "s", "c"], false), [false, false, false, true]);
        // Two readers: the Linear's Relus both run.
        assert_eq!(run(&["r", "s", "s2"], true), [false, true, false, false, false]);
    }

    /// Conv → Flatten → Linear with `outputs` as the graph's outputs: the
    /// fast executor against the reference, and which steps reshape in place.
    fn run_flatten(outputs: &[&str]) -> Vec<bool> {
        let mut rng = CaseRng::new(9);
        let conv = Conv {
            window: Window {
                kernel: vec![],
                strides: vec![1, 2],
                dilations: vec![1, 1],
                pads: vec![1, 1, 1, 0],
                auto_pad: AutoPad::NotSet,
                ceil_mode: false,
            },
            group: 1,
        };
        let nodes = vec![
            node("conv", Arc::new(conv), &["x", "cw", "cb"], "c"),
            node("flatten", Arc::new(Flatten { axis: 1 }), &["c"], "f"),
            node("fc", Arc::new(Linear), &["f", "lw", "lb"], "l"),
        ];
        // x [2, 3, 6, 5] → c [2, 7, 6, 2] → f [2, 84] → l [2, 5].
        let params: HashMap<String, Tensor> = [
            ("cw", rng.tensor(&[7, 3, 3, 3], -1.0, 1.0)),
            ("cb", rng.tensor(&[7], -1.0, 1.0)),
            ("lw", rng.tensor(&[5, 84], -1.0, 1.0)),
            ("lb", rng.tensor(&[5], -1.0, 1.0)),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        let x = rng.tensor(&[2, 3, 6, 5], -1.0, 1.0);
        let x_info = ValueInfo {
            name: "x".into(),
            ty: ValueType::known(DType::F32, x.shape()),
        };
        let graph = graph_with_outputs("flatten", vec![x_info], outputs, &params, nodes);
        fast_against_reference(&graph, &params, x).reshape_in_place
    }

    /// Runs `graph` on `x` with the fast executor (prepared) and the
    /// reference one, asserts every output agrees (NaN where the reference
    /// has NaN, else within 1e-5 relative), and returns the fast executor.
    fn fast_against_reference(graph: &Graph, params: &HashMap<String, Tensor>, x: Tensor) -> CpuExecutor {
        let mut fast = CpuExecutor::new(graph, CpuKernels::Fast);
        fast.prepare(graph, params);
        let reference = CpuExecutor::new(graph, CpuKernels::Reference);
        let got = fast
            .run(graph, params, vec![x.clone()])
            .unwrap_or_else(|e| panic!("{e}"));
        let want = reference.run(graph, params, vec![x]).unwrap_or_else(|e| panic!("{e}"));
        for (name, w) in &want {
            assert_eq!(got[name].shape(), w.shape(), "{name}");
            let g = got[name].as_f32().unwrap_or_else(|e| panic!("{e}"));
            for (a, b) in g.iter().zip(w.as_f32().unwrap_or_else(|e| panic!("{e}"))) {
                assert!(
                    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{name}: {a} vs {b}"
                );
            }
        }
        fast
    }

    #[test]
    fn flatten_moves_a_value_it_reads_last() {
        assert_eq!(run_flatten(&["l"]), [false, true, false]);
        assert_eq!(run_flatten(&["l", "f"]), [false, true, false]);
        // The Conv's output is also a graph output: Flatten copies it.
        assert_eq!(run_flatten(&["l", "c"]), [false, false, false]);
    }

    /// Conv (7×3×3, pad 1; with ReLU when `relu`) → MaxPool (`pads`, 2×2
    /// stride 2) → Flatten, with `outputs` as the graph's outputs, on
    /// `[2, 3, h, w]` with a NaN in the input: the fast executor against the
    /// reference, and which steps pass their input on.
    fn run_pool(relu: bool, pads: [usize; 4], h: usize, w: usize, outputs: &[&str]) -> Vec<bool> {
        let mut rng = CaseRng::new(11);
        let window = |kernel: Vec<usize>, strides: Vec<usize>, pads: Vec<usize>| Window {
            kernel,
            strides,
            dilations: vec![1, 1],
            pads,
            auto_pad: AutoPad::NotSet,
            ceil_mode: false,
        };
        let conv = Conv {
            window: window(vec![], vec![1, 1], vec![1, 1, 1, 1]),
            group: 1,
        };
        let pool = Pool {
            max: true,
            window: window(vec![2, 2], vec![2, 2], pads.to_vec()),
            count_include_pad: false,
            indices: false,
            column_major: false,
        };
        let mut nodes = vec![node("conv", Arc::new(conv), &["x", "cw", "cb"], "c")];
        let mut last = "c";
        if relu {
            nodes.push(node("relu", Arc::new(Unary { kind: UnaryKind::Relu }), &["c"], "r"));
            last = "r";
        }
        nodes.push(node("pool", Arc::new(pool), &[last], "p"));
        nodes.push(node("flatten", Arc::new(Flatten { axis: 1 }), &["p"], "f"));
        let params: HashMap<String, Tensor> = [
            ("cw", rng.tensor(&[7, 3, 3, 3], -1.0, 1.0)),
            ("cb", rng.tensor(&[7], -1.0, 1.0)),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        let mut x = rng
            .tensor(&[2, 3, h, w], -1.0, 1.0)
            .as_f32()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_vec();
        x[5] = f32::NAN;
        let x = Tensor::from_vec(vec![2, 3, h, w], x).unwrap_or_else(|e| panic!("{e}"));
        let x_info = ValueInfo {
            name: "x".into(),
            ty: ValueType::known(DType::F32, x.shape()),
        };
        let graph = graph_with_outputs("pool", vec![x_info], outputs, &params, nodes);
        fast_against_reference(&graph, &params, x).passthrough
    }

    #[test]
    fn max_pool_folds_into_its_conv() {
        // Steps: conv, relu, pool, flatten.
        assert_eq!(run_pool(true, [0; 4], 9, 8, &["f"]), [false, true, true, false]);
        assert_eq!(run_pool(false, [0; 4], 8, 7, &["f"]), [false, true, false]);
        // A padded pool folds too (the pool's own path runs after the Conv).
        assert_eq!(run_pool(true, [1, 0, 1, 1], 7, 6, &["f"]), [false, true, true, false]);
        // A value between them that is a graph output keeps the pool apart.
        assert_eq!(run_pool(true, [0; 4], 9, 8, &["f", "r"]), [false, true, false, false]);
        assert_eq!(run_pool(false, [0; 4], 9, 8, &["f", "c"]), [false, false, false]);
    }
}
