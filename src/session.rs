//! Sessions: a model compiled for a device, run many times.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::cpu::{CpuExecutor, CpuKernels};
use crate::error::{Error, RunError};
use crate::graph::Graph;
use crate::model::Model;
use crate::tensor::{Dim, Tensor};

/// Where a session runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Device {
    /// The CPU backend (fast paths: `gemm`, rayon).
    #[default]
    Cpu,
    /// The CPU backend running every op's naive reference (slow; for checking).
    CpuReference,
}

impl FromStr for Device {
    type Err = String;

    /// Parses `cpu` or `cpu-reference`. GPU choices (`gpu`, `vulkan`, `metal`,
    /// `dx12`, `gl`, `software`) are recognised and refused with a message
    /// until the GPU backend lands.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cpu-reference" | "cpu-ref" | "reference" => Ok(Device::CpuReference),
            g @ ("gpu" | "auto" | "vulkan" | "metal" | "dx12" | "gl" | "software") => Err(format!(
                "device `{g}`: the GPU backend is not part of this build yet; use `cpu`"
            )),
            other => Err(format!("unknown device `{other}`; choose cpu or cpu-reference")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::CpuReference => f.write_str("cpu-reference"),
        }
    }
}

#[derive(Debug)]
enum Executor {
    Cpu(CpuExecutor),
}

/// A model compiled for one device. `Session` is `Send + Sync`: one session
/// can serve runs from many threads at once (each run has its own buffers).
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
        let executor = match device {
            Device::Cpu => Executor::Cpu(CpuExecutor::new(&graph, CpuKernels::Fast)),
            Device::CpuReference => Executor::Cpu(CpuExecutor::new(&graph, CpuKernels::Reference)),
        };
        Ok(Self {
            graph,
            params: model.params_arc(),
            device,
            executor,
        })
    }

    /// The graph this session runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
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
