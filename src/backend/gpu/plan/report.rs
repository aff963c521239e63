//! The printable account of a shape plan: where every node runs, which
//! values share which buffer, and what one run costs in dispatches, submits
//! and transfers (`wginfer inspect --plan --device gpu`).

use std::fmt;

use super::super::context::human_bytes;

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

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Gpu {
                shader,
                entry,
                workgroups,
                fused,
            } => {
                write!(f, "gpu {shader}::{entry} grid {workgroups:?}")?;
                match fused {
                    Some(name) => write!(f, " + {name}"),
                    None => Ok(()),
                }
            }
            Placement::Fused { into } => write!(f, "gpu, fused into {into}"),
            Placement::Alias { device: true } => write!(f, "gpu, alias (no work)"),
            Placement::Alias { device: false } => write!(f, "host, alias (no work)"),
            Placement::Cpu { reason } => write!(f, "CPU fallback: {reason}"),
        }
    }
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
            writeln!(f, "  {:<16} {:<10} {:<16} {}", n.node, n.op, out, n.placement)?;
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
