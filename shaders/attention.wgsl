// Fused multi-head attention: per batch b, head h and query row i,
//   y[b, i, h] = Σ_j p_j · v[b, j, h],  p = softmax_j(q[b, i, h] · k[b, j, h] · scale)
// over the keys the mask keeps (mask[b, j] != 0). Masked keys get weight
// exactly 0; a row whose keys are all masked writes zeros.
// Mirrors src/ops/attention.rs. q, k, v are [B, S, H·D] with the heads side
// by side in the last axis; the mask is [B, Sk].
//
// One workgroup per (b, h, i): the query row is staged in shared memory, the
// invocations split the keys for the scores (kept in shared memory, so Sk is
// at most MAX_SK), a tree reduction finds the maximum and the sum of
// exp(s - max), and the invocations split the head's columns for P·V.
//
// Bindings: 0 output, 1 parameters, 2 q, 3 k, 4 v, 5 mask (a zero buffer
// when absent; HAS_MASK says which). Workgroups are laid out 2-D when one
// dimension would exceed the limit: the flat index is wg.y * nwg.x + wg.x.

struct Params {
    batch: u32,
    sq: u32,
    sk: u32,
    heads: u32,
    head_dim: u32,
    // The score scale, as f32 bits.
    scale_bits: u32,
    // batch * heads * sq: one workgroup each.
    rows: u32,
    pad0: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read> mask: array<f32>;

// A mask input is bound.
override HAS_MASK: bool = false;

const WG: u32 = 64u;
// The longest key sequence (scores live in shared memory).
const MAX_SK: u32 = 1024u;
// The widest head.
const MAX_HD: u32 = 256u;
const NEG_MAX: f32 = -3.402823e+38;

var<workgroup> qs: array<f32, MAX_HD>;
var<workgroup> p: array<f32, MAX_SK>;
var<workgroup> scratch: array<f32, 64>;

fn keep(b: u32, j: u32) -> bool {
    if (HAS_MASK) {
        return mask[b * params.sk + j] != 0.0;
    }
    return true;
}

fn reduce_max(li: u32, x: f32) -> f32 {
    scratch[li] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            scratch[li] = max(scratch[li], scratch[li + s]);
        }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(li: u32, x: f32) -> f32 {
    scratch[li] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            scratch[li] = scratch[li] + scratch[li + s];
        }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    // Rows are uniform across the workgroup, so this early return keeps the
    // barriers below in uniform control flow.
    let row = wg.y * nwg.x + wg.x;
    if (row >= params.rows) {
        return;
    }
    let hd = params.head_dim;
    let sk = params.sk;
    let w = params.heads * hd;
    let i = row % params.sq;
    let bh = row / params.sq;
    let h = bh % params.heads;
    let b = bh / params.heads;
    let qbase = (b * params.sq + i) * w + h * hd;
    let kvbase = b * sk * w + h * hd;
    let scale = bitcast<f32>(params.scale_bits);

    for (var c = li; c < hd; c = c + WG) {
        qs[c] = q[qbase + c];
    }
    workgroupBarrier();

    // Scores of the kept keys, and their maximum.
    var m = NEG_MAX;
    for (var j = li; j < sk; j = j + WG) {
        var s = NEG_MAX;
        if (keep(b, j)) {
            let kb = kvbase + j * w;
            var acc = 0.0;
            for (var c = 0u; c < hd; c = c + 1u) {
                acc = acc + qs[c] * k[kb + c];
            }
            s = acc * scale;
            m = max(m, s);
        }
        p[j] = s;
    }
    m = reduce_max(li, m);

    // Unnormalised weights; masked keys exactly 0.
    var sum = 0.0;
    for (var j = li; j < sk; j = j + WG) {
        var e = 0.0;
        if (keep(b, j)) {
            e = exp(p[j] - m);
        }
        p[j] = e;
        sum = sum + e;
    }
    sum = reduce_sum(li, sum);

    // P·V, one column of the head per invocation. A kept key has weight
    // exp(0) = 1 at the maximum, so sum == 0 only when every key is masked.
    for (var c = li; c < hd; c = c + WG) {
        var acc = 0.0;
        if (sum > 0.0) {
            for (var j = 0u; j < sk; j = j + 1u) {
                acc = acc + p[j] * v[kvbase + j * w + c];
            }
            acc = acc / sum;
        }
        y[qbase + c] = acc;
    }
}
