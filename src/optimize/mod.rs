//! Model-to-model transforms that make a model smaller: quantization and
//! pruning. Each returns a new model and a report of what it did.
#![forbid(unsafe_code)]

pub mod calibrate;
pub mod quantize;

pub use calibrate::Calibration;
pub use quantize::{quantize, LayerReport, QuantizeOptions, QuantizeReport, DEFAULT_INT4_OUTLIERS, DEFAULT_OUTLIERS};
pub mod prune;

pub use prune::{prune, Finetune, Labelled, PruneMethod, PruneOptions, PruneReport, Scope};
