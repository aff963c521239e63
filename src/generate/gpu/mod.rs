//! The llama-family decoder on a wgpu device: weights uploaded once in their
//! stored formats (GGUF blocks stay packed), the KV cache in device buffers
//! across calls, and one command submission per forward pass (per
//! [`GpuDecoder::batch`] rows) holding every dispatch of every layer, with
//! only the logits asked for read back.
//!
//! The cache holds [`GpuDecoder::slots`] sequences; one pass runs rows of any
//! of them together ([`GpuDecoder::forward_seqs`]: a decoding step of many
//! sequences reads every weight once), each row attending to its own
//! sequence's positions. As a [`Decoder`] it runs the sequence of slot 0.
//!
//! Passes of three rows or more run the matrix-matrix kernel, one or two
//! rows the matrix-vector kernel. The key and value projections write f32
//! rows that are stored into the cache rows of their slots and positions
//! once biased and rotated. Everything computes in f32; the cache holds f32 or, with
//! [`KvDtype::F16`], f16 values (half the memory: `shaders/kv16.wgsl` packs
//! the new keys and values once biased and rotated, as the CPU cache rounds
//! them).

mod kernels;
mod steps;

use std::sync::Arc;

use wgpu::util::DeviceExt;

pub use kernels::{params_layouts, ParamsLayout, DECODER_WGSL, GGML_WGSL, KV16_WGSL, SHADERS};

use crate::backend::gpu::{AdapterChoice, GpuContext, GpuError};
use crate::error::GenerateError;
use crate::generate::cache::KvDtype;
use crate::generate::{Decoder, DecoderConfig, DecoderWeights, Logits, Matrix};
use kernels::{format_code, Kernels};
use steps::{Buffers, Dims, Shape, Step};

/// Most tokens one submission runs; longer inputs run in several.
const MAX_BATCH: usize = 256;

/// The tokens of one sequence in a [`GpuDecoder::forward_seqs`] pass.
#[derive(Clone, Copy, Debug)]
pub struct GpuSeq<'a> {
    /// The cache slot of the sequence (below [`GpuDecoder::slots`]).
    pub slot: usize,
    /// The position of the first token: the slot's cache holds the
    /// sequence's keys and values before it.
    pub pos0: usize,
    /// Its tokens, at positions `pos0..`.
    pub tokens: &'a [u32],
    /// Which logits to return.
    pub logits: Logits,
}

/// One row of a pass: (slot, position, token, logits read).
type Row = (u32, u32, u32, bool);

/// A decoder with the KV cache of one or more sequences on a GPU.
pub struct GpuDecoder {
    ctx: Arc<GpuContext>,
    config: DecoderConfig,
    context: usize,
    batch: usize,
    slots: usize,
    /// Positions of slot 0 in the cache (the [`Decoder`] sequence).
    cached: usize,
    kernels: Kernels,
    steps: Vec<Step>,
    bufs: Buffers,
    slot_stride: usize,
    kv: KvDtype,
}

impl std::fmt::Debug for GpuDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDecoder")
            .field("adapter", &self.ctx.adapter().name)
            .field("context", &self.context)
            .field("cached", &self.cached)
            .finish()
    }
}

impl GpuDecoder {
    /// Uploads `weights` to the adapter `choice` picks (sharing its device
    /// with other sessions there) and allocates a KV cache of `context`
    /// positions.
    ///
    /// Errors: [`GenerateError::Gpu`] when no adapter matches, a buffer would
    /// exceed the adapter's limits (`GpuError::TooLarge`), or the device runs
    /// out of memory; [`GenerateError::Tensor`] for a weight format the GPU
    /// kernels do not read; [`GenerateError::Config`] for a zero context or a
    /// shape the kernels cannot take.
    pub fn new(weights: &DecoderWeights, context: usize, choice: &AdapterChoice) -> Result<Self, GenerateError> {
        Self::on(GpuContext::shared(choice)?, weights, context)
    }

    /// As [`GpuDecoder::new`], with the cache holding `kv` values. An f16
    /// cache needs an even head dimension ([`GenerateError::Config`]).
    pub fn with_kv_dtype(
        weights: &DecoderWeights,
        context: usize,
        choice: &AdapterChoice,
        kv: KvDtype,
    ) -> Result<Self, GenerateError> {
        Self::with_slots(weights, context, choice, kv, 1)
    }

