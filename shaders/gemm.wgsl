// General Gemm: y = alpha * op(A) * op(B) + beta * C, op an optional
// transpose, C broadcast to [M, N] through its strides (0 along a broadcast
// axis). Register-blocked: an 8x8 workgroup covers a 32x32 tile of y, each
// invocation 4 rows x 4 columns. Mirrors src/ops/gemm.rs (the common
// alpha = beta = 1, transA = 0 form takes the matmul kernels instead).
//
// Bindings: 0 output y [M, N], 1 parameters, 2 A, 3 B, 4 C (a zero buffer
// when absent).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_c: u32,
    // Element strides of A along (row i, k), of B along (k, column j), of C along (i, j).
    a_i: u32,
    a_k: u32,
    b_k: u32,
    b_j: u32,
    c_i: u32,
    c_j: u32,
    alpha_bits: u32,
    beta_bits: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> c: array<f32>;

@compute @workgroup_size(8, 8)
fn gemm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i0 = gid.y * 4u;
    let j0 = gid.x * 4u;
    if (i0 >= params.m || j0 >= params.n) {
        return;
    }
    // Rows and columns past the edge are clamped to the last one and not written.
    let mi = params.m - 1u;
    let nj = params.n - 1u;
    let ra = vec4<u32>(min(i0, mi), min(i0 + 1u, mi), min(i0 + 2u, mi), min(i0 + 3u, mi)) * params.a_i;
    let cb = vec4<u32>(min(j0, nj), min(j0 + 1u, nj), min(j0 + 2u, nj), min(j0 + 3u, nj)) * params.b_j;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var p = 0u; p < params.k; p = p + 1u) {
        let ak = p * params.a_k;
        let bk = p * params.b_k;
        let bv = vec4<f32>(b[bk + cb.x], b[bk + cb.y], b[bk + cb.z], b[bk + cb.w]);
        acc0 = acc0 + a[ra.x + ak] * bv;
        acc1 = acc1 + a[ra.y + ak] * bv;
        acc2 = acc2 + a[ra.z + ak] * bv;
        acc3 = acc3 + a[ra.w + ak] * bv;
    }
    let alpha = bitcast<f32>(params.alpha_bits);
    let beta = bitcast<f32>(params.beta_bits);
    var accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r = r + 1u) {
        let i = i0 + r;
        if (i >= params.m) {
            break;
        }
        let row = accs[r];
        for (var q = 0u; q < 4u; q = q + 1u) {
            let j = j0 + q;
            if (j >= params.n) {
                break;
            }
            var v = alpha * row[q];
            if (params.has_c != 0u) {
                v = v + beta * c[i * params.c_i + j * params.c_j];
            }
            y[i * params.n + j] = v;
        }
    }
}
