//! The KServe v2 / Open Inference Protocol wire format: JSON tensors (flat or
//! nested `data`) and the binary tensor extension, in both directions.
//!
//! A body with an `Inference-Header-Content-Length: N` header is N bytes of
//! JSON followed by the raw little-endian bytes of every input whose
//! `parameters.binary_data_size` is set, in the order the inputs are listed.
//! Responses use the same layout when any output is asked for in binary
//! (`outputs[i].parameters.binary_data` or the request-level
//! `parameters.binary_data_output`).

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ServeError;
use crate::tensor::{numel, DType, Scalar, Storage, Tensor};

/// The header that gives the length of the JSON part of a binary body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The protocol's name of a dtype (`FP32`, `INT64`, ...).
pub fn datatype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FP32",
        DType::F16 => "FP16",
        DType::BF16 => "BF16",
        DType::I8 => "INT8",
        DType::U8 => "UINT8",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::Bool => "BOOL",
        DType::F64 => "FP64",
        DType::I16 => "INT16",
        DType::U16 => "UINT16",
        DType::U32 => "UINT32",
        DType::U64 => "UINT64",
        // wginfer extensions (one byte per element in binary data).
        DType::F8E4M3FN => "FP8_E4M3FN",
        DType::F8E4M3FNUZ => "FP8_E4M3FNUZ",
        DType::F8E5M2 => "FP8_E5M2",
        DType::F8E5M2FNUZ => "FP8_E5M2FNUZ",
        DType::F4E2M1 => "FP4_E2M1",
        DType::I4 => "INT4",
        DType::U4 => "UINT4",
        DType::I2 => "INT2",
        DType::U2 => "UINT2",
        DType::F8E8M0 => "FP8_E8M0",
    }
}

/// The dtype of a protocol datatype name, or a message listing the ones served.
pub fn parse_datatype(name: &str) -> Result<DType, ServeError> {
    Ok(match name {
        "FP32" => DType::F32,
        "FP16" => DType::F16,
        "BF16" => DType::BF16,
        "INT8" => DType::I8,
        "UINT8" => DType::U8,
        "INT32" => DType::I32,
        "INT64" => DType::I64,
        "BOOL" => DType::Bool,
        "FP64" => DType::F64,
        "INT16" => DType::I16,
        "UINT16" => DType::U16,
        "UINT32" => DType::U32,
        "UINT64" => DType::U64,
        "FP8_E4M3FN" => DType::F8E4M3FN,
        "FP8_E4M3FNUZ" => DType::F8E4M3FNUZ,
        "FP8_E5M2" => DType::F8E5M2,
        "FP8_E5M2FNUZ" => DType::F8E5M2FNUZ,
        "FP4_E2M1" => DType::F4E2M1,
        "INT4" => DType::I4,
        "UINT4" => DType::U4,
        "INT2" => DType::I2,
        "UINT2" => DType::U2,
        "FP8_E8M0" => DType::F8E8M0,
        other => {
            return Err(ServeError::bad(format!(
                "datatype `{other}` is not supported; use one of FP32, FP64, FP16, BF16, INT8, UINT8, INT16, UINT16, INT32, UINT32, INT64, UINT64, BOOL (or FP8_E4M3FN, FP8_E4M3FNUZ, FP8_E5M2, FP8_E5M2FNUZ, FP8_E8M0, FP4_E2M1, INT4, UINT4, INT2, UINT2, one byte each)"
            )))
        }
    })
}

/// Triton's model-config name of a dtype (`TYPE_FP32`, ...).
pub fn config_type_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "TYPE_FP32",
        DType::F16 => "TYPE_FP16",
        DType::BF16 => "TYPE_BF16",
        DType::I8 => "TYPE_INT8",
        DType::U8 => "TYPE_UINT8",
        DType::I32 => "TYPE_INT32",
        DType::I64 => "TYPE_INT64",
        DType::Bool => "TYPE_BOOL",
        DType::F64 => "TYPE_FP64",
        DType::I16 => "TYPE_INT16",
        DType::U16 => "TYPE_UINT16",
        DType::U32 => "TYPE_UINT32",
        DType::U64 => "TYPE_UINT64",
        DType::F8E4M3FN => "TYPE_FP8_E4M3FN",
        DType::F8E4M3FNUZ => "TYPE_FP8_E4M3FNUZ",
        DType::F8E5M2 => "TYPE_FP8_E5M2",
        DType::F8E5M2FNUZ => "TYPE_FP8_E5M2FNUZ",
        DType::F4E2M1 => "TYPE_FP4_E2M1",
        DType::I4 => "TYPE_INT4",
        DType::U4 => "TYPE_UINT4",
        DType::I2 => "TYPE_INT2",
        DType::U2 => "TYPE_UINT2",
        DType::F8E8M0 => "TYPE_FP8_E8M0",
    }
}

