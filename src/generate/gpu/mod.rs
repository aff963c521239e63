//! The llama-family decoder on a wgpu device: weights uploaded once in their
//! stored formats (GGUF blocks stay packed), the KV cache in device buffers
//! across calls, and one command submission per forward pass (per
//! [`GpuDecoder::batch`] tokens) holding every dispatch of every layer, with
//! only the logits asked for read back.
//!
//! Prompts (several tokens) run the matrix-matrix kernel, decoding steps (one
//! or two tokens) the matrix-vector kernel. The matrix products of the key
//! and value projections write straight into the cache rows of their
//! positions. Everything computes in f32; the cache holds f32 or, with
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
use steps::{Buffers, Dims, Step};

/// Most tokens one submission runs; longer inputs run in several.
const MAX_BATCH: usize = 256;

/// A decoder with its KV cache for one sequence on a GPU.
pub struct GpuDecoder {
    ctx: Arc<GpuContext>,
    config: DecoderConfig,
    context: usize,
    batch: usize,
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
        Self::build(GpuContext::shared(choice)?, weights, context, MAX_BATCH, kv)
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
        Self::build(ctx, weights, context, max_batch, KvDtype::F32)
    }

    fn build(
        ctx: Arc<GpuContext>,
        weights: &DecoderWeights,
        context: usize,
        max_batch: usize,
        kv: KvDtype,
    ) -> Result<Self, GenerateError> {
        let config = weights.config.clone();
        check_config(&config, context, kv)?;
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
        let built = steps::build(&ctx, &kernels, weights, (context, batch, kv), slot_stride);
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

    /// Most tokens one submission runs (a longer input runs in several).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Encodes and submits one pass over `tokens` at positions from `pos0`,
    /// reading back the logits of `read` (none when `None`).
    fn run(&mut self, tokens: &[u32], pos0: usize, read: Option<Logits>) -> Result<Vec<f32>, GenerateError> {
        let n = tokens.len();
        let ctx = &self.ctx;
        ctx.check_lost()?;
        ctx.queue
            .write_buffer(&self.bufs.tokens, 0, bytemuck::cast_slice(tokens));
        let mut blob = vec![0u8; self.steps.len() * self.slot_stride];
        let mut list = Vec::with_capacity(self.steps.len());
        let dims = Dims {
            config: &self.config,
            context: self.context,
            max_dim: ctx.limits().max_compute_workgroups_per_dimension,
        };
        for (i, s) in self.steps.iter().enumerate() {
            if let Some(d) = s.plan(&dims, n, pos0, read) {
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
        let floats = match read {
            Some(Logits::Last) => self.config.vocab,
            Some(Logits::All) => n * self.config.vocab,
            None => 0,
        };
        let bytes = (floats * 4) as u64;
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

fn check_config(c: &DecoderConfig, context: usize, kv: KvDtype) -> Result<(), GenerateError> {
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

    /// Runs `tokens` in submissions of up to [`GpuDecoder::batch`] tokens.
    /// No tokens give no logits.
    fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<Vec<f32>, GenerateError> {
        let needed = self.cached + tokens.len();
        if needed > self.context {
            return Err(GenerateError::Context {
                needed,
                context: self.context,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
            return Err(GenerateError::TokenId {
                id,
                vocab: self.config.vocab,
            });
        }
        let mut out = Vec::new();
        let chunks = tokens.len().div_ceil(self.batch);
        for (i, chunk) in tokens.chunks(self.batch).enumerate() {
            let read = match logits {
                Logits::All => Some(Logits::All),
                Logits::Last if i + 1 == chunks => Some(Logits::Last),
                Logits::Last => None,
            };
            let got = self.run(chunk, self.cached, read)?;
            self.cached += chunk.len();
            out.extend(got);
        }
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
