// GGUF (ggml) weight matrices read packed: matrix-vector (decoding),
// matrix-matrix (prompts) and embedding-row lookup. Mirrors
// src/linalg/ggml/mod.rs (`dequantize_row`) and src/generate/gpu/.
//
// W is `rows × cols`, row-major, each row `row_bytes` bytes: f32, f16, or
// whole GGUF blocks laid out as llama.cpp writes them. The matrix is bound as
// little-endian u32 words (byte i is byte i % 4 of word i / 4). Every block
// of the 32-weight formats starts at an even byte and every field sits at an
// even offset in its block, so 16- and 32-bit fields are read at even byte
// offsets (one word, or the halves of two).
//
// FORMAT (src/generate/gpu/kernels.rs, `format_code`):
//   0 f32, 1 f16, 2 Q4_0, 3 Q4_1, 4 Q5_0, 5 Q5_1, 6 Q8_0.
//
// x rows are `x_stride` floats apart from `x_off`; y rows `y_stride` apart
// from `y_off`; `acc == 1` adds W·x to y instead of storing it.
//
// Bindings: 0 parameters, 1 W, 2 x, 3 y, 4 token ids (`get_rows` only).

struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    row_bytes: u32,
    x_off: u32,
    x_stride: u32,
    y_off: u32,
    y_stride: u32,
    acc: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

override FORMAT: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> ids: array<u32>;

