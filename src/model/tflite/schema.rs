//! The subset of LiteRT's `schema.fbs` (TFLite schema version 3) the
//! exporter writes: enum values and each table's field slots, written with
//! `flatbuffers`' builder. A field's vtable slot is `4 + 2·id`, its id the
//! field's position in the schema (a union takes two ids: its type, then its
//! value). The numbers match `schema_py_generated.py` of `ai-edge-litert`.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

/// A finished table inside the builder.
pub(super) type Table = WIPOffset<flatbuffers::TableFinishedWIPOffset>;

/// The vtable slot of field `id`.
const fn slot(id: u16) -> u16 {
    4 + 2 * id
}

/// `TensorType`.
pub(super) mod tensor_type {
    pub const FLOAT32: i8 = 0;
    pub const FLOAT16: i8 = 1;
    pub const INT32: i8 = 2;
    pub const UINT8: i8 = 3;
    pub const INT64: i8 = 4;
    pub const BOOL: i8 = 6;
    pub const INT16: i8 = 7;
    pub const INT8: i8 = 9;
    pub const FLOAT64: i8 = 10;
}

/// `BuiltinOperator` codes of the ops the exporter writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
pub(super) enum BuiltinOp {
    ADD = 0,
    AVERAGE_POOL_2D = 1,
    CONCATENATION = 2,
    CONV_2D = 3,
    DEQUANTIZE = 6,
    FULLY_CONNECTED = 9,
    LOGISTIC = 14,
    MAX_POOL_2D = 17,
    MUL = 18,
    RELU = 19,
    RESHAPE = 22,
    SOFTMAX = 25,
    TANH = 28,
    PAD = 34,
    GATHER = 36,
    TRANSPOSE = 39,
    MEAN = 40,
    SUB = 41,
    DIV = 42,
    EXP = 47,
    LOG_SOFTMAX = 50,
    NEG = 59,
    LOG = 73,
    SQRT = 75,
    MAXIMUM = 55,
    SLICE = 65,
    EXPAND_DIMS = 70,
    SUM = 74,
    SHAPE = 77,
    RSQRT = 76,
    CAST = 53,
    LEAKY_RELU = 98,
    ABS = 101,
    HARD_SWISH = 117,
    BATCH_MATMUL = 126,
    GELU = 150,
}

impl BuiltinOp {
    /// The schema's name of the op.
    pub(super) fn name(self) -> String {
        format!("{self:?}")
    }
}

/// `Padding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Padding {
    Same = 0,
    Valid = 1,
}

/// The `BuiltinOptions` union member of an operator (with its fields).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Options {
    /// No options table.
    None,
    Conv2D {
        padding: Padding,
        stride: [i32; 2],
        dilation: [i32; 2],
    },
    Pool2D {
        padding: Padding,
        stride: [i32; 2],
        filter: [i32; 2],
    },
    FullyConnected {
        keep_num_dims: bool,
        /// Int8 weights with f32 activations quantized per row at run time,
        /// asymmetrically (TFLite's hybrid kernel).
        asymmetric_quantize_inputs: bool,
    },
    Softmax {
        beta: f32,
    },
    /// `AddOptions`, `SubOptions`, `MulOptions`, `DivOptions` (no fused activation).
    Binary,
    Reshape {
        new_shape: Vec<i32>,
    },
    Transpose,
    Pad,
    Dequantize,
    Reducer {
        keep_dims: bool,
    },
    Concatenation {
        axis: i32,
    },
    Gather {
        axis: i32,
    },
    LeakyRelu {
        alpha: f32,
    },
    Gelu {
        approximate: bool,
    },
    BatchMatMul {
        adj_y: bool,
    },
    LogSoftmax,
    HardSwish,
    /// `ShapeOptions` with the output type (a `TensorType`).
    Shape {
        out_type: i8,
    },
    Slice,
    ExpandDims,
    /// `MaximumMinimumOptions`.
    Maximum,
    Cast,
}

impl Options {
    /// The union type code for `op` (the binary ops share this variant).
    fn union_type(&self, op: BuiltinOp) -> u8 {
        match self {
            Options::None => 0,
            Options::Conv2D { .. } => 1,
            Options::Pool2D { .. } => 5,
            Options::FullyConnected { .. } => 8,
            Options::Softmax { .. } => 9,
            Options::Concatenation { .. } => 10,
            Options::Binary => match op {
                BuiltinOp::SUB => 28,
                BuiltinOp::MUL => 21,
                BuiltinOp::DIV => 29,
                _ => 11,
            },
            Options::Reshape { .. } => 17,
            Options::Pad => 22,
            Options::Gather { .. } => 23,
            Options::Transpose => 26,
            Options::Reducer { .. } => 27,
            Options::LogSoftmax => 36,
            Options::Dequantize => 38,
            Options::LeakyRelu { .. } => 75,
            Options::HardSwish => 91,
            Options::BatchMatMul { .. } => 101,
            Options::Shape { .. } => 55,
            Options::Slice => 48,
            Options::ExpandDims => 52,
            Options::Maximum => 39,
            Options::Cast => 37,
            Options::Gelu { .. } => 116,
        }
    }

