//! Pure planning for the GPU backend: for one graph on one device (described
//! as plain data, [`Target`]) and one set of input shapes, the concrete type
//! of every value, which nodes fuse, where each node runs and why, which
//! device buffer every intermediate value lives in (reused by lifetime), and
//! how the run splits into *segments* with their uploads and read-backs.
//! Nothing here touches a device, so all of it is tested without an adapter;
//! `runtime.rs` turns a [`ShapePlan`] into device objects and runs it.
//!
//! A segment is: uploads, then every dispatch of the segment in one command
//! encoder and one submit, then read-backs, then the nodes placed on the
//! CPU. A graph that runs entirely on the GPU is one segment; a node that
//! falls back to the CPU ends its segment (the values it needs are read
//! back) and the next GPU node starts another (its host inputs are uploaded).

mod buffers;
mod builder;
mod report;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::error::{Error, OpError, RunError};
use crate::graph::{Graph, Node};
use crate::ops::linear::Linear;
use crate::ops::matmul::MatMul;
use crate::ops::qlinear::QLinear;
use crate::ops::unary::{Unary, UnaryKind};
use crate::ops::Op;
use crate::plan::{ExecPlan, Source};
use crate::tensor::{DType, Tensor, ValueType};

use super::context::PipelineKey;
use super::error::GpuError;
use super::kernels::Caps;

pub(crate) use buffers::padded;
use builder::Builder;
pub use report::{BufferReport, NodeReport, Placement, PlanReport};

/// What planning knows about the device and the options, as plain data.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// What the kernels may use.
    pub caps: Caps,
    /// Adapter name (in errors).
    pub adapter: String,
    /// Adapter name and backend (in the report).
    pub adapter_label: String,
    /// The largest storage buffer a kernel may bind, in bytes.
    pub max_binding: u64,
    /// The largest buffer the device may create, in bytes.
    pub max_buffer: u64,
    /// Bytes all device buffers of one plan may take together (weights,
    /// intermediates, read-back copies): the allocation limit.
    pub budget: u64,
    /// Op types to run on the CPU even where a GPU kernel exists.
    pub cpu_ops: Vec<String>,
    /// Fold an activation that follows a matmul into its epilogue.
    pub fuse_activations: bool,
}

/// Concrete dtype and shape of a value.
pub(crate) type SlotType = (DType, Vec<usize>);

/// Bytes of a value of this type; `u64::MAX` where the count overflows
/// (so that it is over every limit).
pub(crate) fn size_of(t: &SlotType) -> u64 {
    crate::tensor::checked_bytes(t.0, &t.1).map_or(u64::MAX, |b| b as u64)
}

impl Target {
    /// The largest value one storage buffer may hold: the binding limit and
    /// the buffer-size limit, whichever is smaller.
    pub fn max_value(&self) -> u64 {
        self.max_binding.min(self.max_buffer)
    }

    /// Why a buffer of `bytes` for `value` cannot be created or bound.
    pub fn buffer_error(&self, value: String, bytes: u64) -> Option<GpuError> {
        if bytes > self.max_binding {
            return Some(GpuError::TooLarge {
                value,
                bytes,
                limit: self.max_binding,
                adapter: self.adapter.clone(),
            });
        }
        (bytes > self.max_buffer).then(|| GpuError::OverBudget {
            value: format!("value `{value}`"),
            bytes,
            budget: format!("adapter `{}`'s max_buffer_size", self.adapter),
            limit: self.max_buffer,
        })
    }
}

/// A resource bound to a dispatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Res {
    /// An intermediate buffer, by index.
    Storage(usize),
    /// A weight held on the device, by name.
    Param(String),
    /// The zero buffer standing in for an absent optional input.
    Zeros,
}

/// One compute dispatch: pipeline, parameters, grid, and what it binds.
#[derive(Clone, Debug)]
pub(crate) struct DispatchPlan {
    /// The node it serves (labels its device objects).
    pub label: String,
    /// The pipeline.
    pub key: PipelineKey,
    /// The uniform parameters.
    pub params: Vec<u32>,
    /// Workgroup grid.
    pub groups: [u32; 3],
    /// The buffer it writes (binding 0).
    pub out: usize,
    /// What it reads (bindings 2..).
    pub inputs: Vec<Res>,
}

