//! The model file: one `.safetensors` file holding the weights as tensors and
//! the graph as JSON under the `wginfer.graph` metadata key (see
//! [`crate::graph::GraphDoc`]). Also the reader/writer for data files
//! (named tensors in safetensors, or `.npy`).
#![forbid(unsafe_code)]

pub mod bert;
mod data;
pub mod gguf;
#[cfg(feature = "onnx")]
pub mod onnx;
#[cfg(feature = "tflite")]
pub mod tflite;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub use data::{load_tensors, save_tensors};

use crate::error::{Error, ModelError};
use crate::graph::{Graph, GraphDoc, GRAPH_FORMAT, GRAPH_VERSION};
use crate::tensor::{DType, Tensor};

/// The metadata key holding the graph JSON.
pub const GRAPH_KEY: &str = "wginfer.graph";

/// A model: a graph and its parameter tensors. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Model {
    graph: Arc<Graph>,
    params: Arc<HashMap<String, Tensor>>,
}

impl Model {
    /// Joins a graph with its parameters, checking that every declared
    /// parameter is present with the declared dtype and shape.
    pub fn new(graph: Graph, params: HashMap<String, Tensor>) -> Result<Self, ModelError> {
        for p in graph.params() {
            let t = params
                .get(&p.name)
                .ok_or_else(|| ModelError::MissingTensor { name: p.name.clone() })?;
            if t.dtype() != p.dtype {
                return Err(ModelError::TensorDType {
                    name: p.name.clone(),
                    expected: p.dtype,
                    found: t.dtype().to_string(),
                });
            }
            if t.shape() != p.shape.as_slice() {
                return Err(ModelError::TensorShape {
                    name: p.name.clone(),
                    expected: p.shape.clone(),
                    found: t.shape().to_vec(),
                });
            }
        }
        Ok(Self {
            graph: Arc::new(graph),
            params: Arc::new(params),
        })
    }

    /// Loads a model file. Errors name the file and say what is wrong with it.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let with_path = |source: ModelError| Error::Load {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        if path.is_dir() {
            // A Hugging Face BERT directory (config.json + model.safetensors).
            return bert::load_dir(path);
        }
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
            return load_onnx(path);
        }
        let bytes = crate::tensor::read_regular_file(path).map_err(|source| {
            with_path(ModelError::Io {
                action: "cannot read",
                path: path.to_path_buf(),
                source,
            })
        })?;
        Self::from_bytes(&bytes).map_err(with_path)
    }

    /// Parses a model file held in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let st = parse_safetensors(bytes)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| map_st_error(e, bytes))?;
        let graph_json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(GRAPH_KEY))
            .ok_or(ModelError::NotAModel)?;
        let doc = parse_graph_doc(graph_json)?;
        let graph = Graph::from_doc(&doc)?;
        let mut params = HashMap::with_capacity(graph.params().len());
        for p in graph.params() {
            let view = st
                .tensor(&p.name)
                .map_err(|_| ModelError::MissingTensor { name: p.name.clone() })?;
            let dtype = DType::from_safetensors(view.dtype()).ok_or_else(|| ModelError::UnsupportedDType {
                name: p.name.clone(),
                found: view.dtype().to_string(),
            })?;
            if dtype != p.dtype {
                return Err(ModelError::TensorDType {
                    name: p.name.clone(),
                    expected: p.dtype,
                    found: dtype.to_string(),
                });
            }
            if view.shape() != p.shape.as_slice() {
                return Err(ModelError::TensorShape {
                    name: p.name.clone(),
                    expected: p.shape.clone(),
                    found: view.shape().to_vec(),
                });
            }
            let t = Tensor::from_le_bytes(dtype, view.shape().to_vec(), view.data())?;
            params.insert(p.name.clone(), t);
        }
        let extra = st.len().saturating_sub(params.len());
        if extra > 0 {
            log::warn!("the model file holds {extra} tensor(s) the graph does not use; they are ignored");
        }
        Self::new(graph, params)
    }

    /// The model file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        let doc = self.graph.to_doc();
        let json = serde_json::to_string(&doc).map_err(|e| ModelError::BadGraph { detail: e.to_string() })?;
        let mut meta = HashMap::new();
        meta.insert(GRAPH_KEY.to_string(), json);
        meta.insert(
            "wginfer.writer".to_string(),
            format!("wginfer {}", env!("CARGO_PKG_VERSION")),
        );
        let named: Vec<(String, Tensor)> = self
            .graph
            .params()
            .iter()
            .filter_map(|p| self.params.get(&p.name).map(|t| (p.name.clone(), t.clone())))
            .collect();
        data::serialize(&named, meta)
    }

    /// Writes the model file. The file is written beside the target and then
    /// renamed over it, so a failed write never leaves a half-written model.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let bytes = self.to_bytes()?;
        data::write_atomic(path.as_ref(), &bytes).map_err(Error::from)
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The graph, shared.
    pub fn graph_arc(&self) -> Arc<Graph> {
        self.graph.clone()
    }

    /// A parameter tensor by name.
    pub fn param(&self, name: &str) -> Option<&Tensor> {
        self.params.get(name)
    }

    /// All parameter tensors, shared.
    pub fn params_arc(&self) -> Arc<HashMap<String, Tensor>> {
        self.params.clone()
    }

    /// Bytes of parameter data.
    pub fn param_bytes(&self) -> usize {
        self.params.values().map(Tensor::size_in_bytes).sum()
    }
}

