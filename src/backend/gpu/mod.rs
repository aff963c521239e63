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

mod context;
mod error;
mod executor;
mod kernels;
mod plan;
mod runtime;
pub mod shaders;

pub use context::{list_adapters, AdapterChoice, AdapterSummary, GpuApi, GpuContext};
pub use error::GpuError;
pub use executor::{BufferReport, GpuExecutor, GpuOptions, NodeReport, Placement, PlanReport};
pub use kernels::{has_kernel, MatmulKernel};
