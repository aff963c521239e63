//! Backends that execute a planned graph.

pub mod cpu;
pub mod gpu;
