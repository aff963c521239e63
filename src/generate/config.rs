//! The shape of a llama-family decoder, read from GGUF metadata or a Hugging
//! Face `config.json`.

/// How rotary position embeddings pair a head's dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF `llama` files, whose converter
    /// permuted the Q and K rows into this order.
    Adjacent,
    /// Halves `(i, i + d/2)` ("NeoX"): Hugging Face checkpoints, GGUF `qwen2`.
    Halves,
}

/// How RoPE's frequencies are stretched for a longer context.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum RopeScaling {
    /// `θ^(-2i/d)` as it is.
    #[default]
    None,
    /// Every frequency divided by one factor (positions compressed by it).
    Linear(f32),
    /// Frequency `i` divided by `factors[i]` (`rope_dims / 2` entries): the
    /// Llama 3 scheme, stored in GGUF as the `rope_freqs` tensor.
    Factors(Vec<f32>),
}

/// Llama 3's frequency stretch (`rope_type: "llama3"`): pairs whose
/// wavelength is past `original_context / low_freq_factor` are divided by
/// `factor`, those below `original_context / high_freq_factor` are kept, and
/// the ones between are interpolated smoothly. Returns the divisor of every
/// frequency (`rope_dims / 2` entries).
pub fn llama3_factors(
    theta: f32,
    rope_dims: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_context: f64,
) -> Vec<f32> {
    (0..rope_dims / 2)
        .map(|i| {
            let freq = f64::from(theta).powf(-2.0 * i as f64 / rope_dims as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let divisor = if wavelen < original_context / high_freq_factor {
                1.0
            } else if wavelen > original_context / low_freq_factor {
                factor
            } else {
                let smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                // The scaled frequency is (1 - s)·f/factor + s·f.
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            divisor as f32
        })
        .collect()
}

/// The hyperparameters of a decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// The architecture name (`llama`, `qwen2`, `mistral`, ...).
    pub architecture: String,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// Model width.
    pub d_model: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Hidden width of the SwiGLU feed-forward.
    pub ffn: usize,
    /// RoPE base frequency θ.
    pub rope_theta: f32,
    /// Dimensions of each head that RoPE rotates (`head_dim` for this family).
    pub rope_dims: usize,
    /// How RoPE pairs dimensions.
    pub rope_layout: RopeLayout,
    /// How RoPE's frequencies are stretched.
    pub rope_scaling: RopeScaling,
    /// RMSNorm ε.
    pub norm_eps: f32,
    /// The context length the model was trained for.
    pub trained_context: usize,
}

impl DecoderConfig {
    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// RoPE's `cos` and `sin` of `pos · θ^(-2i/rope_dims) / scale_i` for
    /// every position below `context` and every pair `i`, computed in f64
    /// (`[context, rope_dims / 2]` each), so no device's `sin`/`cos` accuracy
    /// matters.
    pub fn rope_tables(&self, context: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.rope_dims / 2;
        let divisor = |i: usize| match &self.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear(f) => f64::from(*f),
            RopeScaling::Factors(v) => v.get(i).map_or(1.0, |&f| f64::from(f)),
        };
        let freqs: Vec<f64> = (0..half)
            .map(|i| f64::from(self.rope_theta).powf(-2.0 * i as f64 / self.rope_dims as f64) / divisor(i))
            .collect();
        let mut cos = Vec::with_capacity(context * half);
        let mut sin = Vec::with_capacity(context * half);
        for pos in 0..context {
            for &freq in &freqs {
                let (s, c) = (pos as f64 * freq).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama 3.1's settings (head size 128, θ = 500000, factor 8, low 1,
    /// high 4, 8192 positions): wavelengths under 2048 are kept, those past
    /// 8192 divided by 8, the band between interpolated.
    #[test]
    fn llama3_factors_keep_high_frequencies_and_stretch_low_ones() {
        let f = llama3_factors(500_000.0, 128, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 64);
        for (i, &d) in f.iter().enumerate() {
            let wavelen = 2.0 * std::f64::consts::PI * 500_000f64.powf(2.0 * i as f64 / 128.0);
            if wavelen < 2048.0 {
                assert_eq!(d, 1.0, "{i}");
            } else if wavelen > 8192.0 {
                assert_eq!(d, 8.0, "{i}");
            } else {
                assert!(d > 1.0 && d < 8.0, "{i}: {d}");
            }
        }
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
    }

    #[test]
    fn rope_tables_divide_each_frequency_by_its_factor() {
        let mut c = crate::generate::synthetic::preset("llama-1b").expect("preset");
        c.rope_dims = 8;
        let plain = c.rope_tables(3);
        c.rope_scaling = RopeScaling::Factors(vec![1.0, 2.0, 4.0, 8.0]);
        let (cos, sin) = c.rope_tables(3);
        for i in 0..4 {
            let freq = f64::from(c.rope_theta).powf(-2.0 * i as f64 / 8.0) / f64::from(1u32 << i);
            let (s, co) = (2.0 * freq).sin_cos();
            assert!((f64::from(sin[8 + i]) - s).abs() < 1e-7 && (f64::from(cos[8 + i]) - co).abs() < 1e-7);
        }
        assert_eq!(sin[8], plain.1[8], "factor 1 leaves the frequency");
        c.rope_scaling = RopeScaling::Linear(2.0);
        let (_, lin) = c.rope_tables(3);
        assert!(
            (lin[8 + 1] - plain.1[4 + 1]).abs() < 1e-7,
            "position 2 / 2 = position 1"
        );
    }
}
