//! Errors of the GPU backend: [`GpuError`], defined with the other layers'
//! errors in [`crate::error`].

pub use crate::error::GpuError;
