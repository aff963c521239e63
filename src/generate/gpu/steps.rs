//! The dispatches of a forward pass: one [`Step`] per dispatch, its bind
//! group built once with the weights; per call, its parameters and
//! workgroup counts ([`Step::plan`]).

use std::num::NonZeroU64;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::kernels::{split, Entry, Kernels, MatParams, StepParams};
use super::{check_size, upload, upload_matrix};
use crate::backend::gpu::{GpuContext, GpuError};
use crate::error::GenerateError;
use crate::generate::cache::KvDtype;
use crate::generate::{DecoderConfig, DecoderWeights, Matrix, RopeLayout};

/// How long a read-back waits for the device.
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// The activation, cache-independent and read-back buffers.
pub(super) struct Buffers {
    /// Token ids of the current pass (u32).
    pub tokens: wgpu::Buffer,
    /// Every step's parameters, one aligned slot each.
    pub params: wgpu::Buffer,
    /// (slot, position) per row of the pass, then the rows whose logits are
    /// read (u32, `3 · batch`).
    pub rows: wgpu::Buffer,
    /// The head's output, `batch × vocab` floats.
    pub logits: wgpu::Buffer,
    /// Mappable copy of `logits`.
    pub staging: wgpu::Buffer,
}

impl Buffers {
    /// Maps the first `bytes` of `staging` once submission `index` is done.
    pub fn read(&self, ctx: &GpuContext, bytes: u64, index: wgpu::SubmissionIndex) -> Result<Vec<f32>, GpuError> {
        let slice = self.staging.slice(0..bytes);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let waited = ctx.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: Some(READ_TIMEOUT),
        });
        if let Err(e) = waited {
            ctx.check_lost()?;
            return Err(GpuError::Readback {
                message: format!("{e} (waited up to {READ_TIMEOUT:?})"),
            });
        }
        // The callback runs in a poll once the copy is done; a poll with
        // nothing in flight returns at once, so the wait is bounded by time,
        // not by a count of polls.
        let mut result = rx.try_recv();
        let start = Instant::now();
        while result.is_err() && start.elapsed() < READ_TIMEOUT && ctx.check_lost().is_ok() {
            let _ = ctx.device.poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(Duration::from_millis(100)),
            });
            result = rx.try_recv();
            if result.is_err() {
                std::thread::yield_now();
            }
        }
        ctx.check_lost()?;
        if let Some(e) = ctx.take_uncaptured() {
            return Err(GpuError::Validation {
                action: "running the decoder".into(),
                message: e,
            });
        }
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(GpuError::Readback { message: e.to_string() }),
            Err(_) => {
                return Err(GpuError::Readback {
                    message: "the device finished but the logits were not mapped".into(),
                })
            }
        }
        let out = slice
            .get_mapped_range()
            .map(|view| bytemuck::cast_slice::<u8, f32>(&view).to_vec())
            .map_err(|e| GpuError::Readback { message: e.to_string() });
        self.staging.unmap();
        out
    }
}

/// A weight matrix on the device, as the ggml kernels see it.
#[derive(Clone, Copy, Debug)]
pub(super) struct MatInfo {
    format: u32,
    rows: u32,
    cols: u32,
    row_bytes: u32,
}

/// What a step computes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    /// Embedding rows of the tokens into the residual stream.
    Embed(MatInfo),
    /// RMSNorm of every row of the residual stream.
    Norm,
    /// RMSNorm of the rows whose logits are read.
    FinalNorm,
    /// A projection; `acc`: added to its output (the residual stream).
    Mat { m: MatInfo, acc: bool },
    /// The output head over the rows whose logits are read.
    Head(MatInfo),
    /// A bias added to `dim`-wide rows.
    Bias { dim: u32 },
    /// RoPE over `heads` heads per row.
    Rope { heads: u32 },
    /// The pass's `dim`-wide key or value rows into their cache rows (`f16`:
    /// packed into the f16 cache).
    Store { dim: u32, f16: bool },
    /// Causal attention over the cache (`f16`: the packed f16 cache).
    Attention { f16: bool },
    /// `gate = silu(gate)·up`.
    SwiGlu,
}

