//! Sessions: a model compiled for a device, run many times.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::cpu::{CpuExecutor, CpuKernels};
use crate::backend::gpu::AdapterChoice;
#[cfg(feature = "gpu")]
use crate::backend::gpu::{GpuContext, GpuError, GpuExecutor, GpuOptions, PlanReport};
use crate::error::{Error, RunError};
use crate::graph::Graph;
use crate::model::Model;
use crate::tensor::{Dim, Tensor};

/// A run's outputs by name.
type Outputs = BTreeMap<String, Tensor>;

/// The time one node took in a [`Session::run_op_times`] run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpTime {
    /// The node's name.
    pub node: String,
    /// Its op type (`MatMul`, `Attention`, ...).
    pub op: String,
    /// Wall time of its kernel.
    pub time: std::time::Duration,
}

/// Where a session runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Device {
    /// The CPU backend (fast paths: `gemm`, rayon).
    #[default]
    Cpu,
    /// The CPU backend running every op's naive reference (slow; for checking).
    CpuReference,
    /// The GPU backend on the adapter this choice picks. With
    /// [`AdapterChoice::Auto`] and no hardware adapter (only lavapipe,
    /// llvmpipe or WARP, or none at all), the session runs on the CPU
    /// backend instead and logs that; [`Session::backend`] says which.
    ///
    /// In a build without the `gpu` feature every choice but `Auto` fails
    /// with [`Error::FeatureDisabled`], and `Auto` runs on the CPU backend.
    Gpu(AdapterChoice),
}

impl FromStr for Device {
    type Err = String;

    /// Parses `cpu`, `cpu-reference`, or a GPU choice: `gpu` (or `auto`),
    /// `vulkan`, `metal`, `dx12`, `gl`, `software`, `name:<substring>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cpu-reference" | "cpu-ref" | "reference" => Ok(Device::CpuReference),
            _ => s.parse::<AdapterChoice>().map(Device::Gpu).map_err(|_| {
                format!(
                    "unknown device `{}`; choose cpu, cpu-reference, gpu, vulkan, metal, dx12, gl, software or name:<adapter substring>",
                    s.trim()
                )
            }),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::CpuReference => f.write_str("cpu-reference"),
            Device::Gpu(choice) => write!(f, "{choice}"),
        }
    }
}

#[derive(Debug)]
enum Executor {
    Cpu(CpuExecutor),
    #[cfg(feature = "gpu")]
    Gpu(Box<GpuExecutor>),
}