/// A value copied from the device to the host after a segment's commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Readback {
    /// The value.
    pub slot: usize,
    /// The buffer it lives in.
    pub storage: usize,
}

/// Uploads, one submit of dispatches, read-backs, then CPU steps.
#[derive(Clone, Debug, Default)]
pub(crate) struct Segment {
    /// (slot, storage): host values written before the segment's commands.
    pub uploads: Vec<(usize, usize)>,
    /// Range into [`ShapePlan::dispatches`].
    pub dispatches: Range<usize>,
    /// Values copied to the host after the dispatches.
    pub readbacks: Vec<Readback>,
    /// Steps run on the host after the read-backs.
    pub cpu_steps: Vec<usize>,
}

impl Segment {
    /// True when the segment submits commands to the device.
    pub fn has_gpu_work(&self) -> bool {
        !self.dispatches.is_empty() || !self.readbacks.is_empty()
    }
}

/// Where a graph output comes from after the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OutputFrom {
    /// A value on the host, by slot.
    Host(usize),
    /// A parameter, by name.
    Param(String),
}

/// The plan for one set of input shapes.
#[derive(Clone, Debug)]
pub(crate) struct ShapePlan {
    /// The printable account.
    pub report: PlanReport,
    /// Concrete type of every slot.
    pub slot_types: Vec<SlotType>,
    /// Size of every intermediate buffer in bytes.
    pub storages: Vec<u64>,
    /// A label per buffer.
    pub storage_labels: Vec<String>,
    /// Every dispatch, in order.
    pub dispatches: Vec<DispatchPlan>,
    /// The segments, in order.
    pub segments: Vec<Segment>,
    /// Where each graph output comes from.
    pub outputs: Vec<OutputFrom>,
}

/// The shape-independent part of planning one graph on one device: the
/// value slots, which weights live on the device, and fusion candidates.
#[derive(Clone, Debug)]
pub(crate) struct GraphPlan {
    /// Slots, steps and lifetimes.
    pub exec: ExecPlan,
    /// The device and options.
    pub target: Target,
    /// Weights held on the device: every parameter a node reads that fits
    /// one binding.
    pub resident: HashSet<String>,
    /// Bytes of the resident weights, each padded to whole `u32` words.
    pub weight_bytes: u64,
    /// For a matmul step: the activation step that may fold into it.
    fuse_next: Vec<Option<usize>>,
}

impl GraphPlan {
    /// Plans the shape-independent part of running `graph` on `target`.
    pub fn new(graph: &Graph, params: &HashMap<String, Tensor>, target: Target) -> Self {
        let exec = ExecPlan::new(graph);
        let resident = resident_params(graph, &exec, params, target.max_value());
        let weight_bytes = resident
            .iter()
            .filter_map(|p| params.get(p))
            .map(|t| padded(t.size_in_bytes() as u64))
            .sum();
        let fuse_next = if target.fuse_activations {
            fusion_candidates(graph, &exec)
        } else {
            vec![None; exec.steps.len()]
        };
        Self {
            exec,
            target,
            resident,
            weight_bytes,
            fuse_next,
        }
    }

    /// Plans placements, buffers and segments for concrete input shapes
    /// (graph-input order).
    pub fn for_shapes(
        &self,
        graph: &Graph,
        params: &HashMap<String, Tensor>,
        shapes: &[Vec<usize>],
    ) -> Result<ShapePlan, Error> {
        let slot_types = infer_slot_types(graph, &self.exec, params, shapes)?;
        let mut b = Builder::new(self, graph, params, &slot_types);
        for si in 0..self.exec.steps.len() {
            b.step(si);
        }
        let outputs = b.graph_outputs();
        b.finish(shapes, outputs)
    }
}