/// One dispatch of a forward pass.
pub(super) struct Step {
    /// What it computes.
    pub kind: Kind,
    /// Its buffers, with its parameter slot.
    pub bind: wgpu::BindGroup,
    /// Names the layer and the step, for errors.
    pub label: String,
}

/// A step's dispatch for one pass.
pub(super) struct Planned {
    pub entry: Entry,
    pub params: Vec<u8>,
    pub groups: [u32; 3],
}

/// The model dimensions a step's parameters need.
pub(super) struct Dims<'a> {
    pub config: &'a DecoderConfig,
    pub context: usize,
    /// Most rows a pass runs.
    pub batch: usize,
    pub max_dim: u32,
}

fn mat(entry: Entry, p: MatParams, groups: [u32; 3]) -> Option<Planned> {
    Some(Planned {
        entry,
        params: bytemuck::bytes_of(&p).to_vec(),
        groups,
    })
}

fn step(entry: Entry, p: StepParams, groups: [u32; 3]) -> Option<Planned> {
    Some(Planned {
        entry,
        params: bytemuck::bytes_of(&p).to_vec(),
        groups,
    })
}

/// `n` rows of x (from 0) through `m` into y from `y_off`: the
/// matrix-vector kernel for one or two rows, else the matrix-matrix one.
fn matmul(m: MatInfo, n: u32, y_off: u32, acc: bool, max_dim: u32) -> Option<Planned> {
    let p = MatParams {
        rows: m.rows,
        cols: m.cols,
        n,
        row_bytes: m.row_bytes,
        x_stride: m.cols,
        y_off,
        y_stride: m.rows,
        acc: u32::from(acc),
        ..Default::default()
    };
    if n <= 2 {
        let (gx, gz) = split(m.rows.div_ceil(8), max_dim);
        mat(Entry::MatVec(m.format), p, [gx, n, gz])
    } else {
        let (gx, gz) = split(m.rows.div_ceil(16), max_dim);
        mat(Entry::MatMat(m.format), p, [gx, n.div_ceil(16), gz])
    }
}

impl Step {
    /// The pipelines this step may dispatch.
    pub fn entries(&self) -> Vec<Entry> {
        match self.kind {
            Kind::Embed(m) => vec![Entry::GetRows(m.format)],
            Kind::Mat { m, .. } | Kind::Head(m) => vec![Entry::MatVec(m.format), Entry::MatMat(m.format)],
            Kind::Norm | Kind::FinalNorm => vec![Entry::RmsNorm],
            Kind::Bias { .. } => vec![Entry::BiasAdd],
            Kind::Rope { .. } => vec![Entry::Rope],
            Kind::Store { f16: false, .. } => vec![Entry::KvScatter],
            Kind::Store { f16: true, .. } => vec![Entry::KvStore],
            Kind::Attention { f16: false } => vec![Entry::Attention],
            Kind::Attention { f16: true } => vec![Entry::Attention16],
            Kind::SwiGlu => vec![Entry::SwiGlu],
        }
    }