/// An inference request's JSON header. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Request id, echoed in the response.
    #[serde(default)]
    pub id: Option<Value>,
    /// Request parameters (`binary_data_output`, `timeout`, ...).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// The input tensors.
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted (all outputs when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor of a request.
#[derive(Debug, Deserialize)]
pub struct RequestInput {
    /// Input name.
    pub name: String,
    /// Shape; each dimension must be >= 0.
    pub shape: Vec<i64>,
    /// Protocol datatype name.
    pub datatype: String,
    /// Parameters (`binary_data_size`).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// The elements, flat or nested, row-major (absent for binary inputs).
    #[serde(default)]
    pub data: Option<Value>,
}

/// One output asked for.
#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    /// Output name.
    pub name: String,
    /// Parameters (`binary_data`).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// A parsed request: named tensors and what to send back.
#[derive(Debug)]
pub struct ParsedRequest {
    /// The id to echo.
    pub id: Option<String>,
    /// Inputs by name, in request order.
    pub inputs: Vec<(String, Tensor)>,
    /// `BYTES` inputs (texts, for embedding models) by name, in request
    /// order, each element decoded as UTF-8.
    pub texts: Vec<(String, Vec<String>)>,
    /// Outputs asked for: name and whether to send it as binary. `None`: all.
    pub outputs: Option<Vec<(String, bool)>>,
    /// The request-level `binary_data_output` flag.
    pub binary_output: bool,
    /// The request-level `timeout` parameter, in microseconds.
    pub timeout_us: Option<u64>,
}

fn param_bool(params: &Option<Map<String, Value>>, key: &str) -> Result<Option<bool>, ServeError> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ServeError::bad(format!(
            "parameter `{key}` must be true or false, got {other}"
        ))),
    }
}

fn param_u64(params: &Option<Map<String, Value>>, key: &str, what: &str) -> Result<Option<u64>, ServeError> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ServeError::bad(format!(
                "{what}: parameter `{key}` must be a non-negative integer, got {v}"
            ))
        }),
    }
}

/// Parses an infer body: `json_len` is the `Inference-Header-Content-Length`
/// value (the whole body is JSON when it is `None`).
pub fn parse_infer(body: &[u8], json_len: Option<usize>) -> Result<ParsedRequest, ServeError> {
    let (json, mut binary) = match json_len {
        Some(n) if n > body.len() => {
            return Err(ServeError::bad(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ServeError::bad(
            "the request body must be a JSON object like {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}",
        ));
    }
    let req: InferRequest = serde_json::from_slice(json).map_err(|e| {
        let msg = e.to_string();
        let hint =
            if json_len.is_none() && (msg.starts_with("trailing characters") || std::str::from_utf8(json).is_err()) {
                " (a body with binary tensor data also needs the Inference-Header-Content-Length header)"
            } else {
                ""
            };
        ServeError::bad(format!("the request JSON is invalid: {msg}{hint}"))
    })?;
    if req.inputs.is_empty() {
        return Err(ServeError::bad(
            "the request has no inputs; `inputs` must list every model input",
        ));
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    let mut texts: Vec<(String, Vec<String>)> = Vec::new();
    for input in &req.inputs {
        if inputs.iter().any(|(n, _): &(String, Tensor)| *n == input.name)
            || texts.iter().any(|(n, _)| *n == input.name)
        {
            return Err(ServeError::bad(format!("input `{}` is given twice", input.name)));
        }
        let what = format!("input `{}`", input.name);
        if input.datatype == "BYTES" {
            texts.push((input.name.clone(), bytes_input(&what, input, &mut binary)?));
            continue;
        }
        let dtype = parse_datatype(&input.datatype).map_err(|e| ServeError::bad(format!("{what}: {e}")))?;
        let mut shape = Vec::with_capacity(input.shape.len());
        for &d in &input.shape {
            let d = usize::try_from(d)
                .map_err(|_| ServeError::bad(format!("{what}: shape {:?} has a negative dimension", input.shape)))?;
            shape.push(d);
        }
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| ServeError::bad(format!("{what}: shape {shape:?} is too large")))?;
        let tensor = match param_u64(&input.parameters, "binary_data_size", &what)? {
            Some(size) => {
                if input.data.is_some() {
                    return Err(ServeError::bad(format!(
                        "{what} has both `data` and `parameters.binary_data_size`; send one"
                    )));
                }
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(ServeError::bad(format!(
                        "{what}: binary_data_size is {size} but only {} bytes of binary data are left in the body",
                        binary.len()
                    )));
                }
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                let expected = count.saturating_mul(dtype.size_in_bytes());
                if size != expected {
                    return Err(ServeError::bad(format!(
                        "{what}: a {} tensor of shape {shape:?} is {expected} bytes, but binary_data_size is {size}",
                        input.datatype
                    )));
                }
                Tensor::from_le_bytes(dtype, shape, bytes).map_err(|e| ServeError::bad(format!("{what}: {e}")))?
            }
            None => {
                let data = input.data.as_ref().ok_or_else(|| {
                    ServeError::bad(format!(
                        "{what} has no `data` and no `parameters.binary_data_size`; send its elements in one of them"
                    ))
                })?;
                json_tensor(&what, dtype, shape, count, data)?
            }
        };
        inputs.push((input.name.clone(), tensor));
    }
    if !binary.is_empty() {
        return Err(ServeError::bad(format!(
            "{} bytes of binary data follow the inputs; the inputs' binary_data_size values must add up to the binary part of the body",
            binary.len()
        )));
    }
    let binary_output = param_bool(&req.parameters, "binary_data_output")?.unwrap_or(false);
    let outputs = match &req.outputs {
        None => None,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for o in list {
                if out.iter().any(|(n, _): &(String, bool)| *n == o.name) {
                    return Err(ServeError::bad(format!("output `{}` is asked for twice", o.name)));
                }
                let bin = param_bool(&o.parameters, "binary_data")
                    .map_err(|e| ServeError::bad(format!("output `{}`: {e}", o.name)))?
                    .unwrap_or(binary_output);
                out.push((o.name.clone(), bin));
            }
            Some(out)
        }
    };
    let timeout_us = param_u64(&req.parameters, "timeout", "request")?;
    let id = req.id.map(|v| match v {
        Value::String(s) => s,
        other => other.to_string(),
    });
    Ok(ParsedRequest {
        id,
        inputs,
        texts,
        outputs,
        binary_output,
        timeout_us,
    })
}

