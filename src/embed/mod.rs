//! Sentence embeddings: a tokenizer (`tokenizer.json`, Hugging Face
//! `tokenizers`) in front of a BERT model (see [`crate::model::bert`]) on a
//! [`Session`](crate::Session). `Embedder` needs the `text` feature;
//! [`Embeddings`], [`TokenBatch`] and [`cosine`] are in every build.
//!
//! ```no_run
//! use wginfer::{Device, Embedder};
//! # fn main() -> Result<(), wginfer::Error> {
//! let e = Embedder::load("all-MiniLM-L6-v2/", Device::Cpu)?;
//! let out = e.embed(&["A man is playing a guitar.", "Someone plays an instrument."])?;
//! println!("cosine {}", wginfer::embed::cosine(&out.vectors[0], &out.vectors[1]));
//! # Ok(())
//! # }
//! ```
//!
//! The model is a model directory (`config.json`, `model.safetensors`,
//! `tokenizer.json`), a wginfer model file (e.g. a quantized one from
//! `wginfer quantize`) or an ONNX export with the same inputs; for a file the
//! tokenizer is `tokenizer.json` beside it unless one is given. Texts are
//! truncated to the directory's `sentence_bert_config.json` `max_seq_length`
//! (what sentence-transformers does: 256 for all-MiniLM-L6-v2), else the
//! tokenizer's own truncation, else 512, and never beyond the model's position
//! table; a batch is padded to its longest text.
#![forbid(unsafe_code)]

#[cfg(feature = "text")]
mod embedder;

#[cfg(feature = "text")]
pub use embedder::Embedder;

use crate::tensor::Tensor;

/// The embeddings of a list of texts.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens per text after truncation, `[CLS]` and `[SEP]` included.
    pub token_counts: Vec<usize>,
}

impl Embeddings {
    /// The pairwise cosine similarity matrix.
    pub fn similarity(&self) -> Vec<Vec<f32>> {
        self.vectors
            .iter()
            .map(|a| self.vectors.iter().map(|b| cosine(a, b)).collect())
            .collect()
    }
}

/// Token ids of a batch, right-padded with 0 to the longest text.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    /// `[batch, seq]` i64.
    pub input_ids: Tensor,
    /// `[batch, seq]` i64, 1 for tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// Tokens per text.
    pub token_counts: Vec<usize>,
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        (ab / (aa.sqrt() * bb.sqrt())) as f32
    }
}
