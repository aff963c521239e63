//! Kernel selection for `QLinear`: one dispatch of `shaders/qlinear*.wgsl`
//! that reads the packed weight tensors as they are stored (u32 words), for
//! every [`WeightFormat`].
//!
//! Variants by adapter: f16 weights use `qlinear_f16.wgsl` (`enable f16`)
//! where the device has `SHADER_F16`, else `qlinear.wgsl`, which widens the
//! halves of u32 words by bit manipulation (`unpack2x16float` would need the
//! downlevel `SHADER_F16_IN_F32`, which not every GL adapter has); W8A8 uses `dot4I8Packed` (`qlinear_dp4a.wgsl`)
//! where the WGSL language extension `packed_4x8_integer_dot_product` is
//! implemented, else a shift-based dot product (`qlinear_idot.wgsl`; the
//! extension's `unpack4xI8` is not available without it either).
//!
//! On software adapters (llvmpipe) with subgroups of at least 8, the
//! weight-only formats, W8A8, XNOR and 2:4 / 4:8 take `qlinear_sg.wgsl` when K % 32 == 0 and M >= 4:
//! there every storage load is a loop over the SIMD lanes, and that kernel
//! loads each activation vector once per subgroup and the weights as vec4
//! words (about 3x the speed of the shared-memory tiles on lavapipe at 1024³).
//!
//! W8A8 (as on the CPU: src/ops/qlinear.rs) quantizes each row of x at
//! run time to u8 with a scale and zero point from its min and max (outlier
//! channels counted as 0), corrects the int32 sums by the zero point (`wsum`;
//! the subgroup kernel sums q - z instead) and adds the outlier channels' f32
//! products. Its kernels bind seven inputs: `qlinear.wgsl::w8a8` x, q, scale,
//! wsum, bias, outlier_index, outlier_weight (bindings 2-8); the subgroup
//! kernel x, outlier_index, scale, outlier_weight, bias, x as vec4, q as vec4
//! — eight storage buffers with y, the WebGPU default limit.

use crate::error::Error;
use crate::ops::qlinear::QLinear;
use crate::ops::unary::UnaryKind;
use crate::ops::Op;
use crate::quant::WeightFormat;
use crate::tensor::{numel, DType};

use super::super::context::PipelineKey;
use super::super::shaders::ShaderId;
use super::codes::FormatCode;
use super::params::{words, QLinearParams};
use super::{constants, unary_constants, unsupported, Bind, Caps, DispatchSpec, KernelDef, NodeKernel};

/// This family's ops: `QLinear` in every format.
pub(super) static KERNELS: &[KernelDef] = &[KernelDef::any_dtype(
    "QLinear",
    |a| a.is::<QLinear>(),
    |n| select(n.op, n.typed()?, n.inputs, n.fused, n.caps),
)
.fusing()];

/// True when the WGSL front end implements the language extension
/// `packed_4x8_integer_dot_product` (`dot4I8Packed`, `unpack4xI8`). On native
/// backends wgpu reports exactly naga's implemented extensions
/// (`Instance::wgsl_language_features`); naga lowers the builtin to SPIR-V
/// `OpSDot` where the device has `VK_KHR_shader_integer_dot_product`, and to
/// a polyfill elsewhere.
pub(crate) fn packed_dot_available() -> bool {
    use naga::front::wgsl::ImplementedLanguageExtension as Ext;
    Ext::all().contains(&Ext::Packed4x8IntegerDotProduct)
}

/// The `FORMAT` code of `shaders/qlinear.wgsl`, the entry point, and the
/// per-row auxiliary count (`Params.aux`).
fn format_code(f: &WeightFormat, k: usize) -> (u32, &'static str, usize) {
    let (entry, aux) = match *f {
        WeightFormat::Int4 { block, .. } => ("main", k.div_ceil(block as usize) * block as usize / 8),
        WeightFormat::Binary { xnor: false } => ("main", k.div_ceil(32)),
        WeightFormat::W8A8 { .. } => ("w8a8", 0),
        WeightFormat::Binary { xnor: true } => ("xnor", k.div_ceil(32)),
        WeightFormat::NM { n, m } => ("nm", k.div_ceil(m as usize) * n as usize),
        _ => ("main", 0),
    };
    (FormatCode::of(f).code().0, entry, aux)
}

/// Rows and columns of y per workgroup of `qlinear_sg.wgsl::sg`.
const SG_ROWS: usize = 16;
const SG_COLS: usize = 512;