/// A `BYTES` input's elements as strings: JSON `data` holds strings (flat or
/// nested); binary data is each element as a 4-byte little-endian length and
/// that many bytes. Every element must be UTF-8.
fn bytes_input(what: &str, input: &RequestInput, binary: &mut &[u8]) -> Result<Vec<String>, ServeError> {
    let mut count = 1usize;
    for &d in &input.shape {
        let d = usize::try_from(d)
            .map_err(|_| ServeError::bad(format!("{what}: shape {:?} has a negative dimension", input.shape)))?;
        count = count
            .checked_mul(d)
            .ok_or_else(|| ServeError::bad(format!("{what}: shape {:?} is too large", input.shape)))?;
    }
    let not_utf8 = |i: usize| ServeError::bad(format!("{what}: element {i} is not valid UTF-8 text"));
    let out: Vec<String> = match param_u64(&input.parameters, "binary_data_size", what)? {
        Some(size) => {
            if input.data.is_some() {
                return Err(ServeError::bad(format!(
                    "{what} has both `data` and `parameters.binary_data_size`; send one"
                )));
            }
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > binary.len() {
                return Err(ServeError::bad(format!(
                    "{what}: binary_data_size is {size} but only {} bytes of binary data are left in the body",
                    binary.len()
                )));
            }
            let (mut bytes, rest) = binary.split_at(size);
            *binary = rest;
            let mut out = Vec::with_capacity(count.min(1 << 16));
            while !bytes.is_empty() {
                let i = out.len();
                let truncated = || {
                    ServeError::bad(format!(
                        "{what}: element {i} is cut short; each BYTES element is a 4-byte little-endian length and that many bytes"
                    ))
                };
                let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(truncated)?;
                let len = u32::from_le_bytes(*len) as usize;
                if len > rest.len() {
                    return Err(truncated());
                }
                let (text, rest) = rest.split_at(len);
                out.push(String::from_utf8(text.to_vec()).map_err(|_| not_utf8(i))?);
                bytes = rest;
            }
            out
        }
        None => {
            let data = input.data.as_ref().ok_or_else(|| {
                ServeError::bad(format!(
                    "{what} has no `data` and no `parameters.binary_data_size`; send its elements in one of them"
                ))
            })?;
            let mut flat = Vec::new();
            flatten(data, &mut flat);
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ServeError::bad(format!("{what}: element {i} is {v}; a BYTES element must be a string"))
                    })
                })
                .collect::<Result<_, _>>()?
        }
    };
    if out.len() != count {
        return Err(ServeError::bad(format!(
            "{what}: shape {:?} needs {count} elements but the data has {}",
            input.shape,
            out.len()
        )));
    }
    Ok(out)
}