    /// The dispatch for `n` rows, reading the logits of `reads` of them;
    /// `None` when the step does not run in this pass.
    pub fn plan(&self, dims: &Dims, n: usize, reads: usize) -> Option<Planned> {
        let c = dims.config;
        let (n, reads) = (n as u32, reads as u32);
        let d = c.d_model as u32;
        let hd = c.head_dim as u32;
        let base = StepParams {
            n,
            dim: d,
            heads: c.n_heads as u32,
            kv_heads: c.n_kv_heads as u32,
            head_dim: hd,
            context: dims.context as u32,
            rope_dims: c.rope_dims as u32,
            halves: u32::from(c.rope_layout == RopeLayout::Halves),
            eps: c.norm_eps,
            scale: 1.0 / (hd as f32).sqrt(),
            ..Default::default()
        };
        match self.kind {
            Kind::Embed(m) => {
                let p = MatParams {
                    rows: m.rows,
                    cols: m.cols,
                    n,
                    row_bytes: m.row_bytes,
                    y_stride: m.cols,
                    ..Default::default()
                };
                mat(Entry::GetRows(m.format), p, [m.cols.div_ceil(64), n, 1])
            }
            Kind::Norm => step(Entry::RmsNorm, base, [n, 1, 1]),
            Kind::FinalNorm => {
                if reads == 0 {
                    return None;
                }
                let p = StepParams {
                    n: reads,
                    in_off: 2 * dims.batch as u32,
                    gather: 1,
                    ..base
                };
                step(Entry::RmsNorm, p, [reads, 1, 1])
            }
            Kind::Mat { m, acc } => matmul(m, n, 0, acc, dims.max_dim),
            Kind::Head(m) => {
                if reads == 0 {
                    return None;
                }
                matmul(m, reads, 0, false, dims.max_dim)
            }
            Kind::Bias { dim } => {
                let p = StepParams {
                    dim,
                    stride: dim,
                    ..base
                };
                step(Entry::BiasAdd, p, [dim.div_ceil(64), n, 1])
            }
            Kind::Rope { heads } => {
                if c.rope_dims == 0 {
                    return None;
                }
                let p = StepParams {
                    heads,
                    stride: heads * hd,
                    ..base
                };
                let pairs = heads * (c.rope_dims as u32 / 2);
                step(Entry::Rope, p, [pairs.div_ceil(64), n, 1])
            }
            Kind::Store { dim, f16 } => {
                let p = StepParams {
                    dim,
                    stride: dim,
                    ..base
                };
                if f16 {
                    step(Entry::KvStore, p, [(dim / 2).div_ceil(64), n, 1])
                } else {
                    step(Entry::KvScatter, p, [dim.div_ceil(64), n, 1])
                }
            }
            Kind::Attention { f16 } => {
                let entry = if f16 { Entry::Attention16 } else { Entry::Attention };
                step(entry, base, [c.n_heads as u32, n, 1])
            }
            Kind::SwiGlu => {
                let ffn = c.ffn as u32;
                let (gx, gy) = split((n * ffn).div_ceil(64), dims.max_dim);
                step(Entry::SwiGlu, StepParams { dim: ffn, ..base }, [gx, gy, 1])
            }
        }
    }
}

/// A storage buffer of `floats` f32 (zero-filled), checked against the binding limit.
fn storage(ctx: &GpuContext, name: &str, floats: usize, extra: wgpu::BufferUsages) -> Result<wgpu::Buffer, GpuError> {
    let bytes = (floats.max(4) * 4) as u64;
    check_size(ctx, name, bytes)?;
    Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(name),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | extra,
        mapped_at_creation: false,
    }))
}

/// Checks a matrix's shape against the configuration and uploads it.
fn matrix(
    ctx: &GpuContext,
    name: &str,
    m: &Matrix,
    rows: usize,
    cols: usize,
) -> Result<(wgpu::Buffer, MatInfo), GenerateError> {
    if m.rows() != rows || m.cols() != cols {
        return Err(GenerateError::Tensor {
            name: name.to_string(),
            message: format!("is {}x{}, the configuration needs {rows}x{cols}", m.rows(), m.cols()),
        });
    }
    let (buf, format, row_bytes) = upload_matrix(ctx, name, m)?;
    let info = MatInfo {
        format,
        rows: rows as u32,
        cols: cols as u32,
        row_bytes,
    };
    Ok((buf, info))
}

/// Checks a vector's length and uploads it.
fn vector(ctx: &GpuContext, name: &str, v: &[f32], len: usize) -> Result<wgpu::Buffer, GenerateError> {
    if v.len() != len {
        return Err(GenerateError::Tensor {
            name: name.to_string(),
            message: format!("has {} values, the configuration needs {len}", v.len()),
        });
    }
    Ok(upload(ctx, name, bytemuck::cast_slice(v))?)
}