/// `qlinear_sg.wgsl` for the weight-only formats, W8A8, XNOR and N:M, given
/// `[m, n, k, aux]`; the caller checked K % 32 == 0.
#[allow(clippy::too_many_arguments)]
fn subgroup_kernel(
    format: &WeightFormat,
    code: u32,
    [m, n, k, aux]: [usize; 4],
    has_bias: bool,
    fused: Option<UnaryKind>,
    np: usize,
    caps: &Caps,
    op: &dyn Op,
) -> Result<NodeKernel, Error> {
    let groups = [n.div_ceil(SG_COLS), m.div_ceil(SG_ROWS)];
    if groups.iter().any(|&g| g > caps.max_workgroups as usize) {
        return Err(unsupported(
            op,
            format!(
                "{format} ([{m}x{k}->{n}] needs a {groups:?} grid; the adapter allows {} per dimension)",
                caps.max_workgroups
            ),
            caps,
        ));
    }
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    let mut list = vec![("FORMAT", code as f64), ("HAS_BIAS", b(has_bias))];
    list.extend(unary_constants(fused));
    match *format {
        WeightFormat::Pow2 { per_channel, .. } => list.push(("PER_CHANNEL", b(per_channel))),
        WeightFormat::Int4 { block, with_min } => {
            list.push(("BLOCK", block as f64));
            list.push(("WITH_MIN", b(with_min)));
        }
        WeightFormat::NM { n, m } => {
            list.push(("NM_N", n as f64));
            list.push(("NM_M", m as f64));
        }
        WeightFormat::W8A8 { outliers } => list.push(("OUTLIERS", outliers as f64)),
        _ => {}
    }
    // Bindings 2-6 as in qlinear.wgsl (W8A8: x, outlier_index, scale,
    // outlier_weight; its codes through 8, wsum unused), then 7: x as vec4,
    // 8: the packed words as vec4 (binary and XNOR read them as u32, and their
    // rows may be shorter than 16 bytes: a dummy there).
    let mut binds: Vec<Bind> = if let WeightFormat::W8A8 { outliers } = *format {
        let o = |i: usize| if outliers > 0 { Bind::Input(i) } else { Bind::Zeros };
        vec![Bind::Input(0), o(4), Bind::Input(2), o(5)]
    } else {
        let mut b: Vec<Bind> = (0..1 + np).map(Bind::Input).collect();
        b.resize(4, Bind::Zeros);
        b
    };
    binds.push(if has_bias { Bind::Input(1 + np) } else { Bind::Zeros });
    binds.push(Bind::Input(0));
    binds.push(if matches!(format, WeightFormat::Binary { .. }) {
        Bind::Zeros
    } else {
        Bind::Input(1)
    });
    Ok(NodeKernel::Dispatch(DispatchSpec {
        key: PipelineKey {
            shader: ShaderId::QLinearSg,
            entry: if FormatCode::of(format) == FormatCode::Xnor {
                "sg_xnor"
            } else {
                "sg"
            },
            constants: constants(&list),
            inputs: 7,
        },
        params: words(&QLinearParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            aux: aux as u32,
        }),
        groups: [groups[0] as u32, groups[1] as u32, 1],
        binds,
    }))
}

