//! Casts: `Cast` (to the `to` attribute's dtype) and `CastLike` (to the
//! dtype of its second input); float8 targets with `saturate = 0` become
//! `CastUnsaturated`.

use std::sync::Arc;

use super::super::context::{skip, Ctx, OnnxNode, Skip};
use super::super::{dtype_from_onnx, onnx_type_name};
use super::Build;
use crate::ops::cast::{Cast, CastUnsaturated};
use crate::tensor::DType;

pub(super) static OPS: &[(&str, Build)] = &[("Cast", cast), ("CastLike", cast)];

fn cast(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    let to = if n.op_type == "CastLike" {
        n.arity(2, 2)?;
        cx.type_of(&n.ins[1])?.dtype
    } else {
        n.arity(1, 1)?;
        let code = n.a.i("to", 0) as i32;
        dtype_from_onnx(code).ok_or_else(|| skip(format!("cast to {} is not supported", onnx_type_name(code))))?
    };
    let float8 = matches!(
        to,
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ
    );
    let saturate = n.a.i("saturate", 1);
    if float8 && saturate == 0 {
        return cx.emit(n.name, Arc::new(CastUnsaturated { to }), &n.ins[..1], &n.outs);
    }
    if to == DType::F8E8M0 {
        let mode = n.a.s("round_mode").unwrap_or_else(|| "up".into());
        if mode != "up" || saturate == 0 {
            return Err(skip(format!(
                "cast to float8e8m0 with round_mode `{mode}`, saturate {saturate} (only up, saturating)"
            )));
        }
    }
    cx.emit(n.name, Arc::new(Cast { to }), &n.ins[..1], &n.outs)
}
