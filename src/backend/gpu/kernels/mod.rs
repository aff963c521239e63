//! Kernel selection: for one node with concrete input shapes, which shader,
//! entry point, override constants, parameters and grid run it — or an
//! [`Error::Unsupported`] saying why the GPU cannot, so the planner places the
//! node on the CPU.

//!
//! Each family file (`kernels/<family>.rs`, mirroring `src/ops/` and
//! `shaders/`) declares its ops once, in a `KERNELS` table of [`KernelDef`]s;
//! [`has_kernel`] and [`select`] read those tables and nothing else. An op
//! type appears in exactly one table, so the order of the tables does not
//! matter.

use std::any::Any;

use crate::error::Error;
use crate::ops::unary::UnaryKind;
use crate::ops::Op;
use crate::tensor::DType;

use super::context::PipelineKey;

mod cast;
mod cnn;
pub(crate) mod codes;
mod elementwise;
mod matmul;
pub(crate) mod params;
mod quant;
mod transformer;

pub(crate) use quant::packed_dot_available;

/// Which matmul kernel to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulKernel {
    /// Register-blocked on software adapters, shared-memory tiles on hardware.
    #[default]
    Auto,
    /// Always a register-blocked kernel: `matmul_vec4.wgsl` (8x16 tiles,
    /// vec4 loads) where the shapes are aligned, else `matmul.wgsl::blocked`.
    Blocked,
    /// Always the shared-memory tiled kernel (`matmul.wgsl::tiled`).
    Tiled,
}

/// What the planner knows about the adapter.
#[derive(Clone, Debug)]
pub(crate) struct Caps {
    pub max_workgroups: u32,
    pub software: bool,
    pub matmul: MatmulKernel,
    pub backend: String,
    /// `SHADER_F16` is enabled on the device.
    pub f16: bool,
    /// `dot4I8Packed` exists (WGSL `packed_4x8_integer_dot_product`).
    pub packed_dot: bool,
    /// `SUBGROUP` is enabled and every subgroup has at least 8 invocations.
    pub subgroups: bool,
}

/// A buffer bound at binding `2 + i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bind {
    /// The node's input `i`.
    Input(usize),
    /// A zero buffer standing in for an absent optional input.
    Zeros,
}

/// One dispatch of one pipeline.
#[derive(Clone, Debug)]
pub(crate) struct DispatchSpec {
    pub key: PipelineKey,
    pub params: Vec<u32>,
    pub groups: [u32; 3],
    pub binds: Vec<Bind>,
}

/// How a node runs on the GPU.
#[derive(Clone, Debug)]
pub(crate) enum NodeKernel {
    /// No work: the output is the input's buffer with another shape.
    Alias,
    /// One compute dispatch.
    Dispatch(DispatchSpec),
    /// A node with several outputs: one dispatch per output, the `i`-th
    /// writing output `i` (each binds the node's inputs as a single-output
    /// dispatch does).
    Multi(Vec<DispatchSpec>),
}

/// The override constants that apply `kind` through `wg_activate`: `ACT`
/// (0, the identity, for `None`) and, for LeakyRelu, its slope `ALPHA`.
pub(crate) fn unary_constants(kind: Option<UnaryKind>) -> Vec<(&'static str, f64)> {
    let mut list = vec![("ACT", kind.map(|k| codes::unary(k).0).unwrap_or(0) as f64)];
    if let Some(UnaryKind::LeakyRelu(alpha)) = kind {
        list.push(("ALPHA", alpha as f64));
    }
    list
}

fn unsupported(op: &dyn Op, format: impl Into<String>, caps: &Caps) -> Error {
    Error::Unsupported {
        op: op.op_type().to_string(),
        format: format.into(),
        backend: caps.backend.clone(),
    }
}

