//! A reader for NumPy's `.npy` files (format versions 1-3, C order).

use super::{checked_bytes, DType, Tensor};
use crate::error::TensorError;

/// Parses a `.npy` file held in memory into a tensor.
///
/// Supported element types: `<f4`, `<f8` (converted to f32), `<f2`, `|i1`,
/// `|u1`, `<i4`, `<i8`, `|b1`. Fortran-order arrays are refused with an error
/// saying to save with `np.ascontiguousarray`.
pub fn read_npy(bytes: &[u8]) -> Result<Tensor, TensorError> {
    let bad = |msg: &str| TensorError::Npy(msg.to_string());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (missing the \\x93NUMPY magic)"));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(TensorError::Npy(format!("unsupported .npy format version {v}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad("header has no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order").ok_or_else(|| bad("header has no 'fortran_order'"))?;
    if fortran.starts_with("True") {
        return Err(bad(
            "Fortran-order arrays are not supported; save with np.ascontiguousarray(a)",
        ));
    }
    let shape_txt = dict_value(header, "shape").ok_or_else(|| bad("header has no 'shape'"))?;
    let inner = shape_txt
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("malformed 'shape'"))?;
    let mut shape = Vec::new();
    for part in inner.split(',') {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        shape.push(p.parse::<usize>().map_err(|_| bad("malformed 'shape'"))?);
    }
    let data = &bytes[end..];
    let (dtype, f64_data) = match descr {
        "<f4" => (DType::F32, false),
        "<f8" => (DType::F32, true),
        "<f2" => (DType::F16, false),
        "|i1" | "<i1" => (DType::I8, false),
        "|u1" | "<u1" => (DType::U8, false),
        "<i4" => (DType::I32, false),
        "<i8" => (DType::I64, false),
        "|b1" => (DType::Bool, false),
        other => {
            return Err(TensorError::Npy(format!(
                "unsupported element type '{other}' (use float32, float16, int8, uint8, int32, int64 or bool)"
            )))
        }
    };
    if f64_data {
        let expected = checked_bytes(DType::F64, &shape)?;
        if data.len() != expected {
            return Err(TensorError::ByteLengthMismatch {
                dtype: DType::F64,
                shape,
                expected,
                got: data.len(),
            });
        }
        let v: Vec<f32> = data
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })
            .collect();
        return Tensor::from_vec(shape, v);
    }
    Tensor::from_le_bytes(dtype, shape, data)
}

/// The text after `'key':` in a Python dict literal, up to the end.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat1 = format!("'{key}':");
    let pat2 = format!("\"{key}\":");
    let pos = header
        .find(&pat1)
        .map(|p| p + pat1.len())
        .or_else(|| header.find(&pat2).map(|p| p + pat2.len()))?;
    let rest = header[pos..].trim_start();
    if rest.starts_with('(') {
        return Some(rest);
    }
    Some(rest.split(',').next().unwrap_or(rest).trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_f32_matrix() {
        let vals = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = read_npy(&npy("<f4", "(2, 3)", &data)).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.as_f32().unwrap(), &vals);
    }

    #[test]
    fn reads_f64_vector_and_scalar() {
        let data: Vec<u8> = [0.5f64, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = read_npy(&npy("<f8", "(2,)", &data)).unwrap();
        assert_eq!(t.as_f32().unwrap(), &[0.5, -1.0]);
        let s = read_npy(&npy("<i8", "()", &7i64.to_le_bytes())).unwrap();
        assert_eq!(s.shape(), &[] as &[usize]);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(read_npy(b"hello world").is_err());
        let e = read_npy(&npy("<f4", "(2, 3)", &[0u8; 8])).unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
        let e = read_npy(&npy("<c8", "(1,)", &[0u8; 8])).unwrap_err();
        assert!(e.to_string().contains("unsupported"), "{e}");
    }

    #[test]
    fn shapes_that_overflow_are_refused() {
        // (2^63, 64) elements wrap to 0 in a plain product: the empty data must not pass.
        let e = read_npy(&npy("<f4", "(9223372036854775808, 64)", &[])).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let e = read_npy(&npy("<f8", "(4611686018427387904, 4)", &[])).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let e = read_npy(&npy("<f4", "(4611686018427387904, 256)", &[0u8; 4])).unwrap_err();
        assert!(!e.to_string().contains("needs 0 bytes"), "{e}");
    }
}
