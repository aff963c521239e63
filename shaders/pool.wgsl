// Pooling over the spatial axes of NCHW / NCDHW tensors: MaxPool,
// AveragePool (count_include_pad, ceil_mode via the output size) and
// GlobalAveragePool. A 2-D pool runs as a 3-D one with a depth of 1.
// Mirrors src/ops/pool.rs.
//
// Bindings: 0 output, 1 parameters, 2 x.
// Workgroups are laid out 2-D when one dimension would exceed the limit:
// the flat workgroup index is wg.y * num_workgroups.x + wg.x.

struct Params {
    // Output elements (pool) or planes (global average).
    n: u32,
    // Input height (global average: the plane's length), width and depth.
    h: u32,
    w: u32,
    d: u32,
    // Output height, width, depth.
    oh: u32,
    ow: u32,
    od: u32,
    // -inf as f32 bits: the max of a window that lies wholly in the padding.
    neg_inf_bits: u32,
    // Kernel, stride, dilation and pad before, per axis (y, x, z).
    k: vec4<u32>,
    stride: vec4<u32>,
    dil: vec4<u32>,
    pad: vec4<u32>,
    // The padded extent (size + end pad) per axis, for count_include_pad.
    pad_end: vec4<u32>,
    count_include_pad: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;

// MaxPool instead of AveragePool.
override MAX: bool = false;

const WG: u32 = 256u;

// NaN test on the bits: compilers may fold a float `v != v` to false.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// One invocation per output element.
@compute @workgroup_size(256)
fn pool(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + li;
    if (i >= params.n) {
        return;
    }
    let ox = i % params.ow;
    let oy = (i / params.ow) % params.oh;
    let oz = (i / (params.ow * params.oh)) % params.od;
    let plane = i / (params.ow * params.oh * params.od);
    let base = plane * params.h * params.w * params.d;
    let iy0 = i32(oy * params.stride.x) - i32(params.pad.x);
    let ix0 = i32(ox * params.stride.y) - i32(params.pad.y);
    let iz0 = i32(oz * params.stride.z) - i32(params.pad.z);
    var best = bitcast<f32>(params.neg_inf_bits);
    var sum = 0.0;
    var count = 0u;
    var padded = 0u;
    for (var kz = 0u; kz < params.k.z; kz = kz + 1u) {
        let iz = iz0 + i32(kz * params.dil.z);
        for (var ky = 0u; ky < params.k.x; ky = ky + 1u) {
            let iy = iy0 + i32(ky * params.dil.x);
            for (var kx = 0u; kx < params.k.y; kx = kx + 1u) {
                let ix = ix0 + i32(kx * params.dil.y);
                if (iy < i32(params.pad_end.x) && ix < i32(params.pad_end.y) && iz < i32(params.pad_end.z)) {
                    padded = padded + 1u;
                }
                if (iy < 0 || ix < 0 || iz < 0 || iy >= i32(params.h) || ix >= i32(params.w) || iz >= i32(params.d)) {
                    continue;
                }
                let v = x[base + (u32(iz) * params.h + u32(iy)) * params.w + u32(ix)];
                // Keeps a NaN once seen (WGSL's max leaves NaN unspecified).
                if (v > best || is_nan(v)) {
                    best = v;
                }
                sum = sum + v;
                count = count + 1u;
            }
        }
    }
    if (MAX) {
        y[i] = best;
    } else {
        let div = select(count, padded, params.count_include_pad != 0u);
        y[i] = sum / f32(max(div, 1u));
    }
}

var<workgroup> scratch: array<f32, 64>;

// GlobalAveragePool: one workgroup of 64 per plane of `h` (= product of the
// spatial axes) elements, a shared-memory tree reduction.
@compute @workgroup_size(64)
fn global_average(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    // Uniform across the workgroup, so the barriers stay in uniform control flow.
    let plane = wg.y * nwg.x + wg.x;
    if (plane >= params.n) {
        return;
    }
    let len = params.h;
    let base = plane * len;
    var s = 0.0;
    for (var j = li; j < len; j = j + 64u) {
        s = s + x[base + j];
    }
    scratch[li] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k = k / 2u) {
        if (li < k) {
            scratch[li] = scratch[li] + scratch[li + k];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        y[plane] = scratch[0] / f32(max(len, 1u));
    }
}