/// Parameters a node reads whose bytes fit one storage buffer: a pruning
/// mask kept beside its (already zeroed) weight, for example, stays on the
/// host, and nodes reading a weight that is too large fall back to the CPU.
fn resident_params(
    graph: &Graph,
    exec: &ExecPlan,
    params: &HashMap<String, Tensor>,
    max_value: u64,
) -> HashSet<String> {
    let read: HashSet<&str> = exec
        .steps
        .iter()
        .flat_map(|st| st.inputs.iter())
        .filter_map(|s| match s {
            Source::Param(p) => Some(p.as_str()),
            Source::Slot(_) => None,
        })
        .collect();
    graph
        .params()
        .iter()
        .filter(|p| read.contains(p.name.as_str()))
        .filter(|p| {
            params
                .get(&p.name)
                .is_some_and(|t| t.size_in_bytes() as u64 <= max_value)
        })
        .map(|p| p.name.clone())
        .collect()
}

/// The activation `op` computes when it is one a matmul epilogue can apply.
fn epilogue_activation(op: &dyn Op) -> Option<UnaryKind> {
    let any: &dyn Any = op;
    any.downcast_ref::<Unary>().map(|u| u.kind)
}

/// True for the ops whose kernels take an activation in their epilogue.
fn takes_epilogue(op: &dyn Op) -> bool {
    let any: &dyn Any = op;
    any.is::<Linear>() || any.is::<MatMul>() || any.is::<QLinear>()
}

/// Fusion candidates: for a matmul step whose single output is read only by
/// an activation of that value alone (and is not a graph output), the
/// activation's step.
fn fusion_candidates(graph: &Graph, exec: &ExecPlan) -> Vec<Option<usize>> {
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); exec.slot_count];
    for (si, st) in exec.steps.iter().enumerate() {
        for s in &st.inputs {
            if let Source::Slot(s) = s {
                readers[*s].push(si);
            }
        }
    }
    let is_output = |s: usize| exec.output_sources.contains(&Source::Slot(s));
    let op_of = |si: usize| &*graph.nodes()[exec.steps[si].node].op;
    exec.steps
        .iter()
        .enumerate()
        .map(|(si, st)| {
            if !takes_epilogue(op_of(si)) || st.outputs.len() != 1 {
                return None;
            }
            let out = st.outputs[0];
            if is_output(out) || readers[out].len() != 1 {
                return None;
            }
            let r = readers[out][0];
            let alone = exec.steps[r].inputs == [Source::Slot(out)];
            (epilogue_activation(op_of(r)).is_some() && alone).then_some(r)
        })
        .collect()
}

/// An error of `node`.
fn node_error(node: &Node, source: OpError) -> RunError {
    RunError::Node {
        node: node.name.clone(),
        op: node.op.op_type().to_string(),
        source,
    }
}

/// The concrete type of every slot for these input shapes, by each op's
/// shape inference in step order. Slots no step writes are `f32 [0]`.
fn infer_slot_types(
    graph: &Graph,
    exec: &ExecPlan,
    params: &HashMap<String, Tensor>,
    shapes: &[Vec<usize>],
) -> Result<Vec<SlotType>, Error> {
    let mut types: Vec<Option<SlotType>> = vec![None; exec.slot_count];
    for ((info, &s), shape) in graph.inputs().iter().zip(&exec.input_slots).zip(shapes) {
        types[s] = Some((info.ty.dtype, shape.clone()));
    }
    for step in &exec.steps {
        let node = &graph.nodes()[step.node];
        let mut ins = Vec::with_capacity(step.inputs.len());
        for src in &step.inputs {
            let t = source_type(src, &types, params)
                .ok_or_else(|| node_error(node, OpError::Shape("internal error: input type unknown".into())))?;
            ins.push(ValueType::known(t.0, &t.1));
        }
        let outs = node.op.infer(&ins).map_err(|e| node_error(node, e))?;
        for (&s, vt) in step.outputs.iter().zip(outs) {
            let shape = vt.concrete_shape().ok_or_else(|| {
                let msg = format!("output shape {} is not concrete", vt.shape_string());
                node_error(node, OpError::Shape(msg))
            })?;
            types[s] = Some((vt.dtype, shape));
        }
    }
    Ok(types.into_iter().map(|t| t.unwrap_or((DType::F32, vec![0]))).collect())
}

/// The type of a step input, where it is known.
fn source_type(src: &Source, types: &[Option<SlotType>], params: &HashMap<String, Tensor>) -> Option<SlotType> {
    match src {
        Source::Slot(s) => types[*s].clone(),
        Source::Param(p) => params.get(p).map(|t| (t.dtype(), t.shape().to_vec())),
    }
}
