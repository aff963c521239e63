//! ONNX's own backend node tests (shipped in the `onnx` Python package under
//! `onnx/backend/test/data/node/`: `model.onnx` plus
//! `test_data_set_*/{input,output}_N.pb`), run for every op type the importer
//! claims (its registry, `supported_ops`), on `cpu` and `cpu-reference` (and on a GPU adapter when one
//! exists), with ONNX's tolerances: `|got - want| <= 1e-7 + 1e-3·|want|`.
//!
//! Each single-node test counts under its op type as pass, fail, or
//! unsupported (the importer rejected it: a dtype wginfer lacks, an attribute
//! combination it does not claim, a dynamic shape input); the reasons are
//! printed. Any failure of a claimed op fails the test. Multi-node tests
//! (`*_expanded` function bodies) whose ops are all claimed are run and
//! reported separately, for information.
//!
//! Graph inputs of integer type (shapes, axes, indices) are bound as
//! constants at import ([`ImportOptions::constants`]), as a model exporter
//! would have stored them; float inputs stay run-time inputs.
//!
//! The data is found through `WGINFER_ONNX_NODE_TESTS` (set by `.ci/run`)
//! or `target/onnx-venv`; without it the test writes `SKIPPED: <reason>` to
//! stderr past the harness's capture and passes, unless
//! `WGINFER_REQUIRE_ONNX=1`. Without a GPU adapter the GPU part is skipped
//! the same way, unless `WGINFER_REQUIRE_GPU=1`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use wginfer::backend::gpu::{AdapterChoice, GpuContext, Placement};
use wginfer::model::onnx::{import_bytes, proto, read_tensor_proto, supported_ops, ImportOptions};
use wginfer::{DType, Device, Session, Tensor};

/// Single-node tests of claimed ops that are not run, with the reason
/// (printed with the results). Everything else the importer rejects counts
/// as unsupported, with the importer's reason.
const EXCLUDED: &[(&str, &str)] = &[];

const RTOL: f32 = 1e-3;
const ATOL: f32 = 1e-7;

fn data_dir() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("WGINFER_ONNX_NODE_TESTS") {
        let p = PathBuf::from(p);
        return if p.is_dir() {
            Ok(p)
        } else {
            Err(format!("WGINFER_ONNX_NODE_TESTS={} is not a directory", p.display()))
        };
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/onnx-venv/lib");
    if let Ok(rd) = std::fs::read_dir(&venv) {
        for e in rd.flatten() {
            let p = e.path().join("site-packages/onnx/backend/test/data/node");
            if p.is_dir() {
                return Ok(p);
            }
        }
    }
    Err("ONNX node test data not found: set WGINFER_ONNX_NODE_TESTS to onnx/backend/test/data/node of `pip install onnx==1.22.0` (.ci/run does)".into())
}

enum Outcome {
    /// The importer rejected the model (counts for every device).
    Unsupported(String),
    /// It imported; one result per device, in the order of the devices.
    Ran(Vec<DeviceResult>),
}

/// One device's result on one test.
#[derive(Default)]
struct DeviceResult {
    /// The first mismatch or error, if any.
    fail: Option<String>,
    /// On a GPU session: nodes the plan placed on the CPU (a fallback), with the reason.
    fallback: Option<String>,
    /// Time in session creation and runs.
    time: std::time::Duration,
}

fn close(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!("shape {:?}, want {:?}", got.shape(), want.shape()));
    }
    if got.dtype() != want.dtype() {
        return Err(format!("dtype {}, want {}", got.dtype(), want.dtype()));
    }
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        if (a.is_nan() && b.is_nan()) || a == b {
            continue;
        }
        if (a - b).abs() > ATOL + RTOL * b.abs() || a.is_nan() != b.is_nan() {
            return Err(format!("element {i}: got {a}, want {b}"));
        }
    }
    Ok(())
}

/// Runs one test directory on the given devices.
fn run_test(dir: &Path, model: &proto::ModelProto, bytes: &[u8], devices: &[Device]) -> Outcome {
    let graph = match &model.graph {
        Some(g) => g,
        None => return Outcome::Unsupported("no graph".into()),
    };
    let inits: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input_names: Vec<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !inits.contains(n))
        .collect();
    let output_names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    sets.sort();
    if sets.is_empty() {
        return Outcome::Unsupported("no test_data_set".into());
    }
    let mut results: Vec<DeviceResult> = devices.iter().map(|_| DeviceResult::default()).collect();
    for set in sets {
        let read = |kind: &str, i: usize| -> Result<Tensor, String> {
            let p = set.join(format!("{kind}_{i}.pb"));
            let b = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            read_tensor_proto(&b, &set).map(|(_, t)| t).map_err(|e| e.to_string())
        };
        let mut inputs = Vec::new();
        for i in 0..input_names.len() {
            match read("input", i) {
                Ok(t) => inputs.push(t),
                Err(e) => return Outcome::Unsupported(format!("input data: {e}")),
            }
        }
        let mut wants = Vec::new();
        for i in 0..output_names.len() {
            match read("output", i) {
                Ok(t) => wants.push(t),
                Err(e) => return Outcome::Unsupported(format!("output data: {e}")),
            }
        }
        let mut options = ImportOptions::default();
        let mut feeds = Vec::new();
        for (name, t) in input_names.iter().zip(inputs) {
            if matches!(t.dtype(), DType::I64 | DType::I32 | DType::Bool) {
                options.constants.insert(name.to_string(), t);
            } else {
                feeds.push((name.to_string(), t));
            }
        }
        let m = match import_bytes(bytes, dir, &options) {
            Ok(m) => m,
            Err(e) => return Outcome::Unsupported(e.to_string()),
        };
        for (device, result) in devices.iter().zip(&mut results) {
            if result.fail.is_some() {
                continue;
            }
            let t0 = std::time::Instant::now();
            result.fail = run_on(&m, device, &feeds, &output_names, &wants, &mut result.fallback).err();
            result.time += t0.elapsed();
        }
    }
    Outcome::Ran(results)
}

