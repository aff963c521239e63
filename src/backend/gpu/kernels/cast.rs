//! Cast between f32, f16 and bf16, and from i32, i64, u8, i8 and bool to
//! f32 (`shaders/cast.wgsl`, on the raw bits). Mirrors `Cast` in
//! `src/ops/cast.rs`; other dtypes fall back to the CPU.

use crate::error::Error;
use crate::ops::cast::Cast;
use crate::tensor::{numel, DType};

use super::super::context::PipelineKey;
use super::super::shaders::ShaderId;
use super::params::{words, CastParams};
use super::{Bind, DispatchSpec, KernelDef, Node, NodeKernel};

/// The shader's code for a float dtype it converts.
fn code(dt: DType) -> Option<f64> {
    match dt {
        DType::F32 => Some(0.0),
        DType::F16 => Some(1.0),
        DType::BF16 => Some(2.0),
        _ => None,
    }
}

/// The shader's code for an integer (or bool) dtype it casts to f32.
fn int_code(dt: DType) -> Option<f64> {
    match dt {
        DType::I32 => Some(3.0),
        DType::I64 => Some(4.0),
        DType::U8 | DType::Bool => Some(5.0),
        DType::I8 => Some(6.0),
        _ => None,
    }
}

/// This family's ops: a Cast to f32, f16 or bf16.
pub(super) static KERNELS: &[KernelDef] = &[KernelDef::any_dtype("Cast", |a| a.is::<Cast>(), cast)
    .when(|a| a.downcast_ref::<Cast>().is_some_and(|c| code(c.to).is_some()))];

fn cast(node: &Node) -> Result<NodeKernel, Error> {
    let c: &Cast = node.typed()?;
    let (from, shape) = node.inputs[0];
    let from_int = int_code(from).filter(|_| c.to == DType::F32);
    let (Some(f), Some(t)) = (code(from).or(from_int), code(c.to)) else {
        return Err(node.unsupported(format!(
            "{from} to {} (the kernel casts between f32, f16 and bf16, and i32, i64, u8, i8 and bool to f32)",
            c.to
        )));
    };
    let n = numel(shape);
    // One invocation per output word: one f32 or two 16-bit values.
    let out_words = if c.to == DType::F32 { n } else { n.div_ceil(2) };
    let groups = node.grid(out_words.div_ceil(256), "(too many elements)")?;
    Ok(NodeKernel::Dispatch(DispatchSpec {
        key: PipelineKey {
            shader: ShaderId::Cast,
            entry: "convert",
            constants: vec![("FROM", f.to_bits()), ("TO", t.to_bits())],
            inputs: 1,
        },
        params: words(&CastParams {
            n: n as u32,
            ..Default::default()
        }),
        groups,
        binds: vec![Bind::Input(0)],
    }))
}
