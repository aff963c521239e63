// The int8 dot product of qlinear.wgsl on adapters without the WGSL language
// extension `packed_4x8_integer_dot_product` (which also provides
// unpack4xI8): sign-extend the four bytes of each word with shifts.

// Σ a_i·b_i over the four signed bytes of two words, lowest byte first.
fn idot4(a: u32, b: u32) -> i32 {
    let sa = bitcast<vec4<i32>>(vec4<u32>(a) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    let sb = bitcast<vec4<i32>>(vec4<u32>(b) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return dot(sa, sb);
}
