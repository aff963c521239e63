// Elementwise kernels: unary activations, broadcasting binary ops, and strided
// copies (Transpose).
// Needs activation.wgsl prepended. Mirrors src/ops/unary.rs and src/ops/binary.rs.
//
// Bindings (shared by every wginfer kernel): 0 output, 1 parameters, 2.. inputs.
// Workgroups are laid out 2-D when one dimension would exceed 65535:
// the flat workgroup index is wg.y * num_workgroups.x + wg.x.

struct Params {
    // Number of output elements.
    n: u32,
    // Rank of the output (<= 8); the shapes and strides below use `rank` entries.
    rank: u32,
    pad0: u32,
    pad1: u32,
    // Output shape, then the element strides of a and b in output coordinates
    // (0 along a broadcast axis). Entry d lives at [d / 4][d % 4].
    shape: array<vec4<u32>, 2>,
    a_strides: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

// Which unary function: a `UNARY_*` code (see activation.wgsl).
override ACT: u32 = 0u;
// Which binary op: a `BINARY_*` code (BINARY_ADD is the default).
override OP: u32 = 0u;
// True when a, b and y have the same shape (no index arithmetic).
override SAME_SHAPE: bool = false;

const WG: u32 = 256u;

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * WG + li;
}

@compute @workgroup_size(256)
fn unary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= params.n) {
        return;
    }
    y[i] = wg_activate(a[i], ACT);
}

// NaN test on the bits: compilers may fold a float `v != v` to false.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// WGSL leaves max/min of a NaN unspecified: a NaN operand is returned as it is.
fn apply_op(x: f32, z: f32) -> f32 {
    switch OP {
        case BINARY_MUL: { return x * z; }
        case BINARY_SUB: { return x - z; }
        case BINARY_DIV: { return x / z; }
        case BINARY_MAX: { return select(select(max(x, z), z, is_nan(z)), x, is_nan(x)); }
        case BINARY_MIN: { return select(select(min(x, z), z, is_nan(z)), x, is_nan(x)); }
        default: { return x + z; }
    }
}

// Element i of `a` viewed through `params.a_strides` (e.g. permuted strides).
fn strided_offset(i: u32) -> u32 {
    var rem = i;
    var ia = 0u;
    for (var d = i32(params.rank) - 1; d >= 0; d = d - 1) {
        let du = u32(d);
        let size = params.shape[du / 4u][du % 4u];
        ia = ia + (rem % size) * params.a_strides[du / 4u][du % 4u];
        rem = rem / size;
    }
    return ia;
}

// y[i] = a[strided offset of i]: Transpose with the input strides permuted.
@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= params.n) {
        return;
    }
    y[i] = a[strided_offset(i)];
}

@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= params.n) {
        return;
    }
    if (SAME_SHAPE) {
        y[i] = apply_op(a[i], b[i]);
        return;
    }
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = i32(params.rank) - 1; d >= 0; d = d - 1) {
        let du = u32(d);
        let size = params.shape[du / 4u][du % 4u];
        let c = rem % size;
        rem = rem / size;
        ia = ia + c * params.a_strides[du / 4u][du % 4u];
        ib = ib + c * params.b_strides[du / 4u][du % 4u];
    }
    y[i] = apply_op(a[ia], b[ib]);
}
