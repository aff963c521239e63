//! Elementwise activations: Relu, Sigmoid, Tanh, Gelu (erf and tanh forms), SiLU.

use std::any::Any;
use std::sync::Arc;

use super::{attr_str, check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{Tensor, ValueType};

/// Which activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`
    Relu,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// `tanh(x)`
    Tanh,
    /// `x/2 · (1 + erf(x/√2))`, the exact GELU.
    Gelu,
    /// `x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))`, GELU's tanh approximation.
    GeluTanh,
    /// `x · sigmoid(x)` (also called swish).
    Silu,
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// `erf` in f32 as a branch-free rational function of `x²` on `[-4, 4]`
/// (Eigen's `generic_fast_erf_float` coefficients): within 4.2e-7 of the
/// exact value, and it vectorizes, unlike `libm::erff` (which was 15% of a
/// BERT run on the CPU in the exact GELU).
#[inline]
pub fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_2e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// Elements per parallel task of [`gelu`] (and the least worth splitting).
const GELU_CHUNK: usize = 1 << 14;

/// The exact GELU of every element (the CPU path): the 16-lane AVX-512
/// kernel where the CPU has it, else [`Activation::apply`] in a loop that
/// vectorizes. In parallel chunks for large inputs when rayon has threads.
pub fn gelu(x: &[f32]) -> Vec<f32> {
    let par = linalg::vecops::parallel(x.len(), 4 * GELU_CHUNK);
    #[cfg(target_arch = "x86_64")]
    if linalg::vecops::has_avx512f() {
        // SAFETY: AVX-512 F is present; each call reads `out.len()` elements
        // of `x` from `start` (the chunks tile `0..x.len()`) and writes all of `out`.
        return unsafe {
            linalg::vecops::build(x.len(), GELU_CHUNK, par, |start, out| {
                avx512::gelu(x.as_ptr().add(start), out.as_mut_ptr().cast(), out.len())
            })
        };
    }
    // SAFETY: every element of each chunk is written.
    unsafe {
        linalg::vecops::build(x.len(), GELU_CHUNK, par, |start, out| {
            linalg::simd(|| {
                for (o, &v) in out.iter_mut().zip(&x[start..]) {
                    o.write(Activation::Gelu.apply(v));
                }
            })
        })
    }
}

/// Explicit AVX-512 forms of the activations.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::erf_fast`]'s numerator (`P`) and denominator (`Q`)
    /// coefficients, highest power of `x²` first.
    const P: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_2e-3,
        -1.609_603_3e-2,
    ];
    const Q: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];

    /// GELU of 16 lanes: `x/2 · (1 + erf(x/√2))`, erf as in [`super::erf_fast`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn gelu16(x: __m512) -> __m512 {
        let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let z = _mm512_min_ps(_mm512_max_ps(z, _mm512_set1_ps(-4.0)), _mm512_set1_ps(4.0));
        let z2 = _mm512_mul_ps(z, z);
        let mut p = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(c));
        }
        let mut q = _mm512_set1_ps(Q[0]);
        for &c in &Q[1..] {
            q = _mm512_fmadd_ps(q, z2, _mm512_set1_ps(c));
        }
        // 1/q: the 14-bit estimate and one Newton step (within 2 ulp; a
        // division would be the kernel's bottleneck).
        let r = _mm512_rcp14_ps(q);
        let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0)));
        let erf = _mm512_mul_ps(_mm512_mul_ps(z, p), r);
        let half = _mm512_mul_ps(x, _mm512_set1_ps(0.5));
        _mm512_fmadd_ps(half, erf, half)
    }

    /// `y[i] = gelu(x[i])` for `i < n`.
    ///
    /// # Safety
    /// `x` must be readable and `y` writable for `n` floats; AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gelu(x: *const f32, y: *mut f32, n: usize) {
        let mut i = 0;
        // Four independent vectors per step: the polynomial chains overlap.
        while i + 64 <= n {
            // SAFETY: i + 64 <= n.
            unsafe {
                let a = gelu16(_mm512_loadu_ps(x.add(i)));
                let b = gelu16(_mm512_loadu_ps(x.add(i + 16)));
                let c = gelu16(_mm512_loadu_ps(x.add(i + 32)));
                let d = gelu16(_mm512_loadu_ps(x.add(i + 48)));
                _mm512_storeu_ps(y.add(i), a);
                _mm512_storeu_ps(y.add(i + 16), b);
                _mm512_storeu_ps(y.add(i + 32), c);
                _mm512_storeu_ps(y.add(i + 48), d);
            }
            i += 64;
        }
        while i < n {
            let m = crate::linalg::vecops::lanes16(n - i);
            // SAFETY: the masked lanes are below n.
            unsafe { _mm512_mask_storeu_ps(y.add(i), m, gelu16(_mm512_maskz_loadu_ps(m, x.add(i)))) };
            i += 16;
        }
    }
}

