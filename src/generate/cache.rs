//! The CPU key/value cache of one sequence.

/// Keys and values of every cached position, per layer: `[context, kv_dim]`
/// each, filled up to `len`.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Keys per layer.
    pub k: Vec<Vec<f32>>,
    /// Values per layer.
    pub v: Vec<Vec<f32>>,
    /// Positions filled.
    pub len: usize,
    /// Positions it can hold.
    pub context: usize,
    /// Floats per position.
    pub kv_dim: usize,
}

impl KvCache {
    /// An empty cache of `context` positions for `layers` layers.
    pub fn new(layers: usize, context: usize, kv_dim: usize) -> Self {
        Self {
            k: (0..layers).map(|_| vec![0.0; context * kv_dim]).collect(),
            v: (0..layers).map(|_| vec![0.0; context * kv_dim]).collect(),
            len: 0,
            context,
            kv_dim,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.context * self.kv_dim * 4
    }
}
