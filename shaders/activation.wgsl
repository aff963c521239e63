// Activation functions, shared by elementwise.wgsl and the fused epilogue of
// matmul.wgsl (the engine prepends this file to both; it has no entry point).
//
// Codes (the `ACT` override constant): the `UNARY_*` constants generated
// from src/backend/gpu/kernels/codes.rs; 0 is the identity.
//
// Numerics: every exp() here takes a non-positive argument, so nothing
// overflows to inf/NaN for any finite x (|x| = 100 and beyond are fine).

// sigmoid(x) = 1 / (1 + e^-x), evaluated without overflow for either sign.
fn wg_sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    let r = 1.0 / (1.0 + e);
    return select(e * r, r, x >= 0.0);
}

// tanh(x) through e^(-2|x|); a short series near 0 avoids cancellation.
fn wg_tanh(x: f32) -> f32 {
    let a = abs(x);
    if (a < 0.125) {
        let x2 = x * x;
        return x * (1.0 + x2 * (-0.33333333 + x2 * (0.13333333 - x2 * 0.053968254)));
    }
    let e = exp(-2.0 * a);
    return sign(x) * (1.0 - e) / (1.0 + e);
}

// erfc(z) for z >= 0 (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7 absolute).
fn wg_erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return poly * exp(-z * z);
}

// erf(z) for any z, |error| <= 1.5e-7 (plus f32 rounding).
fn wg_erf(z: f32) -> f32 {
    let r = 1.0 - wg_erfc_pos(abs(z));
    return select(-r, r, z >= 0.0);
}

// GELU, exact form: x/2 (1 + erf(x/sqrt 2)). For x < 0, 1 + erf(z) is computed
// as erfc(|z|) directly, so it keeps its relative precision far into the tail.
fn wg_gelu(x: f32) -> f32 {
    let z = x * 0.70710678118654752;
    let one_plus_erf = select(wg_erfc_pos(-z), 2.0 - wg_erfc_pos(z), z >= 0.0);
    return 0.5 * x * one_plus_erf;
}

// GELU, tanh form: x/2 (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi)(x + 0.044715 x^3).
fn wg_gelu_tanh(x: f32) -> f32 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    return x * wg_sigmoid(2.0 * u);
}

// The negative slope of leaky relu (UNARY_LEAKY_RELU).
override ALPHA: f32 = 0.01;

fn wg_activate(x: f32, act: u32) -> f32 {
    switch act {
        case UNARY_RELU: { return select(x, 0.0, x < 0.0); }
        case UNARY_SIGMOID: { return wg_sigmoid(x); }
        case UNARY_TANH: { return wg_tanh(x); }
        case UNARY_GELU: { return wg_gelu(x); }
        case UNARY_GELU_TANH: { return wg_gelu_tanh(x); }
        case UNARY_SILU: { return x * wg_sigmoid(x); }
        case UNARY_LEAKY_RELU: { return select(ALPHA * x, x, x >= 0.0); }
        case UNARY_ERF: { return wg_erf(x); }
        case UNARY_NEG: { return -x; }
        case UNARY_ABS: { return abs(x); }
        case UNARY_EXP: { return exp(x); }
        case UNARY_LOG: { return log(x); }
        case UNARY_SQRT: { return sqrt(x); }
        case UNARY_RECIPROCAL: { return 1.0 / x; }
        case UNARY_HARD_SWISH: { return x * clamp(x / 6.0 + 0.5, 0.0, 1.0); }
        case UNARY_FLOOR: { return floor(x); }
        case UNARY_SIGN: { return sign(x); }
        // WGSL's round() rounds halves to even, as ONNX Round does.
        case UNARY_ROUND: { return round(x); }
        default: { return x; }
    }
}
