//! The walk over a graph's steps that lays out one shape plan.

use std::collections::HashMap;

use crate::error::Error;
use crate::graph::{Graph, Node};
use crate::ops::unary::UnaryKind;
use crate::plan::{Source, Step};
use crate::tensor::{DType, Tensor};

use super::super::error::GpuError;
use super::super::kernels::{self, Bind, DispatchSpec, NodeKernel};
use super::buffers::{padded, Buffers};
use super::{
    epilogue_activation, size_of, DispatchPlan, GraphPlan, NodeReport, OutputFrom, Placement, PlanReport, Readback,
    Res, Segment, ShapePlan, SlotType,
};

/// Walks the steps once, simulating where each value is (host, device
/// buffer) and when buffers die, and records dispatches, segments and the
/// report.
pub(super) struct Builder<'a> {
    plan: &'a GraphPlan,
    graph: &'a Graph,
    params: &'a HashMap<String, Tensor>,
    slot_types: &'a [SlotType],
    on_host: Vec<bool>,
    dev: Vec<Option<usize>>,
    buffers: Buffers,
    segments: Vec<Segment>,
    dispatches: Vec<DispatchPlan>,
    nodes: Vec<NodeReport>,
    /// Activation step -> (the step it is fused into, the buffer it writes).
    fused_into: HashMap<usize, (usize, usize)>,
    uploads: usize,
}

/// An activation to fold into a matmul: its step and kind.
type FusedAct = Option<(usize, UnaryKind)>;

impl<'a> Builder<'a> {
    pub fn new(
        plan: &'a GraphPlan,
        graph: &'a Graph,
        params: &'a HashMap<String, Tensor>,
        slot_types: &'a [SlotType],
    ) -> Self {
        let slots = plan.exec.slot_count;
        let mut on_host = vec![false; slots];
        for &s in &plan.exec.input_slots {
            on_host[s] = true;
        }
        Self {
            plan,
            graph,
            params,
            slot_types,
            on_host,
            dev: vec![None; slots],
            buffers: Buffers::default(),
            segments: vec![Segment::default()],
            dispatches: Vec::new(),
            nodes: Vec::new(),
            fused_into: HashMap::new(),
            uploads: 0,
        }
    }

