// Register-blocked matrix products with vec4 loads, for aligned shapes:
// C = act(A · B + bias) where A [M, K] and B are read as vec4 rows.
// Needs activation.wgsl prepended. Mirrors src/ops/matmul.rs and src/ops/linear.rs;
// the general (unaligned) kernels are in matmul.wgsl.
//
// Each invocation computes an 8 x 16 tile of C entirely in registers (no
// shared memory): per step of 4 along K it loads 8 vec4 of A and 16 vec4 of
// B for 512 multiply-adds. On CPU adapters (llvmpipe), which run the
// invocations of a workgroup as SIMD lanes, this beats shared-memory tiling.
//
// Alignment (the planner checks it): K % 4 == 0; for `nn` also N % 4 == 0.
//   `nn`: B is [K, N] (MatMul).        `nt`: B is [N, K] (a Linear weight).
// Batching as in matmul.wgsl (grid z; per-axis element strides, 0 = broadcast).
//
// Bindings: 0 C, 1 parameters, 2 A, 3 B, 4 bias (a dummy when HAS_BIAS is false).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch_rank: u32,
    batch_shape: vec4<u32>,
    a_batch_strides: vec4<u32>,
    b_batch_strides: vec4<u32>,
}

@group(0) @binding(0) var<storage, read_write> c: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// Add bias[col] before the activation.
override HAS_BIAS: bool = false;
// Fused activation (see activation.wgsl); 0 = none.
override ACT: u32 = 0u;

const TM: u32 = 8u;
const TN: u32 = 16u;
const WG_X: u32 = 8u;
const WG_Y: u32 = 8u;

// Element offsets of batch z in A and B.
fn batch_offsets(z: u32) -> vec2<u32> {
    var rem = z;
    var oa = 0u;
    var ob = 0u;
    for (var d = i32(params.batch_rank) - 1; d >= 0; d = d - 1) {
        let size = params.batch_shape[d];
        let i = rem % size;
        rem = rem / size;
        oa = oa + i * params.a_batch_strides[d];
        ob = ob + i * params.b_batch_strides[d];
    }
    return vec2<u32>(oa, ob);
}

fn store(co: u32, row: u32, col: u32, v: f32) {
    if (row < params.m && col < params.n) {
        var r = v;
        if (HAS_BIAS) {
            r = r + bias[col];
        }
        c[co + row * params.n + col] = wg_activate(r, ACT);
    }
}

@compute @workgroup_size(8, 8)
fn nn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.m;
    let n = params.n;
    let k4 = params.k / 4u;
    let n4 = n / 4u;
    let row0 = (wg.y * WG_Y + lid.y) * TM;
    let col0 = (wg.x * WG_X + lid.x) * TN;
    if (row0 >= m || col0 >= n) {
        return;
    }
    let offs = batch_offsets(wg.z);
    let ao = offs.x / 4u;
    let bo = offs.y / 4u;
    // Row offsets of A (in vec4) and column offsets of B (in vec4), clamped at the edge.
    var ar: array<u32, 8>;
    for (var i = 0u; i < TM; i = i + 1u) {
        ar[i] = ao + min(row0 + i, m - 1u) * k4;
    }
    var bc: array<u32, 4>;
    for (var j = 0u; j < 4u; j = j + 1u) {
        bc[j] = bo + min(col0 / 4u + j, n4 - 1u);
    }
    var acc: array<vec4<f32>, 32>;
    for (var i = 0u; i < 32u; i = i + 1u) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var kk = 0u; kk < k4; kk = kk + 1u) {
        // B rows 4kk..4kk+3, 16 columns as 4 vec4 each.
        var bv: array<vec4<f32>, 16>;
        for (var q = 0u; q < 4u; q = q + 1u) {
            let brow = (kk * 4u + q) * n4;
            for (var j = 0u; j < 4u; j = j + 1u) {
                bv[q * 4u + j] = b[bc[j] + brow];
            }
        }
        for (var i = 0u; i < TM; i = i + 1u) {
            let av = a[ar[i] + kk];
            for (var j = 0u; j < 4u; j = j + 1u) {
                var s = acc[i * 4u + j];
                s = fma(vec4<f32>(av.x), bv[j], s);
                s = fma(vec4<f32>(av.y), bv[4u + j], s);
                s = fma(vec4<f32>(av.z), bv[8u + j], s);
                s = fma(vec4<f32>(av.w), bv[12u + j], s);
                acc[i * 4u + j] = s;
            }
        }
    }
    let co = wg.z * m * n;
    for (var i = 0u; i < TM; i = i + 1u) {
        for (var j = 0u; j < 4u; j = j + 1u) {
            let v = acc[i * 4u + j];
            let col = col0 + j * 4u;
            store(co, row0 + i, col, v.x);
            store(co, row0 + i, col + 1u, v.y);
            store(co, row0 + i, col + 2u, v.z);
            store(co, row0 + i, col + 3u, v.w);
        }
    }
}

@compute @workgroup_size(8, 8)
fn nt(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.m;
    let n = params.n;
    let k4 = params.k / 4u;
    let row0 = (wg.y * WG_Y + lid.y) * TM;
    let col0 = (wg.x * WG_X + lid.x) * TN;
    if (row0 >= m || col0 >= n) {
        return;
    }
    let offs = batch_offsets(wg.z);
    let ao = offs.x / 4u;
    let bo = offs.y / 4u;
    var ar: array<u32, 8>;
    for (var i = 0u; i < TM; i = i + 1u) {
        ar[i] = ao + min(row0 + i, m - 1u) * k4;
    }
    var br: array<u32, 16>;
    for (var j = 0u; j < TN; j = j + 1u) {
        br[j] = bo + min(col0 + j, n - 1u) * k4;
    }
    // acc[i * 4 + g] holds columns 4g..4g+3 of row i.
    var acc: array<vec4<f32>, 32>;
    for (var i = 0u; i < 32u; i = i + 1u) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var kk = 0u; kk < k4; kk = kk + 1u) {
        var wv: array<vec4<f32>, 16>;
        for (var j = 0u; j < TN; j = j + 1u) {
            wv[j] = b[br[j] + kk];
        }
        for (var i = 0u; i < TM; i = i + 1u) {
            let av = a[ar[i] + kk];
            for (var g = 0u; g < 4u; g = g + 1u) {
                acc[i * 4u + g] = acc[i * 4u + g] + vec4<f32>(
                    dot(av, wv[g * 4u]),
                    dot(av, wv[g * 4u + 1u]),
                    dot(av, wv[g * 4u + 2u]),
                    dot(av, wv[g * 4u + 3u]),
                );
            }
        }
    }
    let co = wg.z * m * n;
    for (var i = 0u; i < TM; i = i + 1u) {
        for (var g = 0u; g < 4u; g = g + 1u) {
            let v = acc[i * 4u + g];
            let col = col0 + g * 4u;
            store(co, row0 + i, col, v.x);
            store(co, row0 + i, col + 1u, v.y);
            store(co, row0 + i, col + 2u, v.z);
            store(co, row0 + i, col + 3u, v.w);
        }
    }
}