/// Builds bind groups against one parameter buffer, slot after slot.
struct Binder<'a> {
    ctx: &'a GpuContext,
    kernels: &'a Kernels,
    params: &'a wgpu::Buffer,
    rows: &'a wgpu::Buffer,
    stride: usize,
    dummy_ro: wgpu::Buffer,
    dummy_rw: wgpu::Buffer,
    steps: Vec<Step>,
}

impl Binder<'_> {
    fn entry<'b>(&self, binding: u32, buffer: &'b wgpu::Buffer) -> wgpu::BindGroupEntry<'b> {
        wgpu::BindGroupEntry {
            binding,
            resource: buffer.as_entire_binding(),
        }
    }

    fn push(&mut self, label: String, kind: Kind, layout: &wgpu::BindGroupLayout, bufs: &[&wgpu::Buffer], size: u64) {
        let slot = self.steps.len();
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.params,
                offset: (slot * self.stride) as u64,
                size: NonZeroU64::new(size),
            }),
        }];
        entries.extend(bufs.iter().enumerate().map(|(i, b)| self.entry(1 + i as u32, b)));
        let bind = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&label),
            layout,
            entries: &entries,
        });
        self.steps.push(Step { kind, bind, label });
    }

    /// A ggml step: W, x, y (written), token ids (`None`: a dummy).
    fn ggml(
        &mut self,
        label: String,
        kind: Kind,
        w: &wgpu::Buffer,
        x: Option<&wgpu::Buffer>,
        y: &wgpu::Buffer,
        ids: Option<&wgpu::Buffer>,
    ) {
        let dummy = self.dummy_ro.clone();
        let bufs = [w, x.unwrap_or(&dummy), y, ids.unwrap_or(&dummy)];
        let size = std::mem::size_of::<MatParams>() as u64;
        self.push(label, kind, &self.kernels.ggml.clone(), &bufs, size);
    }

    /// A decoder step: a (written), inputs b, c, e and the scratch (`None`:
    /// dummies), with the pass's rows.
    fn dec(
        &mut self,
        label: String,
        kind: Kind,
        a: &wgpu::Buffer,
        ins: [Option<&wgpu::Buffer>; 3],
        scratch: Option<&wgpu::Buffer>,
    ) {
        let (ro, rw) = (self.dummy_ro.clone(), self.dummy_rw.clone());
        let bufs = [
            a,
            ins[0].unwrap_or(&ro),
            ins[1].unwrap_or(&ro),
            ins[2].unwrap_or(&ro),
            scratch.unwrap_or(&rw),
            self.rows,
        ];
        let size = std::mem::size_of::<StepParams>() as u64;
        self.push(label, kind, &self.kernels.decoder.clone(), &bufs, size);
    }
}

/// The cache and pass sizes [`build`] allocates for.
pub(super) struct Shape {
    /// Positions per sequence.
    pub context: usize,
    /// Rows per pass.
    pub batch: usize,
    /// What the cache holds.
    pub kv: KvDtype,
    /// Sequences the cache holds.
    pub slots: usize,
}