    /// Writes the options table; returns its union type and offset.
    pub(super) fn write(&self, fbb: &mut FlatBufferBuilder, op: BuiltinOp) -> (u8, Option<Table>) {
        let ty = self.union_type(op);
        if ty == 0 {
            return (0, None);
        }
        let new_shape = match self {
            Options::Reshape { new_shape } => Some(fbb.create_vector(new_shape)),
            _ => None,
        };
        let t = fbb.start_table();
        match self {
            Options::Conv2D {
                padding,
                stride,
                dilation,
            } => {
                fbb.push_slot::<i8>(slot(0), *padding as i8, 0);
                fbb.push_slot::<i32>(slot(1), stride[1], 0);
                fbb.push_slot::<i32>(slot(2), stride[0], 0);
                fbb.push_slot::<i32>(slot(4), dilation[1], 1);
                fbb.push_slot::<i32>(slot(5), dilation[0], 1);
            }
            Options::Pool2D {
                padding,
                stride,
                filter,
            } => {
                fbb.push_slot::<i8>(slot(0), *padding as i8, 0);
                fbb.push_slot::<i32>(slot(1), stride[1], 0);
                fbb.push_slot::<i32>(slot(2), stride[0], 0);
                fbb.push_slot::<i32>(slot(3), filter[1], 0);
                fbb.push_slot::<i32>(slot(4), filter[0], 0);
            }
            Options::FullyConnected {
                keep_num_dims,
                asymmetric_quantize_inputs,
            } => {
                fbb.push_slot::<bool>(slot(2), *keep_num_dims, false);
                fbb.push_slot::<bool>(slot(3), *asymmetric_quantize_inputs, false);
            }
            Options::Softmax { beta } => fbb.push_slot::<f32>(slot(0), *beta, 0.0),
            Options::Reducer { keep_dims } => fbb.push_slot::<bool>(slot(0), *keep_dims, false),
            Options::Concatenation { axis } | Options::Gather { axis } => fbb.push_slot::<i32>(slot(0), *axis, 0),
            Options::LeakyRelu { alpha } => fbb.push_slot::<f32>(slot(0), *alpha, 0.0),
            Options::Gelu { approximate } => fbb.push_slot::<bool>(slot(0), *approximate, false),
            Options::BatchMatMul { adj_y } => fbb.push_slot::<bool>(slot(1), *adj_y, false),
            Options::Shape { out_type } => fbb.push_slot::<i8>(slot(0), *out_type, 0),
            _ => {}
        }
        if let Some(v) = new_shape {
            fbb.push_slot_always(slot(0), v);
        }
        (ty, Some(fbb.end_table(t)))
    }
}

/// `QuantizationParameters`: per-channel (or per-tensor) affine scales.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Quantization {
    /// One scale per slice along `dim` (one for the tensor).
    pub scale: Vec<f32>,
    /// One zero point per scale.
    pub zero_point: Vec<i64>,
    /// The axis the scales run along.
    pub dim: i32,
}

/// A tensor of the subgraph.
#[derive(Clone, Debug)]
pub(super) struct TensorDef {
    pub name: String,
    /// The shape with dynamic dims as 1.
    pub shape: Vec<i32>,
    /// The shape with dynamic dims as -1 (written only when one is dynamic).
    pub signature: Vec<i32>,
    pub ty: i8,
    /// Its buffer (0: none, an activation).
    pub buffer: u32,
    pub quant: Option<Quantization>,
}

/// An operator of the subgraph.
#[derive(Clone, Debug)]
pub(super) struct OperatorDef {
    pub opcode_index: u32,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub op: BuiltinOp,
    pub options: Options,
}

fn write_quantization(fbb: &mut FlatBufferBuilder, q: &Quantization) -> Table {
    let scale = fbb.create_vector(&q.scale);
    let zero = fbb.create_vector(&q.zero_point);
    let t = fbb.start_table();
    fbb.push_slot_always(slot(2), scale);
    fbb.push_slot_always(slot(3), zero);
    fbb.push_slot::<i32>(slot(6), q.dim, 0);
    fbb.end_table(t)
}

