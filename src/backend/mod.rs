//! Backends that execute a planned graph.
#![forbid(unsafe_code)]

pub mod cpu;
pub mod gpu;
