//! The decoder's WGSL kernels (`shaders/ggml.wgsl`, `shaders/decoder.wgsl`,
//! `shaders/kv16.wgsl`), their parameter blocks and their pipelines.

use std::collections::HashMap;

use bytemuck::{Pod, Zeroable};

use crate::backend::gpu::{GpuContext, GpuError};
use crate::generate::Matrix;
use crate::linalg::ggml::BlockFormat;

/// `shaders/ggml.wgsl`: matrix-vector, matrix-matrix and row lookup over
/// f32, f16 and GGUF block matrices.
pub const GGML_WGSL: &str = include_str!("../../../shaders/ggml.wgsl");
/// `shaders/decoder.wgsl`: RMSNorm, RoPE, bias add, attention, SwiGLU.
pub const DECODER_WGSL: &str = include_str!("../../../shaders/decoder.wgsl");

/// `shaders/kv16.wgsl`: the f16 KV cache's store and attention.
pub const KV16_WGSL: &str = include_str!("../../../shaders/kv16.wgsl");

/// Every WGSL file of the decoder: (file name under `shaders/`, source).
pub const SHADERS: [(&str, &str); 3] = [
    ("ggml.wgsl", GGML_WGSL),
    ("decoder.wgsl", DECODER_WGSL),
    ("kv16.wgsl", KV16_WGSL),
];

/// `struct Params` of `shaders/ggml.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct MatParams {
    pub rows: u32,
    pub cols: u32,
    pub n: u32,
    pub row_bytes: u32,
    pub x_off: u32,
    pub x_stride: u32,
    pub y_off: u32,
    pub y_stride: u32,
    pub acc: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// `struct Params` of `shaders/decoder.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct StepParams {
    pub n: u32,
    pub dim: u32,
    pub in_off: u32,
    pub out_off: u32,
    pub pos0: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub context: u32,
    pub rope_dims: u32,
    pub halves: u32,
    pub stride: u32,
    pub eps: f32,
    pub scale: f32,
    pub gather: u32,
    pub pad1: u32,
}

/// A params struct's layout as the naga test compares it with the WGSL:
/// (shader file, struct size in bytes, member names and byte offsets).
pub type ParamsLayout = (&'static str, usize, Vec<(&'static str, usize)>);

macro_rules! layout {
    ($file:expr, $ty:ident { $($m:ident),* }) => {
        ($file, std::mem::size_of::<$ty>(), vec![$((stringify!($m), std::mem::offset_of!($ty, $m))),*])
    };
}

/// The layouts of the params structs (`kv16.wgsl` shares `decoder.wgsl`'s).
pub fn params_layouts() -> Vec<ParamsLayout> {
    let steps = |file: &'static str| {
        layout!(
            file,
            StepParams {
                n,
                dim,
                in_off,
                out_off,
                pos0,
                heads,
                kv_heads,
                head_dim,
                context,
                rope_dims,
                halves,
                stride,
                eps,
                scale,
                gather,
                pad1
            }
        )
    };
    vec![
        layout!(
            "ggml.wgsl",
            MatParams {
                rows,
                cols,
                n,
                row_bytes,
                x_off,
                x_stride,
                y_off,
                y_stride,
                acc,
                pad0,
                pad1,
                pad2
            }
        ),
        steps("decoder.wgsl"),
        steps("kv16.wgsl"),
    ]
}

/// The `FORMAT` override constant of `shaders/ggml.wgsl` for a matrix, or
/// `None` for a format it does not read.
pub(crate) fn format_code(m: &Matrix) -> Option<u32> {
    match m {
        Matrix::F32 { .. } => Some(0),
        Matrix::F16 { .. } => Some(1),
        Matrix::Quant(q) => match q.format() {
            BlockFormat::Q4_0 => Some(2),
            BlockFormat::Q4_1 => Some(3),
            BlockFormat::Q5_0 => Some(4),
            BlockFormat::Q5_1 => Some(5),
            BlockFormat::Q8_0 => Some(6),
            BlockFormat::Q4_K => Some(7),
            BlockFormat::Q5_K => Some(8),
            BlockFormat::Q6_K => Some(9),
        },
    }
}

/// An entry point of `ggml.wgsl` (per format), `decoder.wgsl` or `kv16.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Entry {
    MatVec(u32),
    MatMat(u32),
    GetRows(u32),
    RmsNorm,
    Rope,
    BiasAdd,
    SwiGlu,
    Attention,
    /// `decoder.wgsl`: f32 rows into the f32 cache.
    KvScatter,
    /// `kv16.wgsl`: f32 rows packed into the f16 cache.
    KvStore,
    /// `kv16.wgsl`: attention over the f16 cache.
    Attention16,
}

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::MatVec(_) => "matvec",
            Entry::MatMat(_) => "matmat",
            Entry::GetRows(_) => "get_rows",
            Entry::RmsNorm => "rms_norm",
            Entry::Rope => "rope",
            Entry::BiasAdd => "bias_add",
            Entry::SwiGlu => "swiglu",
            Entry::Attention | Entry::Attention16 => "attention",
            Entry::KvScatter => "kv_scatter",
            Entry::KvStore => "kv_store",
        }
    }

    fn format(self) -> Option<u32> {
        match self {
            Entry::MatVec(f) | Entry::MatMat(f) | Entry::GetRows(f) => Some(f),
            _ => None,
        }
    }
}

