//! Typed errors, one enum per layer, joined into [`Error`] with `#[from]`.
//!
//! The split matters to callers: a planner matches on [`Error::Unsupported`] to
//! fall back to another backend, while everything else means the input (a model
//! file, a tensor, a graph) is broken and the message says what to fix.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use thiserror::Error;

use crate::tensor::DType;

/// Errors about host tensors: shapes, dtypes, bytes.
#[derive(Debug, Error)]
pub enum TensorError {
    /// The data does not hold one element per position of the shape.
    #[error("shape {shape:?} needs {expected} elements but the data has {got}")]
    ShapeDataMismatch {
        /// The shape asked for.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements the data has.
        got: usize,
    },
    /// A tensor of another dtype was expected.
    #[error("expected a {expected} tensor, got {got}")]
    DTypeMismatch {
        /// The dtype needed.
        expected: DType,
        /// The dtype found.
        got: DType,
    },
    /// A reshape that changes the number of elements.
    #[error("cannot reshape {from:?} to {to:?}: the element counts differ")]
    ReshapeMismatch {
        /// Original shape.
        from: Vec<usize>,
        /// Requested shape.
        to: Vec<usize>,
    },
    /// Raw bytes of the wrong length for a dtype and shape.
    #[error("a {dtype} tensor of shape {shape:?} needs {expected} bytes, got {got} bytes")]
    ByteLengthMismatch {
        /// The dtype.
        dtype: DType,
        /// The shape.
        shape: Vec<usize>,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A boolean byte that is neither 0 nor 1.
    #[error("bool element {index} is stored as byte {byte}; bools must be 0 or 1")]
    InvalidBool {
        /// Element index.
        index: usize,
        /// The offending byte.
        byte: u8,
    },
    /// A row range outside the tensor.
    #[error("rows {start}..{end} are out of range for shape {shape:?}")]
    RowRange {
        /// The tensor's shape.
        shape: Vec<usize>,
        /// First row.
        start: usize,
        /// One past the last row.
        end: usize,
    },
    /// A malformed `.npy` file.
    #[error("invalid .npy file: {0}")]
    Npy(String),
    /// A shape whose element count (or byte count) does not fit in memory
    /// addresses: its dimensions multiply past `usize::MAX`.
    #[error("shape {shape:?} has too many elements: {what} overflows a {bits}-bit size; check the shape")]
    Overflow {
        /// The shape.
        shape: Vec<usize>,
        /// What overflowed ("the element count", "the byte count").
        what: &'static str,
        /// Pointer width of this machine.
        bits: u32,
    },
    /// A tensor or file larger than the allocation limit.
    #[error("{what} needs {bytes} bytes, over the limit of {limit} bytes (set WGINFER_MAX_ALLOC_BYTES to raise it)")]
    OverLimit {
        /// What was to be allocated or read.
        what: String,
        /// Bytes it needs.
        bytes: u64,
        /// The limit in force.
        limit: u64,
    },
}

/// An op's complaint about its inputs or attributes. The graph and the
/// executors add the node's name (see [`GraphError::Node`], [`RunError::Node`]).
#[derive(Debug, Error)]
pub enum OpError {
    /// Wrong number of inputs.
    #[error("takes {expected} inputs, got {got}")]
    Arity {
        /// What the op takes, e.g. "2 or 3".
        expected: &'static str,
        /// How many it got.
        got: usize,
    },
    /// An input of a dtype the op does not take.
    #[error("input {index} has dtype {got}; this op takes {expected}")]
    DType {
        /// Input position.
        index: usize,
        /// Dtypes the op takes.
        expected: &'static str,
        /// The dtype given.
        got: DType,
    },
    /// Input shapes that do not fit the op.
    #[error("{0}")]
    Shape(String),
    /// A missing or malformed attribute.
    #[error("attribute `{name}`: {message}")]
    Attribute {
        /// Attribute name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The op has no gradient (for this configuration).
    #[error("{0} has no backward pass")]
    NoGradient(String),
    /// Packed weight data that contradicts itself (a checksum that does not
    /// match, an index out of range).
    #[error("packed tensor `{tensor}`: {message}")]
    PackedData {
        /// The packed tensor's name (`wsum`, `outlier_index`, ...).
        tensor: String,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor-level error.
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Errors in a graph: undefined values, cycles, unknown ops, shape errors.
#[derive(Debug, Error)]
pub enum GraphError {
    /// A node names an op that is not registered.
    #[error("node `{node}` uses unknown op `{op}`; known ops: {known}")]
    UnknownOp {
        /// Node name.
        node: String,
        /// The op type given.
        op: String,
        /// The registered op types.
        known: String,
    },
    /// A node reads a value nothing defines.
    #[error("node `{node}` reads value `{value}`, which no graph input, parameter or node output defines")]
    UndefinedValue {
        /// Node name.
        node: String,
        /// The undefined value.
        value: String,
    },
    /// A graph output that nothing defines.
    #[error("graph output `{value}` is not defined by any graph input, parameter or node output")]
    UndefinedOutput {
        /// The output name.
        value: String,
    },
    /// Two definitions of one value name.
    #[error("value `{value}` is defined more than once (each input, parameter and node output needs its own name)")]
    DuplicateValue {
        /// The value name.
        value: String,
    },
    /// Two nodes with one name.
    #[error("two nodes are named `{node}`; node names must be unique")]
    DuplicateNode {
        /// The node name.
        node: String,
    },
    /// The nodes cannot be ordered.
    #[error("the graph has a cycle through nodes {nodes:?}; a model graph must be acyclic")]
    Cycle {
        /// Nodes on or behind the cycle.
        nodes: Vec<String>,
    },
    /// An op rejected its inputs or attributes.
    #[error("node `{node}` ({op}): {source}")]
    Node {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// The op's complaint.
        #[source]
        source: OpError,
    },
    /// A declared graph output disagrees with what the nodes produce.
    #[error("graph output `{name}` is declared as {declared} but the graph computes {inferred}")]
    OutputType {
        /// Output name.
        name: String,
        /// Declared type.
        declared: String,
        /// Inferred type.
        inferred: String,
    },
}

/// Errors reading or writing a model (or data) file.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The file could not be read or written.
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file ends before its header says it should.
    #[error("the safetensors file is truncated ({detail}); the file was cut short while copying or writing: copy or export it again")]
    Truncated {
        /// What was found.
        detail: String,
    },
    /// The safetensors header is unreadable.
    #[error("the safetensors header is corrupt ({detail}); this is not a valid .safetensors file")]
    BadHeader {
        /// What was found.
        detail: String,
    },
    /// A safetensors file without wginfer's graph.
    #[error("the file has no `wginfer.graph` entry in its metadata: it holds tensors but no graph, so it is not a wginfer model (import ONNX with `wginfer convert`, or save with Model::save)")]
    NotAModel,
    /// A graph from a newer (or unknown) format version.
    #[error("model format version {found} is not supported; this wginfer reads version {supported}: upgrade wginfer or re-export the model")]
    UnsupportedVersion {
        /// Version in the file.
        found: String,
        /// Version(s) this build reads.
        supported: String,
    },
    /// The graph JSON does not parse.
    #[error("the graph metadata is malformed: {detail}")]
    BadGraph {
        /// What is wrong.
        detail: String,
    },
    /// A declared parameter without a tensor.
    #[error("parameter `{name}` is declared by the graph but the file has no tensor of that name")]
    MissingTensor {
        /// Parameter name.
        name: String,
    },
    /// A parameter tensor of the wrong shape.
    #[error("tensor `{name}` has shape {found:?} in the file, but the graph declares {expected:?}")]
    TensorShape {
        /// Parameter name.
        name: String,
        /// Declared shape.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A parameter tensor of the wrong dtype.
    #[error("tensor `{name}` has dtype {found} in the file, but the graph declares {expected}")]
    TensorDType {
        /// Parameter name.
        name: String,
        /// Declared dtype.
        expected: DType,
        /// Dtype in the file.
        found: String,
    },
    /// A tensor of a dtype wginfer cannot hold.
    #[error("tensor `{name}` has dtype {found}, which wginfer does not support in safetensors files (f32 f64 f16 bf16 float8, 8 to 64-bit integers, bool)")]
    UnsupportedDType {
        /// Tensor name.
        name: String,
        /// Its dtype.
        found: String,
    },
    /// A file whose format is not recognised.
    #[error("`{path}` is not a format wginfer reads (expected a .safetensors model)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The graph is invalid.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A tensor is invalid.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// A model-directory config (`config.json` of a Hugging Face BERT) that
    /// is missing a field or holds a value wginfer cannot build (see `model::bert`).
    #[error("{file}: field `{field}`: {message}")]
    Config {
        /// The config file.
        file: String,
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A tokenizer (`tokenizer.json`) that cannot be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An ONNX file that cannot be imported (see `model::onnx`).
    #[error("ONNX import: {0}")]
    Onnx(#[from] OnnxError),
    /// A GGUF file that cannot be read (see `model::gguf`).
    #[error("GGUF: {0}")]
    Gguf(#[from] GgufError),
}

/// What can go wrong loading or running a decoder language model (see
/// `generate`).
#[derive(Debug, Error)]
pub enum GenerateError {
    /// The GGUF file could not be read.
    #[error("GGUF: {0}")]
    Gguf(#[from] GgufError),
    /// An architecture no builder handles.
    #[error("architecture `{0}` is not supported (supported: llama, qwen2, and files of the same family)")]
    Architecture(String),
    /// A configuration entry that is missing or out of range.
    #[error("model configuration `{key}`: {message}")]
    Config {
        /// The metadata key or config.json field.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor the architecture needs is not in the file.
    #[error("tensor `{0}` is missing from the model file")]
    MissingTensor(String),
    /// A tensor of the wrong shape or of a type the decoder does not take.
    #[error("tensor `{name}`: {message}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A prompt (with the tokens to generate) longer than the context.
    #[error("{needed} tokens do not fit the context of {context}: shorten the prompt or raise the context length")]
    Context {
        /// Positions asked for.
        needed: usize,
        /// The context length.
        context: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenId {
        /// The id given.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The tokenizer or the chat template could not be built or applied.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Sampling options out of range.
    #[error("sampling option `{name}`: {message}")]
    Sampling {
        /// The option.
        name: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A perplexity run that cannot be made (chunk too short, text too short).
    #[error("perplexity: {0}")]
    Perplexity(String),
    /// Calibration that cannot be run (no calibration tokens, an option out
    /// of range).
    #[error("calibration: {0}")]
    Calibration(String),
    /// A kernel rejected its operands.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The GPU decoder's device failed (no adapter, a limit exceeded, out of
    /// memory, device lost, read-back).
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What can go wrong reading a GGUF file (see `model::gguf`).
#[derive(Debug, Error)]
pub enum GgufError {
    /// The first four bytes are not `GGUF`.
    #[error("bad magic {found:?}: not a GGUF file (it must start with \"GGUF\")")]
    Magic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// A GGUF version other than 2 or 3.
    #[error("GGUF version {0} is not supported (only versions 2 and 3 are)")]
    Version(u32),
    /// The file ends before a field it must hold.
    #[error("truncated: {what} needs {needed} bytes at offset {offset}, but the file has {len}")]
    Truncated {
        /// The field being read.
        what: String,
        /// Bytes the field needs.
        needed: u64,
        /// Where the field starts.
        offset: usize,
        /// The file's length.
        len: usize,
    },
    /// A count or length larger than what the rest of the file could hold.
    #[error("{what} is {count}, but only {remaining} bytes remain at offset {offset}: the file is corrupt")]
    Count {
        /// What was counted ("string length", "array count", ...).
        what: String,
        /// The count read from the file.
        count: u64,
        /// Bytes left in the file.
        remaining: usize,
        /// Where the count was read.
        offset: usize,
    },
    /// A metadata value type code outside the GGUF value types.
    #[error("unknown metadata value type {code} for key `{key}`")]
    ValueType {
        /// The key whose value it is.
        key: String,
        /// The type code.
        code: u32,
    },
    /// A ggml tensor type code this reader does not know.
    #[error("tensor `{tensor}` has unknown ggml type code {code}")]
    TensorType {
        /// The tensor's name.
        tensor: String,
        /// The type code.
        code: u32,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    Utf8 {
        /// The string's role (a key, a value, a tensor name).
        what: String,
    },
    /// A bool stored as a byte other than 0 or 1.
    #[error("metadata `{key}`: bool stored as byte {byte}; it must be 0 or 1")]
    Bool {
        /// The key.
        key: String,
        /// The byte.
        byte: u8,
    },
    /// A tensor with more dimensions than GGUF allows.
    #[error("tensor `{tensor}` has {n_dims} dimensions; GGUF allows at most 4")]
    Dims {
        /// The tensor's name.
        tensor: String,
        /// Its dimension count.
        n_dims: u32,
    },
    /// A tensor whose shape does not fit its type or the file.
    #[error("tensor `{tensor}`: {message}")]
    Tensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        message: String,
    },
    /// Arrays nested deeper than the reader follows.
    #[error("metadata `{key}`: arrays nested more than {limit} deep")]
    Nesting {
        /// The key.
        key: String,
        /// The deepest nesting read.
        limit: usize,
    },
    /// `general.alignment` that is not a power of two.
    #[error("general.alignment {0} is not a power of two (or is zero, or is not a u32)")]
    Alignment(u64),
    /// A key that appears twice, in the metadata or the tensor table.
    #[error("duplicate {what} `{name}`")]
    Duplicate {
        /// "metadata key" or "tensor name".
        what: &'static str,
        /// The repeated name.
        name: String,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A size over the allocation limit or past `usize`.
    #[error(transparent)]
    Size(#[from] TensorError),
}

/// What can go wrong writing a GGUF file (see `model::gguf::GgufWriter`)
/// or exporting a decoder to one (see `generate::export`).
#[derive(Debug, Error)]
pub enum GgufExportError {
    /// The output exists and overwriting was not asked for.
    #[error("`{}` exists; pass --force (overwrite) to replace it", path.display())]
    Exists {
        /// The output path.
        path: PathBuf,
    },
    /// Writing the file failed.
    #[error("cannot write `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A metadata entry GGUF cannot hold (a duplicate key, a mixed-type
    /// array, a bad `general.alignment`).
    #[error("GGUF metadata `{key}`: {message}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor GGUF cannot hold as given (a duplicate name, more than four
    /// dimensions, bytes that do not match its shape and type).
    #[error("GGUF tensor `{name}`: {message}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A weight type the export cannot produce or carry.
    #[error("tensor `{name}`: {message}")]
    Unsupported {
        /// The tensor's name.
        name: String,
        /// Why.
        message: String,
    },
    /// The decoder could not be loaded or its tokenizer read.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// The source GGUF file could not be read.
    #[error("GGUF: {0}")]
    Gguf(#[from] GgufError),
}

/// What can go wrong importing an ONNX file.
#[derive(Debug, Error)]
pub enum OnnxError {
    /// The bytes are not a valid protobuf of the expected message.
    #[error("not a valid ONNX {what} protobuf ({source}); the file is corrupt or not ONNX: re-export it")]
    Decode {
        /// The message type that failed to parse.
        what: &'static str,
        /// The protobuf decoder's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The model has no graph.
    #[error("the ONNX model has no graph")]
    NoGraph,
    /// Ops the importer does not support, grouped by op type.
    #[error("the model has nodes wginfer cannot import (an unknown op type, or attributes or inputs it refuses): {}", list_unsupported(.0))]
    Unsupported(Vec<(String, Vec<String>)>),
    /// A tensor (initializer, constant, test data) is malformed or of an unsupported type.
    #[error("tensor `{name}`: {message}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An external-data side file is missing or unreadable.
    #[error("tensor `{name}` keeps its data in `{}`, which cannot be read ({source}): put the side file next to the model", .path.display())]
    ExternalData {
        /// The tensor's name.
        name: String,
        /// The side file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A node's attributes or inputs cannot be imported as given.
    #[error("node `{node}` ({op}): {message}")]
    Node {
        /// The node's name.
        node: String,
        /// Its op type.
        op: String,
        /// What is wrong.
        message: String,
    },
    /// Building the imported graph failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Building the imported model failed.
    #[error("{0}")]
    Model(String),
    /// An op failed while folding constants.
    #[error(transparent)]
    Op(#[from] OpError),
    /// Tensor data is inconsistent.
    #[error(transparent)]
    TensorData(#[from] TensorError),
}

fn list_unsupported(v: &[(String, Vec<String>)]) -> String {
    v.iter()
        .map(|(op, nodes)| format!("{op} (nodes: {})", nodes.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

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
    /// A plan's device buffers over a budget: one buffer over the adapter's
    /// `max_buffer_size`, or all of them (weights, intermediates and
    /// read-back copies) over the allocation limit.
    #[error("{value} needs {bytes} bytes, over {budget} of {limit} bytes")]
    OverBudget {
        /// The value or buffer, with its name.
        value: String,
        /// Its size (or the plan's total).
        bytes: u64,
        /// The budget it exceeds, in words.
        budget: String,
        /// The budget in bytes.
        limit: u64,
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

/// Errors running a session.
#[derive(Debug, Error)]
pub enum RunError {
    /// A graph input was not given.
    #[error("missing input `{name}`; the model's inputs are: {expected}")]
    MissingInput {
        /// The input.
        name: String,
        /// All input names.
        expected: String,
    },
    /// An input the graph does not have.
    #[error("unknown input `{name}`; the model's inputs are: {expected}")]
    UnknownInput {
        /// The name given.
        name: String,
        /// All input names.
        expected: String,
    },
    /// An input of the wrong dtype.
    #[error("input `{name}` has dtype {got}, but the model takes {expected}")]
    InputDType {
        /// The input.
        name: String,
        /// Dtype the model takes.
        expected: DType,
        /// Dtype given.
        got: DType,
    },
    /// An input of the wrong shape.
    #[error("input `{name}` has shape {got:?}, but the model takes {expected}")]
    InputShape {
        /// The input.
        name: String,
        /// Shape the model takes (symbolic dims by name).
        expected: String,
        /// Shape given.
        got: Vec<usize>,
    },
    /// An output that is not a value of the graph.
    #[error("unknown output `{name}`; the model's outputs are: {expected}")]
    UnknownOutput {
        /// The name asked for.
        name: String,
        /// The graph outputs.
        expected: String,
    },
    /// An op failed at run time.
    #[error("node `{node}` ({op}): {source}")]
    Node {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// The op's error.
        #[source]
        source: OpError,
    },
}

/// Any wginfer error.
#[derive(Debug, Error)]
pub enum Error {
    /// A tensor error.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// A graph error.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A model file error, with the file it came from.
    #[error("{path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ModelError>,
    },
    /// A model error.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A run error.
    #[error(transparent)]
    Run(#[from] RunError),
    /// An op rejected its inputs or attributes (outside a graph run).
    #[error(transparent)]
    Op(#[from] OpError),
    /// A GPU backend error.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A decoder language model error.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// A part of wginfer that this build leaves out: the Cargo feature that
    /// holds it is off.
    #[error(
        "{what} needs wginfer's `{feature}` feature, which this build leaves out: rebuild with `--features {feature}`"
    )]
    FeatureDisabled {
        /// The Cargo feature (`gpu`, `onnx`, ...).
        feature: &'static str,
        /// What was asked for.
        what: String,
    },
    /// This backend cannot run this op (or format); another backend can.
    #[error("{op} (format {format}) is not supported on {backend}")]
    Unsupported {
        /// Op type.
        op: String,
        /// Weight or value format.
        format: String,
        /// Backend name.
        backend: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
