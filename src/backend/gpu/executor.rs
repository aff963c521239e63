//! The GPU executor: a graph compiled for one device.
//!
//! Compiling (per distinct set of input shapes, cached) decides each node's
//! placement, gives every intermediate value a device buffer by lifetime
//! (buffers of dead values are reused), and lays the run out in *segments*:
//! uploads, then every dispatch of the segment in one command encoder and one
//! submit, then read-backs. A graph that runs entirely on the GPU is one
//! segment: one encoder, one submit, and only the graph outputs read back.
//! A node that falls back to the CPU splits the run: the values it needs are
//! read back, it runs on the host, and its outputs are uploaded for the GPU
//! nodes after it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use wgpu::util::DeviceExt;

use crate::error::{Error, RunError};

use super::error::GpuError;
use crate::graph::Graph;
use crate::ops::linear::Linear;
use crate::ops::matmul::MatMul;
use crate::ops::qlinear::QLinear;
use crate::ops::unary::{Unary, UnaryKind};
use crate::plan::{ExecPlan, Source};
use crate::tensor::{DType, Tensor, ValueType};

use super::context::{human_bytes, GpuContext, PipelineKey};
use super::kernels::{self, Bind, Caps, MatmulKernel, NodeKernel};

/// Options for compiling a graph for the GPU.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Op types to run on the CPU even where a GPU kernel exists (for
    /// debugging, and to exercise the fallback path).
    pub cpu_ops: Vec<String>,
    /// Which matmul kernel to use.
    pub matmul: MatmulKernel,
    /// Fold an activation that follows a Linear or MatMul into its epilogue.
    pub fuse_activations: bool,
    /// How long a run may wait for the GPU before it fails.
    pub timeout: Duration,
    /// Only portable WGSL: no `enable f16` and no `dot4I8Packed`, even where
    /// the adapter has them (the fallbacks every adapter runs; for tests).
    pub portable_kernels: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            cpu_ops: Vec::new(),
            matmul: MatmulKernel::Auto,
            fuse_activations: true,
            timeout: Duration::from_secs(120),
            portable_kernels: false,
        }
    }
}

/// Where one node runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A compute dispatch.
    Gpu {
        /// Shader file.
        shader: &'static str,
        /// Entry point.
        entry: &'static str,
        /// Workgroup grid.
        workgroups: [u32; 3],
        /// An activation folded into the epilogue, by node name.
        fused: Option<String>,
    },
    /// Folded into the epilogue of the named node's kernel: no dispatch.
    Fused {
        /// The node that computes it.
        into: String,
    },
    /// A view of its input with another shape: no work. `device` is true
    /// when the input lives in a device buffer, false when it is on the host
    /// (a graph input no kernel reads).
    Alias {
        /// Whether the aliased value is on the device.
        device: bool,
    },
    /// On the CPU (with transfers), because the GPU cannot run it here.
    Cpu {
        /// Why (the `Unsupported` error, or an option).
        reason: String,
    },
}

/// One node of a [`PlanReport`].
#[derive(Clone, Debug)]
pub struct NodeReport {
    /// Node name.
    pub node: String,
    /// Op type.
    pub op: String,
    /// Output shape(s).
    pub outputs: Vec<Vec<usize>>,
    /// Where it runs.
    pub placement: Placement,
}

/// One intermediate device buffer of a [`PlanReport`].
#[derive(Clone, Debug)]
pub struct BufferReport {
    /// Size in bytes.
    pub bytes: u64,
    /// The values that live in it, in order (reuse shows as several).
    pub values: Vec<String>,
}

/// What a compiled GPU plan does for one set of input shapes: printable
/// (`wginfer inspect --plan --device gpu`).
#[derive(Clone, Debug)]
pub struct PlanReport {
    /// The adapter.
    pub adapter: String,
    /// Input shapes the plan is for.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Every node in execution order.
    pub nodes: Vec<NodeReport>,
    /// Intermediate buffers (graph inputs included), after reuse.
    pub buffers: Vec<BufferReport>,
    /// Bytes of all intermediate buffers: the peak device memory for
    /// activations, since buffers are reused rather than freed.
    pub peak_intermediate_bytes: u64,
    /// Bytes of the weights uploaded once per session.
    pub weight_bytes: u64,
    /// Compute dispatches per run.
    pub dispatches: usize,
    /// Queue submits per run (1 unless a node falls back to the CPU).
    pub submits: usize,
    /// Host-to-device uploads per run (graph inputs and CPU results).
    pub uploads: usize,
    /// Device-to-host read-backs per run (graph outputs and CPU inputs).
    pub readbacks: usize,
}

impl fmt::Display for PlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "GPU plan on {}", self.adapter)?;
        for (n, s) in &self.inputs {
            writeln!(f, "  input {n}: {s:?}")?;
        }
        writeln!(f, "  {:<16} {:<10} {:<16} placement", "node", "op", "output")?;
        for n in &self.nodes {
            let out = n.outputs.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ");
            let place = match &n.placement {
                Placement::Gpu {
                    shader,
                    entry,
                    workgroups,
                    fused,
                } => {
                    let fused = fused.as_ref().map(|f| format!(" + {f}")).unwrap_or_default();
                    format!("gpu {shader}::{entry} grid {workgroups:?}{fused}")
                }
                Placement::Fused { into } => format!("gpu, fused into {into}"),
                Placement::Alias { device: true } => "gpu, alias (no work)".to_string(),
                Placement::Alias { device: false } => "host, alias (no work)".to_string(),
                Placement::Cpu { reason } => format!("CPU fallback: {reason}"),
            };
            writeln!(f, "  {:<16} {:<10} {:<16} {place}", n.node, n.op, out)?;
        }
        writeln!(f, "  buffers:")?;
        for (i, b) in self.buffers.iter().enumerate() {
            writeln!(f, "    #{i:<3} {:>10}  {}", human_bytes(b.bytes), b.values.join(", "))?;
        }
        writeln!(
            f,
            "  weights {} | peak intermediate {} in {} buffers",
            human_bytes(self.weight_bytes),
            human_bytes(self.peak_intermediate_bytes),
            self.buffers.len()
        )?;
        write!(
            f,
            "  per run: {} dispatches, {} submits, {} uploads, {} read-backs",
            self.dispatches, self.submits, self.uploads, self.readbacks
        )
    }
}