    /// As [`GpuDecoder::with_kv_dtype`], with a cache of `context` positions
    /// for each of `slots` sequences ([`GpuDecoder::forward_seqs`]). A
    /// cache past one storage binding of the adapter is
    /// [`GpuError::TooLarge`].
    pub fn with_slots(
        weights: &DecoderWeights,
        context: usize,
        choice: &AdapterChoice,
        kv: KvDtype,
        slots: usize,
    ) -> Result<Self, GenerateError> {
        let shape = Shape {
            context,
            batch: MAX_BATCH,
            kv,
            slots,
        };
        Self::build(GpuContext::shared(choice)?, weights, shape)
    }

    /// As [`GpuDecoder::new`], on a context the caller opened.
    pub fn on(ctx: Arc<GpuContext>, weights: &DecoderWeights, context: usize) -> Result<Self, GenerateError> {
        Self::with_batch(ctx, weights, context, MAX_BATCH)
    }

    /// As [`GpuDecoder::on`], running at most `max_batch` tokens per
    /// submission (fewer where the adapter's binding limit requires).
    pub fn with_batch(
        ctx: Arc<GpuContext>,
        weights: &DecoderWeights,
        context: usize,
        max_batch: usize,
    ) -> Result<Self, GenerateError> {
        let shape = Shape {
            context,
            batch: max_batch,
            kv: KvDtype::F32,
            slots: 1,
        };
        Self::build(ctx, weights, shape)
    }

    fn build(ctx: Arc<GpuContext>, weights: &DecoderWeights, shape: Shape) -> Result<Self, GenerateError> {
        let config = weights.config.clone();
        let Shape {
            context,
            batch: max_batch,
            kv,
            slots,
        } = shape;
        check_config(&config, context, kv, slots)?;
        let limits = ctx.limits().clone();
        let binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let widest = [config.d_model, config.q_dim(), config.ffn, config.vocab]
            .into_iter()
            .max()
            .unwrap_or(1) as u64
            * 4;
        let scores = (config.n_heads * context) as u64 * 4;
        let batch = (binding / widest.max(1))
            .min(binding / scores.max(1))
            .min(context.min(max_batch) as u64)
            .max(1) as usize;
        let mut kernels = Kernels::new(&ctx)?;
        let slot_stride = (limits.min_uniform_buffer_offset_alignment as usize).max(64);
        let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let shape = Shape {
            context,
            batch,
            kv,
            slots,
        };
        let built = steps::build(&ctx, &kernels, weights, &shape, slot_stride);
        if let Some(e) = pollster::block_on(oom.pop()) {
            return Err(GpuError::OutOfMemory {
                action: format!("uploading the decoder's weights ({e})"),
            }
            .into());
        }
        let (steps, bufs) = built?;
        for s in &steps {
            for e in s.entries() {
                kernels.prepare(&ctx, e)?;
            }
        }
        Ok(Self {
            ctx,
            config,
            context,
            batch,
            slots,
            cached: 0,
            kernels,
            steps,
            bufs,
            slot_stride,
            kv,
        })
    }

