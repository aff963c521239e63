//! The forward pass on the CPU: RMSNorm, RoPE, grouped-query attention over
//! the [`KvCache`], SwiGLU, with the matrix products on packed weights
//! ([`Matrix::matmul`]) and attention parallel over rows and heads.
//!
//! [`CpuModel`] runs one pass over the tokens of several sequences, each
//! with its own cache (batched decoding: every weight is read once for all
//! of them); [`CpuDecoder`] is that model with the cache of one sequence.

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::GenerateError;
use crate::generate::cache::{KvBuf, KvCache, KvDtype};
use crate::generate::weights::PROMPT_MIN_TOKENS;
use crate::generate::{Decoder, DecoderConfig, DecoderWeights, LayerWeights, Logits, Matrix, RopeLayout};
use crate::linalg::ggml::{quantize_acts16, Kernel, QActs16, QMatrix};

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

/// Causal grouped-query attention of `q` (`[rows, q_dim]`) over each
/// sequence's cache (`caches[s]`: keys and values, filled through the
/// segment's last position), into `out`; parallel over rows and key/value
/// heads, each task running the query heads that share that key/value head
/// (so the cache is read once per group, not once per query head).
fn attention(q: &[f32], caches: &[(&KvBuf, &KvBuf)], segs: &[Segment], c: &DecoderConfig, out: &mut [f32]) {
    let (hd, kvd, group) = (c.head_dim, c.kv_dim(), c.n_heads / c.n_kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut row_seq = Vec::with_capacity(q.len() / c.q_dim());
    for (s, g) in segs.iter().enumerate() {
        row_seq.extend((0..g.n).map(|t| (s, g.start + t)));
    }
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    // The query heads of key/value head `kh` are `kh·group..(kh + 1)·group`:
    // one run of `group · hd` values of a row.
    out.par_chunks_mut(group * hd).enumerate().for_each_init(
        Default::default,
        |(scores, scratch): &mut (Vec<f32>, Vec<f32>), (i, o)| {
            let (r, kh) = (i / c.n_kv_heads, i % c.n_kv_heads);
            let (s, pos) = row_seq[r];
            let qg = &q[r * c.q_dim() + kh * group * hd..][..group * hd];
            let head = Group {
                kv: caches[s],
                kv_off: kh * hd,
                hd,
                kvd,
                len: pos + 1,
                scale,
            };
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has the features `attend_avx2` is compiled for.
                return unsafe { attend_avx2(qg, &head, scores, scratch, o) };
            }
            attend(qg, &head, scores, scratch, o)
        },
    );
}

/// One key/value head of a sequence's cache as a group of query heads sees
/// it: the keys and values (`kv`), where the head's `hd` values sit in a
/// position's `kvd`, how many positions the queries attend to, and the
/// score scale.
struct Group<'a> {
    kv: (&'a KvBuf, &'a KvBuf),
    kv_off: usize,
    hd: usize,
    kvd: usize,
    len: usize,
    scale: f32,
}

