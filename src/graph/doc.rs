//! The graph's JSON document, as stored under `wginfer.graph` in a model
//! file's safetensors metadata.
//!
//! ```json
//! {"format": "wginfer.graph", "version": 1, "name": "digits-mlp",
//!  "inputs":  [{"name": "input", "dtype": "f32", "shape": ["batch", 64]}],
//!  "outputs": [{"name": "probabilities", "dtype": "f32", "shape": ["batch", 10]}],
//!  "params":  [{"name": "fc1.weight", "dtype": "f32", "shape": [128, 64]}],
//!  "nodes":   [{"name": "fc1", "op": "Linear", "inputs": ["input", "fc1.weight"],
//!              "outputs": ["h"], "attrs": {}}]}
//! ```
//! Unknown fields are ignored, so a newer writer can add optional ones
//! without a version bump; anything that changes meaning bumps `version`.

use serde::{Deserialize, Serialize};

use super::{ParamInfo, ValueInfo};
use crate::ops::Attrs;
use crate::tensor::{DType, Dim, ValueType};

/// The value of `format` in a graph document.
pub const GRAPH_FORMAT: &str = "wginfer.graph";
/// The graph document version this build writes and reads.
pub const GRAPH_VERSION: u32 = 1;

/// A whole graph.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphDoc {
    /// Always [`GRAPH_FORMAT`].
    pub format: String,
    /// Document version, [`GRAPH_VERSION`].
    pub version: u32,
    /// Model name.
    #[serde(default)]
    pub name: String,
    /// Graph inputs.
    pub inputs: Vec<ValueDoc>,
    /// Graph outputs.
    pub outputs: Vec<ValueDoc>,
    /// Parameters (weights).
    #[serde(default)]
    pub params: Vec<ParamDoc>,
    /// Nodes.
    pub nodes: Vec<NodeDoc>,
}

/// A typed value (graph input or output).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValueDoc {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; strings are symbolic dimensions.
    pub shape: Vec<Dim>,
}

impl ValueDoc {
    pub(super) fn to_info(&self) -> ValueInfo {
        ValueInfo {
            name: self.name.clone(),
            ty: ValueType {
                dtype: self.dtype,
                shape: self.shape.clone(),
            },
        }
    }

    pub(super) fn from_info(v: &ValueInfo) -> Self {
        Self {
            name: v.name.clone(),
            dtype: v.ty.dtype,
            shape: v.ty.shape.clone(),
        }
    }
}

/// A parameter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParamDoc {
    /// Tensor name.
    pub name: String,
    /// Stored element type.
    pub dtype: DType,
    /// Stored shape.
    pub shape: Vec<usize>,
    /// Weight format; absent means the plain dtype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

impl ParamDoc {
    pub(super) fn to_info(&self) -> ParamInfo {
        ParamInfo {
            name: self.name.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            format: self.format.clone().unwrap_or_else(|| self.dtype.name().to_string()),
        }
    }

    pub(super) fn from_info(p: &ParamInfo) -> Self {
        Self {
            name: p.name.clone(),
            dtype: p.dtype,
            shape: p.shape.clone(),
            format: (p.format != p.dtype.name()).then(|| p.format.clone()),
        }
    }
}

/// A node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeDoc {
    /// Unique name.
    pub name: String,
    /// Op type (a name in the op registry).
    pub op: String,
    /// Input value names.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Attributes.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub attrs: Attrs,
}