fn write_tensor(fbb: &mut FlatBufferBuilder, t: &TensorDef) -> Table {
    let shape = fbb.create_vector(&t.shape);
    let signature = (t.signature != t.shape).then(|| fbb.create_vector(&t.signature));
    let name = fbb.create_string(&t.name);
    let quant = t.quant.as_ref().map(|q| write_quantization(fbb, q));
    let o = fbb.start_table();
    fbb.push_slot_always(slot(0), shape);
    fbb.push_slot::<i8>(slot(1), t.ty, 0);
    fbb.push_slot::<u32>(slot(2), t.buffer, 0);
    fbb.push_slot_always(slot(3), name);
    if let Some(q) = quant {
        fbb.push_slot_always(slot(4), q);
    }
    if let Some(s) = signature {
        fbb.push_slot_always(slot(7), s);
    }
    fbb.end_table(o)
}

fn write_operator(fbb: &mut FlatBufferBuilder, op: &OperatorDef) -> Table {
    let inputs = fbb.create_vector(&op.inputs);
    let outputs = fbb.create_vector(&op.outputs);
    let (ty, options) = op.options.write(fbb, op.op);
    let o = fbb.start_table();
    fbb.push_slot::<u32>(slot(0), op.opcode_index, 0);
    fbb.push_slot_always(slot(1), inputs);
    fbb.push_slot_always(slot(2), outputs);
    if let Some(options) = options {
        fbb.push_slot::<u8>(slot(3), ty, 0);
        fbb.push_slot_always(slot(4), options);
    }
    fbb.end_table(o)
}

/// `OperatorCode`: both the deprecated byte code (capped at 127, the
/// schema's placeholder for larger codes) and the int32 code.
fn write_opcode(fbb: &mut FlatBufferBuilder, op: BuiltinOp) -> Table {
    let code = op as i32;
    let o = fbb.start_table();
    fbb.push_slot::<i8>(slot(0), code.min(127) as i8, 0);
    fbb.push_slot::<i32>(slot(2), 1, 1);
    fbb.push_slot::<i32>(slot(3), code, 0);
    fbb.end_table(o)
}

fn write_buffer(fbb: &mut FlatBufferBuilder, data: &[u8]) -> Table {
    let v = (!data.is_empty()).then(|| fbb.create_vector(data));
    let o = fbb.start_table();
    if let Some(v) = v {
        fbb.push_slot_always(slot(0), v);
    }
    fbb.end_table(o)
}

/// Everything a one-subgraph model holds.
pub(super) struct ModelDef<'a> {
    pub description: &'a str,
    pub subgraph_name: &'a str,
    pub opcodes: &'a [BuiltinOp],
    pub tensors: &'a [TensorDef],
    pub operators: &'a [OperatorDef],
    pub inputs: &'a [i32],
    pub outputs: &'a [i32],
    /// Buffer contents; buffer 0 is the empty one.
    pub buffers: &'a [Vec<u8>],
}

/// The bytes of the `.tflite` file (file identifier `TFL3`, schema version 3).
pub(super) fn write_model(m: &ModelDef<'_>) -> Vec<u8> {
    let data: usize = m.buffers.iter().map(Vec::len).sum();
    let mut fbb = FlatBufferBuilder::with_capacity(data + 4096);
    let buffers: Vec<Table> = m.buffers.iter().map(|b| write_buffer(&mut fbb, b)).collect();
    let buffers = fbb.create_vector(&buffers);
    let tensors: Vec<Table> = m.tensors.iter().map(|t| write_tensor(&mut fbb, t)).collect();
    let tensors = fbb.create_vector(&tensors);
    let operators: Vec<Table> = m.operators.iter().map(|o| write_operator(&mut fbb, o)).collect();
    let operators = fbb.create_vector(&operators);
    let inputs = fbb.create_vector(m.inputs);
    let outputs = fbb.create_vector(m.outputs);
    let name = fbb.create_string(m.subgraph_name);
    let sg = fbb.start_table();
    fbb.push_slot_always(slot(0), tensors);
    fbb.push_slot_always(slot(1), inputs);
    fbb.push_slot_always(slot(2), outputs);
    fbb.push_slot_always(slot(3), operators);
    fbb.push_slot_always(slot(4), name);
    let sg = fbb.end_table(sg);
    let subgraphs = fbb.create_vector(&[sg]);
    let opcodes: Vec<Table> = m.opcodes.iter().map(|&op| write_opcode(&mut fbb, op)).collect();
    let opcodes = fbb.create_vector(&opcodes);
    let description = fbb.create_string(m.description);
    let root = fbb.start_table();
    fbb.push_slot::<u32>(slot(0), 3, 0);
    fbb.push_slot_always(slot(1), opcodes);
    fbb.push_slot_always(slot(2), subgraphs);
    fbb.push_slot_always(slot(3), description);
    fbb.push_slot_always(slot(4), buffers);
    let root = fbb.end_table(root);
    fbb.finish(root, Some("TFL3"));
    fbb.finished_data().to_vec()
}