/// A resource bound to a dispatch.
#[derive(Clone, Debug)]
enum Res {
    Storage(usize),
    Param(String),
    Zeros,
}

#[derive(Clone, Debug)]
struct DispatchPlan {
    label: String,
    key: PipelineKey,
    params: Vec<u32>,
    groups: [u32; 3],
    out: usize,
    inputs: Vec<Res>,
}

#[derive(Clone, Debug)]
struct Readback {
    slot: usize,
    storage: usize,
}

#[derive(Clone, Debug, Default)]
struct Segment {
    /// (slot, storage): host values written before the segment's commands.
    uploads: Vec<(usize, usize)>,
    /// Range into `ShapePlan::dispatches`.
    dispatches: std::ops::Range<usize>,
    readbacks: Vec<Readback>,
    /// Steps run on the host after the read-backs.
    cpu_steps: Vec<usize>,
}

impl Segment {
    fn has_gpu_work(&self) -> bool {
        !self.dispatches.is_empty() || !self.readbacks.is_empty()
    }
}

#[derive(Clone, Debug)]
enum OutputFrom {
    Host(usize),
    Param(String),
}

/// The plan for one set of input shapes.
#[derive(Debug)]
struct ShapePlan {
    report: PlanReport,
    slot_types: Vec<(DType, Vec<usize>)>,
    storages: Vec<u64>,
    storage_labels: Vec<String>,
    dispatches: Vec<DispatchPlan>,
    segments: Vec<Segment>,
    outputs: Vec<OutputFrom>,
}

/// Device objects for one in-flight run of a [`ShapePlan`]. Runs take one
/// from a pool, so concurrent runs never share buffers.
struct Runtime {
    buffers: Vec<wgpu::Buffer>,
    bind_groups: Vec<wgpu::BindGroup>,
    pipelines: Vec<Arc<wgpu::ComputePipeline>>,
    /// Per segment, one staging buffer per read-back.
    staging: Vec<Vec<wgpu::Buffer>>,
    _uniforms: Vec<wgpu::Buffer>,
    /// GPU timers, where the device has timestamp queries.
    timer: Option<Timer>,
}

/// Timestamp queries around each segment's compute pass: slot `2·si` at the
/// pass's beginning, `2·si + 1` at its end. Each segment resolves into its own
/// 256-byte-aligned window of `resolve` (wgpu's resolve-offset alignment).
struct Timer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
}

/// wgpu's alignment of a query-set resolve offset.
const RESOLVE_ALIGN: u64 = wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT;

struct ShapeEntry {
    plan: ShapePlan,
    pool: Mutex<Vec<Runtime>>,
}

/// A graph compiled for a GPU device. `Send + Sync`: runs from several
/// threads proceed concurrently, each with its own intermediate buffers.
pub struct GpuExecutor {
    ctx: Arc<GpuContext>,
    graph: Arc<Graph>,
    params: Arc<HashMap<String, Tensor>>,
    plan: ExecPlan,
    options: GpuOptions,
    caps: Caps,
    param_buffers: HashMap<String, wgpu::Buffer>,
    weight_bytes: u64,
    /// For a Linear/MatMul step: the step of the activation that may fold into it.
    fuse_next: Vec<Option<usize>>,
    shapes: Mutex<HashMap<Vec<Vec<usize>>, Arc<ShapeEntry>>>,
}

impl fmt::Debug for GpuExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuExecutor")
            .field("adapter", &self.ctx.adapter().name)
            .field("graph", &self.graph.name())
            .finish()
    }
}

/// Shape plans kept per executor; beyond this many input shapes, the cache
/// starts over.
const MAX_CACHED_SHAPES: usize = 32;

fn padded(bytes: u64) -> u64 {
    bytes.div_ceil(4).max(1) * 4
}

fn size_of(t: &(DType, Vec<usize>)) -> u64 {
    (t.1.iter().product::<usize>() * t.0.size_in_bytes()) as u64
}

