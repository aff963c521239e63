//! `wginfer bench`: latency and throughput of a model (or one op) per device,
//! batch size and weight format, with a table, JSON and an SVG chart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use wginfer::graph::{Graph, Node, ParamInfo, ValueInfo};
use wginfer::ops::linear::Linear;
use wginfer::ops::qlinear::QLinear;
use wginfer::ops::CaseRng;
use wginfer::optimize::{quantize, QuantizeOptions};
use wginfer::quant::{self, WeightFormat};
use wginfer::tensor::{Dim, ValueType};
use wginfer::{DType, Device, Model, Session, Tensor};

use super::{load_model, svg};

/// Arguments of `bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file (omit with --op).
    model: Option<PathBuf>,
    /// Benchmark one op instead of a model: `matmul` (a square linear layer).
    #[arg(long)]
    op: Option<String>,
    /// Square sizes for --op.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    sizes: Vec<usize>,
    /// Devices, comma separated (cpu, gpu, vulkan, gl, software, name:...).
    #[arg(
        long = "devices",
        alias = "device-list",
        value_delimiter = ',',
        default_value = "cpu"
    )]
    devices: Vec<String>,
    /// Batch sizes (models).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    batch: Vec<usize>,
    /// The size of every other symbolic dimension (e.g. a text model's
    /// `seq`); the batch dimension is the one the first input starts with.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Weight formats: f32 and any `quantize` format (int8, int4, w8a8, ...).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    format: Vec<String>,
    /// Seconds of measurement per configuration (after warm-up).
    #[arg(long, default_value_t = 1.0)]
    time: f64,
    /// At most this many measured runs per configuration.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Warm-up runs per configuration.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// CPU devices: also time every node (separate runs) and print, per op
    /// type, its median time per run and share — where the time goes.
    #[arg(long)]
    ops: bool,
    /// Write every result (and the machine) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG chart of latency and throughput.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Decoders: random weights of a named shape (smollm2-135m, qwen2-0.5b,
    /// llama-1b, llama-3b, llama-8b) instead of a .gguf model.
    #[arg(long)]
    synthetic: Option<String>,
    /// Decoders: the block format of --synthetic weights (q4_0, q4_1, q5_0,
    /// q5_1, q8_0, q4_k, q5_k, q6_k, f16).
    #[arg(long, default_value = "q4_0")]
    weights: String,
    /// Decoders: prompt tokens processed in one pass (`pp`).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Decoders: tokens generated one at a time (`tg`).
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Decoders: CPU thread counts, comma separated (0: all cores).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    threads: Vec<usize>,
    /// Decoders: repetitions of each test.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Decoders: also decode this many sequences at once
    /// (batched passes, as the server's engine runs them), comma separated;
    /// tokens/s is the sum over the sequences.
    #[arg(long, value_delimiter = ',')]
    seqs: Vec<usize>,
}

/// One measured configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// Model name or op label.
    pub subject: String,
    /// Device as asked.
    pub device: String,
    /// Backend it ran on (adapter name for GPUs).
    pub backend: String,
    /// Weight format.
    pub format: String,
    /// Samples per run (models) or the square size (ops).
    pub batch: usize,
    /// Measured runs.
    pub runs: usize,
    /// Latency quantiles in milliseconds.
    pub min_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Samples per second at the mean latency.
    pub items_per_s: f64,
    /// GFLOP/s (GOP/s for integer formats) for op benchmarks.
    pub gflops: Option<f64>,
    /// Mean latency on the CPU backend divided by this one's.
    pub speedup_vs_cpu: Option<f64>,
    /// GPU only: median time the device spent in the run's compute passes
    /// (timestamp queries), over separate profiled runs. The rest of the
    /// end-to-end p50 is upload, read-back, CPU-placed nodes and submission.
    pub kernel_p50_ms: Option<f64>,
    /// GPU only: `kernel_p50_ms / p50_ms`.
    pub kernel_share: Option<f64>,
    /// CPU with `--ops`: time per op type, the largest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<OpShare>>,
}

/// Where a CPU run's time goes, per op type (`bench --ops`).
#[derive(Clone, Debug, Serialize)]
pub struct OpShare {
    /// Op type.
    pub op: String,
    /// Nodes of this type in the graph.
    pub nodes: usize,
    /// Median over the profiled runs of the type's summed node time.
    pub p50_ms: f64,
    /// `p50_ms` over the median summed time of all nodes.
    pub share: f64,
}

