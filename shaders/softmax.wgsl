// Softmax along any axis, numerically stable: y = exp(x - max) / sum(exp(x - max)),
// or with LOG its logarithm: y = x - max - log(sum(exp(x - max))).
// Mirrors src/ops/softmax.rs. The tensor is viewed as [outer, len, inner] with the
// axis in the middle; one workgroup normalises one (outer, inner) row of `len`
// elements with a shared-memory tree reduction for the max and the sum.
//
// Bindings: 0 output, 1 parameters, 2 input.

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    // outer * inner: the number of rows (one workgroup each).
    rows: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;

// LogSoftmax instead of Softmax.
override LOG: bool = false;

const WG: u32 = 64u;

fn finish(v: f32, m: f32, sum: f32) -> f32 {
    if (LOG) {
        return v - m - log(sum);
    }
    return exp(v - m) / sum;
}
const NEG_MAX: f32 = -3.402823e+38;

var<workgroup> scratch: array<f32, 64>;

@compute @workgroup_size(64)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    // Rows are uniform across the workgroup, so this early return keeps the
    // barriers below in uniform control flow.
    let row = wg.y * nwg.x + wg.x;
    if (row >= params.rows) {
        return;
    }
    let len = params.len;
    let inner = params.inner;
    let base = (row / inner) * len * inner + row % inner;

    var m = NEG_MAX;
    for (var j = li; j < len; j = j + WG) {
        m = max(m, x[base + j * inner]);
    }
    scratch[li] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            scratch[li] = max(scratch[li], scratch[li + s]);
        }
        workgroupBarrier();
    }
    m = scratch[0];
    workgroupBarrier();

    var sum = 0.0;
    for (var j = li; j < len; j = j + WG) {
        sum = sum + exp(x[base + j * inner] - m);
    }
    scratch[li] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            scratch[li] = scratch[li] + scratch[li + s];
        }
        workgroupBarrier();
    }
    let total = scratch[0];

    for (var j = li; j < len; j = j + WG) {
        let at = base + j * inner;
        y[at] = finish(x[at], m, total);
    }
}

// Short rows (the planner uses this when `len` is small): one invocation per
// row, three passes over it, no shared memory and no barriers — on CPU
// adapters a barrier costs far more than a 10-element row.
@compute @workgroup_size(64)
fn softmax_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let row = (wg.y * nwg.x + wg.x) * WG + li;
    if (row >= params.rows) {
        return;
    }
    let len = params.len;
    let inner = params.inner;
    let base = (row / inner) * len * inner + row % inner;
    var m = NEG_MAX;
    for (var j = 0u; j < len; j = j + 1u) {
        m = max(m, x[base + j * inner]);
    }
    var sum = 0.0;
    for (var j = 0u; j < len; j = j + 1u) {
        sum = sum + exp(x[base + j * inner] - m);
    }
    for (var j = 0u; j < len; j = j + 1u) {
        let at = base + j * inner;
        y[at] = finish(x[at], m, sum);
    }
}