impl Activation {
    /// The reference value, computed in f64.
    pub fn reference(self, x: f32) -> f32 {
        let x = x as f64;
        let y = match self {
            Activation::Relu => x.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Activation::GeluTanh => 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh()),
            Activation::Silu => x / (1.0 + (-x).exp()),
        };
        y as f32
    }

    /// The fast value, computed in f32 (what the CPU backend runs).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => 0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                let c = SQRT_2_OVER_PI as f32;
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::Silu => x * sigmoid(x),
        }
    }

    /// The derivative `f'(x)`, computed in f64.
    pub fn derivative(self, x: f32) -> f32 {
        let x = x as f64;
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let d = match self {
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Sigmoid => sig(x) * (1.0 - sig(x)),
            Activation::Tanh => 1.0 - x.tanh() * x.tanh(),
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                cdf + x * pdf
            }
            Activation::GeluTanh => {
                let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
                let t = u.tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
            }
            Activation::Silu => sig(x) * (1.0 + x * (1.0 - sig(x))),
        };
        d as f32
    }

    /// The op type in model files.
    pub fn op_type(self) -> &'static str {
        match self {
            Activation::Relu => "Relu",
            Activation::Sigmoid => "Sigmoid",
            Activation::Tanh => "Tanh",
            Activation::Gelu | Activation::GeluTanh => "Gelu",
            Activation::Silu => "Silu",
        }
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// An elementwise activation op on one f32 tensor.
#[derive(Clone, Debug)]
pub struct Unary {
    /// The activation.
    pub kind: Activation,
}

impl Op for Unary {
    fn op_type(&self) -> &'static str {
        self.kind.op_type()
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        if self.kind == Activation::GeluTanh {
            a.insert("approximate".into(), "tanh".into());
        }
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        check_f32(inputs)?;
        Ok(vec![inputs[0].clone()])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = f32_input(inputs, 0)?;
        let y = x.iter().map(|&v| self.kind.reference(v)).collect();
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = f32_input(inputs, 0)?;
        let kind = self.kind;
        let y = match kind {
            Activation::Gelu => gelu(x),
            // One closure per kind, so the loop has no branch on the kind and vectorizes.
            Activation::Relu => linalg::map(x, |v| Activation::Relu.apply(v)),
            _ => linalg::map(x, move |v| kind.apply(v)),
        };
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let (x, dy) = (f32_input(inputs, 0)?, f32_input(grads, 0)?);
        let dx = x.iter().zip(dy).map(|(&v, &g)| g * self.kind.derivative(v)).collect();
        Ok(vec![Some(Tensor::from_vec(inputs[0].shape().to_vec(), dx)?)])
    }

    fn validation(&self) -> Validation {
        match self.kind {
            Activation::Relu => Validation::Exact,
            _ => Validation::Approximate,
        }
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        inputs.first().map(|s| s.iter().product::<usize>() as u64).unwrap_or(0)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn cases(kind: Activation) -> Vec<OpCase> {
    let mut rng = CaseRng::new(3);
    let op: Arc<dyn Op> = Arc::new(Unary { kind });
    let mut out: Vec<OpCase> = [&[1usize][..], &[3, 17], &[1000], &[17, 1000]]
        .iter()
        .map(|s| OpCase::new(format!("{kind:?} {s:?}"), op.clone(), vec![rng.tensor(s, -6.0, 6.0)]))
        .collect();
    // Extremes: large magnitudes must not overflow to NaN.
    let edge = vec![-100.0f32, -20.0, -1e-3, 0.0, 1e-3, 20.0, 100.0];
    if let Ok(t) = Tensor::from_vec(vec![edge.len()], edge) {
        out.push(OpCase::new(format!("{kind:?} extremes"), op, vec![t]));
    }
    out
}

fn sample(kind: Activation, rng: &mut CaseRng) -> OpCase {
    let shape: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.dim(64)).collect();
    let x = rng.tensor(&shape, -8.0, 8.0);
    OpCase::new(format!("{kind:?} {shape:?}"), Arc::new(Unary { kind }), vec![x])
}

