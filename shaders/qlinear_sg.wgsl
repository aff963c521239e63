// QLinear for adapters whose subgroups have at least 8 invocations, with
// K % 32 == 0 and M >= 4: the weight-only formats 1-6 of qlinear.wgsl, which
// this file is appended to (its Params, bindings and decoders). The engine
// picks it on software adapters (llvmpipe) with subgroups.
//
// Why it looks like this: llvmpipe runs 8 invocations as the lanes of one
// 256-bit vector and turns every storage-buffer load whose address is not a
// compile-time uniform into a loop over the lanes, so the cost of a kernel is
// mostly its number of load instructions. Here every load is a vec4, and the
// activations, which every invocation of a subgroup needs alike, are loaded
// once per subgroup: lane l loads x[r, k0 + 4l .. k0 + 4l + 4) of each row
// and subgroupBroadcast hands those vectors to the other lanes.
//
// Workgroup of 64 invocations. All of them share the same 16 rows (so any
// subgroup of them does too); each owns 8 consecutive output columns. A
// workgroup covers 16 rows × 512 columns: grid [⌈N/512⌉, ⌈M/16⌉]. Per chunk of
// 32 inputs an invocation loads its 8 columns' packed words (int8 and pow2:
// two vec4 per column; int4: one vec4 and the block's f16 scale; binary: one
// word; f16: four vec4), decodes them and does 16 × 8 × 32 multiply-adds.
// Weights are decoded without their per-channel factor (int8, affine, pow2,
// binary), which is applied once to each sum; int4 applies its block scale
// when decoding.
//
// Bindings beyond qlinear.wgsl's: 7 x again, read as vec4; 8 t0 again, read
// as vec4 words (the engine binds a 16-byte dummy for binary weights).
// Rows and columns past the edge are clamped, computed and never stored.

@group(0) @binding(7) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> w4: array<vec4<u32>>;

// The packed words of 32 inputs of one output column, and its block
// parameters (int4).
struct Chunk {
    a: vec4<u32>,
    b: vec4<u32>,
    c: vec4<u32>,
    d: vec4<u32>,
    s: f32,
    z: f32,
}

fn sg_chunk(j: u32, kc: u32) -> Chunk {
    var ch: Chunk;
    let k = params.k;
    if (FORMAT == 1u) {
        let e = j * (k / 8u) + kc * 4u;
        ch.a = w4[e];
        ch.b = w4[e + 1u];
        ch.c = w4[e + 2u];
        ch.d = w4[e + 3u];
    } else if (FORMAT == 5u) {
        let rw = params.aux;
        ch.a = w4[j * (rw / 4u) + kc];
        let b = j * (rw * 8u / BLOCK) + kc * 32u / BLOCK;
        ch.s = half_at(1u, b);
        if (WITH_MIN) {
            ch.z = half_at(2u, b);
        }
    } else if (FORMAT == 6u) {
        ch.a = vec4<u32>(t0[j * params.aux + kc], 0u, 0u, 0u);
    } else {
        let e = j * (k / 16u) + kc * 2u;
        ch.a = w4[e];
        ch.b = w4[e + 1u];
    }
    return ch;
}

// Word i (0..15) of a chunk.
fn sg_word(ch: Chunk, i: u32) -> u32 {
    var v = ch.d;
    if (i < 4u) {
        v = ch.a;
    } else if (i < 8u) {
        v = ch.b;
    } else if (i < 12u) {
        v = ch.c;
    }
    return v[i & 3u];
}

// Inputs 4i..4i+3 of a chunk (i = 0..7), decoded; without the per-channel
// factor for formats 2, 3, 4 and 6 (see sg_scale).
fn sg_dec(ch: Chunk, i: u32) -> vec4<f32> {
    if (FORMAT == 1u) {
        return vec4<f32>(halves(sg_word(ch, 2u * i)), halves(sg_word(ch, 2u * i + 1u)));
    }
    if (FORMAT == 3u) {
        return vec4<f32>(u8x4(sg_word(ch, i))) - ch.z;
    }
    if (FORMAT == 5u) {
        let w = sg_word(ch, i / 2u) >> ((i & 1u) * 16u);
        let q = vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(0xfu));
        if (WITH_MIN) {
            return q * ch.s + ch.z;
        }
        return (q - 8.0) * ch.s;
    }
    if (FORMAT == 6u) {
        let on = ((vec4<u32>(ch.a.x >> (4u * i)) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) == vec4<u32>(1u);
        return select(vec4<f32>(-1.0), vec4<f32>(1.0), on);
    }
    return vec4<f32>(s8x4(sg_word(ch, i)));
}

// The per-channel factor sg_dec leaves out (1 for f16 and int4).
fn sg_scale(j: u32) -> f32 {
    if (FORMAT == 2u || FORMAT == 3u || FORMAT == 6u) {
        return bitcast<f32>(t1[j]);
    }
    if (FORMAT == 4u) {
        var i = 0u;
        if (PER_CHANNEL) {
            i = j;
        }
        let p = bitcast<i32>(byte_at(t1[i >> 2u], i) << 24u) >> 24u;
        return ldexp(1.0, -p);
    }
    return 1.0;
}

// affine: the column's zero point.
fn sg_zero(j: u32) -> f32 {
    if (FORMAT == 3u) {
        return f32(byte_at(t2[j >> 2u], j));
    }
    return 0.0;
}

