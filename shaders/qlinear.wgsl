// QLinear: y = act(x · dequant(W)ᵀ + bias) over a packed weight, reading the
// packed bytes directly (the device never holds an f32 copy of W).
// Mirrors src/ops/qlinear.rs and the formats of src/quant/mod.rs. Needs
// activation.wgsl and an `idot4` prelude (qlinear_idot.wgsl: shifts;
// qlinear_dp4a.wgsl: dot4I8Packed) prepended.
//
// x is [M, K] f32; W is [N, K] in one of the formats below; y is [M, N].
// Packed tensors are bound as arrays of little-endian u32 words (byte i of a
// tensor is byte i % 4 of word i / 4), f32 tensors as their bit patterns.
//
// FORMAT (the FORMAT_* constants of src/backend/gpu/kernels/codes.rs):
//  code     tensors (t0, t1, t2)                      w[j, c]
//  F16         half [N, K]                              f16 → f32 (by bits)
//  INT8        i8 [N, K], scale f32 [N]                 q · s[j]
//  INT8_AFFINE  u8 [N, K], scale f32 [N], zero u8 [N]    (q - z[j]) · s[j]
//  POW2        i8 [N, K], shift i8 [N] or [1]           q · 2^-p (ldexp)
//  INT4        nibbles [N, blocks·BLOCK/2], scale f16 [N, blocks] (, min f16)
//                                                      (q - 8) · s  or  q · s + min
//  BINARY      bits [N, words], alpha f32 [N]           ±alpha[j]
//  W8A8        i8 [N, K], scale f32 [N], wsum i32 [N]   x quantized per row to u8 here (scale
//             (, outlier_index i32 [c] as t3,            and zero point), int32 dot (idot4),
//             outlier_weight f32 [N, c] as t4)          · s · scale, + the f32 outlier channels
//  XNOR        bits [N, words], alpha f32 [N]           x binarized per row here (β = mean|x|),
//                                                      dot = K - 2·popcount(xbits ^ wbits)
//  NM          values f32 [N, kept], index nibbles      kept values at (t / N_)·M_ + idx
//
// Each invocation computes ROWS rows (1 or 8) × C columns of y in registers
// (C = 8 for `main` and `w8a8`, 4 for `xnor` and `nm`). ROWS = 8: workgroup
// (8, 8) covers 64 rows × 8·C columns, grid [⌈N/(8·C)⌉, ⌈M/64⌉]. ROWS = 1
// (M < 4, the GEMV case): a workgroup covers 64·C columns of one row, grid
// [⌈N/(64·C)⌉, M].
//
// ALIGNED: K % 4 == 0, so four weights of a row share one u32 word (byte
// formats) and x needs no bounds checks; otherwise rows are read byte-wise
// and x beyond K reads as 0.
//
// Bindings: 0 y, 1 parameters, 2 x, 3 t0, 4 t1, 5 t2 (a dummy when absent),
// 6 bias (a dummy when HAS_BIAS is false); `w8a8` also 7 t3 and 8 t4 (its
// outlier tensors; dummies when OUTLIERS is 0). qlinear_sg.wgsl, appended to
// this file for the subgroup kernel, declares other variables at bindings 7
// and 8 (x4, w4): no entry point uses both, which WGSL allows.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // int4: u32 words per row; binary/xnor: u32 words per row; N:M: kept values per row.
    aux: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> t0: array<u32>;
@group(0) @binding(4) var<storage, read> t1: array<u32>;
@group(0) @binding(5) var<storage, read> t2: array<u32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read> t3: array<u32>;
@group(0) @binding(8) var<storage, read> t4: array<f32>;

override FORMAT: u32 = 2u;
override ALIGNED: bool = true;
override ROWS: u32 = 8u;
// pow2: one shift per output channel (else one for the tensor).
override PER_CHANNEL: bool = true;
// int4: inputs per block, and whether blocks carry a minimum.
override BLOCK: u32 = 32u;
override WITH_MIN: bool = false;
// N:M: kept weights per group and group size.
override NM_N: u32 = 2u;
override NM_M: u32 = 4u;
override HAS_BIAS: bool = false;
// W8A8: input channels kept in f32 (outlier_index / outlier_weight), 0 = none.
override OUTLIERS: u32 = 0u;
// Fused activation (see activation.wgsl); 0 = none.
override ACT: u32 = 0u;

