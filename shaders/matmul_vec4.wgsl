// Register-blocked matrix products with vec4 loads, for aligned shapes:
// C = act(A · B + bias) where A [M, K] and B are read as vec4 rows.
// Needs activation.wgsl prepended. Mirrors src/ops/matmul.rs and src/ops/linear.rs;
// the general (unaligned) kernels are in matmul.wgsl.
//
// Each invocation computes an 8 x 16 tile of C entirely in registers (no
// shared memory): per step of 4 along K it loads 8 vec4 of A and 16 vec4 of
// B for 512 multiply-adds. On CPU adapters (llvmpipe), which run the
// invocations of a workgroup as SIMD lanes, this beats shared-memory tiling.
// The tile is unrolled by hand (no local arrays): a compiler that does not
// fully unroll the loops would otherwise keep the accumulators in memory.
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

fn store1(co: u32, row: u32, col: u32, v: f32) {
    if (row < params.m && col < params.n) {
        var r = v;
        if (HAS_BIAS) {
            r = r + bias[col];
        }
        c[co + row * params.n + col] = wg_activate(r, ACT);
    }
}

// Stores columns col..col+3 of one row.
fn store4(co: u32, row: u32, col: u32, v: vec4<f32>) {
    store1(co, row, col, v.x);
    store1(co, row, col + 1u, v.y);
    store1(co, row, col + 2u, v.z);
    store1(co, row, col + 3u, v.w);
}

