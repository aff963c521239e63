//! ONNX's own backend node tests (shipped in the `onnx` Python package under
//! `onnx/backend/test/data/node/`: `model.onnx` plus
//! `test_data_set_*/{input,output}_N.pb`), run for every op type the importer
//! claims, on `cpu` and `cpu-reference` (and on a GPU adapter when one
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
//! or `target/onnx-venv`; without it the test prints `SKIPPED: <reason>` and
//! passes, unless `WGINFER_REQUIRE_ONNX=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use wginfer::backend::gpu::{AdapterChoice, GpuContext};
use wginfer::model::onnx::{import_bytes, proto, read_tensor_proto, ImportOptions};
use wginfer::{DType, Device, Session, Tensor};

/// The op types the importer claims.
const CLAIMED: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Gelu",
    "Softmax",
    "LogSoftmax",
    "MatMul",
    "Gemm",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Identity",
    "Dropout",
    "Cast",
    "Conv",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "LayerNormalization",
    "Constant",
    "Shape",
    "Gather",
];

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
    Pass,
    Fail(String),
    Unsupported(String),
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
        for device in devices {
            let session = match Session::new(&m, device.clone()) {
                Ok(s) => s,
                Err(e) => return Outcome::Fail(format!("{device}: session: {e}")),
            };
            let got = match session.run(feeds.clone()) {
                Ok(g) => g,
                Err(e) => return Outcome::Fail(format!("{device}: run: {e}")),
            };
            for (name, want) in output_names.iter().zip(&wants) {
                let Some(g) = got.get(*name) else {
                    return Outcome::Fail(format!("{device}: no output `{name}`"));
                };
                if let Err(e) = close(g, want) {
                    return Outcome::Fail(format!("{device}: output `{name}`: {e}"));
                }
            }
        }
    }
    Outcome::Pass
}

#[derive(Default)]
struct Count {
    pass: usize,
    fail: Vec<String>,
    unsupported: Vec<String>,
}

#[test]
fn onnx_backend_node_tests() {
    let root = match data_dir() {
        Ok(p) => p,
        Err(reason) => {
            if std::env::var("WGINFER_REQUIRE_ONNX").is_ok_and(|v| v == "1") {
                panic!("WGINFER_REQUIRE_ONNX=1 but {reason}");
            }
            println!("SKIPPED: {reason}");
            return;
        }
    };
    let mut devices = vec![Device::Cpu, Device::CpuReference];
    // A GPU adapter (lavapipe in CI) if there is one; held for the whole run.
    let mut gpu_ctx: Option<Arc<GpuContext>> = None;
    for choice in [AdapterChoice::Software, AdapterChoice::Auto] {
        if let Ok(ctx) = GpuContext::shared(&choice) {
            println!(
                "GPU: also running on {} ({})",
                ctx.adapter().name,
                ctx.adapter().backend
            );
            devices.push(Device::Gpu(choice));
            gpu_ctx = Some(ctx);
            break;
        }
    }
    if gpu_ctx.is_none() {
        println!("SKIPPED (GPU part): no wgpu adapter (software or hardware)");
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    dirs.sort();
    let mut per_op: BTreeMap<String, Count> = BTreeMap::new();
    let mut multi = Count::default();
    for dir in &dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(bytes) = std::fs::read(dir.join("model.onnx")) else {
            continue;
        };
        let Ok(model) = proto::ModelProto::decode(bytes.as_slice()) else {
            continue;
        };
        let Some(graph) = &model.graph else { continue };
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        let single = ops.len() == 1;
        if single && !CLAIMED.contains(&ops[0]) {
            continue;
        }
        if !single && (ops.is_empty() || !ops.iter().all(|o| CLAIMED.contains(o))) {
            continue;
        }
        let count = if single {
            per_op.entry(ops[0].to_string()).or_default()
        } else {
            &mut multi
        };
        match run_test(dir, &model, &bytes, &devices) {
            Outcome::Pass => count.pass += 1,
            Outcome::Fail(why) => count.fail.push(format!("{name}: {why}")),
            Outcome::Unsupported(why) => count.unsupported.push(format!("{name}: {why}")),
        }
    }
    println!("\nONNX node tests from {}", root.display());
    println!(
        "devices: {}",
        devices.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    );
    println!("{:<22} {:>5} {:>5} {:>12}", "op", "pass", "fail", "unsupported");
    let (mut p, mut f, mut u) = (0, 0, 0);
    for (op, c) in &per_op {
        println!("{op:<22} {:>5} {:>5} {:>12}", c.pass, c.fail.len(), c.unsupported.len());
        p += c.pass;
        f += c.fail.len();
        u += c.unsupported.len();
    }
    println!("{:<22} {p:>5} {f:>5} {u:>12}", "total (single-node)");
    println!(
        "{:<22} {:>5} {:>5} {:>12}   (expanded function bodies; informational)",
        "multi-node",
        multi.pass,
        multi.fail.len(),
        multi.unsupported.len()
    );
    for op in CLAIMED {
        if !per_op.contains_key(*op) {
            println!("note: no single-node test found for {op}");
        }
    }
    for (op, c) in &per_op {
        for why in &c.unsupported {
            println!("unsupported [{op}] {why}");
        }
    }
    for why in &multi.fail {
        println!("multi-node FAIL {why}");
    }
    let failures: Vec<&String> = per_op.values().flat_map(|c| &c.fail).collect();
    for why in &failures {
        println!("FAIL {why}");
    }
    assert!(
        failures.is_empty(),
        "{} node tests of claimed ops failed (listed above)",
        failures.len()
    );
}