// Byte i of a byte tensor stored in words.
fn byte_at(w: u32, i: u32) -> u32 {
    return (w >> (8u * (i & 3u))) & 0xffu;
}

// Four bytes of t0 from byte offset e (a multiple of 4 when ALIGNED).
fn bytes4(e: u32) -> u32 {
    let lo = t0[e >> 2u];
    if (ALIGNED) {
        return lo;
    }
    let s = (e & 3u) * 8u;
    if (s == 0u) {
        return lo;
    }
    let hi = t0[(e >> 2u) + 1u];
    return (lo >> s) | (hi << (32u - s));
}

// Four signed / unsigned bytes of a word, lowest first.
fn s8x4(w: u32) -> vec4<i32> {
    return bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
}

fn u8x4(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
}

// An IEEE half (low 16 bits of h) to f32, exactly. By bits rather than
// unpack2x16float, which naga gates behind a downlevel capability
// (SHADER_F16_IN_F32) that not every GL adapter has.
fn f16_to_f32(h: u32) -> f32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        // Zero and subnormals: m · 2^-24.
        return select(1.0, -1.0, s != 0u) * f32(m) * 5.9604644775390625e-8;
    }
    if (e == 31u) {
        return bitcast<f32>(s | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

// The two halves of a word, low first.
fn halves(w: u32) -> vec2<f32> {
    return vec2<f32>(f16_to_f32(w & 0xffffu), f16_to_f32(w >> 16u));
}

// Half i of a tensor of f16 stored in words.
fn half_at(t: u32, i: u32) -> f32 {
    var w = 0u;
    if (t == 0u) {
        w = t0[i >> 1u];
    } else if (t == 1u) {
        w = t1[i >> 1u];
    } else {
        w = t2[i >> 1u];
    }
    return f16_to_f32((w >> (16u * (i & 1u))) & 0xffffu);
}

// x[row, c..c+4) at element offset `base` of the row; zero beyond K.
fn xv(base: u32, c: u32) -> vec4<f32> {
    if (ALIGNED) {
        return vec4<f32>(x[base + c], x[base + c + 1u], x[base + c + 2u], x[base + c + 3u]);
    }
    let k = params.k;
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i = i + 1u) {
        if (c + i < k) {
            v[i] = x[base + c + i];
        }
    }
    return v;
}

// Dequantized w[j, c..c+4) (c a multiple of 4) for the weight-only formats.
fn wdec(j: u32, c: u32) -> vec4<f32> {
    let k = params.k;
    if (FORMAT == FORMAT_F16) {
        let e = j * k + c;
        if (ALIGNED) {
            return vec4<f32>(halves(t0[e >> 1u]), halves(t0[(e >> 1u) + 1u]));
        }
        return vec4<f32>(half_at(0u, e), half_at(0u, e + 1u), half_at(0u, e + 2u), half_at(0u, e + 3u));
    }
    if (FORMAT == FORMAT_INT8) {
        return vec4<f32>(s8x4(bytes4(j * k + c))) * bitcast<f32>(t1[j]);
    }
    if (FORMAT == FORMAT_INT8_AFFINE) {
        let z = f32(byte_at(t2[j >> 2u], j));
        return (vec4<f32>(u8x4(bytes4(j * k + c))) - z) * bitcast<f32>(t1[j]);
    }
    if (FORMAT == FORMAT_POW2) {
        var i = 0u;
        if (PER_CHANNEL) {
            i = j;
        }
        let p = bitcast<i32>(byte_at(t1[i >> 2u], i) << 24u) >> 24u;
        return vec4<f32>(s8x4(bytes4(j * k + c))) * ldexp(1.0, -p);
    }
    if (FORMAT == FORMAT_INT4) {
        let rw = params.aux;
        let word = t0[j * rw + (c >> 3u)];
        let q = vec4<f32>((vec4<u32>(word >> ((c & 4u) * 4u)) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(0xfu));
        let b = j * (rw * 8u / BLOCK) + c / BLOCK;
        let s = half_at(1u, b);
        if (WITH_MIN) {
            return q * s + half_at(2u, b);
        }
        return (q - 8.0) * s;
    }
    // FORMAT_BINARY: sign · alpha.
    let bits = t0[j * params.aux + (c >> 5u)] >> (c & 31u);
    let a = bitcast<f32>(t1[j]);
    let on = ((vec4<u32>(bits) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) == vec4<u32>(1u);
    return select(vec4<f32>(-a), vec4<f32>(a), on);
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

fn store4(row: u32, col: u32, v: vec4<f32>) {
    store(row, col, v.x);
    store(row, col + 1u, v.y);
    store(row, col + 2u, v.z);
    store(row, col + 3u, v.w);
}

// First row and first column of a tile of ROWS x 8 (`main`, `w8a8`).
fn tile8(wg: vec3<u32>, lid: vec3<u32>) -> vec2<u32> {
    if (ROWS == 1u) {
        return vec2<u32>(wg.y, (wg.x * 64u + lid.y * 8u + lid.x) * 8u);
    }
    return vec2<u32>((wg.y * 8u + lid.y) * ROWS, (wg.x * 8u + lid.x) * 8u);
}

// First row and first column of a tile of ROWS x 4 (`xnor`, `nm`).
fn tile(wg: vec3<u32>, lid: vec3<u32>) -> vec2<u32> {
    if (ROWS == 1u) {
        return vec2<u32>(wg.y, (wg.x * 64u + lid.y * 8u + lid.x) * 4u);
    }
    return vec2<u32>((wg.y * 8u + lid.y) * ROWS, (wg.x * 8u + lid.x) * 4u);
}

// Weight-only formats (1-6): decode four weights of eight columns per step
// of 4 along K and reuse them for every row of the tile.
@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let t = tile8(wg, lid);
    if (t.x >= m || t.y >= n) {
        return;
    }
    // Rows and columns clamped at the edge: computed, never stored.
    var base: array<u32, 8>;
    for (var r = 0u; r < ROWS; r = r + 1u) {
        base[r] = min(t.x + r, m - 1u) * k;
    }
    let j0 = min(t.y, n - 1u);
    let j1 = min(t.y + 1u, n - 1u);
    let j2 = min(t.y + 2u, n - 1u);
    let j3 = min(t.y + 3u, n - 1u);
    let j4 = min(t.y + 4u, n - 1u);
    let j5 = min(t.y + 5u, n - 1u);
    let j6 = min(t.y + 6u, n - 1u);
    let j7 = min(t.y + 7u, n - 1u);
    var acc: array<vec4<f32>, 8>;
    var acc2: array<vec4<f32>, 8>;
    for (var r = 0u; r < ROWS; r = r + 1u) {
        acc[r] = vec4<f32>(0.0);
        acc2[r] = vec4<f32>(0.0);
    }
    for (var c = 0u; c < k; c = c + 4u) {
        let w0 = wdec(j0, c);
        let w1 = wdec(j1, c);
        let w2 = wdec(j2, c);
        let w3 = wdec(j3, c);
        let w4 = wdec(j4, c);
        let w5 = wdec(j5, c);
        let w6 = wdec(j6, c);
        let w7 = wdec(j7, c);
        for (var r = 0u; r < ROWS; r = r + 1u) {
            let xr = xv(base[r], c);
            acc[r] = acc[r] + vec4<f32>(dot(xr, w0), dot(xr, w1), dot(xr, w2), dot(xr, w3));
            acc2[r] = acc2[r] + vec4<f32>(dot(xr, w4), dot(xr, w5), dot(xr, w6), dot(xr, w7));
        }
    }
    for (var r = 0u; r < ROWS; r = r + 1u) {
        store4(t.x + r, t.y, acc[r]);
        store4(t.x + r, t.y + 4u, acc2[r]);
    }
}

// Round half away from zero (the CPU's `quant::round`), exactly: no
// `floor(t + 0.5)`, which rounds 0.49999997 up.
fn rnd4(t: vec4<f32>) -> vec4<f32> {
    let a = abs(t);
    let f = trunc(a);
    return sign(t) * (f + select(vec4<f32>(0.0), vec4<f32>(1.0), a - f >= vec4<f32>(0.5)));
}

fn rnd(t: f32) -> f32 {
    return rnd4(vec4<f32>(t)).x;
}

// W8A8's activation parameters (s, 1/s, z) of a row from lo = min(0, min x')
// and hi = max(0, max x') (x' = x with the outlier positions set to 0):
// s = (hi - lo) / 255, z = clamp(round(-lo / s), 0, 255); (1, 1, 0) when hi == lo.
fn w8a8_params(lo: f32, hi: f32) -> vec3<f32> {
    if (hi <= lo) {
        return vec3<f32>(1.0, 1.0, 0.0);
    }
    let s = (hi - lo) / 255.0;
    let inv = 1.0 / s;
    return vec3<f32>(s, inv, clamp(rnd(-lo * inv), 0.0, 255.0));
}

// Outlier input channel i of a W8A8 weight (OUTLIERS > 0), or past the end
// of the row (u32 max) when i >= OUTLIERS.
fn outlier_at(i: u32) -> u32 {
    if (i < OUTLIERS) {
        return t3[i];
    }
    return 0xffffffffu;
}

// The (s, 1/s, z) of the row at element offset `base` (qlinear.wgsl::w8a8).
fn w8a8_row(base: u32) -> vec3<f32> {
    let k = params.k;
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    // Outliers are strictly ascending: walk them beside the row.
    var p = 0u;
    var next = outlier_at(0u);
    for (var c = 0u; c < k; c = c + 4u) {
        var v = xv(base, c);
        if (OUTLIERS > 0u) {
            loop {
                if (next >= c + 4u) {
                    break;
                }
                v = select(v, vec4<f32>(0.0), vec4<u32>(next) == vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u));
                p = p + 1u;
                next = outlier_at(p);
            }
        }
        lo = min(lo, v);
        hi = max(hi, v);
    }
    return w8a8_params(min(min(lo.x, lo.y), min(lo.z, lo.w)), max(max(hi.x, hi.y), max(hi.z, hi.w)));
}

// Four activations to u8 codes q = clamp(round(x / s) + z, 0, 255), stored
// as the signed bytes q - 128 (so that idot4 can take them), lowest first.
fn quant4(v: vec4<f32>, inv: f32, z: f32) -> u32 {
    let q = vec4<u32>(clamp(rnd4(v * inv) + z, vec4<f32>(0.0), vec4<f32>(255.0))) ^ vec4<u32>(0x80u);
    return q.x | (q.y << 8u) | (q.z << 16u) | (q.w << 24u);
}

// W8A8 (see src/ops/qlinear.rs): each row of the tile is quantized on the
// fly to u8 with its own scale and zero point (from a first pass over the
// row), then int32 dot products of packed words: with q' = q - 128 (a signed
// byte), Σ q·w - z·wsum = Σ q'·w + (128 - z)·wsum, exact. Then
// y = acc · (s · scale) + Σ_t x[idx_t] · outlier_weight[j, t] (+ bias).
// Outlier columns of q are 0, so their codes add nothing to acc. Every
// invocation quantizes its rows again, so it takes eight columns to spread
// that cost.
@compute @workgroup_size(8, 8)
fn w8a8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let t = tile8(wg, lid);
    if (t.x >= m || t.y >= n) {
        return;
    }
    var base: array<u32, 8>;
    var sx: array<f32, 8>;
    var inv: array<f32, 8>;
    var zx: array<f32, 8>;
    for (var r = 0u; r < ROWS; r = r + 1u) {
        base[r] = min(t.x + r, m - 1u) * k;
        let p = w8a8_row(base[r]);
        sx[r] = p.x;
        inv[r] = p.y;
        zx[r] = p.z;
    }
    let j0 = min(t.y, n - 1u);
    let j1 = min(t.y + 1u, n - 1u);
    let j2 = min(t.y + 2u, n - 1u);
    let j3 = min(t.y + 3u, n - 1u);
    let j4 = min(t.y + 4u, n - 1u);
    let j5 = min(t.y + 5u, n - 1u);
    let j6 = min(t.y + 6u, n - 1u);
    let j7 = min(t.y + 7u, n - 1u);
    var acc: array<vec4<i32>, 8>;
    var acc2: array<vec4<i32>, 8>;
    for (var r = 0u; r < ROWS; r = r + 1u) {
        acc[r] = vec4<i32>(0);
        acc2[r] = vec4<i32>(0);
    }
    for (var c = 0u; c < k; c = c + 4u) {
        let w0 = bytes4(j0 * k + c);
        let w1 = bytes4(j1 * k + c);
        let w2 = bytes4(j2 * k + c);
        let w3 = bytes4(j3 * k + c);
        let w4 = bytes4(j4 * k + c);
        let w5 = bytes4(j5 * k + c);
        let w6 = bytes4(j6 * k + c);
        let w7 = bytes4(j7 * k + c);
        // Past K (unaligned rows): the codes' bytes are 0, as the weight
        // bytes there belong to the next row.
        var valid = 0xffffffffu;
        if (!ALIGNED && c + 4u > k) {
            valid = valid >> (8u * (c + 4u - k));
        }
        for (var r = 0u; r < ROWS; r = r + 1u) {
            let q = quant4(xv(base[r], c), inv[r], zx[r]) & valid;
            acc[r] = acc[r] + vec4<i32>(idot4(q, w0), idot4(q, w1), idot4(q, w2), idot4(q, w3));
            acc2[r] = acc2[r] + vec4<i32>(idot4(q, w4), idot4(q, w5), idot4(q, w6), idot4(q, w7));
        }
    }
    let sw = vec4<f32>(bitcast<f32>(t1[j0]), bitcast<f32>(t1[j1]), bitcast<f32>(t1[j2]), bitcast<f32>(t1[j3]));
    let sw2 = vec4<f32>(bitcast<f32>(t1[j4]), bitcast<f32>(t1[j5]), bitcast<f32>(t1[j6]), bitcast<f32>(t1[j7]));
    let ws = bitcast<vec4<i32>>(vec4<u32>(t2[j0], t2[j1], t2[j2], t2[j3]));
    let ws2 = bitcast<vec4<i32>>(vec4<u32>(t2[j4], t2[j5], t2[j6], t2[j7]));
    for (var r = 0u; r < ROWS; r = r + 1u) {
        let zc = 128 - i32(zx[r]);
        // The outlier channels' f32 products, in the CPU's order.
        var e = vec4<f32>(0.0);
        var e2 = vec4<f32>(0.0);
        for (var i = 0u; i < OUTLIERS; i = i + 1u) {
            let xo = x[base[r] + t3[i]];
            e = e + xo * vec4<f32>(t4[j0 * OUTLIERS + i], t4[j1 * OUTLIERS + i], t4[j2 * OUTLIERS + i], t4[j3 * OUTLIERS + i]);
            e2 = e2 + xo * vec4<f32>(t4[j4 * OUTLIERS + i], t4[j5 * OUTLIERS + i], t4[j6 * OUTLIERS + i], t4[j7 * OUTLIERS + i]);
        }
        store4(t.x + r, t.y, vec4<f32>(acc[r] + zc * ws) * (sx[r] * sw) + e);
        store4(t.x + r, t.y + 4u, vec4<f32>(acc2[r] + zc * ws2) * (sx[r] * sw2) + e2);
    }
}

// Binary XNOR: rows binarized on the fly (bit set where x >= 0), β = mean|x|
// per row; dot = K - 2·popcount(x ^ w) over the row's words.
@compute @workgroup_size(8, 8)
fn xnor(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let words = params.aux;
    let t = tile(wg, lid);
    if (t.x >= m || t.y >= n) {
        return;
    }
    var base: array<u32, 8>;
    var beta: array<f32, 8>;
    for (var r = 0u; r < ROWS; r = r + 1u) {
        base[r] = min(t.x + r, m - 1u) * k;
        var s = 0.0;
        for (var c = 0u; c < k; c = c + 1u) {
            s = s + abs(x[base[r] + c]);
        }
        beta[r] = s / f32(max(k, 1u));
    }
    let j0 = min(t.y, n - 1u);
    let j1 = min(t.y + 1u, n - 1u);
    let j2 = min(t.y + 2u, n - 1u);
    let j3 = min(t.y + 3u, n - 1u);
    var diff: array<vec4<u32>, 8>;
    for (var r = 0u; r < ROWS; r = r + 1u) {
        diff[r] = vec4<u32>(0u);
    }
    for (var wi = 0u; wi < words; wi = wi + 1u) {
        let w = vec4<u32>(t0[j0 * words + wi], t0[j1 * words + wi], t0[j2 * words + wi], t0[j3 * words + wi]);
        let c0 = wi * 32u;
        // Bits at or beyond K are zero in both operands.
        var valid = 0xffffffffu;
        if (c0 + 32u > k) {
            valid = (1u << (k - c0)) - 1u;
        }
        for (var r = 0u; r < ROWS; r = r + 1u) {
            var xb = 0u;
            for (var b = 0u; b < 32u; b = b + 4u) {
                let v = xv(base[r], c0 + b);
                let on = select(vec4<u32>(0u), vec4<u32>(1u, 2u, 4u, 8u), v >= vec4<f32>(0.0));
                xb = xb | ((on.x | on.y | on.z | on.w) << b);
            }
            diff[r] = diff[r] + countOneBits(vec4<u32>(xb & valid) ^ w);
        }
    }
    let alpha = vec4<f32>(bitcast<f32>(t1[j0]), bitcast<f32>(t1[j1]), bitcast<f32>(t1[j2]), bitcast<f32>(t1[j3]));
    for (var r = 0u; r < ROWS; r = r + 1u) {
        let d = vec4<f32>(vec4<i32>(i32(k)) - 2 * bitcast<vec4<i32>>(diff[r]));
        store4(t.x + r, t.y, alpha * beta[r] * d);
    }
}

// Value t of row j of an N:M weight, and its input column.
fn nm_val(j: u32, t: u32) -> f32 {
    return bitcast<f32>(t0[j * params.aux + t]);
}

fn nm_col(j: u32, t: u32) -> u32 {
    let e = j * ((params.aux + 1u) / 2u) + t / 2u;
    let idx = (byte_at(t1[e >> 2u], e) >> ((t & 1u) * 4u)) & 0xfu;
    return (t / NM_N) * NM_M + idx;
}

// x[row, c] (0 beyond K: padding of the last group).
fn xat(base: u32, c: u32) -> f32 {
    if (c < params.k) {
        return x[base + c];
    }
    return 0.0;
}

// N:M sparse: only the kept values and their 4-bit positions are read.
@compute @workgroup_size(8, 8)
fn nm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let kept = params.aux;
    let t = tile(wg, lid);
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
    for (var i = 0u; i < kept; i = i + 1u) {
        let v = vec4<f32>(nm_val(j0, i), nm_val(j1, i), nm_val(j2, i), nm_val(j3, i));
        let c = vec4<u32>(nm_col(j0, i), nm_col(j1, i), nm_col(j2, i), nm_col(j3, i));
        for (var r = 0u; r < ROWS; r = r + 1u) {
            let xr = vec4<f32>(xat(base[r], c.x), xat(base[r], c.y), xat(base[r], c.z), xat(base[r], c.w));
            acc[r] = fma(xr, v, acc[r]);
        }
    }
    for (var r = 0u; r < ROWS; r = r + 1u) {
        store4(t.x + r, t.y, acc[r]);
    }
}
