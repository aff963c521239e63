// Normalisation: LayerNormalization (over the trailing axes) and
// BatchNormalization (inference, per channel on axis 1).
// Mirrors src/ops/norm.rs.
//
// Bindings: 0 output, 1 parameters, 2.. inputs.
//   layernorm:  2 x, 3 scale, 4 bias (a zero buffer when absent)
//   layernorm_stats: the same (reads x only)
//   batchnorm, batchnorm_train:  2 x, 3 scale, 4 bias, 5 mean, 6 var
// Workgroups are laid out 2-D when one dimension would exceed the limit:
// the flat workgroup index is wg.y * num_workgroups.x + wg.x.

struct Params {
    // layernorm: number of rows; batchnorm: number of elements.
    n: u32,
    // layernorm: row length (the normalised elements); batchnorm: channels.
    len: u32,
    // layernorm: 1 when scale has one value per row element, 0 for one value
    // in all; batchnorm: elements per channel plane (product of axes 2..).
    a: u32,
    // layernorm: the same for bias (0 also when bias is absent).
    b: u32,
    // epsilon, as f32 bits.
    eps_bits: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> scale: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> mean: array<f32>;
@group(0) @binding(6) var<storage, read> variance: array<f32>;

const WG: u32 = 64u;

var<workgroup> scratch: array<f32, 64>;

fn reduce_sum(li: u32, v: f32) -> f32 {
    scratch[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            scratch[li] = scratch[li] + scratch[li + s];
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

// One workgroup per row: the mean, then the variance around it (two passes,
// each a shared-memory tree reduction), then y = (x - mean) * inv * scale + bias.
@compute @workgroup_size(64)
fn layernorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    // Uniform across the workgroup, so the barriers stay in uniform control flow.
    let row = wg.y * nwg.x + wg.x;
    if (row >= params.n) {
        return;
    }
    let len = params.len;
    let base = row * len;
    let inv_len = 1.0 / f32(len);

    var s = 0.0;
    for (var j = li; j < len; j = j + WG) {
        s = s + x[base + j];
    }
    let m = reduce_sum(li, s) * inv_len;

    var q = 0.0;
    for (var j = li; j < len; j = j + WG) {
        let d = x[base + j] - m;
        q = q + d * d;
    }
    let variance_ = reduce_sum(li, q) * inv_len;
    let inv = 1.0 / sqrt(variance_ + bitcast<f32>(params.eps_bits));

    for (var j = li; j < len; j = j + WG) {
        let at = base + j;
        y[at] = (x[at] - m) * inv * scale[j * params.a] + bias[j * params.b];
    }
}

// The mean of the row of `len` values at `base`, by one invocation.
fn row_mean(base: u32, len: u32) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < len; j = j + 1u) {
        s = s + x[base + j];
    }
    return s * (1.0 / f32(len));
}

// 1 / sqrt(variance + epsilon) of that row, given its mean (two-pass).
fn row_inv_std(base: u32, len: u32, m: f32) -> f32 {
    var q = 0.0;
    for (var j = 0u; j < len; j = j + 1u) {
        let d = x[base + j] - m;
        q = q + d * d;
    }
    return 1.0 / sqrt(q * (1.0 / f32(len)) + bitcast<f32>(params.eps_bits));
}

// Short rows: one invocation per row, no shared memory and no barriers.
@compute @workgroup_size(64)
fn layernorm_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    let row = (wg.y * nwg.x + wg.x) * WG + li;
    if (row >= params.n) {
        return;
    }
    let len = params.len;
    let base = row * len;
    let m = row_mean(base, len);
    let inv = row_inv_std(base, len, m);
    for (var j = 0u; j < len; j = j + 1u) {
        let at = base + j;
        y[at] = (x[at] - m) * inv * scale[j * params.a] + bias[j * params.b];
    }
}

// LayerNormalization's extra outputs, one invocation per row (the same
// row_mean and row_inv_std as layernorm_rows): STAT 0 writes the row's mean, STAT 1 its
// 1 / sqrt(variance + epsilon). `y` here has one value per row.
override STAT: u32 = 0u;

@compute @workgroup_size(64)
fn layernorm_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    let row = (wg.y * nwg.x + wg.x) * WG + li;
    if (row >= params.n) {
        return;
    }
    let len = params.len;
    let base = row * len;
    let m = row_mean(base, len);
    if (STAT == 0u) {
        y[row] = m;
        return;
    }
    y[row] = row_inv_std(base, len, m);
}

// One invocation per element: y = (x - mean[c]) / sqrt(var[c] + eps) * scale[c] + bias[c].
@compute @workgroup_size(256)
fn batchnorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + li;
    if (i >= params.n) {
        return;
    }
    let c = (i / params.a) % params.len;
    let inv = 1.0 / sqrt(variance[c] + bitcast<f32>(params.eps_bits));
    y[i] = (x[i] - mean[c]) * inv * scale[c] + bias[c];
}

// BatchNormalization in training mode, one workgroup per channel: the
// channel's batch mean and (population) variance by two tree reductions,
// then STAT 0 writes y (normalised with them), STAT 1 the running mean and
// STAT 2 the running variance (`input · momentum + batch · (1 - momentum)`,
// one value per channel). Parameters: n elements, len channels, a elements
// per channel plane, b the batch size, pad0 the momentum as f32 bits.
@compute @workgroup_size(64)
fn batchnorm_train(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    // Uniform across the workgroup, so the barriers stay in uniform control flow.
    let c = wg.y * nwg.x + wg.x;
    if (c >= params.len) {
        return;
    }
    let plane = params.a;
    let count = params.b * plane;
    let inv_count = 1.0 / f32(max(count, 1u));
    var s = 0.0;
    for (var k = li; k < count; k = k + WG) {
        s = s + x[((k / plane) * params.len + c) * plane + k % plane];
    }
    let m = reduce_sum(li, s) * inv_count;
    var q = 0.0;
    for (var k = li; k < count; k = k + WG) {
        let d = x[((k / plane) * params.len + c) * plane + k % plane] - m;
        q = q + d * d;
    }
    let v = reduce_sum(li, q) * inv_count;
    let momentum = bitcast<f32>(params.pad0);
    if (STAT == 0u) {
        let inv = 1.0 / sqrt(v + bitcast<f32>(params.eps_bits));
        for (var k = li; k < count; k = k + WG) {
            let at = ((k / plane) * params.len + c) * plane + k % plane;
            y[at] = (x[at] - m) * inv * scale[c] + bias[c];
        }
    } else if (li == 0u) {
        if (STAT == 1u) {
            y[c] = mean[c] * momentum + m * (1.0 - momentum);
        } else {
            y[c] = variance[c] * momentum + v * (1.0 - momentum);
        }
    }
}
