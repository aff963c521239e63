// Cast between f32, f16 and bf16, on the raw bits (no `enable f16` needed):
// 16-bit values are packed two to a u32, element 2k in the low half.
// Integers (i32; i64 as two little-endian words; u8, bool and i8 packed four
// to a word) cast to f32 only: exactly for |v| <= 2^24, and otherwise to one
// of the two nearest f32 values (WGSL leaves the rounding of int -> float
// to the implementation; the CPU rounds to nearest even).
// Rounding is to nearest, ties to even, and NaNs stay NaNs with the quiet
// bit set, as the `half` crate's conversions (the CPU reference) do.
// Mirrors Cast in src/ops/cast.rs.
//
// Bindings: 0 output, 1 parameters, 2 x.
// Workgroups are laid out 2-D when one dimension would exceed the limit:
// the flat workgroup index is wg.y * num_workgroups.x + wg.x.

struct Params {
    // Elements.
    n: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<u32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> x: array<u32>;

// The input and output types: 0 f32, 1 f16, 2 bf16; inputs also 3 i32,
// 4 i64, 5 u8 or bool, 6 i8 (with TO = 0).
override FROM: u32 = 0u;
override TO: u32 = 0u;

const WG: u32 = 256u;

fn f16_to_f32(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let e = h & 0x7c00u;
    let m = h & 0x03ffu;
    if ((h & 0x7fffu) == 0u) {
        return sign;
    }
    if (e == 0x7c00u) {
        if (m == 0u) {
            return sign | 0x7f800000u;
        }
        return sign | 0x7fc00000u | (m << 13u);
    }
    if (e == 0u) {
        // Subnormal: normalise the mantissa.
        let z = countLeadingZeros(m) - 22u;
        return sign | ((127u - 15u - z) << 23u) | ((m << (14u + z)) & 0x7fffffu);
    }
    return sign | (((e >> 10u) + 112u) << 23u) | (m << 13u);
}

fn f32_to_f16(v: u32) -> u32 {
    let sign = (v >> 16u) & 0x8000u;
    let e = v & 0x7f800000u;
    let m = v & 0x007fffffu;
    if (e == 0x7f800000u) {
        return sign | 0x7c00u | select(0u, 0x0200u, m != 0u) | (m >> 13u);
    }
    let he = i32(e >> 23u) - 127 + 15;
    if (he >= 0x1f) {
        return sign | 0x7c00u;
    }
    if (he <= 0) {
        if (14 - he > 24) {
            return sign;
        }
        let mm = m | 0x00800000u;
        let sh = u32(14 - he);
        var hm = mm >> sh;
        let round_bit = 1u << (sh - 1u);
        if ((mm & round_bit) != 0u && (mm & (3u * round_bit - 1u)) != 0u) {
            hm = hm + 1u;
        }
        return sign | hm;
    }
    let out = sign | (u32(he) << 10u) | (m >> 13u);
    let round_bit = 0x1000u;
    if ((m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u) {
        return out + 1u;
    }
    return out;
}

fn bf16_to_f32(h: u32) -> u32 {
    if ((h & 0x7fffu) > 0x7f80u) {
        return (h | 0x0040u) << 16u;
    }
    return h << 16u;
}

fn f32_to_bf16(v: u32) -> u32 {
    if ((v & 0x7fffffffu) > 0x7f800000u) {
        return (v >> 16u) | 0x0040u;
    }
    let round_bit = 0x8000u;
    if ((v & round_bit) != 0u && (v & (3u * round_bit - 1u)) != 0u) {
        return (v >> 16u) + 1u;
    }
    return v >> 16u;
}

// Element j of x, as f32 bits.
fn load(j: u32) -> u32 {
    if (FROM == 0u) {
        return x[j];
    }
    if (FROM == 3u) {
        return bitcast<u32>(f32(bitcast<i32>(x[j])));
    }
    if (FROM == 4u) {
        let lo = x[2u * j];
        let hi = x[2u * j + 1u];
        // The high word is the low word's sign extension: an i32 value.
        if (hi == select(0u, 0xffffffffu, (lo & 0x80000000u) != 0u)) {
            return bitcast<u32>(f32(bitcast<i32>(lo)));
        }
        return bitcast<u32>(f32(bitcast<i32>(hi)) * 4294967296.0 + f32(lo));
    }
    if (FROM == 5u || FROM == 6u) {
        let byte = (x[j / 4u] >> (8u * (j % 4u))) & 0xffu;
        if (FROM == 6u) {
            return bitcast<u32>(f32(bitcast<i32>(byte << 24u) >> 24u));
        }
        return bitcast<u32>(f32(byte));
    }
    let h = (x[j / 2u] >> (16u * (j % 2u))) & 0xffffu;
    if (FROM == 1u) {
        return f16_to_f32(h);
    }
    return bf16_to_f32(h);
}

fn store16(v: u32) -> u32 {
    if (TO == 1u) {
        return f32_to_f16(v);
    }
    return f32_to_bf16(v);
}

// One invocation per output word: one f32, or two 16-bit values.
@compute @workgroup_size(256)
fn convert(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + li;
    if (TO == 0u) {
        if (i < params.n) {
            y[i] = load(i);
        }
        return;
    }
    let j = 2u * i;
    if (j >= params.n) {
        return;
    }
    var word = store16(load(j));
    if (j + 1u < params.n) {
        word = word | (store16(load(j + 1u)) << 16u);
    }
    y[i] = word;
}