/// Per op type, the median over runs of its summed node time.
fn op_shares(runs: &[Vec<wginfer::OpTime>]) -> Vec<OpShare> {
    let mut per_type: HashMap<String, (usize, Vec<Duration>)> = HashMap::new();
    let mut totals = Vec::with_capacity(runs.len());
    for run in runs {
        let mut sums: HashMap<&str, (usize, Duration)> = HashMap::new();
        for t in run {
            let e = sums.entry(t.op.as_str()).or_default();
            e.0 += 1;
            e.1 += t.time;
        }
        totals.push(run.iter().map(|t| t.time).sum::<Duration>());
        for (op, (n, d)) in sums {
            let e = per_type.entry(op.to_string()).or_default();
            e.0 = n;
            e.1.push(d);
        }
    }
    totals.sort();
    let total = quantile(&totals, 0.5).max(f64::MIN_POSITIVE);
    let mut out: Vec<OpShare> = per_type
        .into_iter()
        .map(|(op, (nodes, mut d))| {
            d.sort();
            let p50_ms = quantile(&d, 0.5);
            OpShare {
                op,
                nodes,
                p50_ms,
                share: p50_ms / total,
            }
        })
        .collect();
    out.sort_by(|a, b| b.p50_ms.total_cmp(&a.p50_ms).then_with(|| a.op.cmp(&b.op)));
    out
}