/// Flattens nested arrays, row-major.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn json_tensor(what: &str, dtype: DType, shape: Vec<usize>, count: usize, data: &Value) -> Result<Tensor, ServeError> {
    let mut flat = Vec::with_capacity(count.min(1 << 24));
    flatten(data, &mut flat);
    if flat.len() != count {
        return Err(ServeError::bad(format!(
            "{what}: shape {shape:?} needs {count} elements but `data` has {}",
            flat.len()
        )));
    }
    let bad =
        |i: usize, v: &Value, want: &str| ServeError::bad(format!("{what}: element {i} is {v}, which is not {want}"));
    let float = |i: usize, v: &Value| v.as_f64().ok_or_else(|| bad(i, v, "a number"));
    fn int<T: TryFrom<i64>>(
        i: usize,
        v: &Value,
        bad: &dyn Fn(usize, &Value, &str) -> ServeError,
    ) -> Result<T, ServeError> {
        v.as_i64().and_then(|x| T::try_from(x).ok()).ok_or_else(|| {
            bad(
                i,
                v,
                &format!("an integer in the range of {}", std::any::type_name::<T>()),
            )
        })
    }
    let storage = match dtype {
        DType::F32 => Storage::F32(
            flat.iter()
                .enumerate()
                .map(|(i, v)| float(i, v).map(|x| x as f32))
                .collect::<Result<_, _>>()?,
        ),
        DType::F16 => Storage::F16(
            flat.iter()
                .enumerate()
                .map(|(i, v)| float(i, v).map(half::f16::from_f64))
                .collect::<Result<_, _>>()?,
        ),
        DType::BF16 => Storage::BF16(
            flat.iter()
                .enumerate()
                .map(|(i, v)| float(i, v).map(half::bf16::from_f64))
                .collect::<Result<_, _>>()?,
        ),
        DType::I8 => Storage::I8(
            flat.iter()
                .enumerate()
                .map(|(i, v)| int(i, v, &bad))
                .collect::<Result<_, _>>()?,
        ),
        DType::U8 => Storage::U8(
            flat.iter()
                .enumerate()
                .map(|(i, v)| int(i, v, &bad))
                .collect::<Result<_, _>>()?,
        ),
        DType::I32 => Storage::I32(
            flat.iter()
                .enumerate()
                .map(|(i, v)| int(i, v, &bad))
                .collect::<Result<_, _>>()?,
        ),
        DType::I64 => Storage::I64(
            flat.iter()
                .enumerate()
                .map(|(i, v)| int(i, v, &bad))
                .collect::<Result<_, _>>()?,
        ),
        DType::Bool => Storage::Bool(
            flat.iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Bool(b) => Ok(*b),
                    Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
                    Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
                    other => Err(bad(i, other, "true, false, 0 or 1")),
                })
                .collect::<Result<_, _>>()?,
        ),
        DType::F64 => Storage::F64(
            flat.iter()
                .enumerate()
                .map(|(i, v)| float(i, v))
                .collect::<Result<_, _>>()?,
        ),
        DType::I16 => Storage::I16(
            flat.iter()
                .enumerate()
                .map(|(i, v)| int(i, v, &bad))
                .collect::<Result<_, _>>()?,
        ),
        DType::U16 => Storage::U16(
            flat.iter()
                .enumerate()
                .map(|(i, v)| int(i, v, &bad))
                .collect::<Result<_, _>>()?,
        ),
        DType::U32 => Storage::U32(
            flat.iter()
                .enumerate()
                .map(|(i, v)| int(i, v, &bad))
                .collect::<Result<_, _>>()?,
        ),
        DType::U64 => Storage::U64(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_u64().ok_or_else(|| bad(i, v, "an integer in the range of u64")))
                .collect::<Result<_, _>>()?,
        ),
        // float8, float4 and 4- and 2-bit integers: read wide, converted
        // (floats round; integers must be in range).
        small => {
            let wide = if small.is_float() {
                let v: Vec<f64> = flat
                    .iter()
                    .enumerate()
                    .map(|(i, v)| float(i, v))
                    .collect::<Result<_, _>>()?;
                Storage::F64(v)
            } else {
                let v: Vec<i64> = flat
                    .iter()
                    .enumerate()
                    .map(|(i, v)| int(i, v, &bad))
                    .collect::<Result<_, _>>()?;
                Storage::I64(v)
            };
            let wide = Tensor::new(shape.clone(), wide).map_err(|e| ServeError::bad(format!("{what}: {e}")))?;
            let t = wide.cast(small);
            if !small.is_float() {
                let (got, want) = (t.to_i64_vec(), wide.to_i64_vec());
                if let Some(i) = (0..count).find(|&i| got[i] != want[i]) {
                    return Err(bad(i, flat[i], &format!("an integer in the range of {small}")));
                }
            }
            t.into_storage()
        }
    };
    debug_assert_eq!(numel(&shape), storage.len());
    Tensor::new(shape, storage).map_err(|e| ServeError::bad(format!("{what}: {e}")))
}