// B is [K, N]: each step loads rows 4kk..4kk+3 of B, 16 columns as 4 vec4 each.
@compute @workgroup_size(8, 8)
fn nn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.m;
    let n = params.n;
    let k4 = params.k / 4u;
    let row0 = (wg.y * 8u + lid.y) * 8u;
    let col0 = (wg.x * 8u + lid.x) * 16u;
    if (row0 >= m || col0 >= n) {
        return;
    }
    let offs = batch_offsets(wg.z);
    let ao = offs.x / 4u;
    let bo = offs.y / 4u;
    // Rows of A (in vec4 units), clamped at the edge: computed, never stored.
    let a0 = ao + min(row0 + 0u, m - 1u) * k4;
    let a1 = ao + min(row0 + 1u, m - 1u) * k4;
    let a2 = ao + min(row0 + 2u, m - 1u) * k4;
    let a3 = ao + min(row0 + 3u, m - 1u) * k4;
    let a4 = ao + min(row0 + 4u, m - 1u) * k4;
    let a5 = ao + min(row0 + 5u, m - 1u) * k4;
    let a6 = ao + min(row0 + 6u, m - 1u) * k4;
    let a7 = ao + min(row0 + 7u, m - 1u) * k4;
    let n4 = n / 4u;
    // Column groups of B (in vec4 units), clamped.
    let b0 = bo + min(col0 / 4u + 0u, n4 - 1u);
    let b1 = bo + min(col0 / 4u + 1u, n4 - 1u);
    let b2 = bo + min(col0 / 4u + 2u, n4 - 1u);
    let b3 = bo + min(col0 / 4u + 3u, n4 - 1u);
    var c00 = vec4<f32>(0.0);
    var c01 = vec4<f32>(0.0);
    var c02 = vec4<f32>(0.0);
    var c03 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c12 = vec4<f32>(0.0);
    var c13 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0);
    var c21 = vec4<f32>(0.0);
    var c22 = vec4<f32>(0.0);
    var c23 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0);
    var c31 = vec4<f32>(0.0);
    var c32 = vec4<f32>(0.0);
    var c33 = vec4<f32>(0.0);
    var c40 = vec4<f32>(0.0);
    var c41 = vec4<f32>(0.0);
    var c42 = vec4<f32>(0.0);
    var c43 = vec4<f32>(0.0);
    var c50 = vec4<f32>(0.0);
    var c51 = vec4<f32>(0.0);
    var c52 = vec4<f32>(0.0);
    var c53 = vec4<f32>(0.0);
    var c60 = vec4<f32>(0.0);
    var c61 = vec4<f32>(0.0);
    var c62 = vec4<f32>(0.0);
    var c63 = vec4<f32>(0.0);
    var c70 = vec4<f32>(0.0);
    var c71 = vec4<f32>(0.0);
    var c72 = vec4<f32>(0.0);
    var c73 = vec4<f32>(0.0);
    for (var kk = 0u; kk < k4; kk = kk + 1u) {
        let r0 = (kk * 4u + 0u) * n4;
        let r1 = (kk * 4u + 1u) * n4;
        let r2 = (kk * 4u + 2u) * n4;
        let r3 = (kk * 4u + 3u) * n4;
        let w00 = b[b0 + r0];
        let w01 = b[b1 + r0];
        let w02 = b[b2 + r0];
        let w03 = b[b3 + r0];
        let w10 = b[b0 + r1];
        let w11 = b[b1 + r1];
        let w12 = b[b2 + r1];
        let w13 = b[b3 + r1];
        let w20 = b[b0 + r2];
        let w21 = b[b1 + r2];
        let w22 = b[b2 + r2];
        let w23 = b[b3 + r2];
        let w30 = b[b0 + r3];
        let w31 = b[b1 + r3];
        let w32 = b[b2 + r3];
        let w33 = b[b3 + r3];
        let x0 = a[a0 + kk];
        c00 = fma(vec4<f32>(x0.w), w30, fma(vec4<f32>(x0.z), w20, fma(vec4<f32>(x0.y), w10, fma(vec4<f32>(x0.x), w00, c00))));
        c01 = fma(vec4<f32>(x0.w), w31, fma(vec4<f32>(x0.z), w21, fma(vec4<f32>(x0.y), w11, fma(vec4<f32>(x0.x), w01, c01))));
        c02 = fma(vec4<f32>(x0.w), w32, fma(vec4<f32>(x0.z), w22, fma(vec4<f32>(x0.y), w12, fma(vec4<f32>(x0.x), w02, c02))));
        c03 = fma(vec4<f32>(x0.w), w33, fma(vec4<f32>(x0.z), w23, fma(vec4<f32>(x0.y), w13, fma(vec4<f32>(x0.x), w03, c03))));
        let x1 = a[a1 + kk];
        c10 = fma(vec4<f32>(x1.w), w30, fma(vec4<f32>(x1.z), w20, fma(vec4<f32>(x1.y), w10, fma(vec4<f32>(x1.x), w00, c10))));
        c11 = fma(vec4<f32>(x1.w), w31, fma(vec4<f32>(x1.z), w21, fma(vec4<f32>(x1.y), w11, fma(vec4<f32>(x1.x), w01, c11))));
        c12 = fma(vec4<f32>(x1.w), w32, fma(vec4<f32>(x1.z), w22, fma(vec4<f32>(x1.y), w12, fma(vec4<f32>(x1.x), w02, c12))));
        c13 = fma(vec4<f32>(x1.w), w33, fma(vec4<f32>(x1.z), w23, fma(vec4<f32>(x1.y), w13, fma(vec4<f32>(x1.x), w03, c13))));
        let x2 = a[a2 + kk];
        c20 = fma(vec4<f32>(x2.w), w30, fma(vec4<f32>(x2.z), w20, fma(vec4<f32>(x2.y), w10, fma(vec4<f32>(x2.x), w00, c20))));
        c21 = fma(vec4<f32>(x2.w), w31, fma(vec4<f32>(x2.z), w21, fma(vec4<f32>(x2.y), w11, fma(vec4<f32>(x2.x), w01, c21))));
        c22 = fma(vec4<f32>(x2.w), w32, fma(vec4<f32>(x2.z), w22, fma(vec4<f32>(x2.y), w12, fma(vec4<f32>(x2.x), w02, c22))));
        c23 = fma(vec4<f32>(x2.w), w33, fma(vec4<f32>(x2.z), w23, fma(vec4<f32>(x2.y), w13, fma(vec4<f32>(x2.x), w03, c23))));
        let x3 = a[a3 + kk];
        c30 = fma(vec4<f32>(x3.w), w30, fma(vec4<f32>(x3.z), w20, fma(vec4<f32>(x3.y), w10, fma(vec4<f32>(x3.x), w00, c30))));
        c31 = fma(vec4<f32>(x3.w), w31, fma(vec4<f32>(x3.z), w21, fma(vec4<f32>(x3.y), w11, fma(vec4<f32>(x3.x), w01, c31))));
        c32 = fma(vec4<f32>(x3.w), w32, fma(vec4<f32>(x3.z), w22, fma(vec4<f32>(x3.y), w12, fma(vec4<f32>(x3.x), w02, c32))));
        c33 = fma(vec4<f32>(x3.w), w33, fma(vec4<f32>(x3.z), w23, fma(vec4<f32>(x3.y), w13, fma(vec4<f32>(x3.x), w03, c33))));
        let x4 = a[a4 + kk];
        c40 = fma(vec4<f32>(x4.w), w30, fma(vec4<f32>(x4.z), w20, fma(vec4<f32>(x4.y), w10, fma(vec4<f32>(x4.x), w00, c40))));
        c41 = fma(vec4<f32>(x4.w), w31, fma(vec4<f32>(x4.z), w21, fma(vec4<f32>(x4.y), w11, fma(vec4<f32>(x4.x), w01, c41))));
        c42 = fma(vec4<f32>(x4.w), w32, fma(vec4<f32>(x4.z), w22, fma(vec4<f32>(x4.y), w12, fma(vec4<f32>(x4.x), w02, c42))));
        c43 = fma(vec4<f32>(x4.w), w33, fma(vec4<f32>(x4.z), w23, fma(vec4<f32>(x4.y), w13, fma(vec4<f32>(x4.x), w03, c43))));
        let x5 = a[a5 + kk];
        c50 = fma(vec4<f32>(x5.w), w30, fma(vec4<f32>(x5.z), w20, fma(vec4<f32>(x5.y), w10, fma(vec4<f32>(x5.x), w00, c50))));
        c51 = fma(vec4<f32>(x5.w), w31, fma(vec4<f32>(x5.z), w21, fma(vec4<f32>(x5.y), w11, fma(vec4<f32>(x5.x), w01, c51))));
        c52 = fma(vec4<f32>(x5.w), w32, fma(vec4<f32>(x5.z), w22, fma(vec4<f32>(x5.y), w12, fma(vec4<f32>(x5.x), w02, c52))));
        c53 = fma(vec4<f32>(x5.w), w33, fma(vec4<f32>(x5.z), w23, fma(vec4<f32>(x5.y), w13, fma(vec4<f32>(x5.x), w03, c53))));
        let x6 = a[a6 + kk];
        c60 = fma(vec4<f32>(x6.w), w30, fma(vec4<f32>(x6.z), w20, fma(vec4<f32>(x6.y), w10, fma(vec4<f32>(x6.x), w00, c60))));
        c61 = fma(vec4<f32>(x6.w), w31, fma(vec4<f32>(x6.z), w21, fma(vec4<f32>(x6.y), w11, fma(vec4<f32>(x6.x), w01, c61))));
        c62 = fma(vec4<f32>(x6.w), w32, fma(vec4<f32>(x6.z), w22, fma(vec4<f32>(x6.y), w12, fma(vec4<f32>(x6.x), w02, c62))));
        c63 = fma(vec4<f32>(x6.w), w33, fma(vec4<f32>(x6.z), w23, fma(vec4<f32>(x6.y), w13, fma(vec4<f32>(x6.x), w03, c63))));
        let x7 = a[a7 + kk];
        c70 = fma(vec4<f32>(x7.w), w30, fma(vec4<f32>(x7.z), w20, fma(vec4<f32>(x7.y), w10, fma(vec4<f32>(x7.x), w00, c70))));
        c71 = fma(vec4<f32>(x7.w), w31, fma(vec4<f32>(x7.z), w21, fma(vec4<f32>(x7.y), w11, fma(vec4<f32>(x7.x), w01, c71))));
        c72 = fma(vec4<f32>(x7.w), w32, fma(vec4<f32>(x7.z), w22, fma(vec4<f32>(x7.y), w12, fma(vec4<f32>(x7.x), w02, c72))));
        c73 = fma(vec4<f32>(x7.w), w33, fma(vec4<f32>(x7.z), w23, fma(vec4<f32>(x7.y), w13, fma(vec4<f32>(x7.x), w03, c73))));
    }
    let co = wg.z * m * n;
    store4(co, row0 + 0u, col0 + 0u, c00);
    store4(co, row0 + 0u, col0 + 4u, c01);
    store4(co, row0 + 0u, col0 + 8u, c02);
    store4(co, row0 + 0u, col0 + 12u, c03);
    store4(co, row0 + 1u, col0 + 0u, c10);
    store4(co, row0 + 1u, col0 + 4u, c11);
    store4(co, row0 + 1u, col0 + 8u, c12);
    store4(co, row0 + 1u, col0 + 12u, c13);
    store4(co, row0 + 2u, col0 + 0u, c20);
    store4(co, row0 + 2u, col0 + 4u, c21);
    store4(co, row0 + 2u, col0 + 8u, c22);
    store4(co, row0 + 2u, col0 + 12u, c23);
    store4(co, row0 + 3u, col0 + 0u, c30);
    store4(co, row0 + 3u, col0 + 4u, c31);
    store4(co, row0 + 3u, col0 + 8u, c32);
    store4(co, row0 + 3u, col0 + 12u, c33);
    store4(co, row0 + 4u, col0 + 0u, c40);
    store4(co, row0 + 4u, col0 + 4u, c41);
    store4(co, row0 + 4u, col0 + 8u, c42);
    store4(co, row0 + 4u, col0 + 12u, c43);
    store4(co, row0 + 5u, col0 + 0u, c50);
    store4(co, row0 + 5u, col0 + 4u, c51);
    store4(co, row0 + 5u, col0 + 8u, c52);
    store4(co, row0 + 5u, col0 + 12u, c53);
    store4(co, row0 + 6u, col0 + 0u, c60);
    store4(co, row0 + 6u, col0 + 4u, c61);
    store4(co, row0 + 6u, col0 + 8u, c62);
    store4(co, row0 + 6u, col0 + 12u, c63);
    store4(co, row0 + 7u, col0 + 0u, c70);
    store4(co, row0 + 7u, col0 + 4u, c71);
    store4(co, row0 + 7u, col0 + 8u, c72);
    store4(co, row0 + 7u, col0 + 12u, c73);
}