/// [`attend`] on AVX2 registers: the same operations in the same order (no
/// product fused with its sum), so the numbers do not change; 16 output
/// values of up to four heads stay in registers over the positions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(qg: &[f32], h: &Group<'_>, scores: &mut Vec<f32>, scratch: &mut Vec<f32>, o: &mut [f32]) {
    use std::arch::x86_64::*;
    let ((cache_k, cache_v), len, hd) = (h.kv, h.len, h.hd);
    if !hd.is_multiple_of(16) {
        return attend(qg, h, scores, scratch, o);
    }
    let heads = qg.len() / hd;
    scores.clear();
    scores.resize(heads * len, 0.0);
    // The head's keys and values of a position a few ahead, fetched while
    // this one's are read (the rows are `kvd` apart, the head a part of
    // each, which the hardware prefetchers follow poorly).
    const AHEAD: usize = 6;
    let bytes = hd * cache_k.value_bytes();
    for p in 0..len {
        let ahead = (p + AHEAD) * h.kvd + h.kv_off;
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(cache_k.addr(ahead).wrapping_add(line).cast());
            _mm_prefetch::<_MM_HINT_T0>(cache_v.addr(ahead).wrapping_add(line).cast());
        }
        let k = cache_k.read(p * h.kvd + h.kv_off, hd, scratch);
        for (j, qh) in qg.chunks_exact(hd).enumerate() {
            let mut acc = _mm256_setzero_ps();
            for (x, y) in qh.chunks_exact(8).zip(k.chunks_exact(8)) {
                // SAFETY: both chunks hold 8 f32; `loadu` needs no alignment.
                let (x, y) = unsafe { (_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr())) };
                acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
            }
            // The lanes summed in order, as `dot` does.
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 f32; `storeu` needs no alignment.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
            scores[j * len + p] = lanes.iter().sum::<f32>() * h.scale;
        }
    }
    softmax_rows(scores, len);
    /// `Σ_p w_j[p] · v_p[..16]` for `H` heads (`w_j` at `scores[j·len..]`
    /// from head `j0`), the sums in registers.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn weigh<const H: usize>(
        scores: &[f32],
        (len, j0): (usize, usize),
        mut v: impl FnMut(usize) -> *const f32,
    ) -> [[__m256; 2]; H] {
        assert!(scores.len() >= (j0 + H) * len);
        let mut acc = [[_mm256_setzero_ps(); 2]; H];
        for p in 0..len {
            let at = v(p);
            // SAFETY: `v(p)` points at 16 readable f32 (a slice of that
            // length, read before the next call).
            let (v0, v1) = unsafe { (_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8))) };
            for (j, a) in acc.iter_mut().enumerate() {
                let w = _mm256_set1_ps(scores[(j0 + j) * len + p]);
                a[0] = _mm256_add_ps(a[0], _mm256_mul_ps(w, v0));
                a[1] = _mm256_add_ps(a[1], _mm256_mul_ps(w, v1));
            }
        }
        acc
    }
    for c in 0..hd / 16 {
        let at = h.kv_off + c * 16;
        let mut j0 = 0;
        while j0 < heads {
            let v = |p: usize| cache_v.read(p * h.kvd + at, 16, scratch).as_ptr();
            let mut store = |acc: &[[__m256; 2]]| {
                for (j, a) in acc.iter().enumerate() {
                    let out = &mut o[(j0 + j) * hd + c * 16..][..16];
                    // SAFETY: `out` holds 16 writable f32.
                    unsafe {
                        _mm256_storeu_ps(out.as_mut_ptr(), a[0]);
                        _mm256_storeu_ps(out.as_mut_ptr().add(8), a[1]);
                    }
                }
                acc.len()
            };
            j0 += match heads - j0 {
                1 => store(&weigh::<1>(scores, (len, j0), v)),
                2 => store(&weigh::<2>(scores, (len, j0), v)),
                3 => store(&weigh::<3>(scores, (len, j0), v)),
                _ => store(&weigh::<4>(scores, (len, j0), v)),
            };
        }
    }
}

/// Each run of `len` scores replaced by its softmax.
#[inline(always)]
fn softmax_rows(scores: &mut [f32], len: usize) {
    for s in scores.chunks_exact_mut(len) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in s.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in s.iter_mut() {
            *v /= sum;
        }
    }
}

/// The attention of the query heads `qg` (`[group, head_dim]`) over one
/// key/value head into `o` (the same shape). Each head's scores, softmax
/// and sum run in the same order as for that head alone.
fn attend(qg: &[f32], h: &Group<'_>, scores: &mut Vec<f32>, scratch: &mut Vec<f32>, o: &mut [f32]) {
    let ((cache_k, cache_v), len, hd) = (h.kv, h.len, h.hd);
    let heads = qg.len() / hd;
    scores.clear();
    scores.resize(heads * len, 0.0);
    for p in 0..len {
        let k = cache_k.read(p * h.kvd + h.kv_off, hd, scratch);
        for (j, qh) in qg.chunks_exact(hd).enumerate() {
            scores[j * len + p] = dot(qh, k) * h.scale;
        }
    }
    softmax_rows(scores, len);
    o.fill(0.0);
    for p in 0..len {
        let v = cache_v.read(p * h.kvd + h.kv_off, hd, scratch);
        for (j, oh) in o.chunks_exact_mut(hd).enumerate() {
            let w = scores[j * len + p];
            for (oo, vv) in oh.iter_mut().zip(v) {
                *oo += w * vv;
            }
        }
    }
}