/// Uploads the weights, allocates the cache and the activations, and
/// builds every step's bind group.
pub(super) fn build(
    ctx: &GpuContext,
    kernels: &Kernels,
    w: &DecoderWeights,
    shape: &Shape,
    stride: usize,
) -> Result<(Vec<Step>, Buffers), GenerateError> {
    let (context, batch) = (shape.context, shape.batch);
    let c = &w.config;
    let (d, qd, ffn, vocab) = (c.d_model, c.q_dim(), c.ffn, c.vocab);
    let none = wgpu::BufferUsages::empty();
    let x = storage(ctx, "residual", batch * d, none)?;
    let xn = storage(ctx, "normed", batch * d, none)?;
    let q = storage(ctx, "queries", batch * qd, none)?;
    let att = storage(ctx, "attention", batch * qd, none)?;
    let gate = storage(ctx, "gate", batch * ffn, none)?;
    let up = storage(ctx, "up", batch * ffn, none)?;
    let scores = storage(ctx, "attention scores", batch * c.n_heads * context, none)?;
    let logits = storage(ctx, "logits", batch * vocab, wgpu::BufferUsages::COPY_SRC)?;
    let tokens = storage(ctx, "tokens", batch, wgpu::BufferUsages::COPY_DST)?;
    let rows = storage(ctx, "rows", 3 * batch, wgpu::BufferUsages::COPY_DST)?;
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("logits read-back"),
        size: logits.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let new_keys = storage(ctx, "new keys", batch * c.kv_dim(), none)?;
    let new_values = storage(ctx, "new values", batch * c.kv_dim(), none)?;
    let max_steps = 3 + w.layers.len() * 19;
    let params = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("decoder parameters"),
        size: (max_steps * stride) as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut b = Binder {
        ctx,
        kernels,
        params: &params,
        rows: &rows,
        stride,
        dummy_ro: storage(ctx, "unused input", 4, none)?,
        dummy_rw: storage(ctx, "unused output", 4, none)?,
        steps: Vec::with_capacity(max_steps),
    };
    let (embed, em) = matrix(ctx, "token_embd", &w.embed, vocab, d)?;
    b.ggml("embedding".into(), Kind::Embed(em), &embed, None, &x, Some(&tokens));
    let (cos, sin) = c.rope_tables(context);
    let cos = upload(ctx, "rope cos", bytemuck::cast_slice(&cos))?;
    let sin = upload(ctx, "rope sin", bytemuck::cast_slice(&sin))?;
    let acts = Acts {
        cos: &cos,
        sin: &sin,
        x: &x,
        xn: &xn,
        q: &q,
        att: &att,
        gate: &gate,
        up: &up,
        scores: &scores,
        new_keys: &new_keys,
        new_values: &new_values,
    };
    for (i, l) in w.layers.iter().enumerate() {
        layer(&mut b, c, shape, i, l, &acts)?;
    }
    let norm = vector(ctx, "output_norm", &w.norm, d)?;
    b.dec(
        "output norm".into(),
        Kind::FinalNorm,
        &xn,
        [Some(&x), Some(&norm), None],
        None,
    );
    let (head, hm) = match &w.output {
        Some(m) => matrix(ctx, "output", m, vocab, d)?,
        None => (embed.clone(), em),
    };
    b.ggml("output head".into(), Kind::Head(hm), &head, Some(&xn), &logits, None);
    let steps = b.steps;
    Ok((
        steps,
        Buffers {
            tokens,
            params,
            rows,
            logits,
            staging,
        },
    ))
}

/// The activation buffers every layer shares.
struct Acts<'a> {
    x: &'a wgpu::Buffer,
    xn: &'a wgpu::Buffer,
    q: &'a wgpu::Buffer,
    att: &'a wgpu::Buffer,
    gate: &'a wgpu::Buffer,
    up: &'a wgpu::Buffer,
    scores: &'a wgpu::Buffer,
    cos: &'a wgpu::Buffer,
    sin: &'a wgpu::Buffer,
    /// The pass's keys and values, before they are stored in the cache.
    new_keys: &'a wgpu::Buffer,
    new_values: &'a wgpu::Buffer,
}

