enable f16;

// QLinear over f16 weights with native f16 storage (adapters with
// SHADER_F16); where it is missing, qlinear.wgsl (FORMAT_F16) reads the same
// bytes as u32 words and widens each half by bits. Each half is widened to f32 and
// accumulated in f32, so both give the same results. activation.wgsl is
// appended (the `enable` directive must come first).
//
// Tiles, grids, ROWS and ALIGNED as in qlinear.wgsl. Bindings: 0 y,
// 1 parameters, 2 x, 3 w (f16 [N, K]), 4 and 5 unused, 6 bias.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    aux: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f16>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

override ALIGNED: bool = true;
override ROWS: u32 = 8u;
override HAS_BIAS: bool = false;
// Fused activation (see activation.wgsl); 0 = none.
override ACT: u32 = 0u;

fn xv(base: u32, c: u32) -> vec4<f32> {
    if (ALIGNED) {
        return vec4<f32>(x[base + c], x[base + c + 1u], x[base + c + 2u], x[base + c + 3u]);
    }
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i = i + 1u) {
        if (c + i < params.k) {
            v[i] = x[base + c + i];
        }
    }
    return v;
}

fn wv(j: u32, c: u32) -> vec4<f32> {
    let e = j * params.k + c;
    return vec4<f32>(vec4<f16>(w[e], w[e + 1u], w[e + 2u], w[e + 3u]));
}

fn store(row: u32, col: u32, v: f32) {
    if (row < params.m && col < params.n) {
        var r = v;
        if (HAS_BIAS) {
            r = r + bias[col];
        }
        y[row * params.n + col] = wg_activate(r, ACT);
    }
}

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    var t = vec2<u32>((wg.y * 8u + lid.y) * ROWS, (wg.x * 8u + lid.x) * 4u);
    if (ROWS == 1u) {
        t = vec2<u32>(wg.y, (wg.x * 64u + lid.y * 8u + lid.x) * 4u);
    }
    if (t.x >= m || t.y >= n) {
        return;
    }
    var base: array<u32, 8>;
    for (var r = 0u; r < ROWS; r = r + 1u) {
        base[r] = min(t.x + r, m - 1u) * k;
    }
    let j0 = min(t.y, n - 1u);
    let j1 = min(t.y + 1u, n - 1u);
    let j2 = min(t.y + 2u, n - 1u);
    let j3 = min(t.y + 3u, n - 1u);
    var acc: array<vec4<f32>, 8>;
    for (var r = 0u; r < ROWS; r = r + 1u) {
        acc[r] = vec4<f32>(0.0);
    }
    for (var c = 0u; c < k; c = c + 4u) {
        let w0 = wv(j0, c);
        let w1 = wv(j1, c);
        let w2 = wv(j2, c);
        let w3 = wv(j3, c);
        for (var r = 0u; r < ROWS; r = r + 1u) {
            let xr = xv(base[r], c);
            acc[r] = acc[r] + vec4<f32>(dot(xr, w0), dot(xr, w1), dot(xr, w2), dot(xr, w3));
        }
    }
    for (var r = 0u; r < ROWS; r = r + 1u) {
        store(t.x + r, t.y, acc[r].x);
        store(t.x + r, t.y + 1u, acc[r].y);
        store(t.x + r, t.y + 2u, acc[r].z);
        store(t.x + r, t.y + 3u, acc[r].w);
    }
}
