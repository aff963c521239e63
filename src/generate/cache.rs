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

    /// Bytes per value.
    pub fn value_bytes(&self) -> usize {
        match self {
            KvBuf::F32(_) => 4,
            KvBuf::F16(_) => 2,
        }
    }

    /// The address of the value at offset `at` (wrapping: for prefetching,
    /// which never faults, so it may point past the end).
    pub fn addr(&self, at: usize) -> *const u8 {
        match self {
            KvBuf::F32(d) => d.as_ptr().wrapping_add(at).cast(),
            KvBuf::F16(d) => d.as_ptr().wrapping_add(at).cast(),
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

impl KvBuf {
    /// Keeps the first `len` values and frees the rest.
    fn truncate(&mut self, len: usize) {
        match self {
            KvBuf::F32(d) => {
                d.truncate(len);
                d.shrink_to_fit();
            }
            KvBuf::F16(d) => {
                d.truncate(len);
                d.shrink_to_fit();
            }
        }
    }

    /// Copies the first `len` values of `src`; false when the storage types
    /// differ or either holds fewer.
    fn copy_prefix(&mut self, src: &KvBuf, len: usize) -> bool {
        match (self, src) {
            (KvBuf::F32(d), KvBuf::F32(s)) if d.len() >= len && s.len() >= len => {
                d[..len].copy_from_slice(&s[..len]);
                true
            }
            (KvBuf::F16(d), KvBuf::F16(s)) if d.len() >= len && s.len() >= len => {
                d[..len].copy_from_slice(&s[..len]);
                true
            }
            _ => false,
        }
    }
}

impl KvCache {
    /// Frees the room past the filled positions: the cache then holds (and
    /// its [`KvCache::bytes`] counts) `len` positions.
    pub fn shrink_to_len(&mut self) {
        let keep = self.len * self.kv_dim;
        for b in self.k.iter_mut().chain(self.v.iter_mut()) {
            b.truncate(keep);
        }
        self.context = self.len;
    }

    /// Takes the first `n` positions of `src` (a cache of the same model and
    /// storage type) as this cache's content: `len` becomes `n`. False (and
    /// `len` unchanged) when the shapes differ or `n` exceeds `src.len` or
    /// this cache's context.
    pub fn copy_prefix(&mut self, src: &KvCache, n: usize) -> bool {
        let fits = n <= src.len
            && n <= self.context
            && src.kv_dim == self.kv_dim
            && src.dtype == self.dtype
            && src.k.len() == self.k.len();
        if !fits {
            return false;
        }
        let len = n * self.kv_dim;
        let pairs = self.k.iter_mut().zip(&src.k).chain(self.v.iter_mut().zip(&src.v));
        for (d, s) in pairs {
            if !d.copy_prefix(s, len) {
                return false;
            }
        }
        self.len = n;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_prefix_takes_the_first_positions_and_shrink_frees_the_rest() {
        for dtype in [KvDtype::F32, KvDtype::F16] {
            let mut a = KvCache::new(2, 8, 3, dtype);
            for (l, (k, v)) in a.k.iter_mut().zip(a.v.iter_mut()).enumerate() {
                let vals: Vec<f32> = (0..15).map(|i| (i + 100 * l) as f32).collect();
                k.write(0, &vals);
                v.write(0, &vals.iter().map(|x| -x).collect::<Vec<_>>());
            }
            a.len = 5;
            a.shrink_to_len();
            assert_eq!((a.context, a.bytes()), (5, 2 * 2 * 5 * 3 * dtype.size()));
            let mut b = KvCache::new(2, 10, 3, dtype);
            assert!(b.copy_prefix(&a, 4));
            assert_eq!(b.len, 4);
            let mut scratch = Vec::new();
            assert_eq!(b.k[1].read(9, 3, &mut scratch), &[109.0, 110.0, 111.0]);
            assert_eq!(b.v[0].read(0, 3, &mut scratch), &[-0.0, -1.0, -2.0]);
            assert_eq!(b.k[0].read(12, 3, &mut scratch), &[0.0, 0.0, 0.0]);
            assert!(!b.copy_prefix(&a, 6), "past the source's filled positions");
            let mut other = KvCache::new(2, 10, 4, dtype);
            assert!(!other.copy_prefix(&a, 2), "another shape");
            assert_eq!(other.len, 0);
        }
    }
}