/// `Σ a·b` in eight interleaved partial sums (so it vectorizes).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = [0f32; 8];
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// How the matrix products of a pass treat their rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowMode {
    /// By row count: prompts (from [`PROMPT_MIN_TOKENS`] rows) through f32
    /// GEMM on the dequantized weights, fewer rows as [`Independent`](Self::Independent).
    Auto,
    /// Every row through 16-bit activations on packed weights (the panels
    /// of [`QMatrix::panels`] for the 32-weight formats, the packed rows for
    /// the k-quants; f32 GEMM on f32/f16 weights), so each row's result does
    /// not depend on the other rows of the pass: batched decoding gives
    /// every sequence the numbers it gets alone.
    Independent,
}

/// Whether a pass in `mode` of `n` rows takes the products of packed
/// weights with 16-bit activations.
fn int16(mode: RowMode, n: usize) -> bool {
    mode == RowMode::Independent || n < PROMPT_MIN_TOKENS
}

/// The product of packed weights with 16-bit activations: on the panels
/// where the format has them, else on the packed rows.
fn quant16(q: &QMatrix, acts: &QActs16, out: &mut [f32]) {
    match q.panels() {
        Some(p) => p.matmul_acts16(Kernel::best(), acts, out),
        None => q.matmul_acts16(Kernel::best(), acts, out),
    }
}

/// `out` sized to `len` values, which the caller overwrites every one of:
/// a buffer of the right size is left as it is (no zeroing per layer).
fn sized(out: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if out.len() != len {
        out.clear();
        out.resize(len, 0.0);
    }
    out
}

/// The product of `m` with the `n` rows of `x` into `out` (resized to
/// `n × rows`), quantizing `x` into `acts` where `mode` takes 16-bit
/// activations.
fn mm_into(
    m: &Matrix,
    x: &[f32],
    n: usize,
    mode: RowMode,
    acts: &mut QActs16,
    out: &mut Vec<f32>,
) -> Result<(), GenerateError> {
    let out = sized(out, n * m.rows());
    match m {
        Matrix::Quant(q) if int16(mode, n) => {
            quantize_acts16(x, n, q.cols(), acts);
            quant16(q, acts, out);
        }
        _ => m.matmul(x, n, out)?,
    }
    Ok(())
}

fn mm(m: &Matrix, x: &[f32], n: usize, mode: RowMode) -> Result<Vec<f32>, GenerateError> {
    let mut out = Vec::new();
    mm_into(m, x, n, mode, &mut QActs16::default(), &mut out)?;
    Ok(out)
}

/// The products of several matrices with the same input `x` into `outs`:
/// the input quantized once where every product takes 16-bit activations
/// (packed weights, and rows that `mode` sends to 16-bit activations).
fn mm_shared<const K: usize>(
    ms: [&Matrix; K],
    x: &[f32],
    n: usize,
    mode: RowMode,
    acts: &mut QActs16,
    outs: [&mut Vec<f32>; K],
) -> Result<(), GenerateError> {
    let int16 = int16(mode, n);
    let quants: Vec<&QMatrix> = ms
        .iter()
        .filter_map(|m| match m {
            Matrix::Quant(q) if int16 => Some(q),
            _ => None,
        })
        .collect();
    if quants.len() < K {
        for (o, m) in outs.into_iter().zip(ms) {
            mm_into(m, x, n, mode, acts, o)?;
        }
        return Ok(());
    }
    quantize_acts16(x, n, quants[0].cols(), acts);
    for (q, o) in quants.into_iter().zip(outs) {
        quant16(q, acts, sized(o, n * q.rows()));
    }
    Ok(())
}

/// The buffers of a pass's layers, reused from layer to layer.
#[derive(Default)]
struct Scratch {
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    dn: Vec<f32>,
    acts: QActs16,
}

/// The input of a layer's matrices, as [`CpuModel::layer_pass`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerInput {
    /// The attention norm's output: the input of Q, K and V (`d_model` wide).
    Attention,
    /// The attention's output: the input of the output projection (`q_dim`).
    AttentionOutput,
    /// The feed-forward norm's output: the input of gate and up (`d_model`).
    FeedForward,
    /// `silu(gate)·up`: the input of down (`ffn`).
    FeedForwardHidden,
}

/// Sees each [`LayerInput`] of a layer as it is computed (rows of one width).
pub type LayerObserver<'a> = &'a mut (dyn FnMut(LayerInput, &[f32]) + Send);