    fn node(&self, si: usize) -> &'a Node {
        &self.graph.nodes()[self.plan.exec.steps[si].node]
    }

    fn slot_name(&self, s: usize) -> &'a str {
        &self.plan.exec.slot_names[s]
    }

    fn report_node(&mut self, si: usize, placement: Placement) {
        let step = &self.plan.exec.steps[si];
        let node = self.node(si);
        self.nodes.push(NodeReport {
            node: node.name.clone(),
            op: node.op.op_type().to_string(),
            outputs: step.outputs.iter().map(|&s| self.slot_types[s].1.clone()).collect(),
            placement,
        });
    }

    /// Places step `si` and records what it needs.
    pub fn step(&mut self, si: usize) {
        let step = &self.plan.exec.steps[si];
        if let Some(&(prod, storage)) = self.fused_into.get(&si) {
            self.fused_step(si, prod, storage);
        } else {
            let fused_act = self.fused_activation(si);
            let kernel = self.choose_kernel(si, fused_act);
            let fused_used = matches!(&kernel, Ok(NodeKernel::Dispatch(d)) if fused_act.is_some()
                && d.key.constants.iter().any(|&(n, v)| n == "ACT" && f64::from_bits(v) != 0.0));
            let on_device = |s: &Source| match s {
                Source::Slot(s) => self.dev[*s].is_some(),
                Source::Param(_) => false,
            };
            match kernel {
                Ok(NodeKernel::Alias) if step.inputs.iter().all(on_device) => self.alias_step(si),
                Ok(NodeKernel::Dispatch(spec)) => self.gpu_step(si, vec![spec], fused_act.filter(|_| fused_used)),
                Ok(NodeKernel::Multi(specs)) => self.gpu_step(si, specs, None),
                Ok(NodeKernel::Alias) => self.host_step(si, Placement::Alias { device: false }),
                Err(reason) => {
                    log::info!("node `{}` runs on the CPU: {reason}", self.node(si).name);
                    self.host_step(si, Placement::Cpu { reason });
                }
            }
        }
        self.release(step);
    }

    /// Drops the references a step's dead values hold on their buffers.
    fn release(&mut self, step: &Step) {
        for &s in &step.free_after {
            if let Some(id) = self.dev[s] {
                self.buffers.release(id);
            }
        }
    }

    /// An activation folded into the kernel before it: it writes in place.
    fn fused_step(&mut self, si: usize, prod: usize, storage: usize) {
        let out = self.plan.exec.steps[si].outputs[0];
        self.dev[out] = Some(storage);
        self.buffers.share(storage, self.slot_name(out));
        let into = self.node(prod).name.clone();
        self.report_node(si, Placement::Fused { into });
    }

    /// A view of a device value: shares its buffer.
    fn alias_step(&mut self, si: usize) {
        let step = &self.plan.exec.steps[si];
        let Source::Slot(src) = step.inputs[0] else {
            return;
        };
        let storage = self.dev[src].unwrap_or_default();
        let out = step.outputs[0];
        self.dev[out] = Some(storage);
        self.buffers.share(storage, self.slot_name(out));
        self.report_node(si, Placement::Alias { device: true });
    }

    /// The activation that may fold into step `si`, unless the options send
    /// it to the CPU.
    fn fused_activation(&self, si: usize) -> FusedAct {
        self.plan.fuse_next[si].and_then(|r| {
            let op = &*self.node(r).op;
            if self.plan.target.cpu_ops.iter().any(|o| o == op.op_type()) {
                return None;
            }
            epilogue_activation(op).map(|a| (r, a))
        })
    }

    fn input_types(&self, step: &Step) -> Vec<SlotType> {
        step.inputs
            .iter()
            .map(|src| match src {
                Source::Slot(s) => self.slot_types[*s].clone(),
                Source::Param(p) => self
                    .params
                    .get(p)
                    .map(|t| (t.dtype(), t.shape().to_vec()))
                    .unwrap_or((DType::F32, vec![0])),
            })
            .collect()
    }

    /// The first value of step `si` (input or output) too large to bind.
    fn too_large(&self, step: &Step, in_types: &[SlotType]) -> Option<(String, u64)> {
        let ins = step.inputs.iter().zip(in_types).map(|(src, t)| {
            let name = match src {
                Source::Slot(s) => self.slot_name(*s).to_string(),
                Source::Param(p) => p.clone(),
            };
            (name, size_of(t))
        });
        let outs = step
            .outputs
            .iter()
            .map(|&s| (self.slot_name(s).to_string(), size_of(&self.slot_types[s])));
        ins.chain(outs).find(|(_, b)| *b > self.plan.target.max_value())
    }

    /// The kernel for step `si`, or why it runs on the CPU.
    fn choose_kernel(&self, si: usize, fused_act: FusedAct) -> Result<NodeKernel, String> {
        let step = &self.plan.exec.steps[si];
        let op = &*self.node(si).op;
        let target = &self.plan.target;
        let in_types = self.input_types(step);
        if target.cpu_ops.iter().any(|o| o == op.op_type()) {
            return Err(format!("{} forced onto the CPU by the options", op.op_type()));
        }
        if let Some((value, bytes)) = self.too_large(step, &in_types) {
            let e = target.buffer_error(value.clone(), bytes);
            return Err(e.map_or_else(|| format!("value `{value}` is too large"), |e| e.to_string()));
        }
        let ins: Vec<(DType, &[usize])> = in_types.iter().map(|(d, s)| (*d, s.as_slice())).collect();
        let with_fused = fused_act.and_then(|(_, a)| kernels::select(op, &ins, Some(a), &target.caps).ok());
        let kernel = match with_fused {
            Some(k) => k,
            None => kernels::select(op, &ins, None, &target.caps).map_err(|e| e.to_string())?,
        };
        self.check_kernel(step, kernel)
    }

    /// Sends a node to the CPU when its kernel writes the wrong number of
    /// outputs or reads a weight the device does not hold (too large).
    fn check_kernel(&self, step: &Step, k: NodeKernel) -> Result<NodeKernel, String> {
        let written = match &k {
            NodeKernel::Alias => return Ok(k),
            NodeKernel::Dispatch(_) => 1,
            NodeKernel::Multi(v) => v.len(),
        };
        if written != step.outputs.len() {
            return Err(format!(
                "the kernel writes {written} output(s); the node has {}",
                step.outputs.len()
            ));
        }
        let missing = step.inputs.iter().find_map(|s| match s {
            Source::Param(p) if !self.plan.resident.contains(p) => Some(p),
            _ => None,
        });
        match missing {
            Some(p) => Err(format!("parameter `{p}` is not held on the device")),
            None => Ok(k),
        }
    }

    /// Dispatches on the device; dispatch `o` writes output `o`.
    fn gpu_step(&mut self, si: usize, specs: Vec<DispatchSpec>, fused: FusedAct) {
        if !self.segments.last().map(|s| s.cpu_steps.is_empty()).unwrap_or(true) {
            let start = self.dispatches.len();
            self.segments.push(Segment {
                dispatches: start..start,
                ..Segment::default()
            });
        }
        let step = &self.plan.exec.steps[si];
        let node = self.node(si);
        let mut fused_name = None;
        for (spec, &out) in specs.iter().zip(&step.outputs) {
            let inputs = spec.binds.iter().map(|b| self.bind(step, *b)).collect();
            let need = padded(size_of(&self.slot_types[out]));
            let id = self.buffers.alloc(self.slot_name(out), need, true);
            self.dev[out] = Some(id);
            if let Some((r, _)) = fused {
                self.fused_into.insert(r, (si, id));
                fused_name = Some(self.node(r).name.clone());
            }
            if self.slot_types[out].1.iter().product::<usize>() > 0 {
                self.dispatches.push(DispatchPlan {
                    label: node.name.clone(),
                    key: spec.key.clone(),
                    params: spec.params.clone(),
                    groups: spec.groups,
                    out: id,
                    inputs,
                });
                if let Some(seg) = self.segments.last_mut() {
                    seg.dispatches.end = self.dispatches.len();
                }
            }
        }
        if let Some(spec) = specs.first() {
            let placement = Placement::Gpu {
                shader: spec.key.shader.file(),
                entry: spec.key.entry,
                workgroups: spec.groups,
                fused: fused_name,
            };
            self.report_node(si, placement);
        }
    }

    /// The resource for one binding of a dispatch of `step`; a host value
    /// is uploaded at the start of the current segment.
    fn bind(&mut self, step: &Step, b: Bind) -> Res {
        let i = match b {
            Bind::Zeros => return Res::Zeros,
            Bind::Input(i) => i,
        };
        let s = match &step.inputs[i] {
            Source::Param(p) => return Res::Param(p.clone()),
            Source::Slot(s) => *s,
        };
        if self.dev[s].is_none() {
            let seg = self.segments.len() - 1;
            // Uploads happen before the segment's commands: a buffer that
            // dies within the segment cannot take one.
            let reuse = self.segments[seg].dispatches.is_empty();
            let need = padded(size_of(&self.slot_types[s]));
            let id = self.buffers.alloc(self.slot_name(s), need, reuse);
            self.dev[s] = Some(id);
            self.segments[seg].uploads.push((s, id));
            self.uploads += 1;
        }
        Res::Storage(self.dev[s].unwrap_or_default())
    }

    /// On the host: an alias of a host value, or a CPU fallback. Device
    /// inputs are read back at the end of the current segment.
    fn host_step(&mut self, si: usize, placement: Placement) {
        let step = &self.plan.exec.steps[si];
        for src in &step.inputs {
            if let Source::Slot(s) = src {
                self.read_back(*s);
            }
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.cpu_steps.push(si);
        }
        for &o in &step.outputs {
            self.on_host[o] = true;
        }
        self.report_node(si, placement);
    }

    /// Reads slot `s` back at the end of the current segment unless it is
    /// already on the host.
    fn read_back(&mut self, s: usize) {
        if self.on_host[s] {
            return;
        }
        let storage = self.dev[s].unwrap_or_default();
        if let Some(seg) = self.segments.last_mut() {
            seg.readbacks.push(Readback { slot: s, storage });
        }
        self.on_host[s] = true;
    }

    /// Where each graph output comes from; device values are read back at
    /// the end of the last segment.
    pub fn graph_outputs(&mut self) -> Vec<OutputFrom> {
        let plan = self.plan;
        plan.exec
            .output_sources
            .iter()
            .map(|src| match src {
                Source::Param(p) => OutputFrom::Param(p.clone()),
                Source::Slot(s) => {
                    self.read_back(*s);
                    OutputFrom::Host(*s)
                }
            })
            .collect()
    }

    /// The first buffer the device cannot create or bind, or all of them
    /// together over the budget: intermediate buffers, a read-back copy of
    /// each value read back, and the weights held on the device.
    fn check_budget(&self) -> Result<(), GpuError> {
        let target = &self.plan.target;
        let sizes = &self.buffers.sizes;
        for (s, &bytes) in sizes.iter().enumerate() {
            if let Some(e) = target.buffer_error(self.buffers.values[s].join(", "), bytes) {
                return Err(e);
            }
        }
        let staging = self.segments.iter().flat_map(|seg| &seg.readbacks);
        let staging_bytes = staging.fold(0u64, |t, r| t.saturating_add(padded(size_of(&self.slot_types[r.slot]))));
        let total = sizes
            .iter()
            .fold(self.plan.weight_bytes, |t, &b| t.saturating_add(b))
            .saturating_add(staging_bytes);
        if total > target.budget {
            let largest = (0..sizes.len()).max_by_key(|&s| sizes[s]);
            let largest = largest.map_or(String::new(), |s| {
                format!(
                    ", the largest `{}` of {} bytes",
                    self.buffers.values[s].join(", "),
                    sizes[s]
                )
            });
            return Err(GpuError::OverBudget {
                value: format!(
                    "the plan's device buffers ({} bytes of weights, {} intermediate buffers{largest}, \
                     {staging_bytes} bytes of read-back copies)",
                    self.plan.weight_bytes,
                    sizes.len()
                ),
                bytes: total,
                budget: format!("the allocation limit (set by {})", crate::tensor::MAX_ALLOC_ENV),
                limit: target.budget,
            });
        }
        Ok(())
    }

    /// The finished plan, or why its buffers do not fit the device.
    pub fn finish(self, shapes: &[Vec<usize>], outputs: Vec<OutputFrom>) -> Result<ShapePlan, Error> {
        self.check_budget()?;
        let target = &self.plan.target;
        let sizes = &self.buffers.sizes;
        let report = PlanReport {
            adapter: target.adapter_label.clone(),
            inputs: self
                .graph
                .inputs()
                .iter()
                .zip(shapes)
                .map(|(i, s)| (i.name.clone(), s.clone()))
                .collect(),
            nodes: self.nodes,
            buffers: sizes
                .iter()
                .zip(&self.buffers.values)
                .map(|(&bytes, v)| super::BufferReport {
                    bytes,
                    values: v.clone(),
                })
                .collect(),
            peak_intermediate_bytes: self.buffers.total(),
            weight_bytes: self.plan.weight_bytes,
            dispatches: self.dispatches.len(),
            submits: self.segments.iter().filter(|s| s.has_gpu_work()).count(),
            uploads: self.uploads,
            readbacks: self.segments.iter().map(|s| s.readbacks.len()).sum(),
        };
        Ok(ShapePlan {
            report,
            slot_types: self.slot_types.to_vec(),
            storages: self.buffers.sizes.clone(),
            storage_labels: self.buffers.labels(),
            dispatches: self.dispatches,
            segments: self.segments,
            outputs,
        })
    }
}
