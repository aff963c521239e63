// 2-D convolution (NCHW) as an implicit GEMM, register-blocked: per image n
// and group g, y[m, p] = sum_k w[m, k] * col[k, p] with k over (ci, ky, kx)
// and p over the output pixels; col is never materialised. Each invocation
// computes 4 output channels x 4 output pixels (16 accumulators), reading 4
// weights and 4 input pixels per k. Mirrors src/ops/conv.rs.
//
// Bindings: 0 output y [N, M, OH, OW], 1 parameters, 2 x [N, C, H, W],
// 3 w [M, C/group, KH, KW], 4 bias [M] (a zero buffer when absent).
// Grid: x = work items (channel blocks x pixel blocks) / 64, y = N * group.

struct Params {
    c: u32,
    h: u32,
    w: u32,
    m: u32,
    // Input and output channels per group.
    cg: u32,
    mg: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    stride_y: u32,
    stride_x: u32,
    dil_y: u32,
    dil_x: u32,
    // Padding before (top, left); the bottom/right padding is implied by oh, ow.
    pad_y: u32,
    pad_x: u32,
    groups: u32,
    // Blocks of 4 output pixels; work items are mblocks * pblocks.
    pblocks: u32,
    mblocks: u32,
    has_bias: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const WG: u32 = 64u;

// x at (row iy, column ix) of the plane starting at `base`, 0 outside it.
fn load(base: u32, iy: i32, ix: i32) -> f32 {
    let inside = iy >= 0 && ix >= 0 && iy < i32(params.h) && ix < i32(params.w);
    let at = select(0u, base + u32(iy) * params.w + u32(ix), inside);
    return select(0.0, x[at], inside);
}

@compute @workgroup_size(64)
fn conv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x * WG + li;
    if (t >= params.mblocks * params.pblocks) {
        return;
    }
    let n = wg.y / params.groups;
    let g = wg.y % params.groups;
    let m0 = (t / params.pblocks) * 4u;
    let p0 = (t % params.pblocks) * 4u;
    let npix = params.oh * params.ow;

    // The four output pixels (clamped to the last one; their results are not written).
    let p = min(vec4<u32>(p0, p0 + 1u, p0 + 2u, p0 + 3u), vec4<u32>(npix - 1u));
    let oy = p / params.ow;
    let ox = p % params.ow;
    let iy0 = vec4<i32>(oy * params.stride_y) - i32(params.pad_y);
    let ix0 = vec4<i32>(ox * params.stride_x) - i32(params.pad_x);

    // The four output channels of this group (clamped likewise).
    let mg1 = params.mg - 1u;
    let kk = params.cg * params.kh * params.kw;
    let mrow = g * params.mg;
    let w0 = (mrow + min(m0, mg1)) * kk;
    let w1 = (mrow + min(m0 + 1u, mg1)) * kk;
    let w2 = (mrow + min(m0 + 2u, mg1)) * kk;
    let w3 = (mrow + min(m0 + 3u, mg1)) * kk;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let plane = params.h * params.w;
    var k = 0u;
    for (var ci = 0u; ci < params.cg; ci = ci + 1u) {
        let base = (n * params.c + g * params.cg + ci) * plane;
        for (var ky = 0u; ky < params.kh; ky = ky + 1u) {
            let iy = iy0 + i32(ky * params.dil_y);
            for (var kx = 0u; kx < params.kw; kx = kx + 1u) {
                let ix = ix0 + i32(kx * params.dil_x);
                let xv = vec4<f32>(load(base, iy.x, ix.x), load(base, iy.y, ix.y),
                                   load(base, iy.z, ix.z), load(base, iy.w, ix.w));
                acc0 = acc0 + w[w0 + k] * xv;
                acc1 = acc1 + w[w1 + k] * xv;
                acc2 = acc2 + w[w2 + k] * xv;
                acc3 = acc3 + w[w3 + k] * xv;
                k = k + 1u;
            }
        }
    }

    var accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i = i + 1u) {
        let mi = m0 + i;
        if (mi >= params.mg) {
            break;
        }
        let ch = mrow + mi;
        var b = 0.0;
        if (params.has_bias != 0u) {
            b = bias[ch];
        }
        let out = (n * params.m + ch) * npix;
        let a = accs[i];
        for (var j = 0u; j < 4u; j = j + 1u) {
            if (p0 + j < npix) {
                y[out + p0 + j] = a[j] + b;
            }
        }
    }
}