@compute @workgroup_size(64)
fn sg(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) sid: u32,
) {
    let m = params.m;
    let n = params.n;
    let k4 = params.k / 4u;
    let row0 = wg.y * 16u;
    let col0 = (wg.x * 64u + li) * 8u;
    let lane = sid & 7u;

    let rx0 = min(row0 + 0u, m - 1u) * k4 + lane;
    let rx1 = min(row0 + 1u, m - 1u) * k4 + lane;
    let rx2 = min(row0 + 2u, m - 1u) * k4 + lane;
    let rx3 = min(row0 + 3u, m - 1u) * k4 + lane;
    let rx4 = min(row0 + 4u, m - 1u) * k4 + lane;
    let rx5 = min(row0 + 5u, m - 1u) * k4 + lane;
    let rx6 = min(row0 + 6u, m - 1u) * k4 + lane;
    let rx7 = min(row0 + 7u, m - 1u) * k4 + lane;
    let rx8 = min(row0 + 8u, m - 1u) * k4 + lane;
    let rx9 = min(row0 + 9u, m - 1u) * k4 + lane;
    let rx10 = min(row0 + 10u, m - 1u) * k4 + lane;
    let rx11 = min(row0 + 11u, m - 1u) * k4 + lane;
    let rx12 = min(row0 + 12u, m - 1u) * k4 + lane;
    let rx13 = min(row0 + 13u, m - 1u) * k4 + lane;
    let rx14 = min(row0 + 14u, m - 1u) * k4 + lane;
    let rx15 = min(row0 + 15u, m - 1u) * k4 + lane;
    let j0 = min(col0 + 0u, n - 1u);
    let j1 = min(col0 + 1u, n - 1u);
    let j2 = min(col0 + 2u, n - 1u);
    let j3 = min(col0 + 3u, n - 1u);
    let j4 = min(col0 + 4u, n - 1u);
    let j5 = min(col0 + 5u, n - 1u);
    let j6 = min(col0 + 6u, n - 1u);
    let j7 = min(col0 + 7u, n - 1u);
    let z0 = sg_zero(j0);
    let z1 = sg_zero(j1);
    let z2 = sg_zero(j2);
    let z3 = sg_zero(j3);
    let z4 = sg_zero(j4);
    let z5 = sg_zero(j5);
    let z6 = sg_zero(j6);
    let z7 = sg_zero(j7);
    var a0_0 = vec4<f32>(0.0);
    var a0_1 = vec4<f32>(0.0);
    var a1_0 = vec4<f32>(0.0);
    var a1_1 = vec4<f32>(0.0);
    var a2_0 = vec4<f32>(0.0);
    var a2_1 = vec4<f32>(0.0);
    var a3_0 = vec4<f32>(0.0);
    var a3_1 = vec4<f32>(0.0);
    var a4_0 = vec4<f32>(0.0);
    var a4_1 = vec4<f32>(0.0);
    var a5_0 = vec4<f32>(0.0);
    var a5_1 = vec4<f32>(0.0);
    var a6_0 = vec4<f32>(0.0);
    var a6_1 = vec4<f32>(0.0);
    var a7_0 = vec4<f32>(0.0);
    var a7_1 = vec4<f32>(0.0);
    var a8_0 = vec4<f32>(0.0);
    var a8_1 = vec4<f32>(0.0);
    var a9_0 = vec4<f32>(0.0);
    var a9_1 = vec4<f32>(0.0);
    var a10_0 = vec4<f32>(0.0);
    var a10_1 = vec4<f32>(0.0);
    var a11_0 = vec4<f32>(0.0);
    var a11_1 = vec4<f32>(0.0);
    var a12_0 = vec4<f32>(0.0);
    var a12_1 = vec4<f32>(0.0);
    var a13_0 = vec4<f32>(0.0);
    var a13_1 = vec4<f32>(0.0);
    var a14_0 = vec4<f32>(0.0);
    var a14_1 = vec4<f32>(0.0);
    var a15_0 = vec4<f32>(0.0);
    var a15_1 = vec4<f32>(0.0);
    for (var kc = 0u; kc < k4 / 8u; kc = kc + 1u) {
        let v0 = x4[rx0 + kc * 8u];
        let v1 = x4[rx1 + kc * 8u];
        let v2 = x4[rx2 + kc * 8u];
        let v3 = x4[rx3 + kc * 8u];
        let v4 = x4[rx4 + kc * 8u];
        let v5 = x4[rx5 + kc * 8u];
        let v6 = x4[rx6 + kc * 8u];
        let v7 = x4[rx7 + kc * 8u];
        let v8 = x4[rx8 + kc * 8u];
        let v9 = x4[rx9 + kc * 8u];
        let v10 = x4[rx10 + kc * 8u];
        let v11 = x4[rx11 + kc * 8u];
        let v12 = x4[rx12 + kc * 8u];
        let v13 = x4[rx13 + kc * 8u];
        let v14 = x4[rx14 + kc * 8u];
        let v15 = x4[rx15 + kc * 8u];
        var c0 = sg_chunk(j0, kc);
        c0.z = c0.z + z0;
        var c1 = sg_chunk(j1, kc);
        c1.z = c1.z + z1;
        var c2 = sg_chunk(j2, kc);
        c2.z = c2.z + z2;
        var c3 = sg_chunk(j3, kc);
        c3.z = c3.z + z3;
        var c4 = sg_chunk(j4, kc);
        c4.z = c4.z + z4;
        var c5 = sg_chunk(j5, kc);
        c5.z = c5.z + z5;
        var c6 = sg_chunk(j6, kc);
        c6.z = c6.z + z6;
        var c7 = sg_chunk(j7, kc);
        c7.z = c7.z + z7;
        {
            let w0 = sg_dec(c0, 0u);
            let w1 = sg_dec(c1, 0u);
            let w2 = sg_dec(c2, 0u);
            let w3 = sg_dec(c3, 0u);
            let w4 = sg_dec(c4, 0u);
            let w5 = sg_dec(c5, 0u);
            let w6 = sg_dec(c6, 0u);
            let w7 = sg_dec(c7, 0u);
            let u0 = subgroupBroadcast(v0, 0u);
            let u1 = subgroupBroadcast(v1, 0u);
            let u2 = subgroupBroadcast(v2, 0u);
            let u3 = subgroupBroadcast(v3, 0u);
            let u4 = subgroupBroadcast(v4, 0u);
            let u5 = subgroupBroadcast(v5, 0u);
            let u6 = subgroupBroadcast(v6, 0u);
            let u7 = subgroupBroadcast(v7, 0u);
            let u8 = subgroupBroadcast(v8, 0u);
            let u9 = subgroupBroadcast(v9, 0u);
            let u10 = subgroupBroadcast(v10, 0u);
            let u11 = subgroupBroadcast(v11, 0u);
            let u12 = subgroupBroadcast(v12, 0u);
            let u13 = subgroupBroadcast(v13, 0u);
            let u14 = subgroupBroadcast(v14, 0u);
            let u15 = subgroupBroadcast(v15, 0u);
            a0_0 = a0_0 + vec4<f32>(dot(u0, w0), dot(u0, w1), dot(u0, w2), dot(u0, w3));
            a0_1 = a0_1 + vec4<f32>(dot(u0, w4), dot(u0, w5), dot(u0, w6), dot(u0, w7));
            a1_0 = a1_0 + vec4<f32>(dot(u1, w0), dot(u1, w1), dot(u1, w2), dot(u1, w3));
            a1_1 = a1_1 + vec4<f32>(dot(u1, w4), dot(u1, w5), dot(u1, w6), dot(u1, w7));
            a2_0 = a2_0 + vec4<f32>(dot(u2, w0), dot(u2, w1), dot(u2, w2), dot(u2, w3));
            a2_1 = a2_1 + vec4<f32>(dot(u2, w4), dot(u2, w5), dot(u2, w6), dot(u2, w7));
            a3_0 = a3_0 + vec4<f32>(dot(u3, w0), dot(u3, w1), dot(u3, w2), dot(u3, w3));
            a3_1 = a3_1 + vec4<f32>(dot(u3, w4), dot(u3, w5), dot(u3, w6), dot(u3, w7));
            a4_0 = a4_0 + vec4<f32>(dot(u4, w0), dot(u4, w1), dot(u4, w2), dot(u4, w3));
            a4_1 = a4_1 + vec4<f32>(dot(u4, w4), dot(u4, w5), dot(u4, w6), dot(u4, w7));
            a5_0 = a5_0 + vec4<f32>(dot(u5, w0), dot(u5, w1), dot(u5, w2), dot(u5, w3));
            a5_1 = a5_1 + vec4<f32>(dot(u5, w4), dot(u5, w5), dot(u5, w6), dot(u5, w7));
            a6_0 = a6_0 + vec4<f32>(dot(u6, w0), dot(u6, w1), dot(u6, w2), dot(u6, w3));
            a6_1 = a6_1 + vec4<f32>(dot(u6, w4), dot(u6, w5), dot(u6, w6), dot(u6, w7));
            a7_0 = a7_0 + vec4<f32>(dot(u7, w0), dot(u7, w1), dot(u7, w2), dot(u7, w3));
            a7_1 = a7_1 + vec4<f32>(dot(u7, w4), dot(u7, w5), dot(u7, w6), dot(u7, w7));
            a8_0 = a8_0 + vec4<f32>(dot(u8, w0), dot(u8, w1), dot(u8, w2), dot(u8, w3));
            a8_1 = a8_1 + vec4<f32>(dot(u8, w4), dot(u8, w5), dot(u8, w6), dot(u8, w7));
            a9_0 = a9_0 + vec4<f32>(dot(u9, w0), dot(u9, w1), dot(u9, w2), dot(u9, w3));
            a9_1 = a9_1 + vec4<f32>(dot(u9, w4), dot(u9, w5), dot(u9, w6), dot(u9, w7));
            a10_0 = a10_0 + vec4<f32>(dot(u10, w0), dot(u10, w1), dot(u10, w2), dot(u10, w3));
            a10_1 = a10_1 + vec4<f32>(dot(u10, w4), dot(u10, w5), dot(u10, w6), dot(u10, w7));
            a11_0 = a11_0 + vec4<f32>(dot(u11, w0), dot(u11, w1), dot(u11, w2), dot(u11, w3));
            a11_1 = a11_1 + vec4<f32>(dot(u11, w4), dot(u11, w5), dot(u11, w6), dot(u11, w7));
            a12_0 = a12_0 + vec4<f32>(dot(u12, w0), dot(u12, w1), dot(u12, w2), dot(u12, w3));
            a12_1 = a12_1 + vec4<f32>(dot(u12, w4), dot(u12, w5), dot(u12, w6), dot(u12, w7));
            a13_0 = a13_0 + vec4<f32>(dot(u13, w0), dot(u13, w1), dot(u13, w2), dot(u13, w3));
            a13_1 = a13_1 + vec4<f32>(dot(u13, w4), dot(u13, w5), dot(u13, w6), dot(u13, w7));
            a14_0 = a14_0 + vec4<f32>(dot(u14, w0), dot(u14, w1), dot(u14, w2), dot(u14, w3));
            a14_1 = a14_1 + vec4<f32>(dot(u14, w4), dot(u14, w5), dot(u14, w6), dot(u14, w7));
            a15_0 = a15_0 + vec4<f32>(dot(u15, w0), dot(u15, w1), dot(u15, w2), dot(u15, w3));
            a15_1 = a15_1 + vec4<f32>(dot(u15, w4), dot(u15, w5), dot(u15, w6), dot(u15, w7));
        }
        {
            let w0 = sg_dec(c0, 1u);
            let w1 = sg_dec(c1, 1u);
            let w2 = sg_dec(c2, 1u);
            let w3 = sg_dec(c3, 1u);
            let w4 = sg_dec(c4, 1u);
            let w5 = sg_dec(c5, 1u);
            let w6 = sg_dec(c6, 1u);
            let w7 = sg_dec(c7, 1u);
            let u0 = subgroupBroadcast(v0, 1u);
            let u1 = subgroupBroadcast(v1, 1u);
            let u2 = subgroupBroadcast(v2, 1u);
            let u3 = subgroupBroadcast(v3, 1u);
            let u4 = subgroupBroadcast(v4, 1u);
            let u5 = subgroupBroadcast(v5, 1u);
            let u6 = subgroupBroadcast(v6, 1u);
            let u7 = subgroupBroadcast(v7, 1u);
            let u8 = subgroupBroadcast(v8, 1u);
            let u9 = subgroupBroadcast(v9, 1u);
            let u10 = subgroupBroadcast(v10, 1u);
            let u11 = subgroupBroadcast(v11, 1u);
            let u12 = subgroupBroadcast(v12, 1u);
            let u13 = subgroupBroadcast(v13, 1u);
            let u14 = subgroupBroadcast(v14, 1u);
            let u15 = subgroupBroadcast(v15, 1u);
            a0_0 = a0_0 + vec4<f32>(dot(u0, w0), dot(u0, w1), dot(u0, w2), dot(u0, w3));
            a0_1 = a0_1 + vec4<f32>(dot(u0, w4), dot(u0, w5), dot(u0, w6), dot(u0, w7));
            a1_0 = a1_0 + vec4<f32>(dot(u1, w0), dot(u1, w1), dot(u1, w2), dot(u1, w3));
            a1_1 = a1_1 + vec4<f32>(dot(u1, w4), dot(u1, w5), dot(u1, w6), dot(u1, w7));
            a2_0 = a2_0 + vec4<f32>(dot(u2, w0), dot(u2, w1), dot(u2, w2), dot(u2, w3));
            a2_1 = a2_1 + vec4<f32>(dot(u2, w4), dot(u2, w5), dot(u2, w6), dot(u2, w7));
            a3_0 = a3_0 + vec4<f32>(dot(u3, w0), dot(u3, w1), dot(u3, w2), dot(u3, w3));
            a3_1 = a3_1 + vec4<f32>(dot(u3, w4), dot(u3, w5), dot(u3, w6), dot(u3, w7));
            a4_0 = a4_0 + vec4<f32>(dot(u4, w0), dot(u4, w1), dot(u4, w2), dot(u4, w3));
            a4_1 = a4_1 + vec4<f32>(dot(u4, w4), dot(u4, w5), dot(u4, w6), dot(u4, w7));
            a5_0 = a5_0 + vec4<f32>(dot(u5, w0), dot(u5, w1), dot(u5, w2), dot(u5, w3));
            a5_1 = a5_1 + vec4<f32>(dot(u5, w4), dot(u5, w5), dot(u5, w6), dot(u5, w7));
            a6_0 = a6_0 + vec4<f32>(dot(u6, w0), dot(u6, w1), dot(u6, w2), dot(u6, w3));
            a6_1 = a6_1 + vec4<f32>(dot(u6, w4), dot(u6, w5), dot(u6, w6), dot(u6, w7));
            a7_0 = a7_0 + vec4<f32>(dot(u7, w0), dot(u7, w1), dot(u7, w2), dot(u7, w3));
            a7_1 = a7_1 + vec4<f32>(dot(u7, w4), dot(u7, w5), dot(u7, w6), dot(u7, w7));
            a8_0 = a8_0 + vec4<f32>(dot(u8, w0), dot(u8, w1), dot(u8, w2), dot(u8, w3));
            a8_1 = a8_1 + vec4<f32>(dot(u8, w4), dot(u8, w5), dot(u8, w6), dot(u8, w7));
            a9_0 = a9_0 + vec4<f32>(dot(u9, w0), dot(u9, w1), dot(u9, w2), dot(u9, w3));
            a9_1 = a9_1 + vec4<f32>(dot(u9, w4), dot(u9, w5), dot(u9, w6), dot(u9, w7));
            a10_0 = a10_0 + vec4<f32>(dot(u10, w0), dot(u10, w1), dot(u10, w2), dot(u10, w3));
            a10_1 = a10_1 + vec4<f32>(dot(u10, w4), dot(u10, w5), dot(u10, w6), dot(u10, w7));
            a11_0 = a11_0 + vec4<f32>(dot(u11, w0), dot(u11, w1), dot(u11, w2), dot(u11, w3));
            a11_1 = a11_1 + vec4<f32>(dot(u11, w4), dot(u11, w5), dot(u11, w6), dot(u11, w7));
            a12_0 = a12_0 + vec4<f32>(dot(u12, w0), dot(u12, w1), dot(u12, w2), dot(u12, w3));
            a12_1 = a12_1 + vec4<f32>(dot(u12, w4), dot(u12, w5), dot(u12, w6), dot(u12, w7));
            a13_0 = a13_0 + vec4<f32>(dot(u13, w0), dot(u13, w1), dot(u13, w2), dot(u13, w3));
            a13_1 = a13_1 + vec4<f32>(dot(u13, w4), dot(u13, w5), dot(u13, w6), dot(u13, w7));
            a14_0 = a14_0 + vec4<f32>(dot(u14, w0), dot(u14, w1), dot(u14, w2), dot(u14, w3));
            a14_1 = a14_1 + vec4<f32>(dot(u14, w4), dot(u14, w5), dot(u14, w6), dot(u14, w7));
            a15_0 = a15_0 + vec4<f32>(dot(u15, w0), dot(u15, w1), dot(u15, w2), dot(u15, w3));
            a15_1 = a15_1 + vec4<f32>(dot(u15, w4), dot(u15, w5), dot(u15, w6), dot(u15, w7));
        }
        {
            let w0 = sg_dec(c0, 2u);
            let w1 = sg_dec(c1, 2u);
            let w2 = sg_dec(c2, 2u);
            let w3 = sg_dec(c3, 2u);
            let w4 = sg_dec(c4, 2u);
            let w5 = sg_dec(c5, 2u);
            let w6 = sg_dec(c6, 2u);
            let w7 = sg_dec(c7, 2u);
            let u0 = subgroupBroadcast(v0, 2u);
            let u1 = subgroupBroadcast(v1, 2u);
            let u2 = subgroupBroadcast(v2, 2u);
            let u3 = subgroupBroadcast(v3, 2u);
            let u4 = subgroupBroadcast(v4, 2u);
            let u5 = subgroupBroadcast(v5, 2u);
            let u6 = subgroupBroadcast(v6, 2u);
            let u7 = subgroupBroadcast(v7, 2u);
            let u8 = subgroupBroadcast(v8, 2u);
            let u9 = subgroupBroadcast(v9, 2u);
            let u10 = subgroupBroadcast(v10, 2u);
            let u11 = subgroupBroadcast(v11, 2u);
            let u12 = subgroupBroadcast(v12, 2u);
            let u13 = subgroupBroadcast(v13, 2u);
            let u14 = subgroupBroadcast(v14, 2u);
            let u15 = subgroupBroadcast(v15, 2u);
            a0_0 = a0_0 + vec4<f32>(dot(u0, w0), dot(u0, w1), dot(u0, w2), dot(u0, w3));
            a0_1 = a0_1 + vec4<f32>(dot(u0, w4), dot(u0, w5), dot(u0, w6), dot(u0, w7));
            a1_0 = a1_0 + vec4<f32>(dot(u1, w0), dot(u1, w1), dot(u1, w2), dot(u1, w3));
            a1_1 = a1_1 + vec4<f32>(dot(u1, w4), dot(u1, w5), dot(u1, w6), dot(u1, w7));
            a2_0 = a2_0 + vec4<f32>(dot(u2, w0), dot(u2, w1), dot(u2, w2), dot(u2, w3));
            a2_1 = a2_1 + vec4<f32>(dot(u2, w4), dot(u2, w5), dot(u2, w6), dot(u2, w7));
            a3_0 = a3_0 + vec4<f32>(dot(u3, w0), dot(u3, w1), dot(u3, w2), dot(u3, w3));
            a3_1 = a3_1 + vec4<f32>(dot(u3, w4), dot(u3, w5), dot(u3, w6), dot(u3, w7));
            a4_0 = a4_0 + vec4<f32>(dot(u4, w0), dot(u4, w1), dot(u4, w2), dot(u4, w3));
            a4_1 = a4_1 + vec4<f32>(dot(u4, w4), dot(u4, w5), dot(u4, w6), dot(u4, w7));
            a5_0 = a5_0 + vec4<f32>(dot(u5, w0), dot(u5, w1), dot(u5, w2), dot(u5, w3));
            a5_1 = a5_1 + vec4<f32>(dot(u5, w4), dot(u5, w5), dot(u5, w6), dot(u5, w7));
            a6_0 = a6_0 + vec4<f32>(dot(u6, w0), dot(u6, w1), dot(u6, w2), dot(u6, w3));
            a6_1 = a6_1 + vec4<f32>(dot(u6, w4), dot(u6, w5), dot(u6, w6), dot(u6, w7));
            a7_0 = a7_0 + vec4<f32>(dot(u7, w0), dot(u7, w1), dot(u7, w2), dot(u7, w3));
            a7_1 = a7_1 + vec4<f32>(dot(u7, w4), dot(u7, w5), dot(u7, w6), dot(u7, w7));
            a8_0 = a8_0 + vec4<f32>(dot(u8, w0), dot(u8, w1), dot(u8, w2), dot(u8, w3));
            a8_1 = a8_1 + vec4<f32>(dot(u8, w4), dot(u8, w5), dot(u8, w6), dot(u8, w7));
            a9_0 = a9_0 + vec4<f32>(dot(u9, w0), dot(u9, w1), dot(u9, w2), dot(u9, w3));
            a9_1 = a9_1 + vec4<f32>(dot(u9, w4), dot(u9, w5), dot(u9, w6), dot(u9, w7));
            a10_0 = a10_0 + vec4<f32>(dot(u10, w0), dot(u10, w1), dot(u10, w2), dot(u10, w3));
            a10_1 = a10_1 + vec4<f32>(dot(u10, w4), dot(u10, w5), dot(u10, w6), dot(u10, w7));
            a11_0 = a11_0 + vec4<f32>(dot(u11, w0), dot(u11, w1), dot(u11, w2), dot(u11, w3));
            a11_1 = a11_1 + vec4<f32>(dot(u11, w4), dot(u11, w5), dot(u11, w6), dot(u11, w7));
            a12_0 = a12_0 + vec4<f32>(dot(u12, w0), dot(u12, w1), dot(u12, w2), dot(u12, w3));
            a12_1 = a12_1 + vec4<f32>(dot(u12, w4), dot(u12, w5), dot(u12, w6), dot(u12, w7));
            a13_0 = a13_0 + vec4<f32>(dot(u13, w0), dot(u13, w1), dot(u13, w2), dot(u13, w3));
            a13_1 = a13_1 + vec4<f32>(dot(u13, w4), dot(u13, w5), dot(u13, w6), dot(u13, w7));
            a14_0 = a14_0 + vec4<f32>(dot(u14, w0), dot(u14, w1), dot(u14, w2), dot(u14, w3));
            a14_1 = a14_1 + vec4<f32>(dot(u14, w4), dot(u14, w5), dot(u14, w6), dot(u14, w7));
            a15_0 = a15_0 + vec4<f32>(dot(u15, w0), dot(u15, w1), dot(u15, w2), dot(u15, w3));
            a15_1 = a15_1 + vec4<f32>(dot(u15, w4), dot(u15, w5), dot(u15, w6), dot(u15, w7));
        }
        {
            let w0 = sg_dec(c0, 3u);
            let w1 = sg_dec(c1, 3u);
            let w2 = sg_dec(c2, 3u);
            let w3 = sg_dec(c3, 3u);
            let w4 = sg_dec(c4, 3u);
            let w5 = sg_dec(c5, 3u);
            let w6 = sg_dec(c6, 3u);
            let w7 = sg_dec(c7, 3u);
            let u0 = subgroupBroadcast(v0, 3u);
            let u1 = subgroupBroadcast(v1, 3u);
            let u2 = subgroupBroadcast(v2, 3u);
            let u3 = subgroupBroadcast(v3, 3u);
            let u4 = subgroupBroadcast(v4, 3u);
            let u5 = subgroupBroadcast(v5, 3u);
            let u6 = subgroupBroadcast(v6, 3u);
            let u7 = subgroupBroadcast(v7, 3u);
            let u8 = subgroupBroadcast(v8, 3u);
            let u9 = subgroupBroadcast(v9, 3u);
            let u10 = subgroupBroadcast(v10, 3u);
            let u11 = subgroupBroadcast(v11, 3u);
            let u12 = subgroupBroadcast(v12, 3u);
            let u13 = subgroupBroadcast(v13, 3u);
            let u14 = subgroupBroadcast(v14, 3u);
            let u15 = subgroupBroadcast(v15, 3u);
            a0_0 = a0_0 + vec4<f32>(dot(u0, w0), dot(u0, w1), dot(u0, w2), dot(u0, w3));
            a0_1 = a0_1 + vec4<f32>(dot(u0, w4), dot(u0, w5), dot(u0, w6), dot(u0, w7));
            a1_0 = a1_0 + vec4<f32>(dot(u1, w0), dot(u1, w1), dot(u1, w2), dot(u1, w3));
            a1_1 = a1_1 + vec4<f32>(dot(u1, w4), dot(u1, w5), dot(u1, w6), dot(u1, w7));
            a2_0 = a2_0 + vec4<f32>(dot(u2, w0), dot(u2, w1), dot(u2, w2), dot(u2, w3));
            a2_1 = a2_1 + vec4<f32>(dot(u2, w4), dot(u2, w5), dot(u2, w6), dot(u2, w7));
            a3_0 = a3_0 + vec4<f32>(dot(u3, w0), dot(u3, w1), dot(u3, w2), dot(u3, w3));
            a3_1 = a3_1 + vec4<f32>(dot(u3, w4), dot(u3, w5), dot(u3, w6), dot(u3, w7));
            a4_0 = a4_0 + vec4<f32>(dot(u4, w0), dot(u4, w1), dot(u4, w2), dot(u4, w3));
            a4_1 = a4_1 + vec4<f32>(dot(u4, w4), dot(u4, w5), dot(u4, w6), dot(u4, w7));
            a5_0 = a5_0 + vec4<f32>(dot(u5, w0), dot(u5, w1), dot(u5, w2), dot(u5, w3));
            a5_1 = a5_1 + vec4<f32>(dot(u5, w4), dot(u5, w5), dot(u5, w6), dot(u5, w7));
            a6_0 = a6_0 + vec4<f32>(dot(u6, w0), dot(u6, w1), dot(u6, w2), dot(u6, w3));
            a6_1 = a6_1 + vec4<f32>(dot(u6, w4), dot(u6, w5), dot(u6, w6), dot(u6, w7));
            a7_0 = a7_0 + vec4<f32>(dot(u7, w0), dot(u7, w1), dot(u7, w2), dot(u7, w3));
            a7_1 = a7_1 + vec4<f32>(dot(u7, w4), dot(u7, w5), dot(u7, w6), dot(u7, w7));
            a8_0 = a8_0 + vec4<f32>(dot(u8, w0), dot(u8, w1), dot(u8, w2), dot(u8, w3));
            a8_1 = a8_1 + vec4<f32>(dot(u8, w4), dot(u8, w5), dot(u8, w6), dot(u8, w7));
            a9_0 = a9_0 + vec4<f32>(dot(u9, w0), dot(u9, w1), dot(u9, w2), dot(u9, w3));
            a9_1 = a9_1 + vec4<f32>(dot(u9, w4), dot(u9, w5), dot(u9, w6), dot(u9, w7));
            a10_0 = a10_0 + vec4<f32>(dot(u10, w0), dot(u10, w1), dot(u10, w2), dot(u10, w3));
            a10_1 = a10_1 + vec4<f32>(dot(u10, w4), dot(u10, w5), dot(u10, w6), dot(u10, w7));
            a11_0 = a11_0 + vec4<f32>(dot(u11, w0), dot(u11, w1), dot(u11, w2), dot(u11, w3));
            a11_1 = a11_1 + vec4<f32>(dot(u11, w4), dot(u11, w5), dot(u11, w6), dot(u11, w7));
            a12_0 = a12_0 + vec4<f32>(dot(u12, w0), dot(u12, w1), dot(u12, w2), dot(u12, w3));
            a12_1 = a12_1 + vec4<f32>(dot(u12, w4), dot(u12, w5), dot(u12, w6), dot(u12, w7));
            a13_0 = a13_0 + vec4<f32>(dot(u13, w0), dot(u13, w1), dot(u13, w2), dot(u13, w3));
            a13_1 = a13_1 + vec4<f32>(dot(u13, w4), dot(u13, w5), dot(u13, w6), dot(u13, w7));
            a14_0 = a14_0 + vec4<f32>(dot(u14, w0), dot(u14, w1), dot(u14, w2), dot(u14, w3));
            a14_1 = a14_1 + vec4<f32>(dot(u14, w4), dot(u14, w5), dot(u14, w6), dot(u14, w7));
            a15_0 = a15_0 + vec4<f32>(dot(u15, w0), dot(u15, w1), dot(u15, w2), dot(u15, w3));
            a15_1 = a15_1 + vec4<f32>(dot(u15, w4), dot(u15, w5), dot(u15, w6), dot(u15, w7));
        }
        {
            let w0 = sg_dec(c0, 4u);
            let w1 = sg_dec(c1, 4u);
            let w2 = sg_dec(c2, 4u);
            let w3 = sg_dec(c3, 4u);
            let w4 = sg_dec(c4, 4u);
            let w5 = sg_dec(c5, 4u);
            let w6 = sg_dec(c6, 4u);
            let w7 = sg_dec(c7, 4u);
            let u0 = subgroupBroadcast(v0, 4u);
            let u1 = subgroupBroadcast(v1, 4u);
            let u2 = subgroupBroadcast(v2, 4u);
            let u3 = subgroupBroadcast(v3, 4u);
            let u4 = subgroupBroadcast(v4, 4u);
            let u5 = subgroupBroadcast(v5, 4u);
            let u6 = subgroupBroadcast(v6, 4u);
            let u7 = subgroupBroadcast(v7, 4u);
            let u8 = subgroupBroadcast(v8, 4u);
            let u9 = subgroupBroadcast(v9, 4u);
            let u10 = subgroupBroadcast(v10, 4u);
            let u11 = subgroupBroadcast(v11, 4u);
            let u12 = subgroupBroadcast(v12, 4u);
            let u13 = subgroupBroadcast(v13, 4u);
            let u14 = subgroupBroadcast(v14, 4u);
            let u15 = subgroupBroadcast(v15, 4u);
            a0_0 = a0_0 + vec4<f32>(dot(u0, w0), dot(u0, w1), dot(u0, w2), dot(u0, w3));
            a0_1 = a0_1 + vec4<f32>(dot(u0, w4), dot(u0, w5), dot(u0, w6), dot(u0, w7));
            a1_0 = a1_0 + vec4<f32>(dot(u1, w0), dot(u1, w1), dot(u1, w2), dot(u1, w3));
            a1_1 = a1_1 + vec4<f32>(dot(u1, w4), dot(u1, w5), dot(u1, w6), dot(u1, w7));
            a2_0 = a2_0 + vec4<f32>(dot(u2, w0), dot(u2, w1), dot(u2, w2), dot(u2, w3));
            a2_1 = a2_1 + vec4<f32>(dot(u2, w4), dot(u2, w5), dot(u2, w6), dot(u2, w7));
            a3_0 = a3_0 + vec4<f32>(dot(u3, w0), dot(u3, w1), dot(u3, w2), dot(u3, w3));
            a3_1 = a3_1 + vec4<f32>(dot(u3, w4), dot(u3, w5), dot(u3, w6), dot(u3, w7));
            a4_0 = a4_0 + vec4<f32>(dot(u4, w0), dot(u4, w1), dot(u4, w2), dot(u4, w3));
            a4_1 = a4_1 + vec4<f32>(dot(u4, w4), dot(u4, w5), dot(u4, w6), dot(u4, w7));
            a5_0 = a5_0 + vec4<f32>(dot(u5, w0), dot(u5, w1), dot(u5, w2), dot(u5, w3));
            a5_1 = a5_1 + vec4<f32>(dot(u5, w4), dot(u5, w5), dot(u5, w6), dot(u5, w7));
            a6_0 = a6_0 + vec4<f32>(dot(u6, w0), dot(u6, w1), dot(u6, w2), dot(u6, w3));
            a6_1 = a6_1 + vec4<f32>(dot(u6, w4), dot(u6, w5), dot(u6, w6), dot(u6, w7));
            a7_0 = a7_0 + vec4<f32>(dot(u7, w0), dot(u7, w1), dot(u7, w2), dot(u7, w3));
            a7_1 = a7_1 + vec4<f32>(dot(u7, w4), dot(u7, w5), dot(u7, w6), dot(u7, w7));
            a8_0 = a8_0 + vec4<f32>(dot(u8, w0), dot(u8, w1), dot(u8, w2), dot(u8, w3));
            a8_1 = a8_1 + vec4<f32>(dot(u8, w4), dot(u8, w5), dot(u8, w6), dot(u8, w7));
            a9_0 = a9_0 + vec4<f32>(dot(u9, w0), dot(u9, w1), dot(u9, w2), dot(u9, w3));
            a9_1 = a9_1 + vec4<f32>(dot(u9, w4), dot(u9, w5), dot(u9, w6), dot(u9, w7));
            a10_0 = a10_0 + vec4<f32>(dot(u10, w0), dot(u10, w1), dot(u10, w2), dot(u10, w3));
            a10_1 = a10_1 + vec4<f32>(dot(u10, w4), dot(u10, w5), dot(u10, w6), dot(u10, w7));
            a11_0 = a11_0 + vec4<f32>(dot(u11, w0), dot(u11, w1), dot(u11, w2), dot(u11, w3));
            a11_1 = a11_1 + vec4<f32>(dot(u11, w4), dot(u11, w5), dot(u11, w6), dot(u11, w7));
            a12_0 = a12_0 + vec4<f32>(dot(u12, w0), dot(u12, w1), dot(u12, w2), dot(u12, w3));
            a12_1 = a12_1 + vec4<f32>(dot(u12, w4), dot(u12, w5), dot(u12, w6), dot(u12, w7));
            a13_0 = a13_0 + vec4<f32>(dot(u13, w0), dot(u13, w1), dot(u13, w2), dot(u13, w3));
            a13_1 = a13_1 + vec4<f32>(dot(u13, w4), dot(u13, w5), dot(u13, w6), dot(u13, w7));
            a14_0 = a14_0 + vec4<f32>(dot(u14, w0), dot(u14, w1), dot(u14, w2), dot(u14, w3));
            a14_1 = a14_1 + vec4<f32>(dot(u14, w4), dot(u14, w5), dot(u14, w6), dot(u14, w7));
            a15_0 = a15_0 + vec4<f32>(dot(u15, w0), dot(u15, w1), dot(u15, w2), dot(u15, w3));
            a15_1 = a15_1 + vec4<f32>(dot(u15, w4), dot(u15, w5), dot(u15, w6), dot(u15, w7));
        }
        {
            let w0 = sg_dec(c0, 5u);
            let w1 = sg_dec(c1, 5u);
            let w2 = sg_dec(c2, 5u);
            let w3 = sg_dec(c3, 5u);
            let w4 = sg_dec(c4, 5u);
            let w5 = sg_dec(c5, 5u);
            let w6 = sg_dec(c6, 5u);
            let w7 = sg_dec(c7, 5u);
            let u0 = subgroupBroadcast(v0, 5u);
            let u1 = subgroupBroadcast(v1, 5u);
            let u2 = subgroupBroadcast(v2, 5u);
            let u3 = subgroupBroadcast(v3, 5u);
            let u4 = subgroupBroadcast(v4, 5u);
            let u5 = subgroupBroadcast(v5, 5u);
            let u6 = subgroupBroadcast(v6, 5u);
            let u7 = subgroupBroadcast(v7, 5u);
            let u8 = subgroupBroadcast(v8, 5u);
            let u9 = subgroupBroadcast(v9, 5u);
            let u10 = subgroupBroadcast(v10, 5u);
            let u11 = subgroupBroadcast(v11, 5u);
            let u12 = subgroupBroadcast(v12, 5u);
            let u13 = subgroupBroadcast(v13, 5u);
            let u14 = subgroupBroadcast(v14, 5u);
            let u15 = subgroupBroadcast(v15, 5u);
            a0_0 = a0_0 + vec4<f32>(dot(u0, w0), dot(u0, w1), dot(u0, w2), dot(u0, w3));
            a0_1 = a0_1 + vec4<f32>(dot(u0, w4), dot(u0, w5), dot(u0, w6), dot(u0, w7));
            a1_0 = a1_0 + vec4<f32>(dot(u1, w0), dot(u1, w1), dot(u1, w2), dot(u1, w3));
            a1_1 = a1_1 + vec4<f32>(dot(u1, w4), dot(u1, w5), dot(u1, w6), dot(u1, w7));
            a2_0 = a2_0 + vec4<f32>(dot(u2, w0), dot(u2, w1), dot(u2, w2), dot(u2, w3));
            a2_1 = a2_1 + vec4<f32>(dot(u2, w4), dot(u2, w5), dot(u2, w6), dot(u2, w7));
            a3_0 = a3_0 + vec4<f32>(dot(u3, w0), dot(u3, w1), dot(u3, w2), dot(u3, w3));
            a3_1 = a3_1 + vec4<f32>(dot(u3, w4), dot(u3, w5), dot(u3, w6), dot(u3, w7));
            a4_0 = a4_0 + vec4<f32>(dot(u4, w0), dot(u4, w1), dot(u4, w2), dot(u4, w3));
            a4_1 = a4_1 + vec4<f32>(dot(u4, w4), dot(u4, w5), dot(u4, w6), dot(u4, w7));
            a5_0 = a5_0 + vec4<f32>(dot(u5, w0), dot(u5, w1), dot(u5, w2), dot(u5, w3));
            a5_1 = a5_1 + vec4<f32>(dot(u5, w4), dot(u5, w5), dot(u5, w6), dot(u5, w7));
            a6_0 = a6_0 + vec4<f32>(dot(u6, w0), dot(u6, w1), dot(u6, w2), dot(u6, w3));
            a6_1 = a6_1 + vec4<f32>(dot(u6, w4), dot(u6, w5), dot(u6, w6), dot(u6, w7));
            a7_0 = a7_0 + vec4<f32>(dot(u7, w0), dot(u7, w1), dot(u7, w2), dot(u7, w3));
            a7_1 = a7_1 + vec4<f32>(dot(u7, w4), dot(u7, w5), dot(u7, w6), dot(u7, w7));
            a8_0 = a8_0 + vec4<f32>(dot(u8, w0), dot(u8, w1), dot(u8, w2), dot(u8, w3));
            a8_1 = a8_1 + vec4<f32>(dot(u8, w4), dot(u8, w5), dot(u8, w6), dot(u8, w7));
            a9_0 = a9_0 + vec4<f32>(dot(u9, w0), dot(u9, w1), dot(u9, w2), dot(u9, w3));
            a9_1 = a9_1 + vec4<f32>(dot(u9, w4), dot(u9, w5), dot(u9, w6), dot(u9, w7));
            a10_0 = a10_0 + vec4<f32>(dot(u10, w0), dot(u10, w1), dot(u10, w2), dot(u10, w3));
            a10_1 = a10_1 + vec4<f32>(dot(u10, w4), dot(u10, w5), dot(u10, w6), dot(u10, w7));
            a11_0 = a11_0 + vec4<f32>(dot(u11, w0), dot(u11, w1), dot(u11, w2), dot(u11, w3));
            a11_1 = a11_1 + vec4<f32>(dot(u11, w4), dot(u11, w5), dot(u11, w6), dot(u11, w7));
            a12_0 = a12_0 + vec4<f32>(dot(u12, w0), dot(u12, w1), dot(u12, w2), dot(u12, w3));
            a12_1 = a12_1 + vec4<f32>(dot(u12, w4), dot(u12, w5), dot(u12, w6), dot(u12, w7));
            a13_0 = a13_0 + vec4<f32>(dot(u13, w0), dot(u13, w1), dot(u13, w2), dot(u13, w3));
            a13_1 = a13_1 + vec4<f32>(dot(u13, w4), dot(u13, w5), dot(u13, w6), dot(u13, w7));
            a14_0 = a14_0 + vec4<f32>(dot(u14, w0), dot(u14, w1), dot(u14, w2), dot(u14, w3));
            a14_1 = a14_1 + vec4<f32>(dot(u14, w4), dot(u14, w5), dot(u14, w6), dot(u14, w7));
            a15_0 = a15_0 + vec4<f32>(dot(u15, w0), dot(u15, w1), dot(u15, w2), dot(u15, w3));
            a15_1 = a15_1 + vec4<f32>(dot(u15, w4), dot(u15, w5), dot(u15, w6), dot(u15, w7));
        }
        {
            let w0 = sg_dec(c0, 6u);
            let w1 = sg_dec(c1, 6u);
            let w2 = sg_dec(c2, 6u);
            let w3 = sg_dec(c3, 6u);
            let w4 = sg_dec(c4, 6u);
            let w5 = sg_dec(c5, 6u);
            let w6 = sg_dec(c6, 6u);
            let w7 = sg_dec(c7, 6u);
            let u0 = subgroupBroadcast(v0, 6u);
            let u1 = subgroupBroadcast(v1, 6u);
            let u2 = subgroupBroadcast(v2, 6u);
            let u3 = subgroupBroadcast(v3, 6u);
            let u4 = subgroupBroadcast(v4, 6u);
            let u5 = subgroupBroadcast(v5, 6u);
            let u6 = subgroupBroadcast(v6, 6u);
            let u7 = subgroupBroadcast(v7, 6u);
            let u8 = subgroupBroadcast(v8, 6u);
            let u9 = subgroupBroadcast(v9, 6u);
            let u10 = subgroupBroadcast(v10, 6u);
            let u11 = subgroupBroadcast(v11, 6u);
            let u12 = subgroupBroadcast(v12, 6u);
            let u13 = subgroupBroadcast(v13, 6u);
            let u14 = subgroupBroadcast(v14, 6u);
            let u15 = subgroupBroadcast(v15, 6u);
            a0_0 = a0_0 + vec4<f32>(dot(u0, w0), dot(u0, w1), dot(u0, w2), dot(u0, w3));
            a0_1 = a0_1 + vec4<f32>(dot(u0, w4), dot(u0, w5), dot(u0, w6), dot(u0, w7));
            a1_0 = a1_0 + vec4<f32>(dot(u1, w0), dot(u1, w1), dot(u1, w2), dot(u1, w3));
            a1_1 = a1_1 + vec4<f32>(dot(u1, w4), dot(u1, w5), dot(u1, w6), dot(u1, w7));
            a2_0 = a2_0 + vec4<f32>(dot(u2, w0), dot(u2, w1), dot(u2, w2), dot(u2, w3));
            a2_1 = a2_1 + vec4<f32>(dot(u2, w4), dot(u2, w5), dot(u2, w6), dot(u2, w7));
            a3_0 = a3_0 + vec4<f32>(dot(u3, w0), dot(u3, w1), dot(u3, w2), dot(u3, w3));
            a3_1 = a3_1 + vec4<f32>(dot(u3, w4), dot(u3, w5), dot(u3, w6), dot(u3, w7));
            a4_0 = a4_0 + vec4<f32>(dot(u4, w0), dot(u4, w1), dot(u4, w2), dot(u4, w3));
            a4_1 = a4_1 + vec4<f32>(dot(u4, w4), dot(u4, w5), dot(u4, w6), dot(u4, w7));
            a5_0 = a5_0 + vec4<f32>(dot(u5, w0), dot(u5, w1), dot(u5, w2), dot(u5, w3));
            a5_1 = a5_1 + vec4<f32>(dot(u5, w4), dot(u5, w5), dot(u5, w6), dot(u5, w7));
            a6_0 = a6_0 + vec4<f32>(dot(u6, w0), dot(u6, w1), dot(u6, w2), dot(u6, w3));
            a6_1 = a6_1 + vec4<f32>(dot(u6, w4), dot(u6, w5), dot(u6, w6), dot(u6, w7));
            a7_0 = a7_0 + vec4<f32>(dot(u7, w0), dot(u7, w1), dot(u7, w2), dot(u7, w3));
            a7_1 = a7_1 + vec4<f32>(dot(u7, w4), dot(u7, w5), dot(u7, w6), dot(u7, w7));
            a8_0 = a8_0 + vec4<f32>(dot(u8, w0), dot(u8, w1), dot(u8, w2), dot(u8, w3));
            a8_1 = a8_1 + vec4<f32>(dot(u8, w4), dot(u8, w5), dot(u8, w6), dot(u8, w7));
            a9_0 = a9_0 + vec4<f32>(dot(u9, w0), dot(u9, w1), dot(u9, w2), dot(u9, w3));
            a9_1 = a9_1 + vec4<f32>(dot(u9, w4), dot(u9, w5), dot(u9, w6), dot(u9, w7));
            a10_0 = a10_0 + vec4<f32>(dot(u10, w0), dot(u10, w1), dot(u10, w2), dot(u10, w3));
            a10_1 = a10_1 + vec4<f32>(dot(u10, w4), dot(u10, w5), dot(u10, w6), dot(u10, w7));
            a11_0 = a11_0 + vec4<f32>(dot(u11, w0), dot(u11, w1), dot(u11, w2), dot(u11, w3));
            a11_1 = a11_1 + vec4<f32>(dot(u11, w4), dot(u11, w5), dot(u11, w6), dot(u11, w7));
            a12_0 = a12_0 + vec4<f32>(dot(u12, w0), dot(u12, w1), dot(u12, w2), dot(u12, w3));
            a12_1 = a12_1 + vec4<f32>(dot(u12, w4), dot(u12, w5), dot(u12, w6), dot(u12, w7));
            a13_0 = a13_0 + vec4<f32>(dot(u13, w0), dot(u13, w1), dot(u13, w2), dot(u13, w3));
            a13_1 = a13_1 + vec4<f32>(dot(u13, w4), dot(u13, w5), dot(u13, w6), dot(u13, w7));
            a14_0 = a14_0 + vec4<f32>(dot(u14, w0), dot(u14, w1), dot(u14, w2), dot(u14, w3));
            a14_1 = a14_1 + vec4<f32>(dot(u14, w4), dot(u14, w5), dot(u14, w6), dot(u14, w7));
            a15_0 = a15_0 + vec4<f32>(dot(u15, w0), dot(u15, w1), dot(u15, w2), dot(u15, w3));
            a15_1 = a15_1 + vec4<f32>(dot(u15, w4), dot(u15, w5), dot(u15, w6), dot(u15, w7));
        }
        {
            let w0 = sg_dec(c0, 7u);
            let w1 = sg_dec(c1, 7u);
            let w2 = sg_dec(c2, 7u);
            let w3 = sg_dec(c3, 7u);
            let w4 = sg_dec(c4, 7u);
            let w5 = sg_dec(c5, 7u);
            let w6 = sg_dec(c6, 7u);
            let w7 = sg_dec(c7, 7u);
            let u0 = subgroupBroadcast(v0, 7u);
            let u1 = subgroupBroadcast(v1, 7u);
            let u2 = subgroupBroadcast(v2, 7u);
            let u3 = subgroupBroadcast(v3, 7u);
            let u4 = subgroupBroadcast(v4, 7u);
            let u5 = subgroupBroadcast(v5, 7u);
            let u6 = subgroupBroadcast(v6, 7u);
            let u7 = subgroupBroadcast(v7, 7u);
            let u8 = subgroupBroadcast(v8, 7u);
            let u9 = subgroupBroadcast(v9, 7u);
            let u10 = subgroupBroadcast(v10, 7u);
            let u11 = subgroupBroadcast(v11, 7u);
            let u12 = subgroupBroadcast(v12, 7u);
            let u13 = subgroupBroadcast(v13, 7u);
            let u14 = subgroupBroadcast(v14, 7u);
            let u15 = subgroupBroadcast(v15, 7u);
            a0_0 = a0_0 + vec4<f32>(dot(u0, w0), dot(u0, w1), dot(u0, w2), dot(u0, w3));
            a0_1 = a0_1 + vec4<f32>(dot(u0, w4), dot(u0, w5), dot(u0, w6), dot(u0, w7));
            a1_0 = a1_0 + vec4<f32>(dot(u1, w0), dot(u1, w1), dot(u1, w2), dot(u1, w3));
            a1_1 = a1_1 + vec4<f32>(dot(u1, w4), dot(u1, w5), dot(u1, w6), dot(u1, w7));
            a2_0 = a2_0 + vec4<f32>(dot(u2, w0), dot(u2, w1), dot(u2, w2), dot(u2, w3));
            a2_1 = a2_1 + vec4<f32>(dot(u2, w4), dot(u2, w5), dot(u2, w6), dot(u2, w7));
            a3_0 = a3_0 + vec4<f32>(dot(u3, w0), dot(u3, w1), dot(u3, w2), dot(u3, w3));
            a3_1 = a3_1 + vec4<f32>(dot(u3, w4), dot(u3, w5), dot(u3, w6), dot(u3, w7));
            a4_0 = a4_0 + vec4<f32>(dot(u4, w0), dot(u4, w1), dot(u4, w2), dot(u4, w3));
            a4_1 = a4_1 + vec4<f32>(dot(u4, w4), dot(u4, w5), dot(u4, w6), dot(u4, w7));
            a5_0 = a5_0 + vec4<f32>(dot(u5, w0), dot(u5, w1), dot(u5, w2), dot(u5, w3));
            a5_1 = a5_1 + vec4<f32>(dot(u5, w4), dot(u5, w5), dot(u5, w6), dot(u5, w7));
            a6_0 = a6_0 + vec4<f32>(dot(u6, w0), dot(u6, w1), dot(u6, w2), dot(u6, w3));
            a6_1 = a6_1 + vec4<f32>(dot(u6, w4), dot(u6, w5), dot(u6, w6), dot(u6, w7));
            a7_0 = a7_0 + vec4<f32>(dot(u7, w0), dot(u7, w1), dot(u7, w2), dot(u7, w3));
            a7_1 = a7_1 + vec4<f32>(dot(u7, w4), dot(u7, w5), dot(u7, w6), dot(u7, w7));
            a8_0 = a8_0 + vec4<f32>(dot(u8, w0), dot(u8, w1), dot(u8, w2), dot(u8, w3));
            a8_1 = a8_1 + vec4<f32>(dot(u8, w4), dot(u8, w5), dot(u8, w6), dot(u8, w7));
            a9_0 = a9_0 + vec4<f32>(dot(u9, w0), dot(u9, w1), dot(u9, w2), dot(u9, w3));
            a9_1 = a9_1 + vec4<f32>(dot(u9, w4), dot(u9, w5), dot(u9, w6), dot(u9, w7));
            a10_0 = a10_0 + vec4<f32>(dot(u10, w0), dot(u10, w1), dot(u10, w2), dot(u10, w3));
            a10_1 = a10_1 + vec4<f32>(dot(u10, w4), dot(u10, w5), dot(u10, w6), dot(u10, w7));
            a11_0 = a11_0 + vec4<f32>(dot(u11, w0), dot(u11, w1), dot(u11, w2), dot(u11, w3));
            a11_1 = a11_1 + vec4<f32>(dot(u11, w4), dot(u11, w5), dot(u11, w6), dot(u11, w7));
            a12_0 = a12_0 + vec4<f32>(dot(u12, w0), dot(u12, w1), dot(u12, w2), dot(u12, w3));
            a12_1 = a12_1 + vec4<f32>(dot(u12, w4), dot(u12, w5), dot(u12, w6), dot(u12, w7));
            a13_0 = a13_0 + vec4<f32>(dot(u13, w0), dot(u13, w1), dot(u13, w2), dot(u13, w3));
            a13_1 = a13_1 + vec4<f32>(dot(u13, w4), dot(u13, w5), dot(u13, w6), dot(u13, w7));
            a14_0 = a14_0 + vec4<f32>(dot(u14, w0), dot(u14, w1), dot(u14, w2), dot(u14, w3));
            a14_1 = a14_1 + vec4<f32>(dot(u14, w4), dot(u14, w5), dot(u14, w6), dot(u14, w7));
            a15_0 = a15_0 + vec4<f32>(dot(u15, w0), dot(u15, w1), dot(u15, w2), dot(u15, w3));
            a15_1 = a15_1 + vec4<f32>(dot(u15, w4), dot(u15, w5), dot(u15, w6), dot(u15, w7));
        }
    }
    let s0 = vec4<f32>(sg_scale(j0), sg_scale(j1), sg_scale(j2), sg_scale(j3));
    let s1 = vec4<f32>(sg_scale(j4), sg_scale(j5), sg_scale(j6), sg_scale(j7));
    store4(row0 + 0u, col0 + 0u, a0_0 * s0);
    store4(row0 + 0u, col0 + 4u, a0_1 * s1);
    store4(row0 + 1u, col0 + 0u, a1_0 * s0);
    store4(row0 + 1u, col0 + 4u, a1_1 * s1);
    store4(row0 + 2u, col0 + 0u, a2_0 * s0);
    store4(row0 + 2u, col0 + 4u, a2_1 * s1);
    store4(row0 + 3u, col0 + 0u, a3_0 * s0);
    store4(row0 + 3u, col0 + 4u, a3_1 * s1);
    store4(row0 + 4u, col0 + 0u, a4_0 * s0);
    store4(row0 + 4u, col0 + 4u, a4_1 * s1);
    store4(row0 + 5u, col0 + 0u, a5_0 * s0);
    store4(row0 + 5u, col0 + 4u, a5_1 * s1);
    store4(row0 + 6u, col0 + 0u, a6_0 * s0);
    store4(row0 + 6u, col0 + 4u, a6_1 * s1);
    store4(row0 + 7u, col0 + 0u, a7_0 * s0);
    store4(row0 + 7u, col0 + 4u, a7_1 * s1);
    store4(row0 + 8u, col0 + 0u, a8_0 * s0);
    store4(row0 + 8u, col0 + 4u, a8_1 * s1);
    store4(row0 + 9u, col0 + 0u, a9_0 * s0);
    store4(row0 + 9u, col0 + 4u, a9_1 * s1);
    store4(row0 + 10u, col0 + 0u, a10_0 * s0);
    store4(row0 + 10u, col0 + 4u, a10_1 * s1);
    store4(row0 + 11u, col0 + 0u, a11_0 * s0);
    store4(row0 + 11u, col0 + 4u, a11_1 * s1);
    store4(row0 + 12u, col0 + 0u, a12_0 * s0);
    store4(row0 + 12u, col0 + 4u, a12_1 * s1);
    store4(row0 + 13u, col0 + 0u, a13_0 * s0);
    store4(row0 + 13u, col0 + 4u, a13_1 * s1);
    store4(row0 + 14u, col0 + 0u, a14_0 * s0);
    store4(row0 + 14u, col0 + 4u, a14_1 * s1);
    store4(row0 + 15u, col0 + 0u, a15_0 * s0);
    store4(row0 + 15u, col0 + 4u, a15_1 * s1);
}
