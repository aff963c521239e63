//! Errors of the GPU backend.

use thiserror::Error;

/// Errors from the GPU backend: adapter choice, shader and pipeline creation,
/// device memory, device loss. None of them is "unsupported" (that is
/// [`Error::Unsupported`], which a planner falls back on).
#[derive(Debug, Error)]
pub enum GpuError {
    /// No adapter matches the choice.
    #[error("no wgpu adapter matches `{choice}`; adapters found: {available} (run `wginfer adapters`)")]
    NoAdapter {
        /// The choice, as given.
        choice: String,
        /// The adapters that exist, or "none".
        available: String,
    },
    /// The adapter refused to create a device.
    #[error("adapter `{adapter}` could not create a device: {message}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's message.
        message: String,
    },
    /// A shader module or compute pipeline failed validation.
    #[error("shader `{shader}` (entry point `{entry}`) failed to compile: {message}")]
    Shader {
        /// Shader file.
        shader: String,
        /// Entry point.
        entry: String,
        /// The validation message.
        message: String,
    },
    /// A tensor larger than one storage-buffer binding may be on this adapter.
    #[error("value `{value}` needs {bytes} bytes, over adapter `{adapter}`'s max_storage_buffer_binding_size of {limit} bytes")]
    TooLarge {
        /// Value name.
        value: String,
        /// Its size.
        bytes: u64,
        /// The adapter's limit.
        limit: u64,
        /// Adapter name.
        adapter: String,
    },
    /// The device ran out of memory.
    #[error("the GPU ran out of memory while {action}")]
    OutOfMemory {
        /// What was being done.
        action: String,
    },
    /// The device was lost (driver reset, GPU removed, timeout detection).
    #[error("the GPU device was lost: {reason}; create a new session")]
    DeviceLost {
        /// The driver's reason.
        reason: String,
    },
    /// wgpu rejected a command: a bug in wginfer, reported with the node.
    #[error("the GPU rejected {action}: {message}")]
    Validation {
        /// What was being done (names the node where known).
        action: String,
        /// wgpu's message.
        message: String,
    },
    /// Reading results back failed or took too long.
    #[error("reading results back from the GPU failed: {message}")]
    Readback {
        /// What went wrong.
        message: String,
    },
}
