//! The CPU key/value cache of one sequence, in f32 or f16.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// How cached keys and values are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// 4 bytes per value: exactly what the layer computed.
    #[default]
    F32,
    /// 2 bytes per value (half the memory; values rounded to f16, as
    /// llama.cpp's default cache does).
    F16,
}

impl KvDtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            other => Err(format!("KV-cache type `{other}` is not known; use f32 or f16")),
        }
    }
}

/// The keys (or values) of one layer: `[positions, kv_dim]`.
#[derive(Clone, Debug)]
pub enum KvBuf {
    /// f32 storage.
    F32(Vec<f32>),
    /// f16 storage.
    F16(Vec<f16>),
}

impl KvBuf {
    fn new(dtype: KvDtype, len: usize) -> Self {
        match dtype {
            KvDtype::F32 => KvBuf::F32(vec![0.0; len]),
            KvDtype::F16 => KvBuf::F16(vec![f16::ZERO; len]),
        }
    }

    /// Stores `src` at value offset `at`.
    pub fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvBuf::F32(d) => d[at..at + src.len()].copy_from_slice(src),
            KvBuf::F16(d) => d[at..at + src.len()].convert_from_f32_slice(src),
        }
    }

    /// The `len` values at offset `at` as f32: a view of f32 storage, or
    /// `scratch` filled from f16 storage.
    pub fn read<'a>(&'a self, at: usize, len: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        match self {
            KvBuf::F32(d) => &d[at..at + len],
            KvBuf::F16(d) => {
                scratch.resize(len, 0.0);
                d[at..at + len].convert_to_f32_slice(scratch);
                scratch
            }
        }
    }
}

/// Keys and values of every cached position, per layer: `[context, kv_dim]`
/// each, filled up to `len`.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Keys per layer.
    pub k: Vec<KvBuf>,
    /// Values per layer.
    pub v: Vec<KvBuf>,
    /// Positions filled.
    pub len: usize,
    /// Positions it can hold.
    pub context: usize,
    /// Values per position.
    pub kv_dim: usize,
    /// How values are stored.
    pub dtype: KvDtype,
}

impl KvCache {
    /// An empty cache of `context` positions for `layers` layers.
    pub fn new(layers: usize, context: usize, kv_dim: usize, dtype: KvDtype) -> Self {
        Self {
            k: (0..layers).map(|_| KvBuf::new(dtype, context * kv_dim)).collect(),
            v: (0..layers).map(|_| KvBuf::new(dtype, context * kv_dim)).collect(),
            len: 0,
            context,
            kv_dim,
            dtype,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.context * self.kv_dim * self.dtype.size()
    }
}
