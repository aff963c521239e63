//! The forward pass on the CPU: RMSNorm, RoPE, grouped-query attention over
//! the [`KvCache`], SwiGLU, with the matrix products on packed weights
//! ([`Matrix::matmul`]) and attention parallel over heads.

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::GenerateError;
use crate::generate::cache::KvCache;
use crate::generate::{Decoder, DecoderConfig, DecoderWeights, LayerWeights, Logits, Matrix, RopeLayout};

/// A decoder on the CPU with the KV cache of one sequence.
#[derive(Debug)]
pub struct CpuDecoder {
    weights: Arc<DecoderWeights>,
    cache: KvCache,
    /// RoPE `cos`/`sin` per position and frequency: `[context, rope_dims / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl CpuDecoder {
    /// A decoder over `weights` whose cache holds `context` positions.
    pub fn new(weights: Arc<DecoderWeights>, context: usize) -> Result<Self, GenerateError> {
        crate::generate::load::validate(&weights.config)?;
        let c = &weights.config;
        let cache_bytes = context
            .checked_mul(c.kv_dim())
            .and_then(|n| n.checked_mul(8 * c.n_layers))
            .ok_or(GenerateError::Context {
                needed: context,
                context: 0,
            })?;
        crate::tensor::check_alloc(|| "the KV cache".to_string(), cache_bytes as u64).map_err(|e| {
            GenerateError::Config {
                key: "context".to_string(),
                message: e.to_string(),
            }
        })?;
        let (cos, sin) = c.rope_tables(context);
        let cache = KvCache::new(c.n_layers, context, c.kv_dim());
        Ok(Self {
            weights,
            cache,
            cos,
            sin,
        })
    }

    /// The weights.
    pub fn weights(&self) -> &Arc<DecoderWeights> {
        &self.weights
    }

    /// Bytes the KV cache holds.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }
}

/// `out = x / rms(x) · w` per row of `w.len()` values.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// Rotates every head of `x` (`[tokens, heads · head_dim]`) at positions
/// `start..start + tokens`.
fn rope(x: &mut [f32], c: &DecoderConfig, heads: usize, start: usize, cos: &[f32], sin: &[f32]) {
    let (hd, half) = (c.head_dim, c.rope_dims / 2);
    for (t, row) in x.chunks_exact_mut(heads * hd).enumerate() {
        let (cs, sn) = (&cos[(start + t) * half..][..half], &sin[(start + t) * half..][..half]);
        for head in row.chunks_exact_mut(hd) {
            for i in 0..half {
                let (a, b) = match c.rope_layout {
                    RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cs[i] - x1 * sn[i];
                head[b] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
}

fn add_bias(x: &mut [f32], bias: Option<&Vec<f32>>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            for (v, bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
}

/// Causal grouped-query attention of `q` (`[tokens, q_dim]`, positions
/// `start..`) over the cache's first `start + tokens` positions, into `out`.
fn attention(q: &[f32], cache_k: &[f32], cache_v: &[f32], c: &DecoderConfig, start: usize, out: &mut [f32]) {
    let (hd, kvd, group) = (c.head_dim, c.kv_dim(), c.n_heads / c.n_kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(hd)
        .enumerate()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, (i, o)| {
            let (t, h) = (i / c.n_heads, i % c.n_heads);
            let qh = &q[t * c.q_dim() + h * hd..][..hd];
            let kv_off = (h / group) * hd;
            let len = start + t + 1;
            scores.clear();
            scores.extend((0..len).map(|p| {
                let k = &cache_k[p * kvd + kv_off..][..hd];
                qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
            }));
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            o.fill(0.0);
            for (p, s) in scores.iter().enumerate() {
                let v = &cache_v[p * kvd + kv_off..][..hd];
                let w = s / sum;
                for (oo, vv) in o.iter_mut().zip(v) {
                    *oo += w * vv;
                }
            }
        });
}

fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

fn mm(m: &Matrix, x: &[f32], n: usize) -> Result<Vec<f32>, GenerateError> {
    let mut out = vec![0f32; n * m.rows()];
    m.matmul(x, n, &mut out)?;
    Ok(out)
}

impl CpuDecoder {
    fn layer(&mut self, li: usize, x: &mut [f32], n: usize, start: usize) -> Result<(), GenerateError> {
        let w: &LayerWeights = &self.weights.layers[li];
        let c = &self.weights.config;
        let mut h = vec![0f32; x.len()];
        rms_norm(x, &w.attn_norm, c.norm_eps, &mut h);
        let mut q = mm(&w.wq, &h, n)?;
        let mut k = mm(&w.wk, &h, n)?;
        let mut v = mm(&w.wv, &h, n)?;
        add_bias(&mut q, w.bq.as_ref());
        add_bias(&mut k, w.bk.as_ref());
        add_bias(&mut v, w.bv.as_ref());
        rope(&mut q, c, c.n_heads, start, &self.cos, &self.sin);
        rope(&mut k, c, c.n_kv_heads, start, &self.cos, &self.sin);
        let kvd = c.kv_dim();
        self.cache.k[li][start * kvd..(start + n) * kvd].copy_from_slice(&k);
        self.cache.v[li][start * kvd..(start + n) * kvd].copy_from_slice(&v);
        let mut att = vec![0f32; n * c.q_dim()];
        attention(&q, &self.cache.k[li], &self.cache.v[li], c, start, &mut att);
        let o = mm(&w.wo, &att, n)?;
        for (xx, oo) in x.iter_mut().zip(&o) {
            *xx += oo;
        }
        rms_norm(x, &w.ffn_norm, c.norm_eps, &mut h);
        let mut g = mm(&w.w_gate, &h, n)?;
        let u = mm(&w.w_up, &h, n)?;
        silu_mul(&mut g, &u);
        let dn = mm(&w.w_down, &g, n)?;
        for (xx, dd) in x.iter_mut().zip(&dn) {
            *xx += dd;
        }
        Ok(())
    }
}

/// Checks that `tokens` are in the vocabulary and fit the cache after `cached` positions.
pub fn check_tokens(tokens: &[u32], cached: usize, context: usize, vocab: usize) -> Result<(), GenerateError> {
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(GenerateError::TokenId { id, vocab });
    }
    let needed = cached.saturating_add(tokens.len());
    if needed > context {
        return Err(GenerateError::Context { needed, context });
    }
    Ok(())
}

impl Decoder for CpuDecoder {
    fn config(&self) -> &DecoderConfig {
        &self.weights.config
    }

    fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<Vec<f32>, GenerateError> {
        let c = self.weights.config.clone();
        let start = self.cache.len;
        check_tokens(tokens, start, self.cache.context, c.vocab)?;
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let d = c.d_model;
        let mut x = vec![0f32; n * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            self.weights.embed.dequantize_row(t as usize, row);
        }
        for li in 0..c.n_layers {
            self.layer(li, &mut x, n, start)?;
        }
        self.cache.len = start + n;
        let rows = match logits {
            Logits::Last => &x[(n - 1) * d..],
            Logits::All => &x[..],
        };
        let m = rows.len() / d;
        let mut h = vec![0f32; rows.len()];
        rms_norm(rows, &self.weights.norm, c.norm_eps, &mut h);
        mm(self.weights.head(), &h, m)
    }

    fn cached(&self) -> usize {
        self.cache.len
    }

    fn truncate(&mut self, len: usize) {
        self.cache.len = self.cache.len.min(len);
    }

    fn context(&self) -> usize {
        self.cache.context
    }
}
