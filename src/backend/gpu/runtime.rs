//! Running a [`ShapePlan`] on the device: buffers, pipelines and bind groups
//! (made once per pooled [`Runtime`]), then per run the uploads, one command
//! encoder and one submit per segment, the read-backs, the CPU-placed steps
//! between segments, and the optional timestamps.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use wgpu::util::DeviceExt;

use crate::error::{Error, OpError, RunError};
use crate::graph::Graph;
use crate::plan::{ExecPlan, Source};
use crate::tensor::Tensor;

use super::context::{human_bytes, GpuContext};
use super::error::GpuError;
use super::plan::{padded, size_of, DispatchPlan, OutputFrom, Res, Segment, ShapePlan};

/// Device objects for one in-flight run of a [`ShapePlan`]. Runs take one
/// from a pool, so concurrent runs never share buffers.
pub(crate) struct Runtime {
    buffers: Vec<wgpu::Buffer>,
    bind_groups: Vec<wgpu::BindGroup>,
    pipelines: Vec<Arc<wgpu::ComputePipeline>>,
    /// Per segment, one staging buffer per read-back.
    staging: Vec<Vec<wgpu::Buffer>>,
    _uniforms: Vec<wgpu::Buffer>,
    /// GPU timers, where the device has timestamp queries.
    timer: Option<Timer>,
}

/// Timestamp queries around each segment's compute pass: slot `2·si` at the
/// pass's beginning, `2·si + 1` at its end. Each segment resolves into its own
/// 256-byte-aligned window of `resolve` (wgpu's resolve-offset alignment).
struct Timer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
}

/// wgpu's alignment of a query-set resolve offset.
const RESOLVE_ALIGN: u64 = wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT;

/// True when the device has timestamp queries.
pub(crate) fn has_timestamps(device: &wgpu::Device) -> bool {
    device.features().contains(wgpu::Features::TIMESTAMP_QUERY)
}

impl Runtime {
    /// Creates the buffers, uniforms, bind groups and staging buffers of
    /// `plan`; `params` are the weights held on the device.
    pub fn new(
        ctx: &GpuContext,
        plan: &ShapePlan,
        slot_names: &[String],
        params: &HashMap<String, wgpu::Buffer>,
    ) -> Result<Self, Error> {
        let device = &ctx.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffers: Vec<wgpu::Buffer> = plan
            .storages
            .iter()
            .zip(&plan.storage_labels)
            .map(|(&size, label)| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let mut uniforms = Vec::with_capacity(plan.dispatches.len());
        let mut bind_groups = Vec::with_capacity(plan.dispatches.len());
        let mut pipelines = Vec::with_capacity(plan.dispatches.len());
        for d in &plan.dispatches {
            let (uniform, bg) = bind(ctx, d, &buffers, params)?;
            uniforms.push(uniform);
            bind_groups.push(bg);
            pipelines.push(ctx.pipeline(&d.key)?);
        }
        let staging = staging_buffers(device, plan, slot_names);
        if let Some(e) = pollster::block_on(val.pop()) {
            return Err(GpuError::Validation {
                action: "creating buffers and bind groups".into(),
                message: e.to_string(),
            }
            .into());
        }
        if let Some(e) = pollster::block_on(oom.pop()) {
            let bytes = human_bytes(plan.report.peak_intermediate_bytes);
            return Err(GpuError::OutOfMemory {
                action: format!("allocating {bytes} of intermediate buffers ({e})"),
            }
            .into());
        }
        Ok(Runtime {
            buffers,
            bind_groups,
            pipelines,
            staging,
            _uniforms: uniforms,
            timer: has_timestamps(device).then(|| Timer::new(device, plan.segments.len())),
        })
    }
}

/// The uniform buffer and bind group of one dispatch: binding 0 the output,
/// 1 the parameters, 2.. the inputs.
fn bind(
    ctx: &GpuContext,
    d: &DispatchPlan,
    buffers: &[wgpu::Buffer],
    params: &HashMap<String, wgpu::Buffer>,
) -> Result<(wgpu::Buffer, wgpu::BindGroup), Error> {
    let uniform = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(&d.label),
        contents: bytemuck::cast_slice(&d.params),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let layout = ctx.layout(d.key.inputs);
    let mut entries = vec![
        wgpu::BindGroupEntry {
            binding: 0,
            resource: buffers[d.out].as_entire_binding(),
        },
        wgpu::BindGroupEntry {
            binding: 1,
            resource: uniform.as_entire_binding(),
        },
    ];
    for (i, r) in d.inputs.iter().enumerate() {
        let buf = match r {
            Res::Storage(s) => &buffers[*s],
            Res::Param(p) => params.get(p).ok_or_else(|| GpuError::Validation {
                action: format!("binding parameter `{p}` for node `{}`", d.label),
                message: "the parameter is not on the device".into(),
            })?,
            Res::Zeros => &ctx.zeros,
        };
        entries.push(wgpu::BindGroupEntry {
            binding: 2 + i as u32,
            resource: buf.as_entire_binding(),
        });
    }
    let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(&d.label),
        layout: &layout.0,
        entries: &entries,
    });
    Ok((uniform, bg))
}