    /// What the KV cache holds.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv
    }

    /// The name of the adapter it runs on.
    pub fn adapter_name(&self) -> String {
        self.ctx.adapter().name.clone()
    }

    /// Most rows one submission runs (a longer input runs in several).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Sequences the cache holds.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Runs the tokens of several sequences, each on its own slot's cache,
    /// in passes of up to [`GpuDecoder::batch`] rows; returns each
    /// sequence's logits as [`GpuSeq::logits`] asks (none for no tokens).
    /// The tokens' keys and values enter the slots' caches; what a slot
    /// held past a sequence's `pos0` is overwritten.
    ///
    /// Errors, before anything runs: [`GenerateError::Config`] for a slot
    /// out of range or a slot given twice, [`GenerateError::Context`] past
    /// the context, [`GenerateError::TokenId`] for a token outside the
    /// vocabulary.
    pub fn forward_seqs(&mut self, seqs: &[GpuSeq<'_>]) -> Result<Vec<Vec<f32>>, GenerateError> {
        let rows = self.rows(seqs)?;
        let mut out = Vec::new();
        for pass in rows.chunks(self.batch) {
            out.extend(self.run(pass)?);
        }
        let vocab = self.config.vocab;
        let mut at = 0;
        Ok(seqs
            .iter()
            .map(|s| {
                let reads = match s.logits {
                    _ if s.tokens.is_empty() => 0,
                    Logits::All => s.tokens.len(),
                    Logits::Last => 1,
                };
                let got = out[at..at + reads * vocab].to_vec();
                at += reads * vocab;
                got
            })
            .collect())
    }

    /// The checked rows of a [`GpuDecoder::forward_seqs`] call.
    fn rows(&self, seqs: &[GpuSeq<'_>]) -> Result<Vec<Row>, GenerateError> {
        let mut used = vec![false; self.slots];
        let mut rows = Vec::new();
        for s in seqs {
            if s.slot >= self.slots || std::mem::replace(&mut used[s.slot], true) {
                return Err(GenerateError::Config {
                    key: "slot".into(),
                    message: format!("slot {} is past the {} slots or given twice", s.slot, self.slots),
                });
            }
            let needed = s.pos0 + s.tokens.len();
            if needed > self.context {
                return Err(GenerateError::Context {
                    needed,
                    context: self.context,
                });
            }
            if let Some(&id) = s.tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
                return Err(GenerateError::TokenId {
                    id,
                    vocab: self.config.vocab,
                });
            }
            let last = s.tokens.len().saturating_sub(1);
            rows.extend(s.tokens.iter().enumerate().map(|(i, &t)| {
                let read = s.logits == Logits::All || i == last;
                (s.slot as u32, (s.pos0 + i) as u32, t, read)
            }));
        }
        Ok(rows)
    }

    /// Encodes and submits one pass over `rows` (at most
    /// [`GpuDecoder::batch`]), reading back the logits of the rows marked
    /// read, in order.
    fn run(&mut self, rows: &[Row]) -> Result<Vec<f32>, GenerateError> {
        let n = rows.len();
        let ctx = &self.ctx;
        ctx.check_lost()?;
        let tokens: Vec<u32> = rows.iter().map(|r| r.2).collect();
        ctx.queue
            .write_buffer(&self.bufs.tokens, 0, bytemuck::cast_slice(&tokens));
        let mut meta = vec![0u32; 2 * self.batch];
        for (t, r) in rows.iter().enumerate() {
            meta[2 * t] = r.0;
            meta[2 * t + 1] = r.1;
        }
        meta.extend((0..n as u32).filter(|&t| rows[t as usize].3));
        let reads = meta.len() - 2 * self.batch;
        ctx.queue.write_buffer(&self.bufs.rows, 0, bytemuck::cast_slice(&meta));
        let mut blob = vec![0u8; self.steps.len() * self.slot_stride];
        let mut list = Vec::with_capacity(self.steps.len());
        let dims = Dims {
            config: &self.config,
            context: self.context,
            batch: self.batch,
            max_dim: ctx.limits().max_compute_workgroups_per_dimension,
        };
        for (i, s) in self.steps.iter().enumerate() {
            if let Some(d) = s.plan(&dims, n, reads) {
                blob[i * self.slot_stride..][..d.params.len()].copy_from_slice(&d.params);
                list.push((i, d.entry, d.groups));
            }
        }
        ctx.queue.write_buffer(&self.bufs.params, 0, &blob);
        let val = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("wginfer decoder"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wginfer decoder"),
                timestamp_writes: None,
            });
            for (i, entry, g) in list {
                let pipeline = self.kernels.get(entry).ok_or_else(|| GpuError::Validation {
                    action: format!("encoding `{}`", self.steps[i].label),
                    message: "its pipeline was not compiled".into(),
                })?;
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &self.steps[i].bind, &[]);
                pass.dispatch_workgroups(g[0], g[1], g[2]);
            }
        }
        let bytes = (reads * self.config.vocab * 4) as u64;
        if bytes > 0 {
            encoder.copy_buffer_to_buffer(&self.bufs.logits, 0, &self.bufs.staging, 0, bytes);
        }
        let index = ctx.queue.submit([encoder.finish()]);
        if let Some(e) = pollster::block_on(val.pop()) {
            return Err(GpuError::Validation {
                action: "the decoder's commands".into(),
                message: e.to_string(),
            }
            .into());
        }
        if bytes == 0 {
            return Ok(Vec::new());
        }
        Ok(self.bufs.read(ctx, bytes, index)?)
    }
}

