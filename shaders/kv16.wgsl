// The decoder's KV cache in f16 (shaders/decoder.wgsl holds the f32 one):
// each u32 of a cache row packs two consecutive values (low half first,
// converted by bits), so a layer's keys and values take
// context · kv_heads · head_dim / 2 words each. Mirrors the CPU cache's f16 storage (src/generate/cache.rs): keys
// are rounded after their bias and RoPE, values after their bias.
//
// Bindings as decoder.wgsl: 0 parameters, 1 a (read-write f32), 2 b (f32),
// 3 c and 4 e (packed f16 pairs), 5 scratch (read-write words: the cache
// rows kv_store writes, or attention's scores as f32 bits), 6 rows ((slot,
// position) per row of the pass).

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
@group(0) @binding(3) var<storage, read> c: array<u32>;
@group(0) @binding(4) var<storage, read> e: array<u32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(6) var<storage, read> rows: array<u32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

// Sum of v over the workgroup (every invocation gets it).
// An IEEE half (low 16 bits of h) to f32, exactly, by bits
// (unpack2x16float needs a downlevel capability not every GL adapter has).
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

// The two halves of a packed word, low first.
fn unpack_halves(v: u32) -> vec2<f32> {
    return vec2<f32>(f16_to_f32(v & 0xffffu), f16_to_f32(v >> 16u));
}

// f32 to the bits of the nearest IEEE half, ties to even (as the CPU's
// `half::f16::from_f32`): overflow to infinity, subnormals, NaN kept.
fn f32_to_f16(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let sign = (x >> 16u) & 0x8000u;
    let e = i32((x >> 23u) & 0xffu);
    let m = x & 0x7fffffu;
    if (e == 255) {
        return sign | 0x7c00u | select(0u, 0x200u | (m >> 13u), m != 0u);
    }
    let he = e - 112;
    if (he >= 31) {
        return sign | 0x7c00u;
    }
    if (he <= 0) {
        if (he < -10) {
            return sign;
        }
        let full = m | 0x800000u;
        let shift = u32(14 - he);
        let rem = full & ((1u << shift) - 1u);
        let half = 1u << (shift - 1u);
        var r = full >> shift;
        if (rem > half || (rem == half && (r & 1u) == 1u)) {
            r += 1u;
        }
        return sign | r;
    }
    // A carry out of the mantissa rounds into the exponent (up to infinity).
    var r = (u32(he) << 10u) | (m >> 13u);
    let rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u) == 1u)) {
        r += 1u;
    }
    return sign | r;
}

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

// The n rows of dim (even) floats in b (row t at t·stride) into the cache
// scratch as f16 pairs, row t at slot rows[2t], position rows[2t + 1].
// Grid: [⌈dim/2 / 64⌉, n].
@compute @workgroup_size(64)
fn kv_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_dim = p.dim / 2u;
    let i = gid.x;
    let t = gid.y;
    if (i >= half_dim || t >= p.n) {
        return;
    }
    let src = t * p.stride + 2u * i;
    let at = rows[2u * t] * p.context + rows[2u * t + 1u];
    scratch[at * half_dim + i] = f32_to_f16(b[src]) | (f32_to_f16(b[src + 1u]) << 16u);
}

var<workgroup> qv: array<f32, 256>;

// Causal attention of query head h of row t (slot rows[2t], position
// rows[2t + 1]) over the slot's cache positions 0..=position of KV head
// h / (heads / kv_heads): b holds the queries (n rows of heads·head_dim), c
// the keys and e the values (slots·context rows of kv_heads·head_dim / 2
// words), scratch the scores as f32 bits (context per (t, h)); a gets the
// output rows like the queries. head_dim even and <= 256. Grid: [heads, n].
@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let pairs = hd / 2u;
    let row = p.kv_heads * pairs;
    let kvo = rows[2u * t] * p.context * row + (h / (p.heads / p.kv_heads)) * pairs;
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
        let ko = j * row + kvo;
        for (var i = 0u; i < pairs; i++) {
            let k = unpack_halves(c[ko + i]);
            s += qv[2u * i] * k.x + qv[2u * i + 1u] * k.y;
        }
        s *= p.scale;
        scratch[so + j] = bitcast<u32>(s);
        m = max(m, s);
    }
    let mx = reduce_max(lid, m);
    var sum = 0.0;
    for (var j = lid; j < len; j += WG) {
        let ex = exp(bitcast<f32>(scratch[so + j]) - mx);
        scratch[so + j] = bitcast<u32>(ex);
        sum += ex;
    }
    let total = reduce_sum(lid, sum);
    storageBarrier();
    let inv = 1.0 / total;
    for (var i = lid; i < pairs; i += WG) {
        var o = vec2<f32>(0.0);
        for (var j = 0u; j < len; j++) {
            o += bitcast<f32>(scratch[so + j]) * unpack_halves(e[j * row + kvo + i]);
        }
        a[qo + 2u * i] = o.x * inv;
        a[qo + 2u * i + 1u] = o.y * inv;
    }
}
