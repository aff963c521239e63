//! The forward pass on the CPU.