fn constants(list: &[(&'static str, f64)]) -> Vec<(&'static str, u64)> {
    list.iter().map(|&(n, v)| (n, v.to_bits())).collect()
}

/// A 1-D count of workgroups laid out in x (and y when x would exceed the limit).
fn grid(groups: usize, max: u32) -> Option<[u32; 3]> {
    let max = max.max(1) as usize;
    if groups <= max {
        return Some([groups.max(1) as u32, 1, 1]);
    }
    let y = groups.div_ceil(max);
    (y <= max).then_some([max as u32, y as u32, 1])
}

/// Every family's table.
static FAMILIES: [&[KernelDef]; 6] = [
    elementwise::KERNELS,
    matmul::KERNELS,
    cnn::KERNELS,
    cast::KERNELS,
    transformer::KERNELS,
    quant::KERNELS,
];

/// Which input dtypes a kernel entry takes before its selector runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inputs {
    /// Every input must be f32 (checked before the selector runs).
    F32,
    /// The selector checks the dtypes itself (packed weights, indices, casts,
    /// aliases).
    Any,
}

/// One op type's GPU kernels, declared once in its family's `KERNELS` table.
pub(super) struct KernelDef {
    /// The op's Rust type (the tests name the entries by it).
    #[cfg_attr(not(test), allow(dead_code))]
    op: &'static str,
    /// True for an op of this entry's type.
    is: fn(&dyn Any) -> bool,
    /// True when an op of this type has a kernel with its attributes (for f32
    /// values); the selector may still refuse particular shapes.
    accepts: fn(&dyn Any) -> bool,
    /// Picks the kernel for a node of this type.
    select: fn(&Node) -> Result<NodeKernel, Error>,
    inputs: Inputs,
    /// Applies a fused unary op in its epilogue.
    fuses: bool,
}

impl KernelDef {
    /// An op whose kernels take f32 inputs only.
    const fn f32(op: &'static str, is: fn(&dyn Any) -> bool, select: fn(&Node) -> Result<NodeKernel, Error>) -> Self {
        KernelDef {
            op,
            is,
            accepts: |_| true,
            select,
            inputs: Inputs::F32,
            fuses: false,
        }
    }

    /// An op whose selector checks the input dtypes itself.
    const fn any_dtype(
        op: &'static str,
        is: fn(&dyn Any) -> bool,
        select: fn(&Node) -> Result<NodeKernel, Error>,
    ) -> Self {
        KernelDef {
            inputs: Inputs::Any,
            ..KernelDef::f32(op, is, select)
        }
    }

    /// The op can take a unary op in its epilogue.
    const fn fusing(self) -> Self {
        KernelDef { fuses: true, ..self }
    }

    /// Only ops for which `accepts` holds have a kernel.
    const fn when(self, accepts: fn(&dyn Any) -> bool) -> Self {
        KernelDef { accepts, ..self }
    }
}

/// A node as a selector sees it: the op, its inputs' dtypes and shapes, the
/// unary op to fold into its epilogue, and the adapter.
pub(super) struct Node<'a> {
    op: &'a dyn Op,
    inputs: &'a [(DType, &'a [usize])],
    fused: Option<UnaryKind>,
    caps: &'a Caps,
}

impl Node<'_> {
    /// The op as its concrete type.
    fn typed<T: Any>(&self) -> Result<&T, Error> {
        let any: &dyn Any = self.op;
        any.downcast_ref::<T>()
            .ok_or_else(|| self.unsupported(format!("not a {}", std::any::type_name::<T>())))
    }

    /// Why the GPU cannot run this node.
    fn unsupported(&self, format: impl Into<String>) -> Error {
        unsupported(self.op, format, self.caps)
    }

    /// A grid of `groups` workgroups (see [`grid`]), or why it does not fit.
    fn grid(&self, groups: usize, why: &str) -> Result<[u32; 3], Error> {
        grid(groups, self.caps.max_workgroups).ok_or_else(|| self.unsupported(why))
    }

    /// The grid of 256-invocation workgroups over `n` elements.
    fn elements(&self, n: usize) -> Result<[u32; 3], Error> {
        self.grid(n.div_ceil(256), "f32 (too many elements)")
    }
}

/// The table entry for `op`'s type.
fn kernel_def(op: &dyn Op) -> Option<&'static KernelDef> {
    let any: &dyn Any = op;
    FAMILIES.iter().flat_map(|f| f.iter()).find(|k| (k.is)(any))
}

/// True when the GPU backend has a kernel for this op (for f32 values; other
/// dtypes and formats fall back to the CPU). Reshape, Flatten, Squeeze and
/// Unsqueeze count: they need no kernel.
pub fn has_kernel(op: &dyn Op) -> bool {
    let any: &dyn Any = op;
    kernel_def(op).is_some_and(|k| (k.accepts)(any))
}

/// Picks the kernel for `op` on inputs of these dtypes and shapes. `fused`
/// is a unary op to apply in the epilogue (Linear, MatMul and QLinear take one).
pub(crate) fn select(
    op: &dyn Op,
    inputs: &[(DType, &[usize])],
    fused: Option<UnaryKind>,
    caps: &Caps,
) -> Result<NodeKernel, Error> {
    let def = kernel_def(op);
    if def.is_none_or(|k| k.inputs == Inputs::F32) {
        if let Some((i, (dt, _))) = inputs.iter().enumerate().find(|(_, (dt, _))| *dt != DType::F32) {
            return Err(unsupported(op, format!("{dt} (input {i}); GPU kernels take f32"), caps));
        }
    }
    let Some(def) = def else {
        return Err(unsupported(op, "f32 (no GPU kernel for this op)", caps));
    };
    if fused.is_some() && !def.fuses {
        return Err(unsupported(op, "f32 with a fused activation", caps));
    }
    (def.select)(&Node {
        op,
        inputs,
        fused,
        caps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_op_has_at_most_one_kernel_entry() {
        for def in crate::ops::REGISTRY {
            for case in (def.cases)() {
                let any: &dyn Any = &*case.op;
                let owners: Vec<&str> = FAMILIES
                    .iter()
                    .flat_map(|f| f.iter())
                    .filter(|k| (k.is)(any))
                    .map(|k| k.op)
                    .collect();
                assert!(owners.len() <= 1, "{}: claimed by {owners:?}", case.name);
            }
        }
    }
}
