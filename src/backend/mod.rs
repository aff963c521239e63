//! Backends that execute a planned graph.

pub mod cpu;