/// A tensor's elements as a flat JSON array, without building a `Value` tree.
struct JsonData<'a>(&'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.numel()))?;
        match self.0.storage() {
            Storage::F32(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::F16(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
            Storage::BF16(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
            Storage::I8(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::U8(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::I32(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::I64(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::Bool(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::F64(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::I16(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::U16(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::U32(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::U64(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            Storage::F8E4M3FN(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
            Storage::F8E4M3FNUZ(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
            Storage::F8E5M2(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
            Storage::F8E5M2FNUZ(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
            Storage::F4E2M1(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
            Storage::I4(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.0))?,
            Storage::U4(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.0))?,
            Storage::I2(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.0))?,
            Storage::U2(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.0))?,
            Storage::F8E8M0(v) => v.iter().try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct ResponseOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinaryParams {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    id: &'a str,
    outputs: Vec<ResponseOutput<'a>>,
}

/// An encoded response body and, when it holds binary outputs, the length of
/// its JSON part (for `Inference-Header-Content-Length`).
pub struct EncodedResponse {
    /// The body.
    pub body: Vec<u8>,
    /// The JSON length when the body has binary data after it.
    pub json_len: Option<usize>,
}

/// Encodes the outputs (name, tensor, binary?) as a response body.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: &str,
    outputs: &[(String, Tensor, bool)],
) -> Result<EncodedResponse, ServeError> {
    let resp = InferResponse {
        model_name,
        model_version,
        id,
        outputs: outputs
            .iter()
            .map(|(name, t, binary)| ResponseOutput {
                name,
                datatype: datatype_name(t.dtype()),
                shape: t.shape(),
                parameters: binary.then(|| BinaryParams {
                    binary_data_size: t.size_in_bytes(),
                }),
                data: (!binary).then_some(JsonData(t)),
            })
            .collect(),
    };
    let mut body =
        serde_json::to_vec(&resp).map_err(|e| ServeError::Internal(format!("encoding the response: {e}")))?;
    if !outputs.iter().any(|o| o.2) {
        return Ok(EncodedResponse { body, json_len: None });
    }
    let json_len = body.len();
    for (_, t, binary) in outputs {
        if *binary {
            body.extend_from_slice(&t.to_le_bytes());
        }
    }
    Ok(EncodedResponse {
        body,
        json_len: Some(json_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_json_agree() {
        let flat = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        let nested = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}],"extra":1}"#;
        let a = parse_infer(flat, None).unwrap();
        let b = parse_infer(nested, None).unwrap();
        assert_eq!(a.inputs[0].1, b.inputs[0].1);
    }

    #[test]
    fn binary_input_round_trips() {
        let t = Tensor::from_vec(vec![1, 3], vec![1i64, -2, 3]).unwrap();
        let json =
            br#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"INT64","parameters":{"binary_data_size":24}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&t.to_le_bytes());
        let p = parse_infer(&body, Some(json.len())).unwrap();
        assert_eq!(p.inputs[0].1, t);
    }

    #[test]
    fn wrong_sizes_are_bad_requests() {
        let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2,3]}]}"#;
        let e = parse_infer(json, None).unwrap_err();
        assert!(e.to_string().contains("needs 2 elements"), "{e}");
        let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT8","data":[1,300]}]}"#;
        assert!(parse_infer(json, None).is_err());
        let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP128","data":[1,2]}]}"#;
        assert!(parse_infer(json, None).unwrap_err().to_string().contains("FP128"));
        // FP64 is a datatype wginfer holds (f64).
        let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP64","data":[1,2.5]}]}"#;
        let p = parse_infer(json, None).unwrap();
        assert_eq!(p.inputs[0].1, Tensor::from_vec(vec![2], vec![1.0f64, 2.5]).unwrap());
        assert!(parse_infer(b"{", Some(10)).is_err());
    }
}