/// One data set on one device: `Err` on a mismatch or error. Records in
/// `fallback` whether a GPU plan put any node on the CPU.
fn run_on(
    m: &wginfer::Model,
    device: &Device,
    feeds: &[(String, Tensor)],
    output_names: &[&str],
    wants: &[Tensor],
    fallback: &mut Option<String>,
) -> Result<(), String> {
    let session = Session::new(m, device.clone()).map_err(|e| format!("session: {e}"))?;
    let shapes: Vec<Vec<usize>> = session
        .graph()
        .inputs()
        .iter()
        .map(|i| {
            feeds
                .iter()
                .find(|(n, _)| *n == i.name)
                .map(|(_, t)| t.shape().to_vec())
                .unwrap_or_default()
        })
        .collect();
    if let Some(plan) = session.gpu_plan(Some(&shapes)) {
        let plan = plan.map_err(|e| format!("plan: {e}"))?;
        for n in &plan.nodes {
            if let Placement::Cpu { reason } = &n.placement {
                fallback.get_or_insert_with(|| format!("{} ({}): {reason}", n.node, n.op));
            }
        }
    }
    let got = session.run(feeds.to_vec()).map_err(|e| format!("run: {e}"))?;
    for (name, want) in output_names.iter().zip(wants) {
        let g = got.get(*name).ok_or_else(|| format!("no output `{name}`"))?;
        close(g, want).map_err(|e| format!("output `{name}`: {e}"))?;
    }
    Ok(())
}

/// Counts for one op (or the multi-node tests) on one device.
#[derive(Default)]
struct Count {
    pass: usize,
    fail: Vec<String>,
    unsupported: Vec<String>,
    /// GPU: passing tests with a node on the CPU (first reason each).
    fallback: Vec<String>,
}

/// Everything counted over the run: per device, per op; the multi-node
/// tests per device; time per device; the excluded tests with their reasons.
struct Tally {
    devices: Vec<Device>,
    per_op: Vec<BTreeMap<String, Count>>,
    multi: Vec<Count>,
    times: Vec<std::time::Duration>,
    excluded: Vec<String>,
}

impl Tally {
    fn new(devices: Vec<Device>) -> Self {
        Tally {
            per_op: devices.iter().map(|_| BTreeMap::new()).collect(),
            multi: devices.iter().map(|_| Count::default()).collect(),
            times: vec![std::time::Duration::ZERO; devices.len()],
            excluded: Vec::new(),
            devices,
        }
    }

    /// Counts test `name`'s outcome under `op` (`None` for a multi-node test).
    fn record(&mut self, name: &str, op: Option<&str>, outcome: &Outcome) {
        for d in 0..self.devices.len() {
            let count = match op {
                Some(op) => self.per_op[d].entry(op.to_string()).or_default(),
                None => &mut self.multi[d],
            };
            match outcome {
                Outcome::Unsupported(why) => count.unsupported.push(format!("{name}: {why}")),
                Outcome::Ran(results) => {
                    let r = &results[d];
                    self.times[d] += r.time;
                    match &r.fail {
                        Some(why) => count.fail.push(format!("{name}: {}: {why}", self.devices[d])),
                        None => {
                            count.pass += 1;
                            if let Some(f) = &r.fallback {
                                count.fallback.push(format!("{name}: {f}"));
                            }
                        }
                    }
                }
            }
        }
    }

    /// One row: per device pass / fail (and on a GPU how many passes had a
    /// node placed on the CPU), then the unsupported count.
    fn row(&self, label: &str, counts: &[&Count]) {
        let mut line = format!("{label:<22}");
        for (d, c) in self.devices.iter().zip(counts) {
            line += &format!(" | {:>18} {:>4}", c.pass, c.fail.len());
            if matches!(d, Device::Gpu(_)) {
                line += &format!(" {:>14}", format!("({})", c.fallback.len()));
            }
        }
        line += &format!(" | {:>11}", counts[0].unsupported.len());
        println!("{line}");
    }