/// The kernel for a `QLinear` node.
fn select(
    op: &dyn Op,
    q: &QLinear,
    inputs: &[(DType, &[usize])],
    fused: Option<UnaryKind>,
    caps: &Caps,
) -> Result<NodeKernel, Error> {
    let format = q.format;
    let (k, n) = (q.in_features, q.out_features);
    let specs = format.tensor_specs(n, k);
    let np = specs.len();
    let fmt = |what: &str| format!("{format} ({what})");
    let Some(&(xdt, xs)) = inputs.first() else {
        return Err(unsupported(op, fmt("no input"), caps));
    };
    if xdt != DType::F32 || xs.last() != Some(&k) {
        return Err(unsupported(op, fmt(&format!("x is {xdt}{xs:?}")), caps));
    }
    if inputs.len() != 1 + np && inputs.len() != 2 + np {
        return Err(unsupported(op, fmt("wrong input count"), caps));
    }
    for (i, (dt, shape)) in specs.iter().enumerate() {
        let (gdt, gs) = inputs[1 + i];
        if gdt != *dt || gs != shape.as_slice() {
            return Err(unsupported(
                op,
                fmt(&format!("packed tensor {i} is {gdt}{gs:?}, not {dt}{shape:?}")),
                caps,
            ));
        }
    }
    let has_bias = inputs.len() == 2 + np;
    if has_bias && (inputs[1 + np].0 != DType::F32 || inputs[1 + np].1 != [n]) {
        return Err(unsupported(op, fmt("bias is not f32[out]"), caps));
    }
    let m = numel(&xs[..xs.len() - 1]);
    let (code, entry, aux) = format_code(&format, k);
    let rows = if m < 4 { 1 } else { 8 };
    // Columns per invocation: 8 in `qlinear.wgsl::main` and `w8a8`, 4 elsewhere.
    let cols = if (entry == "main" && !(format == WeightFormat::F16 && caps.f16)) || entry == "w8a8" {
        8
    } else {
        4
    };
    let groups = if rows == 1 {
        [n.div_ceil(64 * cols), m, 1]
    } else {
        [n.div_ceil(8 * cols), m.div_ceil(64), 1]
    };
    if groups.iter().any(|&g| g > caps.max_workgroups as usize) || [m, n, k, aux].iter().any(|&v| v > u32::MAX as usize)
    {
        return Err(unsupported(
            op,
            fmt(&format!(
                "[{m}x{k}->{n}] needs a {groups:?} grid; the adapter allows {} per dimension",
                caps.max_workgroups
            )),
            caps,
        ));
    }
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    let aligned = k.is_multiple_of(4);
    // N:M where half the weights are kept (2:4, 4:8).
    let sg_format = !matches!(format, WeightFormat::NM { .. })
        || matches!(format, WeightFormat::NM { n, m } if 2 * n == m && (m == 4 || m == 8));
    if caps.subgroups && caps.software && sg_format && k.is_multiple_of(32) && m >= 4 {
        return subgroup_kernel(&format, code, [m, n, k, aux], has_bias, fused, np, caps, op);
    }
    let (shader, entry, consts) = if format == WeightFormat::F16 && caps.f16 {
        (
            ShaderId::QLinearF16,
            "main",
            constants(
                &[
                    &[
                        ("ALIGNED", b(aligned)),
                        ("ROWS", rows as f64),
                        ("HAS_BIAS", b(has_bias)),
                    ][..],
                    &unary_constants(fused),
                ]
                .concat(),
            ),
        )
    } else {
        let shader = if matches!(format, WeightFormat::W8A8 { .. }) && caps.packed_dot {
            ShaderId::QLinearDp4a
        } else {
            ShaderId::QLinear
        };
        let mut list = vec![
            ("FORMAT", code as f64),
            ("ALIGNED", b(aligned)),
            ("ROWS", rows as f64),
            ("HAS_BIAS", b(has_bias)),
        ];
        list.extend(unary_constants(fused));
        match format {
            WeightFormat::Pow2 { per_channel, .. } => list.push(("PER_CHANNEL", b(per_channel))),
            WeightFormat::Int4 { block, with_min } => {
                list.push(("BLOCK", block as f64));
                list.push(("WITH_MIN", b(with_min)));
            }
            WeightFormat::NM { n, m } => {
                list.push(("NM_N", n as f64));
                list.push(("NM_M", m as f64));
            }
            WeightFormat::W8A8 { outliers } => list.push(("OUTLIERS", outliers as f64)),
            _ => {}
        }
        (shader, entry, constants(&list))
    };
    // Bindings 2-6: x, t0-t2 (dummies past the format's tensors), bias; W8A8
    // also 7-8: outlier_index and outlier_weight (dummies without outliers).
    let mut binds: Vec<Bind> = (0..1 + np.min(3)).map(Bind::Input).collect();
    binds.resize(4, Bind::Zeros);
    binds.push(if has_bias { Bind::Input(1 + np) } else { Bind::Zeros });
    if let WeightFormat::W8A8 { outliers } = format {
        let o = |i: usize| if outliers > 0 { Bind::Input(i) } else { Bind::Zeros };
        binds.extend([o(4), o(5)]);
    }
    let inputs = binds.len();
    Ok(NodeKernel::Dispatch(DispatchSpec {
        key: PipelineKey {
            shader,
            entry,
            constants: consts,
            inputs,
        },
        params: words(&QLinearParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            aux: aux as u32,
        }),
        groups: [groups[0] as u32, groups[1] as u32, groups[2] as u32],
        binds,
    }))
}
