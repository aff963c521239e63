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
//! Layers, bottom to top (nothing below imports anything above):
//! [`tensor`] → [`linalg`] → [`ops`] → [`graph`] → [`plan`] / [`backend`] →
//! [`model`] → [`Session`] → the `wginfer` command.
#![warn(missing_docs)]

pub mod backend;
pub mod embed;
pub mod error;
pub mod eval;
pub mod graph;
pub mod linalg;
pub mod model;
pub mod ops;
pub mod optimize;
pub mod plan;
pub mod quant;
pub mod serve;
mod session;
pub mod tensor;
pub mod train;

pub use backend::gpu::AdapterChoice;
pub use embed::{Embedder, Embeddings};
pub use error::{Error, Result};
pub use model::Model;
pub use session::{Device, OpTime, Session};
pub use tensor::{DType, Tensor};
