//! Decoder language models: configuration and weights of the llama family
//! ([`config`], [`weights`]), the forward pass with a KV cache on the CPU
//! ([`cpu`]) and the GPU ([`gpu`]), the tokenizer and chat template read from
//! GGUF metadata ([`tokenizer`], [`chat`]) and the sampler ([`sample`]).

pub mod cache;
pub mod calibrate;
#[cfg(feature = "text")]
pub mod chat;
pub mod config;
pub mod cpu;
pub mod export;
#[cfg(feature = "text")]
pub mod generator;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod hf;
pub mod load;
pub mod sample;
pub mod synthetic;
#[cfg(feature = "text")]
pub mod tokenizer;
pub mod weights;

pub use config::{DecoderConfig, RopeLayout, RopeScaling};
#[cfg(feature = "text")]
pub use generator::{
    FinishReason, GenerateOptions, GeneratedToken, Generation, Generator, ModelParts, Perplexity, TokenPicker,
};
pub use weights::{DecoderWeights, LayerWeights, Matrix};

use crate::error::GenerateError;

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's (decoding, sampling).
    Last,
    /// Every position's, `tokens.len() × vocab` (scoring, perplexity).
    All,
}

/// A decoder with its KV cache for one sequence, on some device. Positions
/// continue from the tokens already cached.
pub trait Decoder: Send {
    /// The model's configuration.
    fn config(&self) -> &DecoderConfig;

    /// Runs `tokens` at positions `cached()..cached() + tokens.len()`, appends
    /// their keys and values to the cache, and returns the logits asked for
    /// (row-major, `vocab` per position).
    fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<Vec<f32>, GenerateError>;

    /// Positions held in the cache.
    fn cached(&self) -> usize;

    /// Drops cached positions past `len` (`0` starts a new sequence).
    fn truncate(&mut self, len: usize);

    /// Positions the cache can hold.
    fn context(&self) -> usize;
}
