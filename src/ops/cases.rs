//! Test cases for ops: deterministic random tensors and awkward sizes.

use std::sync::Arc;

use super::Op;
use crate::tensor::Tensor;

/// One op invocation with concrete inputs, for parity tests and benches.
#[derive(Debug, Clone)]
pub struct OpCase {
    /// A readable label, e.g. `"linear 17x1000->3"`.
    pub name: String,
    /// The op.
    pub op: Arc<dyn Op>,
    /// Its inputs.
    pub inputs: Vec<Tensor>,
}

impl OpCase {
    /// Makes a case.
    pub fn new(name: impl Into<String>, op: Arc<dyn Op>, inputs: Vec<Tensor>) -> Self {
        Self {
            name: name.into(),
            op,
            inputs,
        }
    }

    /// The inputs as references, as [`Op`] methods take them.
    pub fn input_refs(&self) -> Vec<&Tensor> {
        self.inputs.iter().collect()
    }
}

/// A small deterministic generator (SplitMix64) for test data, so cases are
/// the same on every machine without a `rand` dependency.
#[derive(Debug, Clone)]
pub struct CaseRng(u64);

impl CaseRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `[lo, hi]`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// A dimension size in `[1, max]`, often an awkward one (1, 3, 17, a prime).
    pub fn dim(&mut self, max: usize) -> usize {
        const AWKWARD: [usize; 6] = [1, 3, 5, 7, 17, 33];
        if self.next_u64().is_multiple_of(3) {
            let d = AWKWARD[(self.next_u64() % AWKWARD.len() as u64) as usize];
            d.min(max)
        } else {
            self.range(1, max)
        }
    }

    /// An f32 tensor with values uniform in `[lo, hi)`.
    pub fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.uniform(lo, hi)).collect();
        Tensor::from_vec(shape.to_vec(), data).unwrap_or_else(|_| unreachable!("numel matches"))
    }
}
