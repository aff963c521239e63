//! CPU execution: runs each node's fast CPU path (or its reference) in plan
//! order, freeing every intermediate value after its last reader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::RunError;
use crate::graph::Graph;
use crate::ops::Prepared;
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
        Self {
            plan,
            kernels,
            prepared,
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
        if self.kernels == CpuKernels::Reference {
            return;
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
            let outputs = {
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