/// Per segment, one mappable buffer per read-back.
fn staging_buffers(device: &wgpu::Device, plan: &ShapePlan, slot_names: &[String]) -> Vec<Vec<wgpu::Buffer>> {
    plan.segments
        .iter()
        .map(|seg| {
            seg.readbacks
                .iter()
                .map(|r| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(&format!("{} (read-back)", slot_names[r.slot])),
                        size: padded(size_of(&plan.slot_types[r.slot])),
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                })
                .collect()
        })
        .collect()
}

impl Timer {
    fn new(device: &wgpu::Device, segments: usize) -> Self {
        let segments = segments.max(1) as u64;
        Timer {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("segment timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: (2 * segments) as u32,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("segment timestamps (resolve)"),
                size: segments * RESOLVE_ALIGN,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            staging: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("segment timestamps (read-back)"),
                size: segments * RESOLVE_ALIGN,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        }
    }
}

/// One run of a shape plan: what it needs besides the [`Runtime`].
pub(crate) struct Run<'a> {
    /// The device.
    pub ctx: &'a GpuContext,
    /// The graph (CPU-placed steps run its ops).
    pub graph: &'a Graph,
    /// Its slots and steps.
    pub exec: &'a ExecPlan,
    /// Host copies of the weights (for CPU-placed steps and outputs).
    pub params: &'a HashMap<String, Tensor>,
    /// The plan for these input shapes.
    pub plan: &'a ShapePlan,
    /// How long to wait for the device.
    pub timeout: Duration,
}

