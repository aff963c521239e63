//! Adapters and devices: the adapters wgpu finds, the one an
//! [`AdapterChoice`] picks, and the device, queue and pipeline cache a
//! session shares.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::choice::{AdapterChoice, GpuApi};
use super::error::GpuError;

use super::shaders::{self, ShaderId};

impl GpuApi {
    fn backend(self) -> wgpu::Backend {
        match self {
            GpuApi::Vulkan => wgpu::Backend::Vulkan,
            GpuApi::Metal => wgpu::Backend::Metal,
            GpuApi::Dx12 => wgpu::Backend::Dx12,
            GpuApi::Gl => wgpu::Backend::Gl,
        }
    }
}

/// What `wginfer adapters` shows about one adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.7, 256 bits)`.
    pub name: String,
    /// Backend API: `vulkan`, `metal`, `dx12`, `gl`.
    pub backend: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` or `other`.
    pub device_type: String,
    /// Driver name.
    pub driver: String,
    /// Driver details (version).
    pub driver_info: String,
    /// True for CPU (software) adapters: lavapipe/llvmpipe, WARP, SwiftShader.
    pub software: bool,
    /// `SHADER_F16`: f16 arithmetic in shaders.
    pub f16: bool,
    /// `SUBGROUP`: subgroup operations.
    pub subgroups: bool,
    /// The smallest subgroup the adapter may run (wgpu's `subgroup_min_size`).
    pub subgroup_min_size: u32,
    /// `TIMESTAMP_QUERY`: GPU timers.
    pub timestamp_query: bool,
    /// Largest storage-buffer binding, in bytes (the largest tensor a kernel can read).
    pub max_storage_buffer_binding_size: u64,
    /// Workgroup (shared) memory per workgroup, in bytes.
    pub max_compute_workgroup_storage_size: u32,
}

impl AdapterSummary {
    fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let features = adapter.features();
        let limits = adapter.limits();
        let device_type = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        };
        Self {
            software: is_software(&info),
            name: info.name,
            backend: backend_name(info.backend).to_string(),
            device_type: device_type.to_string(),
            driver: info.driver,
            driver_info: info.driver_info,
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        }
    }

    /// The header line of the table [`AdapterSummary`]'s `Display` writes rows of.
    pub fn table_header() -> String {
        format!(
            "{:<44} {:<7} {:<10} {:<28} {:<4} {:<9} {:<10} {:>14} {:>12}",
            "NAME", "BACKEND", "TYPE", "DRIVER", "F16", "SUBGROUPS", "TIMESTAMPS", "MAX STORAGE", "WG MEMORY"
        )
    }
}

impl fmt::Display for AdapterSummary {
    /// One row of the `wginfer adapters` table (see [`AdapterSummary::table_header`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let driver = if self.driver_info.is_empty() {
            self.driver.clone()
        } else {
            format!("{} {}", self.driver, self.driver_info)
        };
        let ty = if self.software && self.device_type != "cpu" {
            format!("{} (sw)", self.device_type)
        } else {
            self.device_type.clone()
        };
        write!(
            f,
            "{:<44} {:<7} {:<10} {:<28} {:<4} {:<9} {:<10} {:>14} {:>12}",
            truncate(&self.name, 44),
            self.backend,
            ty,
            truncate(&driver, 28),
            yn(self.f16),
            yn(self.subgroups),
            yn(self.timestamp_query),
            human_bytes(self.max_storage_buffer_binding_size),
            human_bytes(self.max_compute_workgroup_storage_size as u64),
        )
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// Bytes as `512 B`, `32 KiB`, `2.0 GiB`.
pub(crate) fn human_bytes(b: u64) -> String {
    const K: u64 = 1024;
    if b < K {
        format!("{b} B")
    } else if b < K * K {
        format!("{:.0} KiB", b as f64 / K as f64)
    } else if b < K * K * K {
        format!("{:.1} MiB", b as f64 / (K * K) as f64)
    } else {
        format!("{:.1} GiB", b as f64 / (K * K * K) as f64)
    }
}

fn backend_name(b: wgpu::Backend) -> &'static str {
    match b {
        wgpu::Backend::Vulkan => "vulkan",
        wgpu::Backend::Metal => "metal",
        wgpu::Backend::Dx12 => "dx12",
        wgpu::Backend::Gl => "gl",
        wgpu::Backend::BrowserWebGpu => "webgpu",
        _ => "other",
    }
}

/// Software rasterisers report `DeviceType::Cpu` on Vulkan; on GL they may
/// not, so the name is checked too.
fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_ascii_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || [
            "llvmpipe",
            "lavapipe",
            "softpipe",
            "swiftshader",
            "microsoft basic render driver",
        ]
        .iter()
        .any(|s| name.contains(s))
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    // Deterministic order: hardware before software, then by backend preference.
    adapters.sort_by_key(|a| rank(&a.get_info()));
    adapters
}

/// Lower is better: discrete, integrated, virtual, other, software; Vulkan,
/// Metal and DX12 before GL.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = if is_software(info) {
        4
    } else {
        match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            _ => 3,
        }
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (ty, api)
}

/// Every adapter wgpu finds (honouring `WGPU_BACKEND`), best first.
pub fn list_adapters() -> Vec<AdapterSummary> {
    enumerate(&instance()).iter().map(AdapterSummary::of).collect()
}

impl AdapterChoice {
    /// The index in `adapters` (sorted best first) this choice picks, if any.
    fn pick(&self, adapters: &[wgpu::Adapter]) -> Option<usize> {
        adapters.iter().position(|a| {
            let info = a.get_info();
            match self {
                AdapterChoice::Auto => !is_software(&info),
                AdapterChoice::Backend(api) => info.backend == api.backend(),
                AdapterChoice::Software => is_software(&info),
                AdapterChoice::Name(n) => info.name.to_lowercase().contains(&n.to_lowercase()),
            }
        })
    }
}

/// A pipeline specialisation: shader, entry point, override constants
/// (as bit patterns, so the key is hashable).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    pub shader: ShaderId,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, u64)>,
    pub inputs: usize,
}

/// An adapter with its device and queue, and the caches every session on it
/// shares (shader modules, bind-group layouts, pipelines).
///
/// `GpuContext` is `Send + Sync`; share it with `Arc`. Several executors on
/// one context share its pipelines.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    summary: AdapterSummary,
    pub(crate) limits: wgpu::Limits,
    modules: Mutex<HashMap<ShaderId, Arc<wgpu::ShaderModule>>>,
    layouts: Mutex<HashMap<usize, Arc<(wgpu::BindGroupLayout, wgpu::PipelineLayout)>>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<String>>>,
    /// A 16-byte zero buffer bound where a kernel's optional input is absent.
    pub(crate) zeros: wgpu::Buffer,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.summary.name)
            .finish()
    }
}

impl GpuContext {
    /// Opens the adapter `choice` picks and creates a device on it with the
    /// features wginfer uses that the adapter has (f16, subgroups,
    /// timestamps) and the adapter's own limits.
    ///
    /// Errors with [`GpuError::NoAdapter`] when nothing matches; for
    /// [`AdapterChoice::Auto`] that includes a machine with only software
    /// adapters.
    pub fn new(choice: &AdapterChoice) -> Result<Arc<Self>, GpuError> {
        let instance = instance();
        let adapters = enumerate(&instance);
        let Some(i) = choice.pick(&adapters) else {
            let available = if adapters.is_empty() {
                "none".to_string()
            } else {
                adapters
                    .iter()
                    .map(|a| {
                        let s = AdapterSummary::of(a);
                        format!("{} ({}, {})", s.name, s.backend, s.device_type)
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(GpuError::NoAdapter {
                choice: choice.to_string(),
                available,
            });
        };
        Self::from_adapter(&adapters[i])
    }

    /// The shared context for a choice: contexts are cached process-wide
    /// while any session holds them, so sessions on one adapter share one
    /// device and its pipelines. A lost device is replaced.
    pub fn shared(choice: &AdapterChoice) -> Result<Arc<Self>, GpuError> {
        static CACHE: OnceLock<Mutex<HashMap<AdapterChoice, Weak<GpuContext>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ctx) = map.get(choice).and_then(Weak::upgrade) {
            if ctx.check_lost().is_ok() {
                return Ok(ctx);
            }
        }
        let ctx = Self::new(choice)?;
        map.insert(choice.clone(), Arc::downgrade(&ctx));
        Ok(ctx)
    }

    fn from_adapter(adapter: &wgpu::Adapter) -> Result<Arc<Self>, GpuError> {
        let summary = AdapterSummary::of(adapter);
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("wginfer"),
            required_features: adapter.features() & wanted,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| GpuError::RequestDevice {
                adapter: summary.name.clone(),
                message: e.to_string(),
            })?;
        let lost = Arc::new(Mutex::new(None));
        {
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, message| {
                log::error!("wgpu device lost ({reason:?}): {message}");
                if let Ok(mut l) = lost.lock() {
                    *l = Some(format!("{reason:?}: {message}"));
                }
            });
        }
        // wgpu's default handler panics; record the error and report it from
        // the call that caused it instead.
        let uncaptured = Arc::new(Mutex::new(None));
        {
            let uncaptured = uncaptured.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                log::error!("wgpu error: {e}");
                if let Ok(mut u) = uncaptured.lock() {
                    u.get_or_insert_with(|| e.to_string());
                }
            }));
        }
        let zeros = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wginfer zeros"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        log::info!(
            "wginfer GPU: {} ({}, {})",
            summary.name,
            summary.backend,
            summary.device_type
        );
        Ok(Arc::new(Self {
            device,
            queue,
            summary,
            limits,
            modules: Mutex::new(HashMap::new()),
            layouts: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            lost,
            uncaptured,
            zeros,
        }))
    }

    /// The adapter this context runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.summary
    }

    /// The device's limits (the adapter's).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Fails if the device has been lost.
    pub(crate) fn check_lost(&self) -> Result<(), GpuError> {
        match self.lost.lock().ok().and_then(|l| l.clone()) {
            Some(reason) => Err(GpuError::DeviceLost { reason }),
            None => Ok(()),
        }
    }

    /// Takes an error that escaped every error scope, if one happened.
    pub(crate) fn take_uncaptured(&self) -> Option<String> {
        self.uncaptured.lock().ok().and_then(|mut u| u.take())
    }

    fn module(&self, id: ShaderId) -> Result<Arc<wgpu::ShaderModule>, GpuError> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(&id) {
            return Ok(m.clone());
        }
        let src = shaders::source(id);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(id.file()),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            log::error!("WGSL of {}:\n{src}", id.file());
            return Err(GpuError::Shader {
                shader: id.file().to_string(),
                entry: "(module)".into(),
                message: e.to_string(),
            });
        }
        let m = Arc::new(module);
        modules.insert(id, m.clone());
        Ok(m)
    }

    /// The bind-group layout and pipeline layout of every kernel with
    /// `inputs` inputs: binding 0 the output (read-write storage), 1 the
    /// parameters (uniform), 2.. the inputs (read-only storage).
    pub(crate) fn layout(&self, inputs: usize) -> Arc<(wgpu::BindGroupLayout, wgpu::PipelineLayout)> {
        let mut layouts = self.layouts.lock().unwrap_or_else(|e| e.into_inner());
        layouts
            .entry(inputs)
            .or_insert_with(|| {
                let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                };
                let mut entries = vec![
                    storage(0, false),
                    wgpu::BindGroupLayoutEntry {
                        binding: 1,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    },
                ];
                for i in 0..inputs {
                    entries.push(storage(2 + i as u32, true));
                }
                let label = format!("wginfer layout ({inputs} inputs)");
                let bgl = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(&label),
                    entries: &entries,
                });
                let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(&label),
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
                Arc::new((bgl, pl))
            })
            .clone()
    }

    /// The pipeline for a specialisation, compiled once and cached.
    pub(crate) fn pipeline(&self, key: &PipelineKey) -> Result<Arc<wgpu::ComputePipeline>, GpuError> {
        if let Some(p) = self.pipelines.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(p.clone());
        }
        let module = self.module(key.shader)?;
        let layout = self.layout(key.inputs);
        let constants: Vec<(&str, f64)> = key.constants.iter().map(|&(n, b)| (n, f64::from_bits(b))).collect();
        let label = format!("{}::{}", key.shader.file(), key.entry);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&layout.1),
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Shader {
                shader: key.shader.file().to_string(),
                entry: key.entry.to_string(),
                message: e.to_string(),
            });
        }
        let p = Arc::new(pipeline);
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), p.clone());
        Ok(p)
    }

    /// Number of distinct pipelines compiled so far.
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }
}