// B is [N, K] (a Linear weight): each step loads 4 consecutive k of 16 rows of B.
@compute @workgroup_size(8, 8)
fn nt(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.m;
    let n = params.n;
    let k4 = params.k / 4u;
    let row0 = (wg.y * 8u + lid.y) * 8u;
    let col0 = (wg.x * 8u + lid.x) * 16u;
    if (row0 >= m || col0 >= n) {
        return;
    }
    let offs = batch_offsets(wg.z);
    let ao = offs.x / 4u;
    let bo = offs.y / 4u;
    // Rows of A (in vec4 units), clamped at the edge: computed, never stored.
    let a0 = ao + min(row0 + 0u, m - 1u) * k4;
    let a1 = ao + min(row0 + 1u, m - 1u) * k4;
    let a2 = ao + min(row0 + 2u, m - 1u) * k4;
    let a3 = ao + min(row0 + 3u, m - 1u) * k4;
    let a4 = ao + min(row0 + 4u, m - 1u) * k4;
    let a5 = ao + min(row0 + 5u, m - 1u) * k4;
    let a6 = ao + min(row0 + 6u, m - 1u) * k4;
    let a7 = ao + min(row0 + 7u, m - 1u) * k4;
    // Rows of B (in vec4 units), clamped.
    let b0 = bo + min(col0 + 0u, n - 1u) * k4;
    let b1 = bo + min(col0 + 1u, n - 1u) * k4;
    let b2 = bo + min(col0 + 2u, n - 1u) * k4;
    let b3 = bo + min(col0 + 3u, n - 1u) * k4;
    let b4 = bo + min(col0 + 4u, n - 1u) * k4;
    let b5 = bo + min(col0 + 5u, n - 1u) * k4;
    let b6 = bo + min(col0 + 6u, n - 1u) * k4;
    let b7 = bo + min(col0 + 7u, n - 1u) * k4;
    let b8 = bo + min(col0 + 8u, n - 1u) * k4;
    let b9 = bo + min(col0 + 9u, n - 1u) * k4;
    let b10 = bo + min(col0 + 10u, n - 1u) * k4;
    let b11 = bo + min(col0 + 11u, n - 1u) * k4;
    let b12 = bo + min(col0 + 12u, n - 1u) * k4;
    let b13 = bo + min(col0 + 13u, n - 1u) * k4;
    let b14 = bo + min(col0 + 14u, n - 1u) * k4;
    let b15 = bo + min(col0 + 15u, n - 1u) * k4;
    var c00 = vec4<f32>(0.0);
    var c01 = vec4<f32>(0.0);
    var c02 = vec4<f32>(0.0);
    var c03 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c12 = vec4<f32>(0.0);
    var c13 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0);
    var c21 = vec4<f32>(0.0);
    var c22 = vec4<f32>(0.0);
    var c23 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0);
    var c31 = vec4<f32>(0.0);
    var c32 = vec4<f32>(0.0);
    var c33 = vec4<f32>(0.0);
    var c40 = vec4<f32>(0.0);
    var c41 = vec4<f32>(0.0);
    var c42 = vec4<f32>(0.0);
    var c43 = vec4<f32>(0.0);
    var c50 = vec4<f32>(0.0);
    var c51 = vec4<f32>(0.0);
    var c52 = vec4<f32>(0.0);
    var c53 = vec4<f32>(0.0);
    var c60 = vec4<f32>(0.0);
    var c61 = vec4<f32>(0.0);
    var c62 = vec4<f32>(0.0);
    var c63 = vec4<f32>(0.0);
    var c70 = vec4<f32>(0.0);
    var c71 = vec4<f32>(0.0);
    var c72 = vec4<f32>(0.0);
    var c73 = vec4<f32>(0.0);
    for (var kk = 0u; kk < k4; kk = kk + 1u) {
        let w0 = b[b0 + kk];
        let w1 = b[b1 + kk];
        let w2 = b[b2 + kk];
        let w3 = b[b3 + kk];
        let w4 = b[b4 + kk];
        let w5 = b[b5 + kk];
        let w6 = b[b6 + kk];
        let w7 = b[b7 + kk];
        let w8 = b[b8 + kk];
        let w9 = b[b9 + kk];
        let w10 = b[b10 + kk];
        let w11 = b[b11 + kk];
        let w12 = b[b12 + kk];
        let w13 = b[b13 + kk];
        let w14 = b[b14 + kk];
        let w15 = b[b15 + kk];
        let x0 = a[a0 + kk];
        c00 = c00 + vec4<f32>(dot(x0, w0), dot(x0, w1), dot(x0, w2), dot(x0, w3));
        c01 = c01 + vec4<f32>(dot(x0, w4), dot(x0, w5), dot(x0, w6), dot(x0, w7));
        c02 = c02 + vec4<f32>(dot(x0, w8), dot(x0, w9), dot(x0, w10), dot(x0, w11));
        c03 = c03 + vec4<f32>(dot(x0, w12), dot(x0, w13), dot(x0, w14), dot(x0, w15));
        let x1 = a[a1 + kk];
        c10 = c10 + vec4<f32>(dot(x1, w0), dot(x1, w1), dot(x1, w2), dot(x1, w3));
        c11 = c11 + vec4<f32>(dot(x1, w4), dot(x1, w5), dot(x1, w6), dot(x1, w7));
        c12 = c12 + vec4<f32>(dot(x1, w8), dot(x1, w9), dot(x1, w10), dot(x1, w11));
        c13 = c13 + vec4<f32>(dot(x1, w12), dot(x1, w13), dot(x1, w14), dot(x1, w15));
        let x2 = a[a2 + kk];
        c20 = c20 + vec4<f32>(dot(x2, w0), dot(x2, w1), dot(x2, w2), dot(x2, w3));
        c21 = c21 + vec4<f32>(dot(x2, w4), dot(x2, w5), dot(x2, w6), dot(x2, w7));
        c22 = c22 + vec4<f32>(dot(x2, w8), dot(x2, w9), dot(x2, w10), dot(x2, w11));
        c23 = c23 + vec4<f32>(dot(x2, w12), dot(x2, w13), dot(x2, w14), dot(x2, w15));
        let x3 = a[a3 + kk];
        c30 = c30 + vec4<f32>(dot(x3, w0), dot(x3, w1), dot(x3, w2), dot(x3, w3));
        c31 = c31 + vec4<f32>(dot(x3, w4), dot(x3, w5), dot(x3, w6), dot(x3, w7));
        c32 = c32 + vec4<f32>(dot(x3, w8), dot(x3, w9), dot(x3, w10), dot(x3, w11));
        c33 = c33 + vec4<f32>(dot(x3, w12), dot(x3, w13), dot(x3, w14), dot(x3, w15));
        let x4 = a[a4 + kk];
        c40 = c40 + vec4<f32>(dot(x4, w0), dot(x4, w1), dot(x4, w2), dot(x4, w3));
        c41 = c41 + vec4<f32>(dot(x4, w4), dot(x4, w5), dot(x4, w6), dot(x4, w7));
        c42 = c42 + vec4<f32>(dot(x4, w8), dot(x4, w9), dot(x4, w10), dot(x4, w11));
        c43 = c43 + vec4<f32>(dot(x4, w12), dot(x4, w13), dot(x4, w14), dot(x4, w15));
        let x5 = a[a5 + kk];
        c50 = c50 + vec4<f32>(dot(x5, w0), dot(x5, w1), dot(x5, w2), dot(x5, w3));
        c51 = c51 + vec4<f32>(dot(x5, w4), dot(x5, w5), dot(x5, w6), dot(x5, w7));
        c52 = c52 + vec4<f32>(dot(x5, w8), dot(x5, w9), dot(x5, w10), dot(x5, w11));
        c53 = c53 + vec4<f32>(dot(x5, w12), dot(x5, w13), dot(x5, w14), dot(x5, w15));
        let x6 = a[a6 + kk];
        c60 = c60 + vec4<f32>(dot(x6, w0), dot(x6, w1), dot(x6, w2), dot(x6, w3));
        c61 = c61 + vec4<f32>(dot(x6, w4), dot(x6, w5), dot(x6, w6), dot(x6, w7));
        c62 = c62 + vec4<f32>(dot(x6, w8), dot(x6, w9), dot(x6, w10), dot(x6, w11));
        c63 = c63 + vec4<f32>(dot(x6, w12), dot(x6, w13), dot(x6, w14), dot(x6, w15));
        let x7 = a[a7 + kk];
        c70 = c70 + vec4<f32>(dot(x7, w0), dot(x7, w1), dot(x7, w2), dot(x7, w3));
        c71 = c71 + vec4<f32>(dot(x7, w4), dot(x7, w5), dot(x7, w6), dot(x7, w7));
        c72 = c72 + vec4<f32>(dot(x7, w8), dot(x7, w9), dot(x7, w10), dot(x7, w11));
        c73 = c73 + vec4<f32>(dot(x7, w12), dot(x7, w13), dot(x7, w14), dot(x7, w15));
    }
    let co = wg.z * m * n;
    store4(co, row0 + 0u, col0 + 0u, c00);
    store4(co, row0 + 0u, col0 + 4u, c01);
    store4(co, row0 + 0u, col0 + 8u, c02);
    store4(co, row0 + 0u, col0 + 12u, c03);
    store4(co, row0 + 1u, col0 + 0u, c10);
    store4(co, row0 + 1u, col0 + 4u, c11);
    store4(co, row0 + 1u, col0 + 8u, c12);
    store4(co, row0 + 1u, col0 + 12u, c13);
    store4(co, row0 + 2u, col0 + 0u, c20);
    store4(co, row0 + 2u, col0 + 4u, c21);
    store4(co, row0 + 2u, col0 + 8u, c22);
    store4(co, row0 + 2u, col0 + 12u, c23);
    store4(co, row0 + 3u, col0 + 0u, c30);
    store4(co, row0 + 3u, col0 + 4u, c31);
    store4(co, row0 + 3u, col0 + 8u, c32);
    store4(co, row0 + 3u, col0 + 12u, c33);
    store4(co, row0 + 4u, col0 + 0u, c40);
    store4(co, row0 + 4u, col0 + 4u, c41);
    store4(co, row0 + 4u, col0 + 8u, c42);
    store4(co, row0 + 4u, col0 + 12u, c43);
    store4(co, row0 + 5u, col0 + 0u, c50);
    store4(co, row0 + 5u, col0 + 4u, c51);
    store4(co, row0 + 5u, col0 + 8u, c52);
    store4(co, row0 + 5u, col0 + 12u, c53);
    store4(co, row0 + 6u, col0 + 0u, c60);
    store4(co, row0 + 6u, col0 + 4u, c61);
    store4(co, row0 + 6u, col0 + 8u, c62);
    store4(co, row0 + 6u, col0 + 12u, c63);
    store4(co, row0 + 7u, col0 + 0u, c70);
    store4(co, row0 + 7u, col0 + 4u, c71);
    store4(co, row0 + 7u, col0 + 8u, c72);
    store4(co, row0 + 7u, col0 + 12u, c73);
}