fn check_config(c: &DecoderConfig, context: usize, kv: KvDtype, slots: usize) -> Result<(), GenerateError> {
    let bad = |key: &str, message: String| {
        Err(GenerateError::Config {
            key: key.to_string(),
            message,
        })
    };
    if context == 0 {
        return bad(
            "context",
            "the GPU decoder needs a context of at least one position".into(),
        );
    }
    if slots == 0 || (slots as u64).saturating_mul(context as u64) * c.kv_dim() as u64 > u64::from(u32::MAX) {
        return bad(
            "slots",
            format!("{slots} slots of {context} positions are past the GPU kernels' 32-bit indexing"),
        );
    }
    if c.n_heads == 0 || c.n_kv_heads == 0 || !c.n_heads.is_multiple_of(c.n_kv_heads) {
        return bad(
            "n_kv_heads",
            format!("{} query heads do not group over {} KV heads", c.n_heads, c.n_kv_heads),
        );
    }
    if c.head_dim == 0 || c.head_dim > 256 {
        return bad(
            "head_dim",
            format!("the GPU attention kernel takes head dims 1..=256, not {}", c.head_dim),
        );
    }
    if kv == KvDtype::F16 && !c.head_dim.is_multiple_of(2) {
        return bad(
            "head_dim",
            format!("the GPU f16 cache packs value pairs: head dim {} is odd", c.head_dim),
        );
    }
    if !c.rope_dims.is_multiple_of(2) || c.rope_dims > c.head_dim {
        return bad(
            "rope_dims",
            format!("{} rotated dimensions do not fit heads of {}", c.rope_dims, c.head_dim),
        );
    }
    let biggest = [c.vocab, c.d_model, c.q_dim(), c.ffn, context]
        .into_iter()
        .max()
        .unwrap_or(0);
    if biggest as u64 * 256 > u64::from(u32::MAX) {
        return bad(
            "vocab",
            format!("a dimension of {biggest} is past the GPU kernels' 32-bit indexing"),
        );
    }
    Ok(())
}

/// Uploads a matrix as it is stored, padded to whole u32 words.
fn upload_matrix(ctx: &GpuContext, name: &str, m: &Matrix) -> Result<(wgpu::Buffer, u32, u32), GenerateError> {
    let format = format_code(m).ok_or_else(|| GenerateError::Tensor {
        name: name.to_string(),
        message: format!("the GPU decoder does not read {} matrices", m.format_name()),
    })?;
    let bytes: &[u8] = match m {
        Matrix::F32 { data, .. } => bytemuck::cast_slice(data),
        Matrix::F16 { data, .. } => bytemuck::cast_slice(data),
        Matrix::Quant(q) => q.data(),
    };
    let row_bytes = bytes.len() / m.rows().max(1);
    let row_bytes = u32::try_from(row_bytes).map_err(|_| GenerateError::Tensor {
        name: name.to_string(),
        message: format!("rows of {row_bytes} bytes are past the GPU kernels' 32-bit indexing"),
    })?;
    let buf = upload(ctx, name, bytes)?;
    Ok((buf, format, row_bytes))
}

/// A storage buffer holding `bytes` (zero-padded to whole words), checked
/// against the adapter's binding limit.
fn upload(ctx: &GpuContext, name: &str, bytes: &[u8]) -> Result<wgpu::Buffer, GpuError> {
    let padded = bytes.len().div_ceil(4).max(1) * 4;
    check_size(ctx, name, padded as u64)?;
    if padded == bytes.len() {
        return Ok(ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(name),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE,
        }));
    }
    let mut v = bytes.to_vec();
    v.resize(padded, 0);
    Ok(ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(name),
        contents: &v,
        usage: wgpu::BufferUsages::STORAGE,
    }))
}

/// Fails with [`GpuError::TooLarge`] when `bytes` do not fit one storage binding.
fn check_size(ctx: &GpuContext, name: &str, bytes: u64) -> Result<(), GpuError> {
    let l = ctx.limits();
    let limit = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
    if bytes > limit {
        return Err(GpuError::TooLarge {
            value: name.to_string(),
            bytes,
            limit,
            adapter: ctx.adapter().name.clone(),
        });
    }
    Ok(())
}

impl Decoder for GpuDecoder {
    fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Runs `tokens` on slot 0 in submissions of up to
    /// [`GpuDecoder::batch`] tokens. No tokens give no logits.
    fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<Vec<f32>, GenerateError> {
        let seq = GpuSeq {
            slot: 0,
            pos0: self.cached,
            tokens,
            logits,
        };
        let out = self.forward_seqs(&[seq])?.pop().unwrap_or_default();
        self.cached += tokens.len();
        Ok(out)
    }

    fn cached(&self) -> usize {
        self.cached
    }

    fn truncate(&mut self, len: usize) {
        self.cached = self.cached.min(len);
    }

    fn context(&self) -> usize {
        self.context
    }
}
