//! The GPU executor: a graph compiled for one device.
//!
//! [`GpuExecutor`] owns the device context, the weights uploaded once, and a
//! cache of shape plans. Planning (`plan/`) is pure: per distinct set of
//! input shapes it decides each node's placement, gives every intermediate
//! value a device buffer by lifetime, and lays the run out in segments.
//! The runtime (`runtime.rs`) makes the device objects of a plan and runs
//! it: one encoder and one submit per segment, then the read-backs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wgpu::util::DeviceExt;

use crate::error::Error;
use crate::graph::Graph;
use crate::tensor::Tensor;

use super::context::{human_bytes, GpuContext};
use super::error::GpuError;
use super::kernels::{self, Caps, MatmulKernel};
use super::plan::{padded, GraphPlan, ShapePlan, Target};
use super::runtime::{self, Run, Runtime};

pub use super::plan::{BufferReport, NodeReport, Placement, PlanReport};

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
    /// How long a run may wait for the GPU before it fails: 120 s, or
    /// `WGINFER_GPU_TIMEOUT_S` seconds where that variable is set (a
    /// software adapter on a loaded machine can need longer).
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
            timeout: Duration::from_secs(
                std::env::var("WGINFER_GPU_TIMEOUT_S")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(120),
            ),
            portable_kernels: false,
        }
    }
}

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
    plan: GraphPlan,
    options: GpuOptions,
    param_buffers: HashMap<String, wgpu::Buffer>,
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

/// What planning needs to know about `ctx`'s device under `options`.
fn target(ctx: &GpuContext, options: &GpuOptions) -> Target {
    let features = ctx.device.features();
    let portable = options.portable_kernels;
    let caps = Caps {
        max_workgroups: ctx.limits.max_compute_workgroups_per_dimension,
        software: ctx.adapter().software,
        matmul: options.matmul,
        backend: format!("gpu ({})", ctx.adapter().name),
        f16: !portable && features.contains(wgpu::Features::SHADER_F16),
        packed_dot: !portable && kernels::packed_dot_available(),
        subgroups: !portable && features.contains(wgpu::Features::SUBGROUP) && ctx.adapter().subgroup_min_size >= 8,
    };
    Target {
        caps,
        adapter: ctx.adapter().name.clone(),
        adapter_label: format!("{} ({})", ctx.adapter().name, ctx.adapter().backend),
        max_binding: ctx.limits.max_storage_buffer_binding_size,
        max_buffer: ctx.limits.max_buffer_size,
        budget: crate::tensor::alloc_limit(),
        cpu_ops: options.cpu_ops.clone(),
        fuse_activations: options.fuse_activations,
    }
}

/// Uploads the weights the plan keeps on the device, each as its raw
/// little-endian bytes padded to whole `u32` words: packed weights
/// (u8/i8/f16) stay packed on the device.
fn upload_weights(
    ctx: &GpuContext,
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    plan: &GraphPlan,
) -> Result<HashMap<String, wgpu::Buffer>, Error> {
    let mut buffers = HashMap::new();
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    for p in graph.params().iter().filter(|p| plan.resident.contains(&p.name)) {
        let Some(t) = params.get(&p.name) else { continue };
        let mut data = t.to_le_bytes();
        data.resize(padded(t.size_in_bytes() as u64) as usize, 0);
        let buf = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(&p.name),
            contents: &data,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        buffers.insert(p.name.clone(), buf);
    }
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(GpuError::OutOfMemory {
            action: format!("uploading {} of weights ({e})", human_bytes(plan.weight_bytes)),
        }
        .into());
    }
    Ok(buffers)
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
        let target = target(&ctx, &options);
        let budget = target.budget;
        let plan = GraphPlan::new(&graph, &params, target);
        // Weights over the budget are refused before any is uploaded.
        if plan.weight_bytes > budget {
            return Err(GpuError::OverBudget {
                value: format!("the model's weights ({} bytes)", plan.weight_bytes),
                bytes: plan.weight_bytes,
                budget: format!("the allocation limit (set by {})", crate::tensor::MAX_ALLOC_ENV),
                limit: budget,
            }
            .into());
        }
        let param_buffers = upload_weights(&ctx, &graph, &params, &plan)?;
        Ok(Self {
            ctx,
            graph,
            params,
            plan,
            options,
            param_buffers,
            shapes: Mutex::new(HashMap::new()),
        })
    }

    /// Bytes of the weights held on the device: every parameter a node
    /// reads, as its raw (packed) bytes padded to 4 bytes per tensor. A
    /// quantized weight costs its packed size, never an f32 copy.
    pub fn param_bytes(&self) -> u64 {
        self.plan.weight_bytes
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
        let plan = self.plan.for_shapes(&self.graph, &self.params, shapes)?;
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

    /// Runs the graph, blocking until the outputs are back. `inputs` are in
    /// graph-input order, already checked against the graph's input types.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<BTreeMap<String, Tensor>, Error> {
        pollster::block_on(self.run_inner(inputs, true, false)).map(|(out, _)| out)
    }

    /// True when the device has timestamp queries, so
    /// [`GpuExecutor::run_profiled`] can report kernel time.
    pub fn has_timestamps(&self) -> bool {
        runtime::has_timestamps(&self.ctx.device)
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
            None => Runtime::new(&self.ctx, plan, &self.plan.exec.slot_names, &self.param_buffers)?,
        };
        let run = Run {
            ctx: &self.ctx,
            graph: &self.graph,
            exec: &self.plan.exec,
            params: &self.params,
            plan,
            timeout: self.options.timeout,
        };
        let result = run.execute(&rt, inputs, blocking, profile).await;
        // A runtime whose run failed may hold half-written state; drop it.
        if result.is_ok() {
            entry.pool.lock().unwrap_or_else(|e| e.into_inner()).push(rt);
        }
        result
    }
}