/// The GPU executor for `choice`, or the CPU one where `Auto` finds no
/// hardware adapter.
#[cfg(feature = "gpu")]
fn gpu_executor(model: &Model, graph: &Arc<Graph>, choice: &AdapterChoice) -> Result<Executor, Error> {
    match GpuContext::shared(choice) {
        Ok(ctx) => Ok(Executor::Gpu(Box::new(GpuExecutor::new(
            graph.clone(),
            model.params_arc(),
            ctx,
            GpuOptions::default(),
        )?))),
        Err(GpuError::NoAdapter { available, .. }) if *choice == AdapterChoice::Auto => {
            log::warn!(
                "no hardware GPU adapter (found: {available}); running on the CPU backend, which is faster than a software adapter (ask for `software` to use one)"
            );
            Ok(Executor::Cpu(CpuExecutor::new(graph, CpuKernels::Fast)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Without the GPU backend, `Auto` finds no adapter and runs on the CPU; any
/// other choice is an error that names the missing feature.
#[cfg(not(feature = "gpu"))]
fn gpu_executor(_model: &Model, graph: &Arc<Graph>, choice: &AdapterChoice) -> Result<Executor, Error> {
    if *choice == AdapterChoice::Auto {
        log::warn!("this build of wginfer has no GPU backend (the `gpu` feature is off); running on the CPU backend");
        return Ok(Executor::Cpu(CpuExecutor::new(graph, CpuKernels::Fast)));
    }
    Err(Error::FeatureDisabled {
        feature: "gpu",
        what: format!("device `{choice}`"),
    })
}

/// A model compiled for one device.
///
/// `Session` is `Send + Sync`: one session can serve runs from many threads
/// at once. Each CPU run has its own buffers; each GPU run takes its own set
/// of device buffers from a pool (the weights are shared), so concurrent GPU
/// runs only queue behind each other on the device. The future of
/// [`Session::run_async`] is `Send`.
#[derive(Debug)]
pub struct Session {
    graph: Arc<Graph>,
    params: Arc<HashMap<String, Tensor>>,
    device: Device,
    executor: Executor,
}

impl Session {
    /// Compiles `model` for `device`.
    pub fn new(model: &Model, device: Device) -> Result<Self, Error> {
        let graph = model.graph_arc();
        let executor = match &device {
            Device::Cpu => Executor::Cpu(CpuExecutor::new(&graph, CpuKernels::Fast)),
            Device::CpuReference => Executor::Cpu(CpuExecutor::new(&graph, CpuKernels::Reference)),
            Device::Gpu(choice) => gpu_executor(model, &graph, choice)?,
        };
        let mut executor = executor;
        let params = match &mut executor {
            Executor::Cpu(cpu) if device != Device::CpuReference => {
                let params = flush_subnormals(model.params_arc());
                cpu.prepare(&graph, &params);
                params
            }
            _ => model.params_arc(),
        };
        Ok(Self {
            graph,
            params,
            device,
            executor,
        })
    }

    /// The graph the session runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The device asked for.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The backend the session actually runs on: `cpu`, `cpu-reference`, or
    /// `gpu: <adapter> (<api>)` (a `gpu` request falls back to `cpu`
    /// where there is no hardware adapter).
    pub fn backend(&self) -> String {
        match &self.executor {
            Executor::Cpu(_) if self.device == Device::CpuReference => "cpu-reference".into(),
            Executor::Cpu(_) => "cpu".into(),
            #[cfg(feature = "gpu")]
            Executor::Gpu(g) => {
                let a = g.context().adapter();
                format!("gpu: {} ({})", a.name, a.backend)
            }
        }
    }

    /// The GPU plan for these input shapes (graph-input order; `None` takes
    /// symbolic dimensions as 1): placements, buffers, dispatches and
    /// submits per run. `None` when the session runs on the CPU.
    #[cfg(feature = "gpu")]
    pub fn gpu_plan(&self, shapes: Option<&[Vec<usize>]>) -> Option<Result<PlanReport, Error>> {
        match &self.executor {
            Executor::Gpu(g) => Some(g.plan_report(shapes)),
            Executor::Cpu(_) => None,
        }
    }

    /// [`Session::run`] as a future, for async applications: on the GPU it
    /// does not block the thread while the device works (the future polls
    /// the device each time it is polled). On the CPU it computes in place.
    pub async fn run_async<S: Into<String>>(
        &self,
        inputs: impl IntoIterator<Item = (S, Tensor)>,
    ) -> Result<BTreeMap<String, Tensor>, Error> {
        let ordered = self.check_inputs(inputs)?;
        match &self.executor {
            Executor::Cpu(cpu) => Ok(cpu.run(&self.graph, &self.params, ordered)?),
            #[cfg(feature = "gpu")]
            Executor::Gpu(gpu) => gpu.run_async(ordered).await,
        }
    }

    /// Runs the model on named inputs and returns every graph output by name.
    ///
    /// Inputs are checked against the graph: every input present, no unknown
    /// names, the right dtype, and a shape that matches (a symbolic dimension
    /// takes one size across all inputs).
    pub fn run<S: Into<String>>(
        &self,
        inputs: impl IntoIterator<Item = (S, Tensor)>,
    ) -> Result<BTreeMap<String, Tensor>, Error> {
        let ordered = self.check_inputs(inputs)?;
        match &self.executor {
            Executor::Cpu(cpu) => Ok(cpu.run(&self.graph, &self.params, ordered)?),
            #[cfg(feature = "gpu")]
            Executor::Gpu(gpu) => gpu.run(ordered),
        }
    }

    /// [`Session::run`] that also times every node on the CPU backend: one
    /// [`OpTime`] per node in execution order (the wall time of its kernel,
    /// without the executor's bookkeeping). `None` for the times on a GPU
    /// session, whose nodes run inside one submission (see
    /// [`Session::run_profiled`] for its kernel time).
    pub fn run_op_times<S: Into<String>>(
        &self,
        inputs: impl IntoIterator<Item = (S, Tensor)>,
    ) -> Result<(Outputs, Option<Vec<OpTime>>), Error> {
        let ordered = self.check_inputs(inputs)?;
        match &self.executor {
            Executor::Cpu(cpu) => {
                let (out, times) = cpu.run_timed(&self.graph, &self.params, ordered)?;
                let nodes = self.graph.nodes();
                let times = times
                    .into_iter()
                    .map(|(i, d)| OpTime {
                        node: nodes[i].name.clone(),
                        op: nodes[i].op.op_type().to_string(),
                        time: d,
                    })
                    .collect();
                Ok((out, Some(times)))
            }
            #[cfg(feature = "gpu")]
            Executor::Gpu(gpu) => Ok((gpu.run(ordered)?, None)),
        }
    }

    /// [`Session::run`] that also reports the GPU's kernel time: the time
    /// the device spent in the run's compute passes, from timestamp queries,
    /// without uploads, read-backs, CPU-placed nodes and submission overhead.
    /// The time is `None` on the CPU and on adapters without timestamp
    /// queries. Profiling adds a little work per run; time end to end with
    /// [`Session::run`].
    pub fn run_profiled<S: Into<String>>(
        &self,
        inputs: impl IntoIterator<Item = (S, Tensor)>,
    ) -> Result<(BTreeMap<String, Tensor>, Option<std::time::Duration>), Error> {
        let ordered = self.check_inputs(inputs)?;
        match &self.executor {
            Executor::Cpu(cpu) => Ok((cpu.run(&self.graph, &self.params, ordered)?, None)),
            #[cfg(feature = "gpu")]
            Executor::Gpu(gpu) => gpu.run_profiled(ordered),
        }
    }

    fn check_inputs<S: Into<String>>(
        &self,
        inputs: impl IntoIterator<Item = (S, Tensor)>,
    ) -> Result<Vec<Tensor>, RunError> {
        let names = || {
            self.graph
                .inputs()
                .iter()
                .map(|i| format!("{} {}", i.name, i.ty))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut given: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in inputs {
            let name = name.into();
            if !self.graph.inputs().iter().any(|i| i.name == name) {
                return Err(RunError::UnknownInput {
                    name,
                    expected: names(),
                });
            }
            given.insert(name, t);
        }
        let mut symbols: HashMap<String, usize> = HashMap::new();
        let mut ordered = Vec::with_capacity(self.graph.inputs().len());
        for info in self.graph.inputs() {
            let t = given.remove(&info.name).ok_or_else(|| RunError::MissingInput {
                name: info.name.clone(),
                expected: names(),
            })?;
            if t.dtype() != info.ty.dtype {
                return Err(RunError::InputDType {
                    name: info.name.clone(),
                    expected: info.ty.dtype,
                    got: t.dtype(),
                });
            }
            let bad_shape = || RunError::InputShape {
                name: info.name.clone(),
                expected: info.ty.shape_string(),
                got: t.shape().to_vec(),
            };
            if t.rank() != info.ty.rank() {
                return Err(bad_shape());
            }
            for (d, &got) in info.ty.shape.iter().zip(t.shape()) {
                match d {
                    Dim::Known(n) if *n != got => return Err(bad_shape()),
                    Dim::Sym(s) if *symbols.entry(s.clone()).or_insert(got) != got => return Err(bad_shape()),
                    _ => {}
                }
            }
            ordered.push(t);
        }
        Ok(ordered)
    }
}

/// The fast CPU path runs on weights whose subnormal f32 values (below
/// 1.2e-38 in magnitude) are zero. A product with a subnormal operand takes a
/// microcode assist of ~100 cycles on x86 CPUs, and trained weights do hold
/// some (the shipped digits MLP has 200 of 17k, which made its batch-64 run
/// 6x slower); their contribution to any sum is below f32 resolution of
/// every normal term. The model itself is left untouched (saving keeps
/// them), the reference backend keeps them, and GPUs commonly flush them in
/// hardware. A model without subnormal weights is shared, not copied.
fn flush_subnormals(params: Arc<HashMap<String, Tensor>>) -> Arc<HashMap<String, Tensor>> {
    let has = |t: &Tensor| t.as_f32().is_ok_and(|v| v.iter().any(|x| x.is_subnormal()));
    if !params.values().any(has) {
        return params;
    }
    let flushed = params
        .iter()
        .map(|(name, t)| {
            let t = match t.as_f32() {
                Ok(v) if has(t) => {
                    let v: Vec<f32> = v.iter().map(|&x| if x.is_subnormal() { 0.0 } else { x }).collect();
                    Tensor::from_vec(t.shape().to_vec(), v).unwrap_or_else(|_| t.clone())
                }
                _ => t.clone(),
            };
            (name.clone(), t)
        })
        .collect();
    Arc::new(flushed)
}

// `Session` must stay shareable across threads (servers, desktop apps).
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Session>();
};
