// The ops around a sentence embedder's encoder: Gather (the embedding
// lookup), MaskedMeanPool and L2Normalize. Mirrors src/ops/movement.rs,
// src/ops/pool.rs and src/ops/l2norm.rs.
//
// Bindings: 0 output, 1 parameters, 2 x (f32), 3 aux (u32 words):
//   gather:           x = data, aux = indices (i64 as two little-endian u32
//                     words each when IDX64, else i32 as one word)
//   masked_mean_pool: x = [B, S, E], aux = mask [B, S] (f32 bits)
//   l2normalize:      x only (aux is a zero buffer)
// Workgroups are laid out 2-D when one dimension would exceed the limit:
// the flat workgroup index is wg.y * num_workgroups.x + wg.x.

struct Params {
    // Invocations with work: output elements (gather, masked_mean_pool) or rows (l2normalize).
    n: u32,
    // gather: elements after the axis; masked_mean_pool: S; l2normalize: row length.
    a: u32,
    // gather: number of indices; masked_mean_pool: E; l2normalize: stride between row elements.
    b: u32,
    // gather: the indexed axis' length.
    c: u32,
    // l2normalize: epsilon, as f32 bits.
    eps_bits: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> aux: array<u32>;

// Gather: i64 indices (two words each) rather than i32.
override IDX64: bool = true;

const WG: u32 = 256u;

fn flat(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * WG + li;
}

// An out-of-range index has no error channel on the device: its output is
// NaN, so it cannot pass for data. The CPU path reports it as an error.
@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let e = flat(wg, nwg, li);
    if (e >= params.n) {
        return;
    }
    let inner = params.a;
    let nidx = params.b;
    let len = params.c;
    let kk = e % inner;
    let t = e / inner;
    let pos = t % nidx;
    let o = t / nidx;
    var lo: u32;
    var neg: bool;
    var ok: bool;
    if (IDX64) {
        lo = aux[2u * pos];
        let hi = aux[2u * pos + 1u];
        // Non-negative: hi == 0; negative with |v| < 2^32: hi all ones, lo != 0.
        neg = hi == 0xffffffffu && lo != 0u;
        ok = hi == 0u || neg;
    } else {
        lo = aux[pos];
        neg = (lo & 0x80000000u) != 0u;
        ok = true;
    }
    var idx = lo;
    if (neg) {
        let mag = 0u - lo;
        ok = ok && mag <= len;
        idx = len - mag;
    } else {
        ok = ok && lo < len;
    }
    if (ok) {
        y[e] = x[(o * len + idx) * inner + kk];
    } else {
        // NaN built at run time: a constant NaN is not a valid WGSL const-expression.
        y[e] = bitcast<f32>(params.pad0 | 0x7fc00000u);
    }
}

// y[b, e] = Σ_s mask[b, s] · x[b, s, e] / max(Σ_s mask[b, s], 1e-9); one invocation per (b, e).
@compute @workgroup_size(256)
fn masked_mean_pool(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let e = flat(wg, nwg, li);
    if (e >= params.n) {
        return;
    }
    let s_len = params.a;
    let width = params.b;
    let bi = e / width;
    let ei = e % width;
    var count = 0.0;
    var acc = 0.0;
    for (var s = 0u; s < s_len; s = s + 1u) {
        let w = bitcast<f32>(aux[bi * s_len + s]);
        count = count + w;
        if (w != 0.0) {
            acc = acc + w * x[(bi * s_len + s) * width + ei];
        }
    }
    y[e] = acc / max(count, 1e-9);
}

// y = x / max(‖x‖₂, eps) along a row of `a` elements `b` apart; one invocation per row.
@compute @workgroup_size(256)
fn l2normalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let r = flat(wg, nwg, li);
    if (r >= params.n) {
        return;
    }
    let len = params.a;
    let inner = params.b;
    let base = (r / inner) * len * inner + r % inner;
    var ss = 0.0;
    for (var j = 0u; j < len; j = j + 1u) {
        let v = x[base + j * inner];
        ss = ss + v * v;
    }
    let inv = 1.0 / max(sqrt(ss), bitcast<f32>(params.eps_bits));
    for (var j = 0u; j < len; j = j + 1u) {
        let at = base + j * inner;
        y[at] = x[at] * inv;
    }
}