    /// The table: a row per op, the single-node totals, the multi-node tests.
    fn print_table(&self) {
        let mut header = format!("{:<22}", "op");
        for d in &self.devices {
            let label = d.to_string();
            if matches!(d, Device::Gpu(_)) {
                header += &format!(" | {label:>13} pass fail (cpu fallback)");
            } else {
                header += &format!(" | {label:>13} pass fail");
            }
        }
        header += " | unsupported";
        println!("{header}");
        let mut totals: Vec<Count> = self.devices.iter().map(|_| Count::default()).collect();
        for op in self.per_op[0].keys() {
            let counts: Vec<&Count> = self.per_op.iter().map(|m| &m[op]).collect();
            self.row(op, &counts);
            for (t, c) in totals.iter_mut().zip(&counts) {
                t.pass += c.pass;
                t.fail.extend(c.fail.iter().cloned());
                t.unsupported.extend(c.unsupported.iter().cloned());
                t.fallback.extend(c.fallback.iter().cloned());
            }
        }
        self.row("total (single-node)", &totals.iter().collect::<Vec<_>>());
        self.row("multi-node (info)", &self.multi.iter().collect::<Vec<_>>());
        for (d, t) in self.devices.iter().zip(&self.times) {
            println!("time on {d}: {:.2} s (session creation and runs)", t.as_secs_f64());
        }
    }

    /// The reasons: excluded tests (past the capture), claimed ops without a
    /// test, unsupported tests, CPU fallbacks, multi-node failures.
    fn print_reasons(&self, claimed: &[&str]) {
        for why in &self.excluded {
            let _ = writeln!(std::io::stderr(), "excluded {why}");
        }
        for op in claimed {
            if !self.per_op[0].contains_key(*op) {
                println!("note: no single-node test found for {op}");
            }
        }
        for (op, c) in &self.per_op[0] {
            for why in &c.unsupported {
                println!("unsupported [{op}] {why}");
            }
        }
        for (d, m) in self.devices.iter().zip(&self.per_op) {
            for (op, c) in m {
                for why in &c.fallback {
                    println!("cpu fallback on {d} [{op}] {why}");
                }
            }
        }
        for m in &self.multi {
            for why in &m.fail {
                println!("multi-node FAIL {why}");
            }
        }
    }
}

/// Adds a GPU device (lavapipe in CI) when an adapter opens, and returns
/// its context, to hold for the whole run; without one the GPU part is
/// skipped with a line past the capture, or fails under `WGINFER_REQUIRE_GPU=1`.
fn add_gpu(devices: &mut Vec<Device>) -> Option<Arc<GpuContext>> {
    for choice in [AdapterChoice::Software, AdapterChoice::Auto] {
        if let Ok(ctx) = GpuContext::shared(&choice) {
            println!(
                "GPU: also running on {} ({})",
                ctx.adapter().name,
                ctx.adapter().backend
            );
            devices.push(Device::Gpu(choice));
            return Some(ctx);
        }
    }
    if std::env::var("WGINFER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("WGINFER_REQUIRE_GPU=1 but no wgpu adapter could be opened (install mesa-vulkan-drivers for lavapipe)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED (GPU part): no wgpu adapter (software or hardware)"
    );
    None
}

/// Runs one test directory if its ops are claimed and it is not excluded.
fn run_dir(tally: &mut Tally, dir: &Path, claimed: &[&str]) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Ok(bytes) = std::fs::read(dir.join("model.onnx")) else {
        return;
    };
    let Ok(model) = proto::ModelProto::decode(bytes.as_slice()) else {
        return;
    };
    let Some(graph) = &model.graph else { return };
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    if ops.is_empty() || !ops.iter().all(|o| claimed.contains(o)) {
        return;
    }
    if let Some((_, why)) = EXCLUDED.iter().find(|(test, _)| *test == name) {
        tally.excluded.push(format!("{name}: {why}"));
        return;
    }
    let outcome = run_test(dir, &model, &bytes, &tally.devices);
    let op = if ops.len() == 1 { Some(ops[0]) } else { None };
    tally.record(&name, op, &outcome);
}

#[test]
fn onnx_backend_node_tests() {
    let root = match data_dir() {
        Ok(p) => p,
        Err(reason) => {
            if std::env::var("WGINFER_REQUIRE_ONNX").is_ok_and(|v| v == "1") {
                panic!("WGINFER_REQUIRE_ONNX=1 but {reason}");
            }
            // Past the test harness's capture, so a passing run shows it.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
            return;
        }
    };
    let mut devices = vec![Device::Cpu, Device::CpuReference];
    let _gpu_ctx = add_gpu(&mut devices);
    // The op types the importer claims: its registry.
    let claimed: Vec<&str> = supported_ops().collect();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    dirs.sort();
    let mut tally = Tally::new(devices);
    for dir in &dirs {
        run_dir(&mut tally, dir, &claimed);
    }
    println!("\nONNX node tests from {}", root.display());
    tally.print_table();
    tally.print_reasons(&claimed);
    let failures: Vec<&String> = tally
        .per_op
        .iter()
        .flat_map(|m| m.values())
        .flat_map(|c| &c.fail)
        .collect();
    for why in &failures {
        println!("FAIL {why}");
    }
    assert!(
        failures.is_empty(),
        "{} node tests of claimed ops failed (listed above)",
        failures.len()
    );
}