// An IEEE half (low 16 bits of h) to f32, exactly, by bits (unpack2x16float
// needs a downlevel capability not every GL adapter has).
fn f16_to_f32(h: u32) -> f32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        return select(1.0, -1.0, s != 0u) * f32(m) * 5.9604644775390625e-8;
    }
    if (e == 31u) {
        return bitcast<f32>(s | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

fn byte_at(i: u32) -> u32 {
    return (w[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

// The 16 bits at even byte offset i.
fn u16_at(i: u32) -> u32 {
    return (w[i >> 2u] >> ((i & 2u) * 8u)) & 0xffffu;
}

fn half_at(i: u32) -> f32 {
    return f16_to_f32(u16_at(i));
}

// The 32 bits at even byte offset i.
fn u32_at(i: u32) -> u32 {
    let j = i >> 2u;
    if ((i & 2u) == 0u) {
        return w[j];
    }
    return (w[j] >> 16u) | (w[j + 1u] << 16u);
}

fn block_bytes() -> u32 {
    switch FORMAT {
        case 2u: { return 18u; }
        case 3u: { return 20u; }
        case 4u: { return 22u; }
        case 5u: { return 24u; }
        case 6u: { return 34u; }
        default: { return 0u; }
    }
}

// Weight k of the row starting at byte rb.
fn weight(rb: u32, k: u32) -> f32 {
    if (FORMAT == 0u) {
        return bitcast<f32>(w[(rb >> 2u) + k]);
    }
    if (FORMAT == 1u) {
        return half_at(rb + 2u * k);
    }
    let base = rb + (k >> 5u) * block_bytes();
    let j = k & 31u;
    let shift = (j >> 4u) * 4u;
    switch FORMAT {
        case 2u: {
            let q = (byte_at(base + 2u + (j & 15u)) >> shift) & 15u;
            return half_at(base) * (f32(q) - 8.0);
        }
        case 3u: {
            let q = (byte_at(base + 4u + (j & 15u)) >> shift) & 15u;
            return half_at(base) * f32(q) + half_at(base + 2u);
        }
        case 4u: {
            let qh = (u32_at(base + 2u) >> j) & 1u;
            let q = ((byte_at(base + 6u + (j & 15u)) >> shift) & 15u) | (qh << 4u);
            return half_at(base) * (f32(q) - 16.0);
        }
        case 5u: {
            let qh = (u32_at(base + 4u) >> j) & 1u;
            let q = ((byte_at(base + 8u + (j & 15u)) >> shift) & 15u) | (qh << 4u);
            return half_at(base) * f32(q) + half_at(base + 2u);
        }
        default: {
            let q = i32(byte_at(base + 2u + j) << 24u) >> 24u;
            return half_at(base) * f32(q);
        }
    }
}

// Σ_j q_j·x[xo + j] and Σ_j x[xo + j] over 16 nibble pairs packed in the
// four words at byte qs: low nibbles weigh x[xo..xo+16], high ones
// x[xo+16..xo+32]. hi holds a fifth bit per weight (bit j), or 0.
fn nibble_dot(qs: u32, hi: u32, xo: u32) -> vec2<f32> {
    var dot = 0.0;
    var sum = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let q = u32_at(qs + 4u * i);
        for (var c = 0u; c < 4u; c++) {
            let j = 4u * i + c;
            let b = q >> (8u * c);
            let lo = (b & 15u) | (((hi >> j) & 1u) << 4u);
            let up = ((b >> 4u) & 15u) | (((hi >> (j + 16u)) & 1u) << 4u);
            let x0 = x[xo + j];
            let x1 = x[xo + j + 16u];
            dot += f32(lo) * x0 + f32(up) * x1;
            sum += x0 + x1;
        }
    }
    return vec2<f32>(dot, sum);
}

// Σ_k w[rb][32·b + k]·x[xo + k] over the 32 weights of block b.
fn block_dot(rb: u32, b: u32, xo: u32) -> f32 {
    let k0 = 32u * b;
    if (FORMAT <= 1u) {
        var s = 0.0;
        let end = min(32u, p.cols - k0);
        for (var k = 0u; k < end; k++) {
            s += weight(rb, k0 + k) * x[xo + k];
        }
        return s;
    }
    let base = rb + b * block_bytes();
    let d = half_at(base);
    switch FORMAT {
        case 2u: {
            let r = nibble_dot(base + 2u, 0u, xo);
            return d * (r.x - 8.0 * r.y);
        }
        case 3u: {
            let r = nibble_dot(base + 4u, 0u, xo);
            return d * r.x + half_at(base + 2u) * r.y;
        }
        case 4u: {
            let r = nibble_dot(base + 6u, u32_at(base + 2u), xo);
            return d * (r.x - 16.0 * r.y);
        }
        case 5u: {
            let r = nibble_dot(base + 8u, u32_at(base + 4u), xo);
            return d * r.x + half_at(base + 2u) * r.y;
        }
        default: {
            var s = 0.0;
            for (var i = 0u; i < 8u; i++) {
                let q = u32_at(base + 2u + 4u * i);
                let v = vec4<f32>(vec4<i32>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
                let xs = vec4<f32>(x[xo + 4u * i], x[xo + 4u * i + 1u], x[xo + 4u * i + 2u], x[xo + 4u * i + 3u]);
                s += dot(v, xs);
            }
            return d * s;
        }
    }
}

fn store(i: u32, v: f32) {
    if (p.acc == 1u) {
        y[i] = y[i] + v;
    } else {
        y[i] = v;
    }
}

const MV_LANES: u32 = 8u;
const MV_ROWS: u32 = 8u;
var<workgroup> partial: array<f32, 64>;

// y[t] = W·x[t] for one x row per workgroup row of the grid's y axis:
// a workgroup covers MV_ROWS rows, MV_LANES invocations per row, each lane
// a strided share of the row's 32-weight blocks.
// Grid: [⌈rows / MV_ROWS⌉ split over x and z, n].
@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let row = (wid.x + wid.z * nwg.x) * MV_ROWS + lid / MV_LANES;
    let lane = lid % MV_LANES;
    let t = wid.y;
    var s = 0.0;
    if (row < p.rows) {
        let rb = row * p.row_bytes;
        let xo = p.x_off + t * p.x_stride;
        let blocks = (p.cols + 31u) / 32u;
        for (var b = lane; b < blocks; b += MV_LANES) {
            s += block_dot(rb, b, xo + 32u * b);
        }
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var h = MV_LANES / 2u; h > 0u; h >>= 1u) {
        if (lane < h) {
            partial[lid] += partial[lid + h];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.rows) {
        store(p.y_off + t * p.y_stride + row, partial[lid]);
    }
}

const MM_TILE: u32 = 16u;
const MM_K: u32 = 32u;
var<workgroup> w_tile: array<f32, 512>;
var<workgroup> x_tile: array<f32, 512>;

// y = x·Wᵀ for n rows of x: a workgroup covers MM_TILE rows of W × MM_TILE
// rows of x, stepping through the columns 32 at a time through workgroup
// memory. Grid: [⌈rows / MM_TILE⌉ split over x and z, ⌈n / MM_TILE⌉].
@compute @workgroup_size(256)
fn matmat(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let row0 = (wid.x + wid.z * nwg.x) * MM_TILE;
    let t0 = wid.y * MM_TILE;
    let tr = lid / MM_TILE;
    let tc = lid % MM_TILE;
    var s = 0.0;
    for (var k0 = 0u; k0 < p.cols; k0 += MM_K) {
        for (var e = 0u; e < 2u; e++) {
            let idx = 2u * lid + e;
            let rr = idx / MM_K;
            let k = k0 + idx % MM_K;
            var wv = 0.0;
            if (row0 + rr < p.rows && k < p.cols) {
                wv = weight((row0 + rr) * p.row_bytes, k);
            }
            w_tile[idx] = wv;
            var xv = 0.0;
            if (t0 + rr < p.n && k < p.cols) {
                xv = x[p.x_off + (t0 + rr) * p.x_stride + k];
            }
            x_tile[idx] = xv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < MM_K; kk++) {
            s += w_tile[tr * MM_K + kk] * x_tile[tc * MM_K + kk];
        }
        workgroupBarrier();
    }
    let row = row0 + tr;
    let t = t0 + tc;
    if (row < p.rows && t < p.n) {
        store(p.y_off + t * p.y_stride + row, s);
    }
}

// y[t] = row ids[t] of W (the embedding), for n ids: `cols` floats per row
// of y. Grid: [⌈cols / 64⌉, n].
@compute @workgroup_size(64)
fn get_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.x * 64u + lid;
    let t = wid.y;
    if (k < p.cols && t < p.n) {
        y[p.y_off + t * p.y_stride + k] = weight(ids[t] * p.row_bytes, k);
    }
}