impl GpuExecutor {
    /// Compiles `graph` for `ctx`'s device and uploads the weights once.
    pub fn new(
        graph: Arc<Graph>,
        params: Arc<HashMap<String, Tensor>>,
        ctx: Arc<GpuContext>,
        options: GpuOptions,
    ) -> Result<Self, Error> {
        ctx.check_lost()?;
        let plan = ExecPlan::new(&graph);
        let caps = Caps {
            max_workgroups: ctx.limits.max_compute_workgroups_per_dimension,
            software: ctx.adapter().software,
            matmul: options.matmul,
            backend: format!("gpu ({})", ctx.adapter().name),
            f16: !options.portable_kernels && ctx.device.features().contains(wgpu::Features::SHADER_F16),
            packed_dot: !options.portable_kernels && kernels::packed_dot_available(),
            subgroups: !options.portable_kernels
                && ctx.device.features().contains(wgpu::Features::SUBGROUP)
                && ctx.adapter().subgroup_min_size >= 8,
        };
        let limit = ctx.limits.max_storage_buffer_binding_size;
        let mut param_buffers = HashMap::new();
        let mut weight_bytes = 0;
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        // Only parameters some node reads: a pruning mask kept beside its
        // (already zeroed) weight, for example, stays on the host.
        let read: std::collections::HashSet<&str> = plan
            .steps
            .iter()
            .flat_map(|st| st.inputs.iter())
            .filter_map(|s| match s {
                Source::Param(p) => Some(p.as_str()),
                Source::Slot(_) => None,
            })
            .collect();
        for p in graph.params() {
            let Some(t) = params.get(&p.name) else { continue };
            let bytes = t.size_in_bytes() as u64;
            if bytes > limit || !read.contains(p.name.as_str()) {
                // Not bindable here (nodes reading it fall back to the CPU), or unread.
                continue;
            }
            // Every dtype as its raw little-endian bytes, padded to whole u32
            // words: packed weights (u8/i8/f16) stay packed on the device.
            let mut data = t.to_le_bytes();
            data.resize(padded(bytes) as usize, 0);
            let buf = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&p.name),
                contents: &data,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
            weight_bytes += data.len() as u64;
            param_buffers.insert(p.name.clone(), buf);
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::OutOfMemory {
                action: format!("uploading {} of weights ({e})", human_bytes(weight_bytes)),
            }
            .into());
        }

        // Fusion candidates: a Linear/MatMul whose only reader is an activation.
        let mut fuse_next = vec![None; plan.steps.len()];
        if options.fuse_activations {
            let mut readers: Vec<Vec<usize>> = vec![Vec::new(); plan.slot_count];
            for (si, st) in plan.steps.iter().enumerate() {
                for s in &st.inputs {
                    if let Source::Slot(s) = s {
                        readers[*s].push(si);
                    }
                }
            }
            let is_output = |s: usize| plan.output_sources.contains(&Source::Slot(s));
            for (si, st) in plan.steps.iter().enumerate() {
                let op = graph.nodes()[st.node].op.as_any();
                if !(op.is::<Linear>() || op.is::<MatMul>() || op.is::<QLinear>()) || st.outputs.len() != 1 {
                    continue;
                }
                let out = st.outputs[0];
                if is_output(out) || readers[out].len() != 1 {
                    continue;
                }
                let r = readers[out][0];
                let rnode = &graph.nodes()[plan.steps[r].node];
                if rnode.op.as_any().is::<Unary>() && plan.steps[r].inputs == [Source::Slot(out)] {
                    fuse_next[si] = Some(r);
                }
            }
        }
        Ok(Self {
            ctx,
            graph,
            params,
            plan,
            options,
            caps,
            param_buffers,
            weight_bytes,
            fuse_next,
            shapes: Mutex::new(HashMap::new()),
        })
    }

    /// Bytes of the weights held on the device: every parameter a node
    /// reads, as its raw (packed) bytes padded to 4 bytes per tensor. A
    /// quantized weight costs its packed size, never an f32 copy.
    pub fn param_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The device context.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// The plan for these input shapes (graph-input order); `None` takes
    /// every symbolic dimension as 1. Compiles (and caches) it if needed.
    pub fn plan_report(&self, shapes: Option<&[Vec<usize>]>) -> Result<PlanReport, Error> {
        let shapes: Vec<Vec<usize>> = match shapes {
            Some(s) => s.to_vec(),
            None => self
                .graph
                .inputs()
                .iter()
                .map(|i| i.ty.shape.iter().map(|d| d.known().unwrap_or(1)).collect())
                .collect(),
        };
        Ok(self.entry(&shapes)?.plan.report.clone())
    }

    fn entry(&self, shapes: &[Vec<usize>]) -> Result<Arc<ShapeEntry>, Error> {
        let mut cache = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cache.get(shapes) {
            return Ok(e.clone());
        }
        let plan = self.compile(shapes)?;
        // Compile the pipelines now, so shader errors surface at compile time.
        for d in &plan.dispatches {
            self.ctx.pipeline(&d.key)?;
        }
        if cache.len() >= MAX_CACHED_SHAPES {
            cache.clear();
        }
        let e = Arc::new(ShapeEntry {
            plan,
            pool: Mutex::new(Vec::new()),
        });
        cache.insert(shapes.to_vec(), e.clone());
        Ok(e)
    }

    /// Plans placements, buffers and segments for concrete input shapes.
    fn compile(&self, shapes: &[Vec<usize>]) -> Result<ShapePlan, Error> {
        let graph = &*self.graph;
        let plan = &self.plan;
        let limit = self.ctx.limits.max_storage_buffer_binding_size;

        // Concrete types of every slot.
        let mut slot_types: Vec<Option<(DType, Vec<usize>)>> = vec![None; plan.slot_count];
        for ((info, &s), shape) in graph.inputs().iter().zip(&plan.input_slots).zip(shapes) {
            slot_types[s] = Some((info.ty.dtype, shape.clone()));
        }
        let param_type = |name: &str| -> Option<(DType, Vec<usize>)> {
            self.params.get(name).map(|t| (t.dtype(), t.shape().to_vec()))
        };
        let source_type = |src: &Source, st: &[Option<(DType, Vec<usize>)>]| -> Option<(DType, Vec<usize>)> {
            match src {
                Source::Slot(s) => st[*s].clone(),
                Source::Param(p) => param_type(p),
            }
        };
        for step in &plan.steps {
            let node = &graph.nodes()[step.node];
            let node_err = |source| RunError::Node {
                node: node.name.clone(),
                op: node.op.op_type().to_string(),
                source,
            };
            let mut ins = Vec::with_capacity(step.inputs.len());
            for src in &step.inputs {
                let t = source_type(src, &slot_types).ok_or_else(|| {
                    node_err(crate::error::OpError::Shape(
                        "internal error: input type unknown".into(),
                    ))
                })?;
                ins.push(ValueType::known(t.0, &t.1));
            }
            let outs = node.op.infer(&ins).map_err(node_err)?;
            for (&s, vt) in step.outputs.iter().zip(outs) {
                let shape = vt.concrete_shape().ok_or_else(|| {
                    node_err(crate::error::OpError::Shape(format!(
                        "output shape {} is not concrete",
                        vt.shape_string()
                    )))
                })?;
                slot_types[s] = Some((vt.dtype, shape));
            }
        }
        let slot_types: Vec<(DType, Vec<usize>)> = slot_types
            .into_iter()
            .map(|t| t.unwrap_or((DType::F32, vec![0])))
            .collect();

        // Walk the steps, simulating residency and buffer lifetimes.
        let mut on_host = vec![false; plan.slot_count];
        let mut dev: Vec<Option<usize>> = vec![None; plan.slot_count];
        for &s in &plan.input_slots {
            on_host[s] = true;
        }
        let mut storages: Vec<u64> = Vec::new();
        let mut storage_values: Vec<Vec<String>> = Vec::new();
        let mut refs: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut segments = vec![Segment::default()];
        let mut dispatches: Vec<DispatchPlan> = Vec::new();
        let mut nodes: Vec<NodeReport> = Vec::new();
        let mut fused_into: HashMap<usize, (usize, usize)> = HashMap::new(); // step -> (producer step, storage)
        let mut uploads = 0;

        // Allocates a storage for `slot`; `reuse` allows a dead buffer.
        let alloc = |slot: usize,
                     reuse: bool,
                     storages: &mut Vec<u64>,
                     storage_values: &mut Vec<Vec<String>>,
                     refs: &mut Vec<usize>,
                     free: &mut Vec<usize>|
         -> usize {
            let need = padded(size_of(&slot_types[slot]));
            let pick = if reuse {
                // Best fit among dead buffers; grow the smallest if none fits.
                let fit = free
                    .iter()
                    .enumerate()
                    .filter(|(_, &s)| storages[s] >= need)
                    .min_by_key(|(_, &s)| storages[s])
                    .map(|(i, _)| i);
                let fit = fit.or_else(|| {
                    free.iter()
                        .enumerate()
                        .max_by_key(|(_, &s)| storages[s])
                        .map(|(i, _)| i)
                });
                fit.map(|i| free.swap_remove(i))
            } else {
                None
            };
            let id = match pick {
                Some(id) => {
                    storages[id] = storages[id].max(need);
                    id
                }
                None => {
                    storages.push(need);
                    storage_values.push(Vec::new());
                    refs.push(0);
                    storages.len() - 1
                }
            };
            refs[id] = 1;
            storage_values[id].push(plan.slot_names[slot].clone());
            id
        };

        for (si, step) in plan.steps.iter().enumerate() {
            let node = &graph.nodes()[step.node];
            let in_types: Vec<(DType, Vec<usize>)> = step
                .inputs
                .iter()
                .map(|src| match src {
                    Source::Slot(s) => slot_types[*s].clone(),
                    Source::Param(p) => param_type(p).unwrap_or((DType::F32, vec![0])),
                })
                .collect();
            let out_shapes: Vec<Vec<usize>> = step.outputs.iter().map(|&s| slot_types[s].1.clone()).collect();

            // An activation folded into the kernel before it.
            if let Some(&(prod, storage)) = fused_into.get(&si) {
                let out = step.outputs[0];
                dev[out] = Some(storage);
                refs[storage] += 1;
                storage_values[storage].push(plan.slot_names[out].clone());
                nodes.push(NodeReport {
                    node: node.name.clone(),
                    op: node.op.op_type().to_string(),
                    outputs: out_shapes,
                    placement: Placement::Fused {
                        into: graph.nodes()[plan.steps[prod].node].name.clone(),
                    },
                });
                release(step, &dev, &mut refs, &mut free);
                continue;
            }

            // Decide the kernel.
            let fused_act: Option<(usize, UnaryKind)> = self.fuse_next[si].and_then(|r| {
                let rn = &graph.nodes()[plan.steps[r].node];
                if self.options.cpu_ops.iter().any(|o| o == rn.op.op_type()) {
                    return None;
                }
                rn.op.as_any().downcast_ref::<Unary>().map(|u| (r, u.kind))
            });
            let forced = self.options.cpu_ops.iter().any(|o| o == node.op.op_type());
            let too_big = step
                .inputs
                .iter()
                .zip(&in_types)
                .map(|(src, t)| {
                    let name = match src {
                        Source::Slot(s) => plan.slot_names[*s].clone(),
                        Source::Param(p) => p.clone(),
                    };
                    (name, size_of(t))
                })
                .chain(
                    step.outputs
                        .iter()
                        .map(|&s| (plan.slot_names[s].clone(), size_of(&slot_types[s]))),
                )
                .find(|(_, b)| *b > limit);
            let kernel: Result<NodeKernel, String> = if forced {
                Err(format!("{} forced onto the CPU by the options", node.op.op_type()))
            } else if let Some((value, bytes)) = too_big {
                Err(GpuError::TooLarge {
                    value,
                    bytes,
                    limit,
                    adapter: self.ctx.adapter().name.clone(),
                }
                .to_string())
            } else {
                let ins: Vec<(DType, &[usize])> = in_types.iter().map(|(d, s)| (*d, s.as_slice())).collect();
                let with_fused =
                    fused_act.and_then(|(_, a)| kernels::select(&*node.op, &ins, Some(a), &self.caps).ok());
                match with_fused {
                    Some(k) => Ok(k),
                    None => kernels::select(&*node.op, &ins, None, &self.caps).map_err(|e| e.to_string()),
                }
                .and_then(|k| {
                    // A parameter the device does not hold (too large) sends the node to the CPU.
                    let written = match &k {
                        NodeKernel::Alias => 0,
                        NodeKernel::Dispatch(_) => 1,
                        NodeKernel::Multi(v) => v.len(),
                    };
                    if !matches!(k, NodeKernel::Alias) && written != step.outputs.len() {
                        return Err(format!(
                            "the kernel writes {written} output(s); the node has {}",
                            step.outputs.len()
                        ));
                    }
                    if !matches!(k, NodeKernel::Alias) {
                        if let Some(Source::Param(p)) = step
                            .inputs
                            .iter()
                            .find(|s| matches!(s, Source::Param(p) if !self.param_buffers.contains_key(p)))
                        {
                            return Err(format!("parameter `{p}` is not held on the device"));
                        }
                    }
                    Ok(k)
                })
            };
            let fused_used = matches!(&kernel, Ok(NodeKernel::Dispatch(d)) if fused_act.is_some()
                && d.key.constants.iter().any(|&(n, v)| n == "ACT" && f64::from_bits(v) != 0.0));

            match kernel {
                Ok(NodeKernel::Alias)
                    if step.inputs.iter().all(|s| match s {
                        Source::Slot(s) => dev[*s].is_some(),
                        Source::Param(_) => false,
                    }) =>
                {
                    let Source::Slot(src) = step.inputs[0] else {
                        unreachable!()
                    };
                    let storage = dev[src].unwrap_or_default();
                    let out = step.outputs[0];
                    dev[out] = Some(storage);
                    refs[storage] += 1;
                    storage_values[storage].push(plan.slot_names[out].clone());
                    nodes.push(NodeReport {
                        node: node.name.clone(),
                        op: node.op.op_type().to_string(),
                        outputs: out_shapes,
                        placement: Placement::Alias { device: true },
                    });
                }
                Ok(kernel @ (NodeKernel::Dispatch(_) | NodeKernel::Multi(_))) => {
                    if !segments.last().map(|s| s.cpu_steps.is_empty()).unwrap_or(true) {
                        let start = dispatches.len();
                        segments.push(Segment {
                            dispatches: start..start,
                            ..Segment::default()
                        });
                    }
                    let specs = match kernel {
                        NodeKernel::Multi(v) => v,
                        NodeKernel::Dispatch(spec) => vec![spec],
                        NodeKernel::Alias => Vec::new(),
                    };
                    let mut fused_name = None;
                    // Dispatch `o` writes output `o` (checked above: as many dispatches as outputs).
                    for (spec, &out) in specs.iter().zip(&step.outputs) {
                        // Inputs onto the device.
                        let mut inputs = Vec::with_capacity(spec.binds.len());
                        for b in &spec.binds {
                            let res = match *b {
                                Bind::Zeros => Res::Zeros,
                                Bind::Input(i) => match &step.inputs[i] {
                                    Source::Param(p) => Res::Param(p.clone()),
                                    Source::Slot(s) => {
                                        let s = *s;
                                        if dev[s].is_none() {
                                            let seg = segments.len() - 1;
                                            let reuse = segments[seg].dispatches.is_empty();
                                            let id = alloc(
                                                s,
                                                reuse,
                                                &mut storages,
                                                &mut storage_values,
                                                &mut refs,
                                                &mut free,
                                            );
                                            dev[s] = Some(id);
                                            segments[seg].uploads.push((s, id));
                                            uploads += 1;
                                        }
                                        Res::Storage(dev[s].unwrap_or_default())
                                    }
                                },
                            };
                            inputs.push(res);
                        }
                        let id = alloc(out, true, &mut storages, &mut storage_values, &mut refs, &mut free);
                        dev[out] = Some(id);
                        if fused_used {
                            fused_name = fused_act.map(|(r, _)| {
                                fused_into.insert(r, (si, id));
                                graph.nodes()[plan.steps[r].node].name.clone()
                            });
                        }
                        if slot_types[out].1.iter().product::<usize>() > 0 {
                            dispatches.push(DispatchPlan {
                                label: node.name.clone(),
                                key: spec.key.clone(),
                                params: spec.params.clone(),
                                groups: spec.groups,
                                out: id,
                                inputs,
                            });
                            if let Some(seg) = segments.last_mut() {
                                seg.dispatches.end = dispatches.len();
                            }
                        }
                    }
                    if let Some(spec) = specs.first() {
                        nodes.push(NodeReport {
                            node: node.name.clone(),
                            op: node.op.op_type().to_string(),
                            outputs: out_shapes,
                            placement: Placement::Gpu {
                                shader: spec.key.shader.file(),
                                entry: spec.key.entry,
                                workgroups: spec.groups,
                                fused: fused_name,
                            },
                        });
                    }
                }
                other => {
                    // On the host: an alias of a host value, or a CPU fallback.
                    let placement = match other {
                        Err(reason) => {
                            log::info!("node `{}` runs on the CPU: {reason}", node.name);
                            Placement::Cpu { reason }
                        }
                        _ => Placement::Alias { device: false },
                    };
                    let seg = segments.len() - 1;
                    for src in &step.inputs {
                        if let Source::Slot(s) = src {
                            if !on_host[*s] {
                                let storage = dev[*s].unwrap_or_default();
                                segments[seg].readbacks.push(Readback { slot: *s, storage });
                                on_host[*s] = true;
                            }
                        }
                    }
                    segments[seg].cpu_steps.push(si);
                    for &o in &step.outputs {
                        on_host[o] = true;
                    }
                    nodes.push(NodeReport {
                        node: node.name.clone(),
                        op: node.op.op_type().to_string(),
                        outputs: out_shapes,
                        placement,
                    });
                }
            }
            release(step, &dev, &mut refs, &mut free);
        }

        // Graph outputs.
        let mut outputs = Vec::new();
        for src in &plan.output_sources {
            match src {
                Source::Param(p) => outputs.push(OutputFrom::Param(p.clone())),
                Source::Slot(s) => {
                    if !on_host[*s] {
                        let storage = dev[*s].unwrap_or_default();
                        if let Some(seg) = segments.last_mut() {
                            seg.readbacks.push(Readback { slot: *s, storage });
                        }
                        on_host[*s] = true;
                    }
                    outputs.push(OutputFrom::Host(*s));
                }
            }
        }

        let report = PlanReport {
            adapter: format!("{} ({})", self.ctx.adapter().name, self.ctx.adapter().backend),
            inputs: graph
                .inputs()
                .iter()
                .zip(shapes)
                .map(|(i, s)| (i.name.clone(), s.clone()))
                .collect(),
            nodes,
            buffers: storages
                .iter()
                .zip(&storage_values)
                .map(|(&bytes, v)| BufferReport {
                    bytes,
                    values: v.clone(),
                })
                .collect(),
            peak_intermediate_bytes: storages.iter().sum(),
            weight_bytes: self.weight_bytes,
            dispatches: dispatches.len(),
            submits: segments.iter().filter(|s| s.has_gpu_work()).count(),
            uploads,
            readbacks: segments.iter().map(|s| s.readbacks.len()).sum(),
        };
        let storage_labels = storage_values
            .iter()
            .map(|v| {
                let mut l = v.first().cloned().unwrap_or_default();
                if v.len() > 1 {
                    l.push_str(&format!(" (+{} reused)", v.len() - 1));
                }
                l
            })
            .collect();
        for (s, b) in storages.iter().enumerate() {
            if *b > limit {
                return Err(GpuError::TooLarge {
                    value: storage_values[s].join(", "),
                    bytes: *b,
                    limit,
                    adapter: self.ctx.adapter().name.clone(),
                }
                .into());
            }
        }
        Ok(ShapePlan {
            report,
            slot_types,
            storages,
            storage_labels,
            dispatches,
            segments,
            outputs,
        })
    }

    fn runtime(&self, plan: &ShapePlan) -> Result<Runtime, Error> {
        let ctx = &self.ctx;
        let device = &ctx.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffers: Vec<wgpu::Buffer> = plan
            .storages
            .iter()
            .zip(&plan.storage_labels)
            .map(|(&size, label)| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let mut uniforms = Vec::with_capacity(plan.dispatches.len());
        let mut bind_groups = Vec::with_capacity(plan.dispatches.len());
        let mut pipelines = Vec::with_capacity(plan.dispatches.len());
        for d in &plan.dispatches {
            let pipeline = ctx.pipeline(&d.key)?;
            let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&d.label),
                contents: bytemuck::cast_slice(&d.params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let layout = ctx.layout(d.key.inputs);
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: buffers[d.out].as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: uniform.as_entire_binding(),
                },
            ];
            for (i, r) in d.inputs.iter().enumerate() {
                let buf = match r {
                    Res::Storage(s) => &buffers[*s],
                    Res::Param(p) => self.param_buffers.get(p).ok_or_else(|| GpuError::Validation {
                        action: format!("binding parameter `{p}` for node `{}`", d.label),
                        message: "the parameter is not on the device".into(),
                    })?,
                    Res::Zeros => &ctx.zeros,
                };
                entries.push(wgpu::BindGroupEntry {
                    binding: 2 + i as u32,
                    resource: buf.as_entire_binding(),
                });
            }
            let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&d.label),
                layout: &layout.0,
                entries: &entries,
            });
            uniforms.push(uniform);
            bind_groups.push(bg);
            pipelines.push(pipeline);
        }
        let staging = plan
            .segments
            .iter()
            .map(|seg| {
                seg.readbacks
                    .iter()
                    .map(|r| {
                        device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some(&format!("{} (read-back)", self.plan.slot_names[r.slot])),
                            size: padded(size_of(&plan.slot_types[r.slot])),
                            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                            mapped_at_creation: false,
                        })
                    })
                    .collect()
            })
            .collect();
        if let Some(e) = pollster::block_on(val.pop()) {
            return Err(GpuError::Validation {
                action: "creating buffers and bind groups".into(),
                message: e.to_string(),
            }
            .into());
        }
        if let Some(e) = pollster::block_on(oom.pop()) {
            return Err(GpuError::OutOfMemory {
                action: format!(
                    "allocating {} of intermediate buffers ({e})",
                    human_bytes(plan.report.peak_intermediate_bytes)
                ),
            }
            .into());
        }
        let timer = device.features().contains(wgpu::Features::TIMESTAMP_QUERY).then(|| {
            let segments = plan.segments.len().max(1) as u64;
            Timer {
                queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("segment timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: (2 * segments) as u32,
                }),
                resolve: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("segment timestamps (resolve)"),
                    size: segments * RESOLVE_ALIGN,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                staging: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("segment timestamps (read-back)"),
                    size: segments * RESOLVE_ALIGN,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
            }
        });
        Ok(Runtime {
            buffers,
            bind_groups,
            pipelines,
            staging,
            _uniforms: uniforms,
            timer,
        })
    }

    /// Runs the graph, blocking until the outputs are back. `inputs` are in
    /// graph-input order, already checked against the graph's input types.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<BTreeMap<String, Tensor>, Error> {
        pollster::block_on(self.run_inner(inputs, true, false)).map(|(out, _)| out)
    }

    /// True when the device has timestamp queries, so
    /// [`GpuExecutor::run_profiled`] can report kernel time.
    pub fn has_timestamps(&self) -> bool {
        self.ctx.device.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// [`GpuExecutor::run`] that also measures the time the device spent in
    /// the run's compute passes (timestamp queries at the beginning and end of
    /// each pass, summed over the run's segments): the kernel time, without
    /// uploads, read-backs, CPU-placed nodes and submission overhead. `None`
    /// when the device has no timestamp queries. Profiling adds one small
    /// resolve, copy and map per run, so time end to end with
    /// [`GpuExecutor::run`].
    pub fn run_profiled(&self, inputs: Vec<Tensor>) -> Result<(BTreeMap<String, Tensor>, Option<Duration>), Error> {
        pollster::block_on(self.run_inner(inputs, true, true))
    }

    /// Runs the graph; the future resolves when the outputs are back. It
    /// polls the device without blocking the thread (each poll of the future
    /// checks the device once), so any executor can drive it.
    pub async fn run_async(&self, inputs: Vec<Tensor>) -> Result<BTreeMap<String, Tensor>, Error> {
        self.run_inner(inputs, false, false).await.map(|(out, _)| out)
    }

    async fn run_inner(
        &self,
        inputs: Vec<Tensor>,
        blocking: bool,
        profile: bool,
    ) -> Result<(BTreeMap<String, Tensor>, Option<Duration>), Error> {
        self.ctx.check_lost()?;
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let entry = self.entry(&shapes)?;
        let plan = &entry.plan;
        let rt = entry.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let rt = match rt {
            Some(rt) => rt,
            None => self.runtime(plan)?,
        };
        let timer = if profile { rt.timer.as_ref() } else { None };
        let result = match self.execute(plan, &rt, inputs, blocking, timer).await {
            Ok(out) => match timer {
                Some(t) => self.read_timer(plan, t).map(|d| (out, Some(d))),
                None => Ok((out, None)),
            },
            Err(e) => Err(e),
        };
        // A runtime whose run failed may hold half-written state; drop it.
        if result.is_ok() {
            entry.pool.lock().unwrap_or_else(|e| e.into_inner()).push(rt);
        }
        result
    }

    async fn execute(
        &self,
        plan: &ShapePlan,
        rt: &Runtime,
        inputs: Vec<Tensor>,
        blocking: bool,
        timer: Option<&Timer>,
    ) -> Result<BTreeMap<String, Tensor>, Error> {
        let ctx = &self.ctx;
        let mut host: Vec<Option<Tensor>> = vec![None; self.plan.slot_count];
        for (&s, t) in self.plan.input_slots.iter().zip(inputs) {
            host[s] = Some(t);
        }
        for (si, seg) in plan.segments.iter().enumerate() {
            for &(slot, storage) in &seg.uploads {
                let t = host[slot].as_ref().ok_or_else(|| GpuError::Validation {
                    action: format!("uploading `{}`", self.plan.slot_names[slot]),
                    message: "the value is not on the host".into(),
                })?;
                let mut data = t.to_le_bytes();
                data.resize(padded(data.len() as u64) as usize, 0);
                ctx.queue.write_buffer(&rt.buffers[storage], 0, &data);
            }
            if seg.has_gpu_work() {
                let val = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
                let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                let label = format!("{} segment {si}", self.graph.name());
                let mut encoder = ctx
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(&label) });
                if !seg.dispatches.is_empty() {
                    let timestamp_writes = timer.map(|t| wgpu::ComputePassTimestampWrites {
                        query_set: &t.queries,
                        beginning_of_pass_write_index: Some(2 * si as u32),
                        end_of_pass_write_index: Some(2 * si as u32 + 1),
                    });
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(&label),
                        timestamp_writes,
                    });
                    for di in seg.dispatches.clone() {
                        let d = &plan.dispatches[di];
                        pass.set_pipeline(&rt.pipelines[di]);
                        pass.set_bind_group(0, &rt.bind_groups[di], &[]);
                        pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                    }
                    drop(pass);
                    if let Some(t) = timer {
                        let q = 2 * si as u32;
                        encoder.resolve_query_set(&t.queries, q..q + 2, &t.resolve, si as u64 * RESOLVE_ALIGN);
                    }
                }
                for (r, staging) in seg.readbacks.iter().zip(&rt.staging[si]) {
                    encoder.copy_buffer_to_buffer(&rt.buffers[r.storage], 0, staging, 0, staging.size());
                }
                let index = ctx.queue.submit([encoder.finish()]);
                let oom = oom.pop();
                let val = val.pop();
                if let Some(e) = oom.await {
                    return Err(GpuError::OutOfMemory {
                        action: format!("running `{}` ({e})", self.graph.name()),
                    }
                    .into());
                }
                if let Some(e) = val.await {
                    return Err(GpuError::Validation {
                        action: format!("the commands of `{}`", self.graph.name()),
                        message: e.to_string(),
                    }
                    .into());
                }
                if !seg.readbacks.is_empty() {
                    let tensors = self.read_back(plan, rt, si, index, blocking).await?;
                    for (r, t) in seg.readbacks.iter().zip(tensors) {
                        host[r.slot] = Some(t);
                    }
                }
            }
            for &step_i in &seg.cpu_steps {
                let step = &self.plan.steps[step_i];
                let node = &self.graph.nodes()[step.node];
                let node_err = |source| RunError::Node {
                    node: node.name.clone(),
                    op: node.op.op_type().to_string(),
                    source,
                };
                let outs = {
                    let mut ins: Vec<&Tensor> = Vec::with_capacity(step.inputs.len());
                    for src in &step.inputs {
                        let t = match src {
                            Source::Slot(s) => host[*s].as_ref(),
                            Source::Param(p) => self.params.get(p),
                        };
                        ins.push(t.ok_or_else(|| {
                            node_err(crate::error::OpError::Shape(
                                "internal error: an input is not on the host".into(),
                            ))
                        })?);
                    }
                    node.op.cpu(&ins).map_err(node_err)?
                };
                for (&s, t) in step.outputs.iter().zip(outs) {
                    host[s] = Some(t);
                }
            }
        }
        let mut out = BTreeMap::new();
        for (info, from) in self.graph.outputs().iter().zip(&plan.outputs) {
            let t = match from {
                OutputFrom::Host(s) => host[*s].take(),
                OutputFrom::Param(p) => self.params.get(p).cloned(),
            };
            let t = t.ok_or_else(|| RunError::UnknownOutput {
                name: info.name.clone(),
                expected: String::new(),
            })?;
            out.insert(info.name.clone(), t);
        }
        Ok(out)
    }

    /// Copies the resolved timestamps to the host and sums the passes' spans.
    /// Runs after [`GpuExecutor::execute`], whose submissions it follows.
    fn read_timer(&self, plan: &ShapePlan, t: &Timer) -> Result<Duration, Error> {
        let ctx = &self.ctx;
        let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("segment timestamps"),
        });
        encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.staging, 0, t.staging.size());
        let index = ctx.queue.submit([encoder.finish()]);
        let state: Arc<Mutex<Option<Result<(), String>>>> = Arc::new(Mutex::new(None));
        let cb_state = state.clone();
        t.staging.map_async(wgpu::MapMode::Read, .., move |r| {
            if let Ok(mut s) = cb_state.lock() {
                *s = Some(r.map_err(|e| e.to_string()));
            }
        });
        let wait = ctx.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: Some(self.options.timeout),
        });
        if let Err(e) = wait {
            ctx.check_lost()?;
            return Err(GpuError::Readback {
                message: format!("timestamps: {e}"),
            }
            .into());
        }
        let start = std::time::Instant::now();
        let mapped = || state.lock().map(|s| s.clone()).unwrap_or(None);
        while mapped().is_none() && start.elapsed() < self.options.timeout {
            let _ = ctx.device.poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(Duration::from_millis(100)),
            });
        }
        match mapped() {
            Some(Ok(())) => {}
            Some(Err(message)) => return Err(GpuError::Readback { message }.into()),
            None => {
                return Err(GpuError::Readback {
                    message: "the timestamp buffer was not mapped".into(),
                }
                .into())
            }
        }
        let period = f64::from(ctx.queue.get_timestamp_period());
        let mut ns = 0.0;
        {
            let view = t
                .staging
                .get_mapped_range(..)
                .map_err(|e| GpuError::Readback { message: e.to_string() })?;
            for (si, seg) in plan.segments.iter().enumerate() {
                if seg.dispatches.is_empty() {
                    continue;
                }
                let at = si * RESOLVE_ALIGN as usize;
                let tick = |i: usize| {
                    let b = &view[at + 8 * i..at + 8 * i + 8];
                    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                };
                ns += tick(1).saturating_sub(tick(0)) as f64 * period;
            }
        }
        t.staging.unmap();
        Ok(Duration::from_secs_f64(ns * 1e-9))
    }

    /// Maps the staging buffers of segment `si` and converts them to tensors.
    async fn read_back(
        &self,
        plan: &ShapePlan,
        rt: &Runtime,
        si: usize,
        index: wgpu::SubmissionIndex,
        blocking: bool,
    ) -> Result<Vec<Tensor>, Error> {
        let ctx = &self.ctx;
        let seg = &plan.segments[si];
        let staging = &rt.staging[si];
        let state: Arc<Mutex<(usize, Option<String>)>> = Arc::new(Mutex::new((0, None)));
        for buf in staging {
            let state = state.clone();
            buf.map_async(wgpu::MapMode::Read, .., move |r| {
                if let Ok(mut s) = state.lock() {
                    s.0 += 1;
                    if let Err(e) = r {
                        s.1.get_or_insert(e.to_string());
                    }
                }
            });
        }
        let n = staging.len();
        let done = || state.lock().map(|s| s.0 >= n).unwrap_or(true);
        if blocking {
            let wait = ctx.device.poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: Some(self.options.timeout),
            });
            if let Err(e) = wait {
                ctx.check_lost()?;
                return Err(GpuError::Readback {
                    message: format!("{e} (waited up to {:?})", self.options.timeout),
                }
                .into());
            }
            // The submission is done; the map callbacks may need another
            // turn of the device's maintenance to fire.
            let start = std::time::Instant::now();
            while !done() && start.elapsed() < self.options.timeout && ctx.check_lost().is_ok() {
                let _ = ctx.device.poll(wgpu::PollType::Wait {
                    submission_index: None,
                    timeout: Some(Duration::from_millis(100)),
                });
                if !done() {
                    std::thread::yield_now();
                }
            }
        } else {
            let start = std::time::Instant::now();
            let timeout = self.options.timeout;
            let mut failed: Option<String> = None;
            std::future::poll_fn(|cx| {
                if let Err(e) = ctx.device.poll(wgpu::PollType::Poll) {
                    failed = Some(e.to_string());
                    return Poll::Ready(());
                }
                if done() {
                    return Poll::Ready(());
                }
                if ctx.check_lost().is_err() || start.elapsed() > timeout {
                    failed = Some(format!("no result after {timeout:?}"));
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            })
            .await;
            if let Some(message) = failed {
                ctx.check_lost()?;
                return Err(GpuError::Readback { message }.into());
            }
        }
        ctx.check_lost()?;
        if let Some(e) = ctx.take_uncaptured() {
            return Err(GpuError::Validation {
                action: format!("running `{}`", self.graph.name()),
                message: e,
            }
            .into());
        }
        if !done() {
            return Err(GpuError::Readback {
                message: "the device finished but the buffers were not mapped".into(),
            }
            .into());
        }
        if let Some(e) = state.lock().ok().and_then(|s| s.1.clone()) {
            for b in staging {
                b.unmap();
            }
            return Err(GpuError::Readback { message: e }.into());
        }
        let mut out = Vec::with_capacity(n);
        for (r, buf) in seg.readbacks.iter().zip(staging) {
            let (dtype, shape) = &plan.slot_types[r.slot];
            let len = size_of(&plan.slot_types[r.slot]) as usize;
            let t = {
                let view = buf
                    .get_mapped_range(..)
                    .map_err(|e| GpuError::Readback { message: e.to_string() })?;
                Tensor::from_le_bytes(*dtype, shape.clone(), &view[..len])
            };
            buf.unmap();
            out.push(t?);
        }
        Ok(out)
    }
}

/// Drops the references a step's dead values hold on their buffers.
fn release(step: &crate::plan::Step, dev: &[Option<usize>], refs: &mut [usize], free: &mut Vec<usize>) {
    for &s in &step.free_after {
        if let Some(id) = dev[s] {
            refs[id] = refs[id].saturating_sub(1);
            if refs[id] == 0 {
                free.push(id);
            }
        }
    }
}
