// The steps of a llama-family decoder between its matrix products
// (shaders/ggml.wgsl): RMSNorm, RoPE (adjacent pairs or halves), bias add,
// causal grouped-query attention over the KV cache, SwiGLU. Mirrors the CPU
// decoder (src/generate/cpu.rs) and src/generate/gpu/.
//
// A pass runs `n` rows, each a token of some sequence: row t belongs to
// cache slot rows[2t] at position rows[2t + 1]. The KV cache of a layer is
// two buffers of `slots · context` rows of kv_heads·head_dim floats (slot s,
// position j at row s·context + j); kv_scatter copies the pass's keys and
// values into their rows once biased and rotated.
//
// Bindings: 0 parameters, 1 a (read-write: output or in place), 2 b, 3 c,
// 4 e (read-only inputs; a dummy where unused), 5 scratch (attention scores),
// 6 rows (u32: (slot, position) per row, then the rows whose logits are read).

struct Params {
    n: u32,
    dim: u32,
    in_off: u32,
    out_off: u32,
    pos0: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    context: u32,
    rope_dims: u32,
    halves: u32,
    stride: u32,
    eps: f32,
    scale: f32,
    gather: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read> e: array<f32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(6) var<storage, read> rows: array<u32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

// Sum of v over the workgroup (every invocation gets it).
fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (lid < h) {
            red[lid] += red[lid + h];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (lid < h) {
            red[lid] = max(red[lid], red[lid + h]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// a[out_off + t·dim + i] = b[src + i] / rms(b[src..src + dim]) · c[i] with
// src = in_off + t·dim, or with `gather` src = rows[in_off + t]·dim.
// Grid: [n].
@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x;
    var src = p.in_off + t * p.dim;
    if (p.gather == 1u) {
        src = rows[p.in_off + t] * p.dim;
    }
    var ss = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = b[src + i];
        ss += v * v;
    }
    let total = reduce_sum(lid, ss);
    let inv = 1.0 / sqrt(total / f32(p.dim) + p.eps);
    let dst = p.out_off + t * p.dim;
    for (var i = lid; i < p.dim; i += WG) {
        a[dst + i] = b[src + i] * inv * c[i];
    }
}

// Rotates `heads` heads of head_dim floats in each of n rows (row t at
// out_off + t·stride, position rows[2t + 1]) in place: pair i of the first
// rope_dims dimensions, (2i, 2i+1) or (i, i + rope_dims/2) when `halves`,
// turns by the angle position·θ^(-2i/rope_dims), whose cosine and sine are
// c and e at [position, i] (tables of rope_dims/2 per position, computed in
// f64 on the host). Grid: [⌈heads·rope_dims/2 / 64⌉, n].
@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_dims = p.rope_dims / 2u;
    let h = gid.x / half_dims;
    let i = gid.x % half_dims;
    let t = gid.y;
    if (h >= p.heads || t >= p.n) {
        return;
    }
    let base = p.out_off + t * p.stride + h * p.head_dim;
    var j0 = 2u * i;
    var j1 = 2u * i + 1u;
    if (p.halves == 1u) {
        j0 = i;
        j1 = i + half_dims;
    }
    let at = rows[2u * t + 1u] * half_dims + i;
    let cs = c[at];
    let sn = e[at];
    let x0 = a[base + j0];
    let x1 = a[base + j1];
    a[base + j0] = x0 * cs - x1 * sn;
    a[base + j1] = x0 * sn + x1 * cs;
}

// The n rows of dim floats in b (row t at t·stride) into the cache a, row t
// at slot rows[2t], position rows[2t + 1]. Grid: [⌈dim / 64⌉, n].
@compute @workgroup_size(64)
fn kv_scatter(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= p.dim || t >= p.n) {
        return;
    }
    let at = rows[2u * t] * p.context + rows[2u * t + 1u];
    a[at * p.dim + i] = b[t * p.stride + i];
}

// a[out_off + t·stride + i] += c[i] for i < dim, t < n. Grid: [⌈dim / 64⌉, n].
@compute @workgroup_size(64)
fn bias_add(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < p.dim && gid.y < p.n) {
        let i = p.out_off + gid.y * p.stride + gid.x;
        a[i] = a[i] + c[gid.x];
    }
}

// a[i] = silu(a[i]) · b[i] for i < n·dim. Grid: [⌈n·dim / 64⌉ over x and y].
@compute @workgroup_size(64)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i < p.n * p.dim) {
        let g = a[i];
        // g·sigmoid(g), with exp of a non-positive argument only.
        let ex = exp(-abs(g));
        let sig = select(ex / (1.0 + ex), 1.0 / (1.0 + ex), g >= 0.0);
        a[i] = g * sig * b[i];
    }
}

var<workgroup> qv: array<f32, 256>;

// Causal attention of query head h of row t (slot rows[2t], position
// rows[2t + 1]) over the slot's cache positions 0..=position of KV head
// h / (heads / kv_heads): b holds the queries (n rows of heads·head_dim), c
// the keys and e the values (slots·context rows of kv_heads·head_dim),
// scratch the scores (context floats per (t, h)); a gets the output rows
// like the queries. head_dim <= 256. Grid: [heads, n].
@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let kv_dim = p.kv_heads * hd;
    let kvo = rows[2u * t] * p.context * kv_dim + (h / (p.heads / p.kv_heads)) * hd;
    let qo = t * p.heads * hd + h * hd;
    let so = (t * p.heads + h) * p.context;
    let len = rows[2u * t + 1u] + 1u;
    for (var i = lid; i < hd; i += WG) {
        qv[i] = b[qo + i];
    }
    workgroupBarrier();
    var m = -3.0e38;
    for (var j = lid; j < len; j += WG) {
        var s = 0.0;
        let ko = j * kv_dim + kvo;
        for (var i = 0u; i < hd; i++) {
            s += qv[i] * c[ko + i];
        }
        s *= p.scale;
        scratch[so + j] = s;
        m = max(m, s);
    }
    let mx = reduce_max(lid, m);
    var sum = 0.0;
    for (var j = lid; j < len; j += WG) {
        let ex = exp(scratch[so + j] - mx);
        scratch[so + j] = ex;
        sum += ex;
    }
    let total = reduce_sum(lid, sum);
    storageBarrier();
    let inv = 1.0 / total;
    for (var i = lid; i < hd; i += WG) {
        var o = 0.0;
        for (var j = 0u; j < len; j++) {
            o += scratch[so + j] * e[j * kv_dim + kvo + i];
        }
        a[qo + i] = o * inv;
    }
}
