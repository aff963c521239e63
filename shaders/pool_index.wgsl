// MaxPool's Indices output (int64): for each output element, the index into
// the flattened input of its window's first maximum, or of its first NaN
// when it holds one (ONNX: row-major, or with COLUMN_MAJOR the spatial axes
// counted first-axis-fastest), -1 for a window wholly in the padding.
// Written as two u32 words (low, high).
// The parameters are pool.wgsl's (the same buffer layout); a 2-D pool runs
// as a 3-D one with a depth of 1. Mirrors src/ops/pool.rs.
//
// Bindings: 0 output (u32 pairs), 1 parameters, 2 x.

struct Params {
    n: u32,
    h: u32,
    w: u32,
    d: u32,
    oh: u32,
    ow: u32,
    od: u32,
    neg_inf_bits: u32,
    k: vec4<u32>,
    stride: vec4<u32>,
    dil: vec4<u32>,
    pad: vec4<u32>,
    pad_end: vec4<u32>,
    count_include_pad: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<u32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;

// Count the spatial axes column-major (ONNX storage_order = 1).
override COLUMN_MAJOR: bool = false;

const WG: u32 = 256u;

// NaN test on the bits: compilers may fold a float `v != v` to false.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(256)
fn argmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + li;
    if (i >= params.n) {
        return;
    }
    let ox = i % params.ow;
    let oy = (i / params.ow) % params.oh;
    let oz = (i / (params.ow * params.oh)) % params.od;
    let plane = i / (params.ow * params.oh * params.od);
    let size = params.h * params.w * params.d;
    let base = plane * size;
    let iy0 = i32(oy * params.stride.x) - i32(params.pad.x);
    let ix0 = i32(ox * params.stride.y) - i32(params.pad.y);
    let iz0 = i32(oz * params.stride.z) - i32(params.pad.z);
    var best = 0.0;
    var found = false;
    var at = 0u;
    for (var kz = 0u; kz < params.k.z; kz = kz + 1u) {
        let iz = iz0 + i32(kz * params.dil.z);
        for (var ky = 0u; ky < params.k.x; ky = ky + 1u) {
            let iy = iy0 + i32(ky * params.dil.x);
            for (var kx = 0u; kx < params.k.y; kx = kx + 1u) {
                let ix = ix0 + i32(kx * params.dil.y);
                if (iy < 0 || ix < 0 || iz < 0 || iy >= i32(params.h) || ix >= i32(params.w) || iz >= i32(params.d)) {
                    continue;
                }
                let v = x[base + (u32(iz) * params.h + u32(iy)) * params.w + u32(ix)];
                if (!found || v > best || (is_nan(v) && !is_nan(best))) {
                    best = v;
                    found = true;
                    if (COLUMN_MAJOR) {
                        at = u32(iz) + u32(iy) * params.d + u32(ix) * params.d * params.h;
                    } else {
                        at = (u32(iz) * params.h + u32(iy)) * params.w + u32(ix);
                    }
                }
            }
        }
    }
    if (found) {
        y[2u * i] = base + at;
        y[2u * i + 1u] = 0u;
    } else {
        y[2u * i] = 0xffffffffu;
        y[2u * i + 1u] = 0xffffffffu;
    }
}
