//! Data files: named tensors in a safetensors file, or one array in `.npy`.

use std::collections::HashMap;
use std::path::Path;

use super::{map_st_error, parse_safetensors};
use crate::error::{Error, ModelError};
use crate::tensor::{read_npy, DType, Tensor};

/// Reads the tensors of a data file, in name order. A `.npy` file gives one
/// tensor named after the file's stem. `f64` data is converted to `f32`.
pub fn load_tensors(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>, Error> {
    let path = path.as_ref();
    let with_path = |source: ModelError| Error::Load {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let bytes = crate::tensor::read_regular_file(path).map_err(|source| {
        with_path(ModelError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        })
    })?;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        let t = read_npy(&bytes).map_err(|e| with_path(e.into()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![(name, t)]);
    }
    tensors_from_bytes(&bytes).map_err(with_path)
}

fn tensors_from_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, ModelError> {
    let st = parse_safetensors(bytes)?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let t = match DType::from_safetensors(view.dtype()) {
            // numpy's default float64 data loads as the f32 models take.
            Some(DType::F64) => Tensor::from_le_bytes(DType::F64, view.shape().to_vec(), view.data())?.cast(DType::F32),
            Some(dt) => Tensor::from_le_bytes(dt, view.shape().to_vec(), view.data())?,
            None => {
                return Err(ModelError::UnsupportedDType {
                    name,
                    found: view.dtype().to_string(),
                })
            }
        };
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes named tensors as a safetensors file (atomically, via a rename).
pub fn save_tensors(path: impl AsRef<Path>, tensors: &[(String, Tensor)]) -> Result<(), Error> {
    let bytes = serialize(tensors, HashMap::new())?;
    write_atomic(path.as_ref(), &bytes).map_err(Error::from)
}

pub(super) fn serialize(tensors: &[(String, Tensor)], meta: HashMap<String, String>) -> Result<Vec<u8>, ModelError> {
    let bytes: Vec<(String, DType, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dtype(), t.shape().to_vec(), t.to_le_bytes()))
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (name, dtype, shape, data) in &bytes {
        let st = dtype.to_safetensors().ok_or_else(|| ModelError::UnsupportedDType {
            name: name.clone(),
            found: format!("{dtype} (held one per byte; safetensors has no unpacked form)"),
        })?;
        let view = safetensors::tensor::TensorView::new(st, shape.clone(), data).map_err(|e| map_st_error(e, &[]))?;
        views.push((name.clone(), view));
    }
    let meta = if meta.is_empty() { None } else { Some(meta) };
    safetensors::serialize(views, meta).map_err(|e| ModelError::BadHeader { detail: e.to_string() })
}

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let io = |action, source| ModelError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| io("cannot write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("cannot replace", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_data_loads_as_f32() {
        let bytes: Vec<u8> = [0.5f64, -1.25, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![3], &bytes).unwrap();
        let file = safetensors::serialize([("input", view)], None).unwrap();
        let got = tensors_from_bytes(&file).unwrap();
        assert_eq!(got[0].0, "input");
        assert_eq!(got[0].1, Tensor::from_vec(vec![3], vec![0.5f32, -1.25, 3.0]).unwrap());
    }
}
