// Matrix products: C[b] = act(A[b] · B[b] + bias), A [M, K] row-major, B either
// [K, N] (MatMul) or [N, K] (a Linear weight, TRANS_B). Needs activation.wgsl
// prepended. Mirrors src/ops/matmul.rs and src/ops/linear.rs.
//
// Three entry points, chosen by the planner:
//   `blocked`: register blocking, each invocation computes a TM x TN = 4x4 tile
//              from registers, no shared memory. Best on CPU adapters
//              (llvmpipe), which run a workgroup as SIMD lanes of one thread.
//   `tiled`:   64x64 output tiles staged through workgroup memory in K-steps
//              of 16; each invocation still owns a 4x4 tile. Best on real GPUs.
//   `gemv`:    one invocation per output element and rows in grid y; for M = 1.
//
// Batching: grid z is the batch index, decomposed over `batch_shape` (up to 4
// axes, last fastest); each axis has an element stride for A and for B, 0
// where that input broadcasts. C is dense: batch z starts at z * M * N.
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
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// B is stored [N, K] (a Linear weight) instead of [K, N].
override TRANS_B: bool = false;
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

fn b_at(off: u32, kk: u32, j: u32) -> f32 {
    if (TRANS_B) {
        return b[off + j * params.k + kk];
    }
    return b[off + kk * params.n + j];
}

fn epilogue(v: f32, col: u32) -> f32 {
    var r = v;
    if (HAS_BIAS) {
        r = r + bias[col];
    }
    return wg_activate(r, ACT);
}

fn store_tile(co: u32, row0: u32, col0: u32, acc: array<vec4<f32>, 4>) {
    let m = params.m;
    let n = params.n;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = row0 + i;
        if (row < m) {
            for (var j = 0u; j < 4u; j = j + 1u) {
                let col = col0 + j;
                if (col < n) {
                    c[co + row * n + col] = epilogue(acc[i][j], col);
                }
            }
        }
    }
}

@compute @workgroup_size(8, 8)
fn blocked(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let row0 = (wg.y * 8u + lid.y) * 4u;
    let col0 = (wg.x * 8u + lid.x) * 4u;
    if (row0 >= m || col0 >= n) {
        return;
    }
    let offs = batch_offsets(wg.z);
    // Rows and columns past the edge are clamped (computed, never stored),
    // so the inner loop has no branches.
    let r0 = offs.x + min(row0, m - 1u) * k;
    let r1 = offs.x + min(row0 + 1u, m - 1u) * k;
    let r2 = offs.x + min(row0 + 2u, m - 1u) * k;
    let r3 = offs.x + min(row0 + 3u, m - 1u) * k;
    let c0 = min(col0, n - 1u);
    let c1 = min(col0 + 1u, n - 1u);
    let c2 = min(col0 + 2u, n - 1u);
    let c3 = min(col0 + 3u, n - 1u);
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    if (TRANS_B) {
        let w0 = offs.y + c0 * k;
        let w1 = offs.y + c1 * k;
        let w2 = offs.y + c2 * k;
        let w3 = offs.y + c3 * k;
        for (var kk = 0u; kk < k; kk = kk + 1u) {
            let bv = vec4<f32>(b[w0 + kk], b[w1 + kk], b[w2 + kk], b[w3 + kk]);
            acc[0] = fma(vec4<f32>(a[r0 + kk]), bv, acc[0]);
            acc[1] = fma(vec4<f32>(a[r1 + kk]), bv, acc[1]);
            acc[2] = fma(vec4<f32>(a[r2 + kk]), bv, acc[2]);
            acc[3] = fma(vec4<f32>(a[r3 + kk]), bv, acc[3]);
        }
    } else {
        for (var kk = 0u; kk < k; kk = kk + 1u) {
            let bo = offs.y + kk * n;
            let bv = vec4<f32>(b[bo + c0], b[bo + c1], b[bo + c2], b[bo + c3]);
            acc[0] = fma(vec4<f32>(a[r0 + kk]), bv, acc[0]);
            acc[1] = fma(vec4<f32>(a[r1 + kk]), bv, acc[1]);
            acc[2] = fma(vec4<f32>(a[r2 + kk]), bv, acc[2]);
            acc[3] = fma(vec4<f32>(a[r3 + kk]), bv, acc[3]);
        }
    }
    store_tile(wg.z * m * n, row0, col0, acc);
}

const TILE: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> a_tile: array<f32, 1024>; // [TILE rows][TK]
var<workgroup> b_tile: array<f32, 1024>; // [TK][TILE cols]

@compute @workgroup_size(16, 16)
fn tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let offs = batch_offsets(wg.z);
    let tile_row = wg.y * TILE;
    let tile_col = wg.x * TILE;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var t = 0u; t < k; t = t + TK) {
        for (var l = 0u; l < 4u; l = l + 1u) {
            let idx = tid + l * 256u;
            // A tile: row idx / TK, column idx % TK.
            let ar = tile_row + idx / TK;
            let ak = t + idx % TK;
            let av = a[offs.x + min(ar, m - 1u) * k + min(ak, k - 1u)];
            a_tile[idx] = select(0.0, av, ar < m && ak < k);
            // B tile: row (k) idx / TILE, column idx % TILE.
            let bk = t + idx / TILE;
            let bc = tile_col + idx % TILE;
            let bv = b_at(offs.y, min(bk, k - 1u), min(bc, n - 1u));
            b_tile[idx] = select(0.0, bv, bk < k && bc < n);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let bo = kk * TILE + lid.x * 4u;
            let bv = vec4<f32>(b_tile[bo], b_tile[bo + 1u], b_tile[bo + 2u], b_tile[bo + 3u]);
            for (var i = 0u; i < 4u; i = i + 1u) {
                acc[i] = fma(vec4<f32>(a_tile[(lid.y * 4u + i) * TK + kk]), bv, acc[i]);
            }
        }
        workgroupBarrier();
    }
    store_tile(wg.z * m * n, tile_row + lid.y * 4u, tile_col + lid.x * 4u, acc);
}

@compute @workgroup_size(64)
fn gemv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = params.n;
    let k = params.k;
    let col = wg.x * 64u + li;
    let row = wg.y;
    if (col >= n) {
        return;
    }
    let offs = batch_offsets(wg.z);
    let ao = offs.x + row * k;
    // Four partial sums: shorter dependency chains, and closer to the
    // reference's f64 accumulation than one long f32 chain.
    var s = vec4<f32>(0.0);
    let k4 = k - k % 4u;
    var kk = 0u;
    for (; kk < k4; kk = kk + 4u) {
        let av = vec4<f32>(a[ao + kk], a[ao + kk + 1u], a[ao + kk + 2u], a[ao + kk + 3u]);
        let bv = vec4<f32>(b_at(offs.y, kk, col), b_at(offs.y, kk + 1u, col), b_at(offs.y, kk + 2u, col),
                           b_at(offs.y, kk + 3u, col));
        s = fma(av, bv, s);
    }
    var tail = 0.0;
    for (; kk < k; kk = kk + 1u) {
        tail = fma(a[ao + kk], b_at(offs.y, kk, col), tail);
    }
    let v = (s.x + s.y) + (s.z + s.w) + tail;
    c[wg.z * params.m * n + row * n + col] = epilogue(v, col);
}