/// The tokens of one sequence in a forward pass, with its cache.
#[derive(Debug)]
pub struct SeqTokens<'a> {
    /// The sequence's keys and values; the tokens go at positions
    /// `cache.len..`.
    pub cache: &'a mut KvCache,
    /// Its tokens in this pass.
    pub tokens: &'a [u32],
    /// The logits it wants back.
    pub logits: Logits,
}

/// Where each sequence's rows are in a pass: first row, row count, first
/// position.
#[derive(Clone, Copy, Debug)]
struct Segment {
    row0: usize,
    n: usize,
    start: usize,
}

/// The weights and RoPE tables of a decoder on the CPU. It runs forward
/// passes over caches it does not own, one sequence or many at once.
#[derive(Debug)]
pub struct CpuModel {
    weights: Arc<DecoderWeights>,
    context: usize,
    kv_dtype: KvDtype,
    /// RoPE `cos`/`sin` per position and frequency: `[context, rope_dims / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl CpuModel {
    /// A model over `weights` for sequences of up to `context` positions.
    pub fn new(weights: Arc<DecoderWeights>, context: usize) -> Result<Self, GenerateError> {
        crate::generate::load::validate(&weights.config)?;
        let (cos, sin) = weights.config.rope_tables(context);
        Ok(Self {
            weights,
            context,
            kv_dtype: KvDtype::F32,
            cos,
            sin,
        })
    }

    /// Repacks every packed matrix of a 32-weight format in panels
    /// ([`QMatrix::panels`]) now, in parallel, rather than at the first
    /// pass that needs it (each decoding product takes the panels; the
    /// memory of those weights once more). Returns the panels' bytes.
    pub fn pack_panels(&self) -> usize {
        let w = &self.weights;
        let mut ms: Vec<&Matrix> = w
            .layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .collect();
        ms.push(w.head());
        ms.par_iter()
            .map(|m| match m {
                Matrix::Quant(q) => q.panels().map_or(0, |p| p.bytes()),
                _ => 0,
            })
            .sum()
    }

    /// The model with caches of `dtype` (f32 by default).
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> Self {
        self.kv_dtype = dtype;
        self
    }

    /// How its caches store keys and values.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// The weights.
    pub fn weights(&self) -> &Arc<DecoderWeights> {
        &self.weights
    }

    /// The longest sequence it runs.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Bytes the cache of `positions` positions takes.
    pub fn cache_bytes(&self, positions: usize) -> Option<usize> {
        let c = &self.weights.config;
        positions
            .checked_mul(c.kv_dim())?
            .checked_mul(2 * self.kv_dtype.size() * c.n_layers)
    }

    /// An empty cache for `positions` positions (at most the context),
    /// refused when the machine cannot hold it.
    pub fn new_cache(&self, positions: usize) -> Result<KvCache, GenerateError> {
        let positions = positions.min(self.context);
        let bytes = self.cache_bytes(positions).ok_or(GenerateError::Context {
            needed: positions,
            context: 0,
        })?;
        crate::tensor::check_alloc(|| "the KV cache".to_string(), bytes as u64).map_err(|e| GenerateError::Config {
            key: "context".to_string(),
            message: e.to_string(),
        })?;
        let c = &self.weights.config;
        Ok(KvCache::new(c.n_layers, positions, c.kv_dim(), self.kv_dtype))
    }

