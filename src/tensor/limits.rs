//! Checked sizes and the allocation limit.
//!
//! Every size derived from data a user supplies (a shape in a file, an
//! attribute, a file's length) goes through these functions, so that a shape
//! whose dimensions multiply past `usize::MAX` is an error rather than a
//! small wrapped number, and a tensor or file larger than the allocation
//! limit is an error rather than an abort in the allocator.

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use super::DType;
use crate::error::TensorError;

/// The environment variable that sets the allocation limit in bytes.
pub const MAX_ALLOC_ENV: &str = "WGINFER_MAX_ALLOC_BYTES";

/// The limit where neither the variable nor the machine's memory size is
/// known: 8 GiB.
const FALLBACK_LIMIT: u64 = 8 << 30;

/// The element count of a shape (1 for a scalar), or an error when the
/// dimensions multiply past `usize::MAX`. A shape with a zero dimension has
/// zero elements whatever its other dimensions.
pub fn checked_numel(shape: &[usize]) -> Result<usize, TensorError> {
    if shape.contains(&0) {
        return Ok(0);
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| overflow(shape, "the element count"))
}

/// The byte count of a `dtype` tensor of this shape, checked as
/// [`checked_numel`] is.
pub fn checked_bytes(dtype: DType, shape: &[usize]) -> Result<usize, TensorError> {
    checked_numel(shape)?
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| overflow(shape, "the byte count"))
}

fn overflow(shape: &[usize], what: &'static str) -> TensorError {
    TensorError::Overflow {
        shape: shape.to_vec(),
        what,
        bits: usize::BITS,
    }
}

/// The allocation limit in bytes: `WGINFER_MAX_ALLOC_BYTES` when set to a
/// number, else half of the machine's memory where the system says (Linux's
/// `/proc/meminfo`), else 8 GiB. Read once per process.
pub fn alloc_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(MAX_ALLOC_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .or_else(|| mem_total().map(|b| b / 2))
            .unwrap_or(FALLBACK_LIMIT)
    })
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// An error unless `bytes` is within [`alloc_limit`]; `what` names the
/// allocation in the message.
pub fn check_alloc(what: impl FnOnce() -> String, bytes: u64) -> Result<(), TensorError> {
    let limit = alloc_limit();
    if bytes > limit {
        return Err(TensorError::OverLimit {
            what: what(),
            bytes,
            limit,
        });
    }
    Ok(())
}

/// Reads a whole file that must be a regular file (not a device, FIFO or
/// directory) no larger than [`alloc_limit`]. The read stops at the length
/// the file had when opened, so a file that grows while it is read is
/// refused rather than read without end.
pub fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a device, FIFO or directory cannot be read as data)",
        ));
    }
    let len = meta.len();
    check_alloc(|| format!("file {}", path.display()), len).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file changed size while being read ({len} bytes expected)"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_counts_that_overflow_are_errors() {
        assert_eq!(checked_numel(&[]).unwrap(), 1);
        assert_eq!(checked_numel(&[2, 3, 4]).unwrap(), 24);
        assert_eq!(checked_numel(&[1 << 62, 1 << 62, 0]).unwrap(), 0);
        let e = checked_numel(&[1 << 63, 64]).unwrap_err();
        assert!(e.to_string().contains("element count overflows"), "{e}");
        let e = checked_bytes(DType::F32, &[1 << 61, 4]).unwrap_err();
        assert!(e.to_string().contains("byte count overflows"), "{e}");
        assert_eq!(checked_bytes(DType::F16, &[3, 5]).unwrap(), 30);
    }

    #[test]
    fn devices_are_not_read() {
        let e = read_regular_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let dir = std::env::temp_dir();
        assert!(read_regular_file(&dir).is_err());
    }

    #[test]
    fn regular_files_are_read_whole() {
        let path = std::env::temp_dir().join(format!("wginfer-limits-{}.bin", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(read_regular_file(&path).unwrap(), b"abc");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn over_the_limit_is_an_error() {
        let e = check_alloc(|| "a test tensor".into(), u64::MAX).unwrap_err();
        assert!(e.to_string().contains("a test tensor needs"), "{e}");
        assert!(check_alloc(|| "x".into(), 16).is_ok());
    }
}