#[derive(Serialize)]
struct Machine {
    wginfer: String,
    os: String,
    arch: String,
    cpu: String,
    cores: usize,
    adapters: Vec<HashMap<String, String>>,
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let adapters = wginfer::backend::gpu::list_adapters()
        .into_iter()
        .map(|a| {
            HashMap::from([
                ("name".to_string(), a.name),
                ("backend".to_string(), a.backend),
                ("device_type".to_string(), a.device_type),
                ("driver".to_string(), a.driver),
                ("driver_info".to_string(), a.driver_info),
            ])
        })
        .collect();
    Machine {
        wginfer: env!("CARGO_PKG_VERSION").to_string(),
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpu,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        adapters,
    }
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

/// A one-node model: `y = x · Wᵀ` with `W [n, n]` in `format`.
fn op_model(n: usize, format: Option<WeightFormat>, rng: &mut CaseRng) -> Result<Model> {
    let w = rng.tensor(&[n, n], -1.0, 1.0);
    let x_info = ValueInfo {
        name: "x".into(),
        ty: ValueType {
            dtype: DType::F32,
            shape: vec![Dim::Sym("batch".into()), Dim::Known(n)],
        },
    };
    let y_info = ValueInfo {
        name: "y".into(),
        ty: x_info.ty.clone(),
    };
    let mut params = HashMap::new();
    let mut infos = Vec::new();
    let mut inputs = vec!["x".to_string()];
    let op: Arc<dyn wginfer::ops::Op> = match format {
        None => {
            infos.push(ParamInfo::plain("w", DType::F32, vec![n, n]));
            params.insert("w".to_string(), w);
            inputs.push("w".into());
            Arc::new(Linear)
        }
        Some(f) => {
            let packed = quant::quantize_weight(&f, w.as_f32()?, n, n)?;
            for (suffix, t) in f.tensor_names().iter().zip(packed) {
                let name = format!("w.{suffix}");
                infos.push(ParamInfo {
                    name: name.clone(),
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    format: f.name(),
                });
                params.insert(name.clone(), t);
                inputs.push(name);
            }
            Arc::new(QLinear {
                format: f,
                in_features: n,
                out_features: n,
            })
        }
    };
    let node = Node {
        name: "matmul".into(),
        op,
        inputs,
        outputs: vec!["y".into()],
    };
    let graph = Graph::new(format!("matmul {n}"), vec![x_info], vec![y_info], infos, vec![node])?;
    Ok(Model::new(graph, params)?)
}

/// A random input batch for every graph input: the symbolic dimension the
/// first input starts with takes `batch`, any other symbolic one `seq`.
fn inputs_for(model: &Model, batch: usize, seq: usize, rng: &mut CaseRng) -> Result<Vec<(String, Tensor)>> {
    let g = model.graph();
    let batch_dim = g.inputs().first().and_then(|i| i.ty.shape.first()).cloned();
    g.inputs()
        .iter()
        .map(|i| {
            let shape: Vec<usize> =
                i.ty.shape
                    .iter()
                    .map(|d| match d.known() {
                        Some(n) => n,
                        None if Some(d) == batch_dim.as_ref() => batch,
                        None => seq,
                    })
                    .collect();
            // Integer inputs (token ids, masks, positions) are ones: a valid
            // index and a mask that keeps every token.
            let t = if i.ty.dtype == DType::F32 {
                rng.tensor(&shape, 0.0, 1.0)
            } else {
                Tensor::from_vec(shape.clone(), vec![1f32; shape.iter().product()])?.cast(i.ty.dtype)
            };
            Ok((i.name.clone(), t))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn measure(
    subject: &str,
    model: &Model,
    device_name: &str,
    format: &str,
    batch: usize,
    inputs: &[(String, Tensor)],
    flops: Option<f64>,
    args: &Args,
    bar: &ProgressBar,
) -> Result<Record> {
    let device: Device = device_name.parse().map_err(|e: String| anyhow!(e))?;
    let session = Session::new(model, device).with_context(|| format!("compiling for {device_name}"))?;
    for _ in 0..args.warmup {
        session.run(inputs.iter().cloned())?;
    }
    let budget = Duration::from_secs_f64(args.time.max(0.0));
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < args.count.max(1) && (times.is_empty() || start.elapsed() < budget) {
        let run_inputs = inputs.to_vec();
        let t0 = Instant::now();
        session.run(run_inputs)?;
        times.push(t0.elapsed());
        bar.tick();
    }
    times.sort();
    // Kernel time from timestamp queries, in separate runs so that the
    // profiling's extra copy and map stay out of the end-to-end figures.
    let mut kernel = Vec::new();
    if session.gpu_plan(None).is_some() {
        for _ in 0..times.len().clamp(3, 30) {
            match session.run_profiled(inputs.to_vec())? {
                (_, Some(d)) => kernel.push(d),
                (_, None) => break,
            }
            bar.tick();
        }
    }
    kernel.sort();
    // Per-node times, in separate runs (the timing calls stay out of the
    // end-to-end figures); CPU sessions only.
    let mut op_runs = Vec::new();
    if args.ops && session.gpu_plan(None).is_none() {
        for _ in 0..times.len().clamp(3, 30) {
            if let (_, Some(t)) = session.run_op_times(inputs.to_vec())? {
                op_runs.push(t);
            }
            bar.tick();
        }
    }
    let kernel_p50_ms = (!kernel.is_empty()).then(|| quantile(&kernel, 0.5));
    let p50_ms = quantile(&times, 0.5);
    let mean = times.iter().sum::<Duration>().as_secs_f64() / times.len() as f64;
    Ok(Record {
        subject: subject.to_string(),
        device: device_name.to_string(),
        backend: session.backend(),
        format: format.to_string(),
        batch,
        runs: times.len(),
        min_ms: quantile(&times, 0.0),
        p50_ms,
        p90_ms: quantile(&times, 0.9),
        p99_ms: quantile(&times, 0.99),
        mean_ms: mean * 1e3,
        items_per_s: batch as f64 / mean,
        gflops: flops.map(|f| f / mean / 1e9),
        speedup_vs_cpu: None,
        kernel_p50_ms,
        kernel_share: kernel_p50_ms.map(|k| k / p50_ms),
        ops: (!op_runs.is_empty()).then(|| op_shares(&op_runs)),
    })
}

pub fn run(args: &Args) -> Result<()> {
    let gguf = args
        .model
        .as_deref()
        .filter(|m| m.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")));
    if gguf.is_some() || args.synthetic.is_some() {
        let b = super::bench_decoder::DecoderBench {
            model: gguf,
            synthetic: args.synthetic.as_deref(),
            weights: &args.weights,
            devices: &args.devices,
            threads: &args.threads,
            prompt_tokens: args.prompt_tokens,
            gen_tokens: args.gen_tokens,
            repetitions: args.repetitions.max(1),
            batches: &args.seqs,
        };
        return super::bench_decoder::run(&b, args.json.as_deref());
    }
    let mut rng = CaseRng::new(2026);
    let formats: Vec<(String, Option<WeightFormat>)> = args
        .format
        .iter()
        .map(|f| {
            if f == "f32" {
                Ok((f.clone(), None))
            } else {
                f.parse::<WeightFormat>()
                    .map(|w| (f.clone(), Some(w)))
                    .map_err(|e| anyhow!(e))
            }
        })
        .collect::<Result<_>>()?;
    // (subject, format label, model, batch, inputs, flops)
    type Job = (String, String, Arc<Model>, usize, Vec<(String, Tensor)>, Option<f64>);
    let mut jobs: Vec<Job> = Vec::new();
    match (&args.op, &args.model) {
        (Some(op), None) => {
            if op != "matmul" {
                bail!("--op supports `matmul` (a square linear layer, any --format)");
            }
            for &n in &args.sizes {
                for (label, f) in &formats {
                    let model = Arc::new(op_model(n, *f, &mut rng)?);
                    let inputs = inputs_for(&model, n, args.seq, &mut rng)?;
                    jobs.push((
                        format!("matmul {n}³"),
                        label.clone(),
                        model,
                        n,
                        inputs,
                        Some(2.0 * (n * n * n) as f64),
                    ));
                }
            }
        }
        (None, Some(path)) => {
            let base = load_model(path)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut subject = if base.graph().name().is_empty() {
                name
            } else {
                base.graph().name().to_string()
            };
            let g = base.graph();
            let batch_dim = g.inputs().first().and_then(|i| i.ty.shape.first());
            if g.inputs()
                .iter()
                .flat_map(|i| &i.ty.shape)
                .any(|d| d.known().is_none() && Some(d) != batch_dim)
            {
                subject = format!("{subject} seq {}", args.seq);
            }
            for (label, f) in &formats {
                let model = match f {
                    None => Arc::new(base.clone()),
                    Some(f) => Arc::new(quantize(&base, &QuantizeOptions::new(*f), |_, _| {})?.0),
                };
                for &b in &args.batch {
                    let inputs = inputs_for(&model, b, args.seq, &mut rng)?;
                    jobs.push((subject.clone(), label.clone(), model.clone(), b, inputs, None));
                }
            }
        }
        _ => bail!("give a MODEL or --op matmul (not both)"),
    }
    let total = jobs.len() * args.devices.len();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:30} {pos}/{len} configurations {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut records = Vec::new();
    for device in &args.devices {
        for (subject, format, model, batch, inputs, flops) in &jobs {
            bar.set_message(format!("{device} {format} {batch}"));
            let r = measure(subject, model, device, format, *batch, inputs, *flops, args, &bar)?;
            records.push(r);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    // Speed-up against the CPU backend for the same subject, format and batch.
    let cpu: HashMap<(String, String, usize), f64> = records
        .iter()
        .filter(|r| r.backend == "cpu")
        .map(|r| ((r.subject.clone(), r.format.clone(), r.batch), r.mean_ms))
        .collect();
    for r in &mut records {
        r.speedup_vs_cpu = cpu
            .get(&(r.subject.clone(), r.format.clone(), r.batch))
            .map(|c| c / r.mean_ms);
    }
    print_table(&records, args.op.is_some());
    if let Some(p) = &args.json {
        let doc = serde_json::json!({ "machine": machine(), "results": records });
        std::fs::write(p, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &args.plot {
        let title = records.first().map(|r| r.subject.clone()).unwrap_or_default();
        std::fs::write(p, svg::chart(&title, &records, args.op.is_some()))
            .with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn print_table(records: &[Record], op: bool) {
    let mut devices: Vec<(&str, &str)> = Vec::new();
    for r in records {
        if !devices.contains(&(r.device.as_str(), r.backend.as_str())) {
            devices.push((&r.device, &r.backend));
        }
    }
    for (device, backend) in devices {
        println!("\n{device} ({backend})");
        let size = if op { "size" } else { "batch" };
        let gpu = records
            .iter()
            .any(|r| r.device == device && r.backend == backend && r.kernel_p50_ms.is_some());
        print!(
            "  {:<16} {:<12} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>12} {:>9} {:>8}",
            "subject", "format", size, "runs", "min ms", "p50 ms", "p90 ms", "p99 ms", "items/s", "GFLOP/s", "vs cpu"
        );
        if gpu {
            print!(" {:>10} {:>7}", "kernel ms", "kernel%");
        }
        println!();
        for r in records.iter().filter(|r| r.device == device && r.backend == backend) {
            print!(
                "  {:<16} {:<12} {:>6} {:>6} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>12.0} {:>9} {:>8}",
                r.subject,
                r.format,
                r.batch,
                r.runs,
                r.min_ms,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.items_per_s,
                r.gflops.map(|g| format!("{g:.2}")).unwrap_or_else(|| "-".into()),
                r.speedup_vs_cpu
                    .map(|s| format!("{s:.2}x"))
                    .unwrap_or_else(|| "-".into()),
            );
            if gpu {
                print!(
                    " {:>10} {:>7}",
                    r.kernel_p50_ms.map(|k| format!("{k:.4}")).unwrap_or_else(|| "-".into()),
                    r.kernel_share
                        .map(|k| format!("{:.0}%", 100.0 * k))
                        .unwrap_or_else(|| "-".into()),
                );
            }
            println!();
        }
    }
    for r in records.iter().filter(|r| r.ops.is_some()) {
        println!(
            "\n{} {} batch {} on {}: time per op type",
            r.subject, r.format, r.batch, r.device
        );
        println!("  {:<24} {:>6} {:>10} {:>7}", "op", "nodes", "p50 ms", "share");
        for o in r.ops.iter().flatten() {
            println!(
                "  {:<24} {:>6} {:>10.3} {:>6.1}%",
                o.op,
                o.nodes,
                o.p50_ms,
                100.0 * o.share
            );
        }
    }
}