    /// Runs every sequence's tokens, appends their keys and values to their
    /// caches, and returns each sequence's logits (as [`Decoder::forward`]
    /// does for one). Nothing is cached when an error is returned.
    ///
    /// The pass runs on a rayon worker thread, so its many parallel loops
    /// are scheduled inside the pool rather than each injected from outside
    /// (a cross-thread hand-off per loop).
    pub fn forward(&self, seqs: &mut [SeqTokens<'_>], mode: RowMode) -> Result<Vec<Vec<f32>>, GenerateError> {
        rayon::scope(|_| self.forward_on_pool(seqs, mode))
    }

    fn forward_on_pool(&self, seqs: &mut [SeqTokens<'_>], mode: RowMode) -> Result<Vec<Vec<f32>>, GenerateError> {
        let c = &self.weights.config;
        let mut segs = Vec::with_capacity(seqs.len());
        let mut row0 = 0;
        for s in seqs.iter() {
            check_tokens(s.tokens, s.cache.len, s.cache.context.min(self.context), c.vocab)?;
            segs.push(Segment {
                row0,
                n: s.tokens.len(),
                start: s.cache.len,
            });
            row0 += s.tokens.len();
        }
        let (n, d) = (row0, c.d_model);
        if n == 0 {
            return Ok(vec![Vec::new(); seqs.len()]);
        }
        let mut x = vec![0f32; n * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(seqs.iter().flat_map(|s| s.tokens)) {
            self.weights.embed.dequantize_row(t as usize, row);
        }
        let mut scratch = Scratch::default();
        for (li, w) in self.weights.layers.iter().enumerate() {
            self.layer((li, w), &mut x, (seqs, &segs), mode, &mut scratch, None)?;
        }
        for (s, g) in seqs.iter_mut().zip(&segs) {
            s.cache.len = g.start + g.n;
        }
        self.head(&x, seqs, &segs, mode)
    }

    /// The final norm and output head on the rows each sequence wants.
    fn head(
        &self,
        x: &[f32],
        seqs: &[SeqTokens<'_>],
        segs: &[Segment],
        mode: RowMode,
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        let (c, d) = (&self.weights.config, self.weights.config.d_model);
        let picked: Vec<(usize, usize)> = seqs
            .iter()
            .zip(segs)
            .map(|(s, g)| match s.logits {
                Logits::Last if g.n > 0 => (g.row0 + g.n - 1, 1),
                Logits::Last => (g.row0, 0),
                Logits::All => (g.row0, g.n),
            })
            .collect();
        let rows: Vec<f32> = picked
            .iter()
            .flat_map(|&(r, m)| &x[r * d..(r + m) * d])
            .copied()
            .collect();
        let m = rows.len() / d;
        let mut h = vec![0f32; rows.len()];
        rms_norm(&rows, &self.weights.norm, c.norm_eps, &mut h);
        let logits = mm(self.weights.head(), &h, m, mode)?;
        let mut out = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for &(_, m) in &picked {
            out.push(logits[at * c.vocab..(at + m) * c.vocab].to_vec());
            at += m;
        }
        Ok(out)
    }

    /// Runs layer `li` with the weights `w` (this model's shapes, in any
    /// formats) over `x` (`[n, d_model]`, the layer's input, replaced by its
    /// output): the tokens of one sequence at positions `cache.len..`, whose
    /// keys and values go to the cache's layer `li` (`cache.len` is left for
    /// the caller to advance once every layer has run). `observe` sees the
    /// input of each of the layer's matrices (calibration).
    pub fn layer_pass(
        &self,
        li: usize,
        w: &LayerWeights,
        x: &mut [f32],
        cache: &mut KvCache,
        observe: LayerObserver<'_>,
    ) -> Result<(), GenerateError> {
        let c = &self.weights.config;
        let n = x.len() / c.d_model.max(1);
        let shape_error = |message: String| GenerateError::Tensor {
            name: format!("blk.{li}"),
            message,
        };
        if li >= c.n_layers || li >= cache.k.len() || x.len() != n * c.d_model {
            return Err(shape_error(format!(
                "layer {li} of {} over {} values, not rows of {}",
                c.n_layers,
                x.len(),
                c.d_model
            )));
        }
        let shapes = [
            (&w.wq, c.q_dim(), c.d_model),
            (&w.wk, c.kv_dim(), c.d_model),
            (&w.wv, c.kv_dim(), c.d_model),
            (&w.wo, c.d_model, c.q_dim()),
            (&w.w_gate, c.ffn, c.d_model),
            (&w.w_up, c.ffn, c.d_model),
            (&w.w_down, c.d_model, c.ffn),
        ];
        let norms = w.attn_norm.len() == c.d_model && w.ffn_norm.len() == c.d_model;
        if !norms || shapes.iter().any(|(m, r, k)| m.rows() != *r || m.cols() != *k) {
            return Err(shape_error("the weights do not have the model's shapes".to_string()));
        }
        let start = cache.len;
        check_tokens(&[], start + n, cache.context.min(self.context), c.vocab)?;
        let segs = [Segment { row0: 0, n, start }];
        let mut seqs = [SeqTokens {
            cache,
            tokens: &[],
            logits: Logits::Last,
        }];
        rayon::scope(|_| {
            self.layer(
                (li, w),
                x,
                (&mut seqs, &segs),
                RowMode::Auto,
                &mut Scratch::default(),
                Some(observe),
            )
        })
    }

    fn layer(
        &self,
        (li, w): (usize, &LayerWeights),
        x: &mut [f32],
        (seqs, segs): (&mut [SeqTokens<'_>], &[Segment]),
        mode: RowMode,
        scratch: &mut Scratch,
        mut observe: Option<LayerObserver<'_>>,
    ) -> Result<(), GenerateError> {
        let mut seen = |at: LayerInput, v: &[f32]| {
            if let Some(f) = observe.as_mut() {
                f(at, v);
            }
        };
        let c = &self.weights.config;
        let n = x.len() / c.d_model;
        let Scratch {
            h,
            q,
            k,
            v,
            att,
            o,
            g,
            u,
            dn,
            acts,
        } = scratch;
        rms_norm(x, &w.attn_norm, c.norm_eps, sized(h, x.len()));
        seen(LayerInput::Attention, h);
        mm_shared([&w.wq, &w.wk, &w.wv], h, n, mode, acts, [&mut *q, &mut *k, &mut *v])?;
        add_bias(v, w.bv.as_ref());
        add_bias(q, w.bq.as_ref());
        add_bias(k, w.bk.as_ref());
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        for (s, g) in seqs.iter_mut().zip(segs) {
            let (r0, r1) = (g.row0, g.row0 + g.n);
            rope(&mut q[r0 * qd..r1 * qd], c, c.n_heads, g.start, &self.cos, &self.sin);
            rope(
                &mut k[r0 * kvd..r1 * kvd],
                c,
                c.n_kv_heads,
                g.start,
                &self.cos,
                &self.sin,
            );
            s.cache.k[li].write(g.start * kvd, &k[r0 * kvd..r1 * kvd]);
            s.cache.v[li].write(g.start * kvd, &v[r0 * kvd..r1 * kvd]);
        }
        let caches: Vec<(&KvBuf, &KvBuf)> = seqs.iter().map(|s| (&s.cache.k[li], &s.cache.v[li])).collect();
        attention(q, &caches, segs, c, sized(att, n * qd));
        seen(LayerInput::AttentionOutput, att);
        mm_into(&w.wo, att, n, mode, acts, o)?;
        for (xx, oo) in x.iter_mut().zip(o.iter()) {
            *xx += oo;
        }
        rms_norm(x, &w.ffn_norm, c.norm_eps, h);
        seen(LayerInput::FeedForward, h);
        mm_shared([&w.w_gate, &w.w_up], h, n, mode, acts, [&mut *g, &mut *u])?;
        silu_mul(g, u);
        seen(LayerInput::FeedForwardHidden, g);
        mm_into(&w.w_down, g, n, mode, acts, dn)?;
        for (xx, dd) in x.iter_mut().zip(dn.iter()) {
            *xx += dd;
        }
        Ok(())
    }
}

/// A decoder on the CPU with the KV cache of one sequence.
#[derive(Debug)]
pub struct CpuDecoder {
    model: CpuModel,
    cache: KvCache,
}

impl CpuDecoder {
    /// A decoder over `weights` whose cache holds `context` positions.
    pub fn new(weights: Arc<DecoderWeights>, context: usize) -> Result<Self, GenerateError> {
        Self::with_kv_dtype(weights, context, KvDtype::F32)
    }

    /// A decoder whose cache stores keys and values as `dtype`.
    pub fn with_kv_dtype(weights: Arc<DecoderWeights>, context: usize, dtype: KvDtype) -> Result<Self, GenerateError> {
        let model = CpuModel::new(weights, context)?.with_kv_dtype(dtype);
        let cache = model.new_cache(context)?;
        Ok(Self { model, cache })
    }

    /// The weights.
    pub fn weights(&self) -> &Arc<DecoderWeights> {
        self.model.weights()
    }

    /// Bytes the KV cache holds.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
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
        &self.model.weights.config
    }

    fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<Vec<f32>, GenerateError> {
        let mut seq = [SeqTokens {
            cache: &mut self.cache,
            tokens,
            logits,
        }];
        let mut out = self.model.forward(&mut seq, RowMode::Auto)?;
        Ok(out.pop().unwrap_or_default())
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
