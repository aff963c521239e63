// Pooling over the two spatial axes of NCHW tensors: MaxPool, AveragePool
// (count_include_pad, ceil_mode via the output size) and GlobalAveragePool.
// Mirrors src/ops/pool.rs.
//
// Bindings: 0 output, 1 parameters, 2 x.
// Workgroups are laid out 2-D when one dimension would exceed the limit:
// the flat workgroup index is wg.y * num_workgroups.x + wg.x.

struct Params {
    // Output elements (pool) or planes (global average).
    n: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride_y: u32,
    stride_x: u32,
    dil_y: u32,
    dil_x: u32,
    pad_y: u32,
    pad_x: u32,
    // The padded extent (h + bottom pad, w + right pad), for count_include_pad.
    pad_h_end: u32,
    pad_w_end: u32,
    count_include_pad: u32,
    // -inf as f32 bits: the max of a window that lies wholly in the padding.
    neg_inf_bits: u32,
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
    let plane = i / (params.ow * params.oh);
    let base = plane * params.h * params.w;
    let iy0 = i32(oy * params.stride_y) - i32(params.pad_y);
    let ix0 = i32(ox * params.stride_x) - i32(params.pad_x);
    var best = bitcast<f32>(params.neg_inf_bits);
    var sum = 0.0;
    var count = 0u;
    var padded = 0u;
    for (var ky = 0u; ky < params.kh; ky = ky + 1u) {
        let iy = iy0 + i32(ky * params.dil_y);
        for (var kx = 0u; kx < params.kw; kx = kx + 1u) {
            let ix = ix0 + i32(kx * params.dil_x);
            if (iy < i32(params.pad_h_end) && ix < i32(params.pad_w_end)) {
                padded = padded + 1u;
            }
            if (iy < 0 || ix < 0 || iy >= i32(params.h) || ix >= i32(params.w)) {
                continue;
            }
            let v = x[base + u32(iy) * params.w + u32(ix)];
            best = max(best, v);
            sum = sum + v;
            count = count + 1u;
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
