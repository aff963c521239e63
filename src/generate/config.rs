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

    /// RoPE's `cos` and `sin` of `pos · θ^(-2i/rope_dims)` for every position
    /// below `context` and every pair `i`, computed in f64 (`[context,
    /// rope_dims / 2]` each), so no device's `sin`/`cos` accuracy matters.
    pub fn rope_tables(&self, context: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.rope_dims / 2;
        let mut cos = Vec::with_capacity(context * half);
        let mut sin = Vec::with_capacity(context * half);
        for pos in 0..context {
            for i in 0..half {
                let freq = f64::from(self.rope_theta).powf(-2.0 * i as f64 / self.rope_dims as f64);
                let (s, c) = (pos as f64 * freq).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        (cos, sin)
    }
}
