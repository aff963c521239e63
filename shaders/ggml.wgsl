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
//   0 f32, 1 f16, 2 Q4_0, 3 Q4_1, 4 Q5_0, 5 Q5_1, 6 Q8_0, 7 Q4_K, 8 Q5_K, 9 Q6_K.
// The kernels walk rows in groups of 32 weights: one block of the 32-weight
// formats, one eighth of a k-quant block (which starts at an even byte too:
// 144, 176 and 210 bytes).
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
        case 7u: { return 144u; }
        case 8u: { return 176u; }
        case 9u: { return 210u; }
        default: { return 0u; }
    }
}

// The byte where the block holding 32-weight group g of a row starts.
fn block_base(rb: u32, g: u32) -> u32 {
    if (FORMAT >= 7u) {
        return rb + (g >> 3u) * block_bytes();
    }
    return rb + g * block_bytes();
}

// Q4_K / Q5_K: the 6-bit scale (x) and minimum (y) of sub-block j (0..8)
// from the 12 scale bytes at sb (llama.cpp's get_scale_min_k4).
fn scale_min_k4(sb: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(byte_at(sb + j) & 63u), f32(byte_at(sb + j + 4u) & 63u));
    }
    let hi = byte_at(sb + j + 4u);
    let sc = (hi & 15u) | ((byte_at(sb + j - 4u) >> 6u) << 4u);
    let m = (hi >> 4u) | ((byte_at(sb + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

// The quantized value of weight l (0..32) of 32-weight group g of a block at
// `base`, and its scale (x) and offset (y): w = x·q + y.
fn kquant(base: u32, g: u32, l: u32) -> vec3<f32> {
    let s = g & 7u;
    if (FORMAT == 9u) {
        // Q6_K: ql[128], qh[64], 16 int8 scales, f16 d.
        let half = s >> 2u;
        let quarter = s & 3u;
        let lo = (byte_at(base + 64u * half + 32u * (quarter & 1u) + l) >> (4u * (quarter >> 1u))) & 15u;
        let hi = (byte_at(base + 128u + 32u * half + l) >> (2u * quarter)) & 3u;
        let sc = f32(i32(byte_at(base + 192u + 8u * half + 2u * quarter + l / 16u) << 24u) >> 24u);
        let d = half_at(base + 208u) * sc;
        return vec3<f32>(f32(lo | (hi << 4u)), d, -32.0 * d);
    }
    // Q4_K / Q5_K: f16 d, f16 dmin, 12 scale bytes, (Q5_K: qh[32]), qs[128].
    let sm = scale_min_k4(base + 4u, s);
    let d = half_at(base) * sm.x;
    let m = half_at(base + 2u) * sm.y;
    var qs = base + 16u;
    var q = 0u;
    if (FORMAT == 8u) {
        qs = base + 48u;
        q = ((byte_at(base + 16u + l) >> s) & 1u) << 4u;
    }
    q |= (byte_at(qs + 32u * (s >> 1u) + l) >> (4u * (s & 1u))) & 15u;
    return vec3<f32>(f32(q), d, -m);
}

// Weight k of the row starting at byte rb.
fn weight(rb: u32, k: u32) -> f32 {
    if (FORMAT == 0u) {
        return bitcast<f32>(w[(rb >> 2u) + k]);
    }
    if (FORMAT == 1u) {
        return half_at(rb + 2u * k);
    }
    let g = k >> 5u;
    let base = block_base(rb, g);
    let j = k & 31u;
    if (FORMAT >= 7u) {
        let v = kquant(base, g, j);
        return v.y * v.x + v.z;
    }
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

// Q4_K / Q5_K: Σ q·x and Σ x over the 32 weights of group g (one scale and
// minimum), four quants per word.
fn kquant_dot(base: u32, g: u32, xo: u32) -> vec4<f32> {
    let s = g & 7u;
    var qs = base + 16u + 32u * (s >> 1u);
    if (FORMAT == 8u) {
        qs = base + 48u + 32u * (s >> 1u);
    }
    let shift = 4u * (s & 1u);
    var dot = 0.0;
    var sum = 0.0;
    for (var i = 0u; i < 8u; i++) {
        let words = u32_at(qs + 4u * i);
        var highs = 0u;
        if (FORMAT == 8u) {
            highs = u32_at(base + 16u + 4u * i);
        }
        for (var c = 0u; c < 4u; c++) {
            let l = 4u * i + c;
            let q = ((words >> (8u * c + shift)) & 15u) | (((highs >> (8u * c + s)) & 1u) << 4u);
            let xv = x[xo + l];
            dot += f32(q) * xv;
            sum += xv;
        }
    }
    let sm = scale_min_k4(base + 4u, s);
    return vec4<f32>(dot, sum, half_at(base) * sm.x, half_at(base + 2u) * sm.y);
}

// Σ_k w[rb][32·g + k]·x[xo + k] over the 32 weights of group g.
fn block_dot(rb: u32, g: u32, xo: u32) -> f32 {
    let k0 = 32u * g;
    if (FORMAT <= 1u || FORMAT == 9u) {
        var s = 0.0;
        let end = min(32u, p.cols - k0);
        for (var k = 0u; k < end; k++) {
            s += weight(rb, k0 + k) * x[xo + k];
        }
        return s;
    }
    let base = block_base(rb, g);
    if (FORMAT >= 7u) {
        let r = kquant_dot(base, g, xo);
        return r.z * r.x - r.w * r.y;
    }
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