impl Run<'_> {
    /// Runs every segment; with `profile` (and a device with timestamps)
    /// also returns the time spent in the compute passes. `blocking` waits
    /// on the device; otherwise the future polls it once per poll.
    pub async fn execute(
        &self,
        rt: &Runtime,
        inputs: Vec<Tensor>,
        blocking: bool,
        profile: bool,
    ) -> Result<(BTreeMap<String, Tensor>, Option<Duration>), Error> {
        let timer = if profile { rt.timer.as_ref() } else { None };
        let mut host: Vec<Option<Tensor>> = vec![None; self.exec.slot_count];
        for (&s, t) in self.exec.input_slots.iter().zip(inputs) {
            host[s] = Some(t);
        }
        for (si, seg) in self.plan.segments.iter().enumerate() {
            self.upload(rt, seg, &host)?;
            if seg.has_gpu_work() {
                let index = self.submit(rt, si, timer).await?;
                if !seg.readbacks.is_empty() {
                    let tensors = self.read_back(rt, si, index, blocking).await?;
                    for (r, t) in seg.readbacks.iter().zip(tensors) {
                        host[r.slot] = Some(t);
                    }
                }
            }
            self.cpu_steps(seg, &mut host)?;
        }
        let out = self.outputs(&mut host)?;
        match timer {
            Some(t) => Ok((out, Some(self.read_timer(t).await?))),
            None => Ok((out, None)),
        }
    }

    /// Writes the segment's host inputs into their device buffers.
    fn upload(&self, rt: &Runtime, seg: &Segment, host: &[Option<Tensor>]) -> Result<(), Error> {
        for &(slot, storage) in &seg.uploads {
            let t = host[slot].as_ref().ok_or_else(|| GpuError::Validation {
                action: format!("uploading `{}`", self.exec.slot_names[slot]),
                message: "the value is not on the host".into(),
            })?;
            let mut data = t.to_le_bytes();
            data.resize(padded(data.len() as u64) as usize, 0);
            self.ctx.queue.write_buffer(&rt.buffers[storage], 0, &data);
        }
        Ok(())
    }

    /// Encodes segment `si` (its dispatches in one compute pass, then the
    /// copies to its staging buffers) and submits it once.
    async fn submit(&self, rt: &Runtime, si: usize, timer: Option<&Timer>) -> Result<wgpu::SubmissionIndex, Error> {
        let ctx = self.ctx;
        let seg = &self.plan.segments[si];
        let val = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let label = format!("{} segment {si}", self.graph.name());
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(&label) });
        if !seg.dispatches.is_empty() {
            self.encode_pass(rt, si, &label, &mut encoder, timer);
        }
        for (r, staging) in seg.readbacks.iter().zip(&rt.staging[si]) {
            encoder.copy_buffer_to_buffer(&rt.buffers[r.storage], 0, staging, 0, staging.size());
        }
        let index = ctx.queue.submit([encoder.finish()]);
        let oom = oom.pop();
        let val = val.pop();
        if let Some(e) = oom.await {
            return Err(GpuError::OutOfMemory {
                action: format!("running `{}` ({e})", self.graph.name()),
            }
            .into());
        }
        if let Some(e) = val.await {
            return Err(GpuError::Validation {
                action: format!("the commands of `{}`", self.graph.name()),
                message: e.to_string(),
            }
            .into());
        }
        Ok(index)
    }

    /// The compute pass of segment `si`, with its timestamps when profiling.
    fn encode_pass(
        &self,
        rt: &Runtime,
        si: usize,
        label: &str,
        encoder: &mut wgpu::CommandEncoder,
        timer: Option<&Timer>,
    ) {
        let q = 2 * si as u32;
        let timestamp_writes = timer.map(|t| wgpu::ComputePassTimestampWrites {
            query_set: &t.queries,
            beginning_of_pass_write_index: Some(q),
            end_of_pass_write_index: Some(q + 1),
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes,
        });
        for di in self.plan.segments[si].dispatches.clone() {
            let d = &self.plan.dispatches[di];
            pass.set_pipeline(&rt.pipelines[di]);
            pass.set_bind_group(0, &rt.bind_groups[di], &[]);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        }
        drop(pass);
        if let Some(t) = timer {
            encoder.resolve_query_set(&t.queries, q..q + 2, &t.resolve, si as u64 * RESOLVE_ALIGN);
        }
    }

    /// Runs the segment's CPU-placed steps on host values.
    fn cpu_steps(&self, seg: &Segment, host: &mut [Option<Tensor>]) -> Result<(), Error> {
        for &step_i in &seg.cpu_steps {
            let step = &self.exec.steps[step_i];
            let node = &self.graph.nodes()[step.node];
            let node_err = |source| RunError::Node {
                node: node.name.clone(),
                op: node.op.op_type().to_string(),
                source,
            };
            let mut ins: Vec<&Tensor> = Vec::with_capacity(step.inputs.len());
            for src in &step.inputs {
                let t = match src {
                    Source::Slot(s) => host[*s].as_ref(),
                    Source::Param(p) => self.params.get(p),
                };
                ins.push(
                    t.ok_or_else(|| node_err(OpError::Shape("internal error: an input is not on the host".into())))?,
                );
            }
            let outs = node.op.cpu(&ins).map_err(node_err)?;
            for (&s, t) in step.outputs.iter().zip(outs) {
                host[s] = Some(t);
            }
        }
        Ok(())
    }

    /// The graph outputs, by name.
    fn outputs(&self, host: &mut [Option<Tensor>]) -> Result<BTreeMap<String, Tensor>, Error> {
        let mut out = BTreeMap::new();
        for (info, from) in self.graph.outputs().iter().zip(&self.plan.outputs) {
            let t = match from {
                OutputFrom::Host(s) => host[*s].take(),
                OutputFrom::Param(p) => self.params.get(p).cloned(),
            };
            let t = t.ok_or_else(|| RunError::UnknownOutput {
                name: info.name.clone(),
                expected: String::new(),
            })?;
            out.insert(info.name.clone(), t);
        }
        Ok(out)
    }

    /// Maps the staging buffers of segment `si` and converts them to tensors.
    async fn read_back(
        &self,
        rt: &Runtime,
        si: usize,
        index: wgpu::SubmissionIndex,
        blocking: bool,
    ) -> Result<Vec<Tensor>, Error> {
        let staging: Vec<&wgpu::Buffer> = rt.staging[si].iter().collect();
        self.map_read(&staging, index, blocking).await?;
        let mut out = Vec::with_capacity(staging.len());
        for (r, buf) in self.plan.segments[si].readbacks.iter().zip(staging) {
            let ty = &self.plan.slot_types[r.slot];
            let t = {
                let view = buf
                    .get_mapped_range(..)
                    .map_err(|e| GpuError::Readback { message: e.to_string() })?;
                Tensor::from_le_bytes(ty.0, ty.1.clone(), &view[..size_of(ty) as usize])
            };
            buf.unmap();
            out.push(t?);
        }
        Ok(out)
    }

    /// Copies the resolved timestamps to the host and sums the passes' spans.
    /// Runs after the run's submissions, which it follows.
    async fn read_timer(&self, t: &Timer) -> Result<Duration, Error> {
        let ctx = self.ctx;
        let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("segment timestamps"),
        });
        encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.staging, 0, t.staging.size());
        let index = ctx.queue.submit([encoder.finish()]);
        self.map_read(&[&t.staging], index, true).await?;
        let period = f64::from(ctx.queue.get_timestamp_period());
        let mut ns = 0.0;
        {
            let view = t
                .staging
                .get_mapped_range(..)
                .map_err(|e| GpuError::Readback { message: e.to_string() })?;
            for (si, seg) in self.plan.segments.iter().enumerate() {
                if seg.dispatches.is_empty() {
                    continue;
                }
                let at = si * RESOLVE_ALIGN as usize;
                let tick = |i: usize| {
                    let b = &view[at + 8 * i..at + 8 * i + 8];
                    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                };
                ns += tick(1).saturating_sub(tick(0)) as f64 * period;
            }
        }
        t.staging.unmap();
        Ok(Duration::from_secs_f64(ns * 1e-9))
    }

    /// Maps `buffers` for reading once submission `index` is done and waits
    /// for the mappings: `blocking` waits on the device; otherwise each poll
    /// of the future checks the device once, so any executor can drive it.
    /// On failure no buffer is left mapped.
    async fn map_read(
        &self,
        buffers: &[&wgpu::Buffer],
        index: wgpu::SubmissionIndex,
        blocking: bool,
    ) -> Result<(), Error> {
        let ctx = self.ctx;
        let state: Arc<Mutex<(usize, Option<String>)>> = Arc::new(Mutex::new((0, None)));
        for buf in buffers {
            let state = state.clone();
            buf.map_async(wgpu::MapMode::Read, .., move |r| {
                if let Ok(mut s) = state.lock() {
                    s.0 += 1;
                    if let Err(e) = r {
                        s.1.get_or_insert(e.to_string());
                    }
                }
            });
        }
        let n = buffers.len();
        let done = || state.lock().map(|s| s.0 >= n).unwrap_or(true);
        if blocking {
            wait(ctx, index, self.timeout, done)?;
        } else {
            poll(ctx, self.timeout, done).await?;
        }
        ctx.check_lost()?;
        if let Some(e) = ctx.take_uncaptured() {
            return Err(GpuError::Validation {
                action: format!("running `{}`", self.graph.name()),
                message: e,
            }
            .into());
        }
        if !done() {
            return Err(GpuError::Readback {
                message: "the device finished but the buffers were not mapped".into(),
            }
            .into());
        }
        if let Some(e) = state.lock().ok().and_then(|s| s.1.clone()) {
            for b in buffers {
                b.unmap();
            }
            return Err(GpuError::Readback { message: e }.into());
        }
        Ok(())
    }
}

