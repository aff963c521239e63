//! The GPU backend on wgpu: adapter choice ([`AdapterChoice`],
//! [`list_adapters`]), the device context ([`GpuContext`]), the WGSL kernels
//! ([`shaders`]) and the executor ([`GpuExecutor`]).
//!
//! # Threads
//! [`GpuContext`] and [`GpuExecutor`] are `Send + Sync`. Concurrent runs of
//! one executor each take their own set of intermediate buffers from a pool,
//! so they do not wait for each other except in the device queue.
//!
//! # Numerics
//! Kernels compute in f32. Matmul accumulates in f32 in the order of `k`
//! (the GEMV kernel in four interleaved partial sums); activations use
//! overflow-free forms (`exp` of non-positive arguments only); GELU's `erf`
//! is Abramowitz–Stegun 7.1.26 (|error| ≤ 1.5e-7).

mod choice;
#[cfg(feature = "gpu")]
mod context;
mod error;
#[cfg(feature = "gpu")]
mod executor;
#[cfg(feature = "gpu")]
mod kernels;
#[cfg(feature = "gpu")]
mod plan;
#[cfg(feature = "gpu")]
mod runtime;
#[cfg(feature = "gpu")]
pub mod shaders;

pub use choice::{AdapterChoice, GpuApi};
#[cfg(feature = "gpu")]
pub use context::{list_adapters, AdapterSummary, GpuContext};
pub use error::GpuError;
#[cfg(feature = "gpu")]
pub use executor::{BufferReport, GpuExecutor, GpuOptions, NodeReport, Placement, PlanReport};
#[cfg(feature = "gpu")]
pub use kernels::{has_kernel, MatmulKernel};