macro_rules! activation_def {
    ($(#[$doc:meta])* $name:ident, $op:literal, $kind:expr) => {
        $(#[$doc])*
        pub const $name: OpDef = OpDef {
            op_type: $op,
            build: |_: &Attrs| Ok(Arc::new(Unary { kind: $kind })),
            cases: || cases($kind),
            sample: |r| sample($kind, r),
        };
    };
}

activation_def!(
    /// `Relu`: `max(x, 0)`.
    RELU, "Relu", Activation::Relu
);
activation_def!(
    /// `Sigmoid`: `1 / (1 + e^-x)`.
    SIGMOID, "Sigmoid", Activation::Sigmoid
);
activation_def!(
    /// `Tanh`.
    TANH, "Tanh", Activation::Tanh
);
activation_def!(
    /// `Silu`: `x · sigmoid(x)`.
    SILU, "Silu", Activation::Silu
);

/// `Gelu`: attribute `approximate` = `"none"` (erf, default) or `"tanh"`.
pub const GELU: OpDef = OpDef {
    op_type: "Gelu",
    build: |attrs: &Attrs| {
        let kind = match attr_str(attrs, "approximate", "none")? {
            "none" => Activation::Gelu,
            "tanh" => Activation::GeluTanh,
            other => {
                return Err(OpError::Attribute {
                    name: "approximate".into(),
                    message: format!("must be \"none\" or \"tanh\", got \"{other}\""),
                })
            }
        };
        Ok(Arc::new(Unary { kind }))
    },
    cases: || {
        let mut c = cases(Activation::Gelu);
        c.extend(cases(Activation::GeluTanh));
        c
    },
    sample: |r| {
        let kind = if r.next_u64().is_multiple_of(2) {
            Activation::Gelu
        } else {
            Activation::GeluTanh
        };
        sample(kind, r)
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Values from PyTorch's documentation tables / closed forms.
        assert_eq!(Activation::Relu.apply(-1.0), 0.0);
        assert!((Activation::Sigmoid.apply(0.0) - 0.5).abs() < 1e-7);
        assert!((Activation::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((Activation::GeluTanh.apply(1.0) - 0.841_192).abs() < 1e-6);
        assert!((Activation::Silu.apply(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!(Activation::Sigmoid.apply(-100.0).is_finite());
        assert!(Activation::Silu.apply(-100.0).abs() < 1e-30);
    }

    #[test]
    fn gelu_kernel_matches_the_scalar_form_on_every_length() {
        // Lengths around the 16- and 64-lane steps and the parallel chunk
        // (tails), values across the clamp at |x/√2| = 4, and extremes.
        let mut rng = CaseRng::new(5);
        for n in [
            0usize,
            1,
            15,
            16,
            17,
            63,
            64,
            65,
            100,
            1000,
            GELU_CHUNK + 33,
            4 * GELU_CHUNK + 7,
        ] {
            let mut x = rng.tensor(&[n], -9.0, 9.0).as_f32().unwrap().to_vec();
            for (i, v) in [-100.0f32, -5.7, -1e-3, 0.0, 1e-3, 5.7, 100.0, 1e30].iter().enumerate() {
                if i < n {
                    x[i] = *v;
                }
            }
            let got = gelu(&x);
            assert_eq!(got.len(), n);
            for (&v, &g) in x.iter().zip(&got) {
                let (want, exact) = (Activation::Gelu.apply(v), Activation::Gelu.reference(v));
                assert!(
                    (g - want).abs() <= 5e-7 * (1.0 + v.abs()),
                    "gelu({v}) = {g}, scalar {want}"
                );
                assert!(
                    (g - exact).abs() <= 1e-6 * (1.0 + v.abs()),
                    "gelu({v}) = {g}, exact {exact}"
                );
            }
        }
        assert!(gelu(&[f32::NAN])[0].is_nan());
    }
}