/// Binding kinds of a bind-group layout entry.
#[derive(Clone, Copy)]
enum Slot {
    Uniform,
    Read,
    Write,
}

fn bind_layout(device: &wgpu::Device, label: &str, slots: &[Slot]) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match s {
                    Slot::Uniform => wgpu::BufferBindingType::Uniform,
                    Slot::Read => wgpu::BufferBindingType::Storage { read_only: true },
                    Slot::Write => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    })
}

/// The two bind-group layouts and the pipelines compiled so far.
pub(crate) struct Kernels {
    /// `ggml.wgsl`: 0 params, 1 W, 2 x, 3 y (read-write), 4 ids.
    pub ggml: wgpu::BindGroupLayout,
    /// `decoder.wgsl` and `kv16.wgsl`: 0 params, 1 a (read-write), 2 b, 3 c,
    /// 4 e, 5 scratch (read-write), 6 rows.
    pub decoder: wgpu::BindGroupLayout,
    ggml_module: wgpu::ShaderModule,
    decoder_module: wgpu::ShaderModule,
    kv16_module: wgpu::ShaderModule,
    ggml_pl: wgpu::PipelineLayout,
    decoder_pl: wgpu::PipelineLayout,
    pipelines: HashMap<Entry, wgpu::ComputePipeline>,
}

impl Kernels {
    /// Compiles the shader modules on the context's device.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        use Slot::*;
        let device = &ctx.device;
        let ggml = bind_layout(device, "wginfer decoder ggml", &[Uniform, Read, Read, Write, Read]);
        let decoder = bind_layout(
            device,
            "wginfer decoder steps",
            &[Uniform, Write, Read, Read, Read, Write, Read],
        );
        let pl = |label: &str, bgl: &wgpu::BindGroupLayout| {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(bgl)],
                immediate_size: 0,
            })
        };
        let ggml_pl = pl("wginfer decoder ggml", &ggml);
        let decoder_pl = pl("wginfer decoder steps", &decoder);
        let ggml_module = module(ctx, "ggml.wgsl", GGML_WGSL)?;
        let decoder_module = module(ctx, "decoder.wgsl", DECODER_WGSL)?;
        let kv16_module = module(ctx, "kv16.wgsl", KV16_WGSL)?;
        Ok(Self {
            ggml,
            decoder,
            ggml_module,
            decoder_module,
            kv16_module,
            ggml_pl,
            decoder_pl,
            pipelines: HashMap::new(),
        })
    }

    /// Compiles the pipeline of `entry` unless it is compiled already.
    pub fn prepare(&mut self, ctx: &GpuContext, entry: Entry) -> Result<(), GpuError> {
        if self.pipelines.contains_key(&entry) {
            return Ok(());
        }
        let (file, module, layout) = match entry {
            _ if entry.format().is_some() => ("ggml.wgsl", &self.ggml_module, &self.ggml_pl),
            Entry::KvStore | Entry::Attention16 => ("kv16.wgsl", &self.kv16_module, &self.decoder_pl),
            _ => ("decoder.wgsl", &self.decoder_module, &self.decoder_pl),
        };
        let constants: Vec<(&str, f64)> = entry.format().map(|f| ("FORMAT", f64::from(f))).into_iter().collect();
        let label = format!("{file}::{}", entry.name());
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = ctx.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(layout),
            module,
            entry_point: Some(entry.name()),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Shader {
                shader: file.to_string(),
                entry: entry.name().to_string(),
                message: e.to_string(),
            });
        }
        self.pipelines.insert(entry, pipeline);
        Ok(())
    }

    /// A pipeline [`Kernels::prepare`] compiled.
    pub fn get(&self, entry: Entry) -> Option<&wgpu::ComputePipeline> {
        self.pipelines.get(&entry)
    }
}

fn module(ctx: &GpuContext, file: &str, src: &str) -> Result<wgpu::ShaderModule, GpuError> {
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = ctx.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(file),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(GpuError::Shader {
            shader: file.to_string(),
            entry: "(module)".into(),
            message: e.to_string(),
        });
    }
    Ok(module)
}

/// Workgroup counts `[x, 1, z]` covering `groups` workgroups with x at most
/// `max_dim` (the kernels index `x + z·num_workgroups.x`).
pub(crate) fn split(groups: u32, max_dim: u32) -> (u32, u32) {
    let x = groups.clamp(1, max_dim.max(1));
    (x, groups.div_ceil(x).max(1))
}
