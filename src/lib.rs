//! wginfer runs neural networks on any GPU through wgpu compute shaders, with
//! a CPU path that gives the same answers.
//!
//! Load a model, compile a [`Session`] for a [`Device`], run it on named
//! tensors:
//!
//! ```
//! use wginfer::{Device, Model, Session, Tensor};
//!
//! # fn main() -> Result<(), wginfer::Error> {
//! let model = Model::load(concat!(env!("CARGO_MANIFEST_DIR"), "/models/digits-mlp/model.safetensors"))?;
//! let session = Session::new(&model, Device::Cpu)?;
//! // One 8x8 digit image, pixels scaled to [0, 1].
//! let image = Tensor::from_vec(vec![1, 64], vec![0.5f32; 64])?;
//! let outputs = session.run([("input", image)])?;
//! let probs = outputs["probabilities"].as_f32()?;
//! assert_eq!(probs.len(), 10);
//! assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
//! # Ok(())
//! # }
//! ```
//!
//! # Layers
//! Bottom to top; nothing imports from a layer above its own, errors
//! included ([`error`] holds every layer's error enum), and `tests/layers.rs`
//! checks it:
//! [`error`] and [`tensor`] → [`linalg`] → [`quant`] → [`ops`] → [`graph`] →
//! [`plan`] → [`backend`] → [`model`] → [`Session`] → [`embed`], [`eval`] →
//! [`optimize`] (quantization, pruning), [`train`] → `serve` → the `wginfer`
//! command.
//!
//! # Features
//! All on by default; each one only adds to the others.
//!
//! | feature | adds | needs |
//! | --- | --- | --- |
//! | `gpu` | the GPU backend on wgpu ([`backend::gpu`]'s executor, `wginfer adapters`) | wgpu, naga, pollster |
//! | `onnx` | the ONNX importer (`model::onnx`; [`Model::load`] of `.onnx` files) | prost |
//! | `tflite` | the TFLite (LiteRT) exporter (`model::tflite`); turns on `onnx` | flatbuffers |
//! | `text` | `Embedder` (tokenizer + encoder), text calibration | tokenizers |
//! | `serve` | the HTTP server (`serve`); turns on `text` | axum, tokio |
//! | `cli` | the `wginfer` binary; turns on all of the above | clap, anyhow, ... |
//!
//! `default-features = false` leaves the CPU library: tensors, ops, graphs,
//! the CPU backend, model files, sessions, quantization and pruning.
//! [`Device`], [`AdapterChoice`] and the error types are the same in every
//! build, so code that names a GPU compiles without `gpu`: a session on
//! `Device::Gpu(AdapterChoice::Auto)` runs on the CPU (as on a machine with
//! no hardware GPU), and a named adapter fails with
//! [`Error::FeatureDisabled`], as does loading an `.onnx` file without
//! `onnx`. What needs a left-out dependency (the GPU context and executor,
//! `Embedder`, the `serve` module) is absent.
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod embed;
pub mod error;
pub mod eval;
pub mod generate;
pub mod graph;
pub mod linalg;
pub mod model;
pub mod ops;
pub mod optimize;
pub mod plan;
pub mod quant;
#[cfg(feature = "serve")]
pub mod serve;
mod session;
pub mod tensor;
pub mod train;

pub use backend::gpu::AdapterChoice;
#[cfg(feature = "text")]
pub use embed::Embedder;
pub use embed::Embeddings;
pub use error::{Error, Result};
pub use model::Model;
pub use session::{Device, OpTime, Session};
pub use tensor::{DType, Tensor};
