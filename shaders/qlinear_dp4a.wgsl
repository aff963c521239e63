// The int8 dot product of qlinear.wgsl where the WGSL language extension
// `packed_4x8_integer_dot_product` exists: `dot4I8Packed` (SPIR-V
// OpSDot with the 4x8-bit packed format where the device has
// VK_KHR_shader_integer_dot_product, HLSL dot4add_i8packed, MSL and GLSL
// polyfills elsewhere). Prepended to qlinear.wgsl as `qlinear_dp4a.wgsl`.

// Σ a_i·b_i over the four signed bytes of two words, lowest byte first.
fn idot4(a: u32, b: u32) -> i32 {
    return dot4I8Packed(a, b);
}