/// Blocks until submission `index` is done and `done()` holds (the map
/// callbacks may need another turn of the device's maintenance to fire).
fn wait(
    ctx: &GpuContext,
    index: wgpu::SubmissionIndex,
    timeout: Duration,
    done: impl Fn() -> bool,
) -> Result<(), Error> {
    let wait = ctx.device.poll(wgpu::PollType::Wait {
        submission_index: Some(index),
        timeout: Some(timeout),
    });
    if let Err(e) = wait {
        ctx.check_lost()?;
        return Err(GpuError::Readback {
            message: format!("{e} (waited up to {timeout:?})"),
        }
        .into());
    }
    let start = Instant::now();
    while !done() && start.elapsed() < timeout && ctx.check_lost().is_ok() {
        let _ = ctx.device.poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: Some(Duration::from_millis(100)),
        });
        if !done() {
            std::thread::yield_now();
        }
    }
    Ok(())
}

/// Resolves once `done()` holds, polling the device once per poll.
async fn poll(ctx: &GpuContext, timeout: Duration, done: impl Fn() -> bool) -> Result<(), Error> {
    let start = Instant::now();
    let mut failed: Option<String> = None;
    std::future::poll_fn(|cx| {
        if let Err(e) = ctx.device.poll(wgpu::PollType::Poll) {
            failed = Some(e.to_string());
            return Poll::Ready(());
        }
        if done() {
            return Poll::Ready(());
        }
        if ctx.check_lost().is_err() || start.elapsed() > timeout {
            failed = Some(format!("no result after {timeout:?}"));
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    match failed {
        Some(message) => {
            ctx.check_lost()?;
            Err(GpuError::Readback { message }.into())
        }
        None => Ok(()),
    }
}
