//! The `wginfer` command, run as a user would.

mod common;

use std::process::Command;

use common::root;

fn wginfer(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wginfer"))
        .args(args)
        .current_dir(root(""))
        .env_remove("WGINFER_DEVICE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MODEL: &str = "models/digits-mlp/model.safetensors";
const DATA: &str = "models/digits-mlp/digits_test.safetensors";

#[test]
fn inspect_shows_graph_and_parameters() {
    let (ok, out, err) = wginfer(&["inspect", MODEL]);
    assert!(ok, "{err}");
    // 64*128+128 + 128*64+64 + 64*10+10 = 17,226 parameters, all f32.
    assert!(out.contains("17,226"), "{out}");
    assert!(out.contains("input                f32[batch, 64]"), "{out}");
    assert!(out.contains("Softmax"), "{out}");
    assert!(out.contains("67.3 KiB"), "{out}");
}

#[test]
fn eval_reports_accuracy_and_latency() {
    let (ok, out, err) = wginfer(&["eval", MODEL, "--data", DATA, "--batch-size", "64"]);
    assert!(ok, "{err}");
    assert!(out.contains("accuracy  0.9756  (439/450)"), "{out}");
    assert!(out.contains("per class"), "{out}");
    assert!(out.contains("latency per batch of 64"), "{out}");
}

#[test]
fn run_prints_and_writes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    // A one-row .npy file: the first test sample, written by hand (header + f32 data).
    let data = wginfer::model::load_tensors(root(DATA)).unwrap();
    let first = data
        .iter()
        .find(|(n, _)| n == "input")
        .unwrap()
        .1
        .slice_rows(0, 1)
        .unwrap();
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 64), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&first.to_le_bytes());
    std::fs::write(&x, bytes).unwrap();

    let (ok, out, err) = wginfer(&["run", MODEL, "--input", x.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("probabilities: f32[1, 10]"), "{out}");

    let y = dir.path().join("y.safetensors");
    let (ok, _, err) = wginfer(&[
        "run",
        MODEL,
        "--input",
        &format!("input={}", x.display()),
        "-o",
        y.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let outs = wginfer::model::load_tensors(&y).unwrap();
    let probs = outs
        .iter()
        .find(|(n, _)| n == "probabilities")
        .unwrap()
        .1
        .as_f32()
        .unwrap()
        .to_vec();
    let reference = wginfer::model::load_tensors(root("models/digits-mlp/reference.safetensors")).unwrap();
    let want = &reference[0].1.as_f32().unwrap()[..10];
    for (a, b) in probs.iter().zip(want) {
        assert!((a - b).abs() <= 1e-5, "{probs:?} vs {want:?}");
    }
}

/// `run -o` writes the format its extension names: `.npy` for one output
/// (read back with the crate's reader), `.safetensors` for several; other
/// names, and `.npy` for several outputs, are refused with the choices.
#[test]
fn run_output_format_follows_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    let relu = dir.path().join("relu.safetensors");
    relu_model(&relu);
    let y = dir.path().join("y.npy");
    let (ok, out, err) = wginfer(&[
        "run",
        relu.to_str().unwrap(),
        "--input",
        DATA,
        "-o",
        y.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote 1 output(s)"), "{out}");
    assert!(std::fs::read(&y).unwrap().starts_with(b"\x93NUMPY"));
    let back = wginfer::model::load_tensors(&y).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].1.shape(), &[450, 64]);
    let data = wginfer::model::load_tensors(root(DATA)).unwrap();
    let x = data
        .iter()
        .find(|(n, _)| n == "input")
        .unwrap()
        .1
        .as_f32()
        .unwrap()
        .to_vec();
    let got = back[0].1.as_f32().unwrap();
    assert!(got.iter().zip(&x).all(|(g, x)| *g == x.max(0.0)));
    for bad in ["y.npz", "y.txt", "y"] {
        let p = dir.path().join(bad);
        let (ok, _, err) = wginfer(&["run", MODEL, "--input", DATA, "-o", p.to_str().unwrap()]);
        assert!(!ok, "{bad}");
        assert!(err.contains(".safetensors") && err.contains(".npy"), "{bad}: {err}");
        assert!(!p.exists(), "{bad} was written");
    }
    // Two outputs do not fit one .npy; a .safetensors file takes both.
    let two = dir.path().join("two.npy");
    let (ok, _, err) = wginfer(&["run", MODEL, "--input", DATA, "-o", two.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("2 outputs (logits, probabilities)") && err.contains(".safetensors"),
        "{err}"
    );
    assert!(!two.exists());
}

/// A model with one output: `output = relu(input)`, input f32[batch, 64].
fn relu_model(path: &std::path::Path) {
    use wginfer::graph::{Graph, GraphDoc};
    let doc: GraphDoc = serde_json::from_value(serde_json::json!({
        "format": "wginfer.graph", "version": 1, "name": "relu",
        "inputs": [{"name": "input", "dtype": "f32", "shape": ["batch", 64]}],
        "outputs": [{"name": "output", "dtype": "f32", "shape": ["batch", 64]}],
        "nodes": [{"name": "relu", "op": "Relu", "inputs": ["input"], "outputs": ["output"]}]
    }))
    .unwrap();
    let model = wginfer::Model::new(Graph::from_doc(&doc).unwrap(), Default::default()).unwrap();
    model.save(path).unwrap();
}

#[test]
fn errors_are_clear_and_exit_nonzero() {
    let (ok, _, err) = wginfer(&["inspect", "no/such/model.safetensors"]);
    assert!(!ok);
    assert!(err.contains("no/such/model.safetensors"), "{err}");

    let (ok, _, err) = wginfer(&["eval", MODEL, "--data", DATA, "--label-name", "nope"]);
    assert!(!ok);
    assert!(
        err.contains("no label tensor `nope`") && err.contains("label i64[450]"),
        "{err}"
    );

    let (ok, _, err) = wginfer(&["eval", MODEL, "--data", MODEL]);
    assert!(!ok);
    assert!(err.contains("no input tensor"), "{err}");

    let (ok, _, err) = wginfer(&["--device", "tpu", "inspect", MODEL]);
    assert!(!ok);
    assert!(err.contains("unknown device `tpu`"), "{err}");

    let (ok, _, err) = wginfer(&["run", MODEL, "--input", MODEL]);
    assert!(!ok);
    assert!(err.contains("has no tensor named like a model input (input)"), "{err}");

    // A data file with extra tensors: the ones named like inputs are used.
    let (ok, out, err) = wginfer(&["run", MODEL, "--input", DATA]);
    assert!(ok, "{err}");
    assert!(out.contains("probabilities: f32[450, 10]"), "{out}");
}

#[test]
fn bench_writes_table_json_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let (json, svg) = (dir.path().join("b.json"), dir.path().join("b.svg"));
    let (ok, out, err) = wginfer(&[
        "bench",
        MODEL,
        "--devices",
        "cpu",
        "--batch",
        "1,8",
        "--format",
        "f32,int8",
        "--time",
        "0.05",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("p99 ms") && out.contains("int8"), "{out}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "2 formats x 2 batches");
    for r in results {
        assert!(r["p50_ms"].as_f64().unwrap() > 0.0 && r["runs"].as_u64().unwrap() >= 1);
        assert!(r["p50_ms"].as_f64() <= r["p99_ms"].as_f64());
    }
    assert!(doc["machine"]["cores"].as_u64().unwrap() >= 1);
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("median latency (ms") && chart.contains("cpu (cpu)"));

    let (ok, out, err) = wginfer(&[
        "bench", "--op", "matmul", "--sizes", "64", "--format", "f32,w8a8", "--time", "0.05",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("matmul 64³") && out.contains("w8a8"), "{out}");

    // --ops: where a CPU run's time goes, per op type, in the table and the JSON.
    let (ok, out, err) = wginfer(&[
        "bench",
        MODEL,
        "--batch",
        "4",
        "--time",
        "0.05",
        "--ops",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("time per op type") && out.contains("Linear"), "{out}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ops = doc["results"][0]["ops"].as_array().unwrap();
    let nodes: u64 = ops.iter().map(|o| o["nodes"].as_u64().unwrap()).sum();
    let inspect = wginfer(&["inspect", MODEL]).1;
    let graph_nodes: u64 = inspect
        .lines()
        .find_map(|l| l.strip_prefix("nodes (")?.strip_suffix(')')?.parse().ok())
        .unwrap();
    assert_eq!(nodes, graph_nodes, "every node counted once:\n{inspect}");
    let mut prev = f64::INFINITY;
    for o in ops {
        let (ms, share) = (o["p50_ms"].as_f64().unwrap(), o["share"].as_f64().unwrap());
        assert!(ms >= 0.0 && ms <= prev && (0.0..=1.5).contains(&share), "{o}");
        prev = ms;
    }

    let (ok, _, err) = wginfer(&["bench", "--op", "conv"]);
    assert!(!ok && err.contains("--op supports `matmul`"), "{err}");
}

#[test]
fn adapters_and_plans() {
    let (ok, out, err) = wginfer(&["adapters"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("MAX STORAGE") || out.contains("no wgpu adapter found"),
        "{out}"
    );
    let (ok, out, err) = wginfer(&["inspect", MODEL, "--plan"]);
    assert!(ok, "{err}");
    assert!(out.contains("plan on cpu: 6 nodes"), "{out}");
}