/// The steps of block `i`.
fn layer(
    b: &mut Binder,
    c: &DecoderConfig,
    shape: &Shape,
    i: usize,
    l: &crate::generate::LayerWeights,
    a: &Acts,
) -> Result<(), GenerateError> {
    let ctx = b.ctx;
    let (d, qd, kvd, ffn) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn);
    let name = |s: &str| format!("blk.{i}.{s}");
    // The f16 cache packs two values per f32-sized word.
    let f16 = shape.kv == KvDtype::F16;
    let words = shape.slots * shape.context * if f16 { kvd / 2 } else { kvd };
    let keys = storage(ctx, &name("keys"), words, wgpu::BufferUsages::empty())?;
    let values = storage(ctx, &name("values"), words, wgpu::BufferUsages::empty())?;
    let attn_norm = vector(ctx, &name("attn_norm"), &l.attn_norm, d)?;
    let ffn_norm = vector(ctx, &name("ffn_norm"), &l.ffn_norm, d)?;
    let (wq, mq) = matrix(ctx, &name("attn_q"), &l.wq, qd, d)?;
    let (wk, mk) = matrix(ctx, &name("attn_k"), &l.wk, kvd, d)?;
    let (wv, mv) = matrix(ctx, &name("attn_v"), &l.wv, kvd, d)?;
    let (wo, mo) = matrix(ctx, &name("attn_output"), &l.wo, d, qd)?;
    let (wg, mg) = matrix(ctx, &name("ffn_gate"), &l.w_gate, ffn, d)?;
    let (wu, mu) = matrix(ctx, &name("ffn_up"), &l.w_up, ffn, d)?;
    let (wd, md) = matrix(ctx, &name("ffn_down"), &l.w_down, d, ffn)?;
    let mat = |m, acc| Kind::Mat { m, acc };
    b.dec(
        name("attn_norm"),
        Kind::Norm,
        a.xn,
        [Some(a.x), Some(&attn_norm), None],
        None,
    );
    b.ggml(name("attn_q"), mat(mq, false), &wq, Some(a.xn), a.q, None);
    b.ggml(name("attn_k"), mat(mk, false), &wk, Some(a.xn), a.new_keys, None);
    b.ggml(name("attn_v"), mat(mv, false), &wv, Some(a.xn), a.new_values, None);
    for (bias, target, dim, what) in [
        (&l.bq, a.q, qd, "attn_q.bias"),
        (&l.bk, a.new_keys, kvd, "attn_k.bias"),
        (&l.bv, a.new_values, kvd, "attn_v.bias"),
    ] {
        if let Some(v) = bias {
            let buf = vector(ctx, &name(what), v, dim)?;
            let kind = Kind::Bias { dim: dim as u32 };
            b.dec(name(what), kind, target, [None, Some(&buf), None], None);
        }
    }
    let (cs, sn) = (Some(a.cos), Some(a.sin));
    let rope_q = Kind::Rope {
        heads: c.n_heads as u32,
    };
    b.dec(name("rope_q"), rope_q, a.q, [None, cs, sn], None);
    let rope_k = Kind::Rope {
        heads: c.n_kv_heads as u32,
    };
    b.dec(name("rope_k"), rope_k, a.new_keys, [None, cs, sn], None);
    // Keys (biased, rotated) and values into the rows of their slots and
    // positions: the f32 cache is written as `a`, the f16 one as scratch.
    let store = Kind::Store { dim: kvd as u32, f16 };
    let unused = b.dummy_rw.clone();
    for (what, new, cache) in [("store_k", a.new_keys, &keys), ("store_v", a.new_values, &values)] {
        let ins = [Some(new), None, None];
        if f16 {
            b.dec(name(what), store, &unused, ins, Some(cache));
        } else {
            b.dec(name(what), store, cache, ins, None);
        }
    }
    b.dec(
        name("attention"),
        Kind::Attention { f16 },
        a.att,
        [Some(a.q), Some(&keys), Some(&values)],
        Some(a.scores),
    );
    b.ggml(name("attn_output"), mat(mo, true), &wo, Some(a.att), a.x, None);
    b.dec(
        name("ffn_norm"),
        Kind::Norm,
        a.xn,
        [Some(a.x), Some(&ffn_norm), None],
        None,
    );
    b.ggml(name("ffn_gate"), mat(mg, false), &wg, Some(a.xn), a.gate, None);
    b.ggml(name("ffn_up"), mat(mu, false), &wu, Some(a.xn), a.up, None);
    b.dec(name("swiglu"), Kind::SwiGlu, a.gate, [Some(a.up), None, None], None);
    b.ggml(name("ffn_down"), mat(md, true), &wd, Some(a.gate), a.x, None);
    Ok(())
}