/// Imports an ONNX file; errors name the file.
#[cfg(feature = "onnx")]
fn load_onnx(path: &Path) -> Result<Model, Error> {
    onnx::import_file(path).map_err(|source| Error::Load {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// Without the ONNX importer an `.onnx` file is an error naming the feature.
#[cfg(not(feature = "onnx"))]
fn load_onnx(path: &Path) -> Result<Model, Error> {
    Err(Error::FeatureDisabled {
        feature: "onnx",
        what: format!("loading the ONNX file `{}`", path.display()),
    })
}

/// Parses the graph document, checking format and version before the schema
/// so a newer file gets "upgrade" rather than a schema complaint.
fn parse_graph_doc(json: &str) -> Result<GraphDoc, ModelError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| ModelError::BadGraph {
        detail: format!("not valid JSON: {e}"),
    })?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(GRAPH_FORMAT) => {}
        other => {
            return Err(ModelError::BadGraph {
                detail: format!("`format` must be \"{GRAPH_FORMAT}\", found {other:?}"),
            })
        }
    }
    match value.get("version") {
        Some(v) if v.as_u64() == Some(GRAPH_VERSION as u64) => {}
        Some(v) => {
            return Err(ModelError::UnsupportedVersion {
                found: v.to_string(),
                supported: GRAPH_VERSION.to_string(),
            })
        }
        None => {
            return Err(ModelError::BadGraph {
                detail: "missing `version`".into(),
            })
        }
    }
    serde_json::from_value(value).map_err(|e| ModelError::BadGraph { detail: e.to_string() })
}

pub(crate) fn parse_safetensors(bytes: &[u8]) -> Result<safetensors::SafeTensors<'_>, ModelError> {
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| map_st_error(e, bytes))
}

/// Turns a safetensors parse error into ours, telling a cut-short file from a corrupt one.
pub(crate) fn map_st_error(e: safetensors::SafeTensorError, bytes: &[u8]) -> ModelError {
    use safetensors::SafeTensorError as S;
    let len = bytes.len();
    match e {
        S::HeaderTooSmall => ModelError::Truncated {
            detail: format!("{len} bytes; even the 8-byte header length is missing"),
        },
        S::InvalidHeaderLength => {
            let n = bytes.get(..8).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            });
            ModelError::Truncated {
                detail: format!(
                    "the header says it is {} bytes, but the file has only {} after the length",
                    n.unwrap_or(0),
                    len.saturating_sub(8)
                ),
            }
        }
        S::MetadataIncompleteBuffer => match expected_len(bytes) {
            Some(want) if want > len => ModelError::Truncated {
                detail: format!("the header describes {want} bytes of file, but it has {len}"),
            },
            Some(want) => ModelError::BadHeader {
                detail: format!("{} unexpected bytes after the last tensor", len - want),
            },
            None => ModelError::BadHeader {
                detail: "tensor offsets do not match the file".into(),
            },
        },
        S::HeaderTooLarge => ModelError::BadHeader {
            detail: "the header length is over 100 MB: the first 8 bytes are not a safetensors header".into(),
        },
        other => ModelError::BadHeader {
            detail: other.to_string(),
        },
    }
}

/// The file length a safetensors header implies, if the header parses.
fn expected_len(bytes: &[u8]) -> Option<usize> {
    let mut a = [0u8; 8];
    a.copy_from_slice(bytes.get(..8)?);
    let n = usize::try_from(u64::from_le_bytes(a)).ok()?;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let end = header
        .as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    Some(8 + n + end as usize)
}
