//! W8A8 ONNX graphs (activations quantized at run time: `ReduceMin`/
//! `ReduceMax` or `DynamicQuantizeLinear`, then `MatMulInteger`) imported
//! and run on `cpu`, `cpu-reference` and a software GPU adapter (the integer
//! ops there on the CPU fallback):
//! - files onnxruntime's own `quantize_dynamic` wrote
//!   (`models/export/ort_dynamic.py`: the shipped digits MLP, and MiniLM
//!   with `WGINFER_MINILM_DIR`) match onnxruntime's outputs; needs
//!   `WGINFER_ORT_PYTHON` (a python with onnxruntime and onnx), skipped
//!   visibly without it;
//! - wginfer's own W8A8 export of the digits MLP (with and without outlier
//!   channels) reads back as a graph that computes what the W8A8 model does;
//! - an imported graph exports again (the integer ops as themselves) and
//!   reads back with its names and outputs; onnxruntime runs that second
//!   export of wginfer's W8A8 graph (`models/export/check_ort.py`) within
//!   1e-5 of wginfer.
//!
//! Without a GPU adapter the GPU part is skipped with a visible line, or
//! fails under `WGINFER_REQUIRE_GPU=1`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use wginfer::backend::gpu::{GpuContext, Placement};
use wginfer::model::onnx::export::{export_onnx, OnnxExportOptions};
use wginfer::model::onnx::import_file;
use wginfer::model::{load_tensors, save_tensors};
use wginfer::optimize::{quantize, QuantizeOptions};
use wginfer::quant::WeightFormat;
use wginfer::{AdapterChoice, Device, Model, Session, Tensor};

const ROWS: usize = 64;

/// wginfer against onnxruntime on the same file: the codes are the same
/// (the quantization is exact), so only the f32 accumulation order of the
/// scales differs.
const ORT_TOL: f32 = 1e-5;

/// MiniLM's unit-length embeddings: onnxruntime fuses the graph
/// (DynamicQuantizeMatMul, SkipLayerNormalization, ...), rounding floats in
/// another order, and a last-bit difference moves an activation code by
/// one step and on through the layers (as for wginfer's own W8A8 export in
/// `tests/export_onnx.rs`). How many codes move depends on the CPU's float
/// kernels: measured 6.4e-4 on an AVX2 CPU, 1.9e-2 on an AVX-512 one (where
/// wginfer's own reference backend is as far from its fast one).
const MINILM_TOL: f32 = 5e-2;

/// The lowest cosine similarity of an embedding to onnxruntime's: the two
/// must agree better than either agrees with the f32 model (cosine about
/// 0.986, the error of per-tensor 8-bit activations). Measured: 0.9956 on
/// the AVX-512 CPU.
const MINILM_MIN_COSINE: f32 = 0.99;

/// A software GPU session divides within 2.5 ULP (WGSL's promise), which can
/// move an activation on a .5 boundary to the next code: one step of a
/// hidden layer changes a digits probability by up to about 1e-3.
const GPU_TOL: f32 = 5e-3;

fn digits() -> Tensor {
    let data: HashMap<String, Tensor> = load_tensors(common::root("models/digits-mlp/digits_test.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    data["input"].slice_rows(0, ROWS).unwrap()
}

/// `cpu`, `cpu-reference`, and the software adapter when one opens.
fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu, Device::CpuReference];
    match GpuContext::shared(&AdapterChoice::Software) {
        Ok(_) => devices.push(Device::Gpu(AdapterChoice::Software)),
        Err(e) => common::skip_or_fail(
            "WGINFER_REQUIRE_GPU",
            &format!("GPU part: no software wgpu adapter ({e})"),
        ),
    }
    devices
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.to_f32_vec()
        .iter()
        .zip(b.to_f32_vec())
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// `model`'s `probabilities` for `x` on `device`; on a GPU, the nodes its
/// plan runs on the CPU are printed.
fn probabilities(model: &Model, device: &Device, x: &Tensor) -> Tensor {
    let s = Session::new(model, device.clone()).unwrap_or_else(|e| panic!("{device}: {e}"));
    if let Some(plan) = s.gpu_plan(Some(&[x.shape().to_vec()])) {
        let plan = plan.unwrap();
        let on_cpu: Vec<&str> = plan
            .nodes
            .iter()
            .filter(|n| matches!(n.placement, Placement::Cpu { .. }))
            .map(|n| n.op.as_str())
            .collect();
        println!("  {device}: {} nodes, on the CPU: {on_cpu:?}", plan.nodes.len());
    }
    let mut out = s.run([("input", x.clone())]).unwrap();
    out.remove("probabilities").unwrap()
}

/// `model` exported to `path` and imported again: the same input and output
/// names, and the same outputs for `x` on the CPU.
fn reexported(model: &Model, path: &Path, x: &Tensor) -> Model {
    export_onnx(model, path, &OnnxExportOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let again = import_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let names = |m: &Model| {
        (
            m.graph().inputs().iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
            m.graph().outputs().iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(names(&again), names(model), "{}", path.display());
    let d = max_diff(
        &probabilities(&again, &Device::Cpu, x),
        &probabilities(model, &Device::Cpu, x),
    );
    assert!(
        d <= 1e-7,
        "{}: exported again, the outputs moved by {d:e}",
        path.display()
    );
    again
}

fn tolerance(device: &Device, cpu: f32) -> f32 {
    if matches!(device, Device::Gpu(_)) {
        GPU_TOL
    } else {
        cpu
    }
}

#[test]
fn quantize_dynamic_files_from_onnxruntime_match_onnxruntime() {
    let Some(python) = ort_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(python)
        .arg(common::root("models/export/ort_dynamic.py"))
        .arg(common::root("models/digits-cnn/digits_mlp.onnx"))
        .arg(common::root("models/digits-mlp/digits_test.safetensors"))
        .arg(ROWS.to_string())
        .arg(dir.path())
        .output()
        .expect("running ort_dynamic.py");
    assert!(
        out.status.success(),
        "ort_dynamic.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x = digits();
    let devices = devices();
    for name in ["u8-tensor", "u8-channel", "s8-channel-reduced"] {
        let model = import_file(&dir.path().join(format!("{name}.onnx"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ops: Vec<&str> = model.graph().nodes().iter().map(|n| n.op.op_type()).collect();
        assert_eq!(
            ops.iter().filter(|&&o| o == "MatMulInteger").count(),
            3,
            "{name}: {ops:?}"
        );
        let want =
            wginfer::tensor::read_npy(&std::fs::read(dir.path().join(format!("{name}.out.npy"))).unwrap()).unwrap();
        for device in &devices {
            let got = probabilities(&model, device, &x);
            let d = max_diff(&got, &want);
            println!("{name} on {device}: max |wginfer - onnxruntime| = {d:.2e}");
            let tol = tolerance(device, ORT_TOL);
            assert!(d <= tol, "{name} on {device}: {d:e} > {tol:e}");
        }
        reexported(&model, &dir.path().join(format!("{name}.again.onnx")), &x);
    }
}

/// `WGINFER_ORT_PYTHON`, or `None` after the visible skip.
fn ort_python() -> Option<std::ffi::OsString> {
    let python = std::env::var_os("WGINFER_ORT_PYTHON");
    if python.is_none() {
        common::skip_or_fail(
            "WGINFER_REQUIRE_ORT",
            "set WGINFER_ORT_PYTHON to a python with onnxruntime==1.22.* and onnx (see docs/export.md)",
        );
    }
    python
}

#[test]
fn minilm_from_quantize_dynamic_matches_onnxruntime() {
    let Some(model_dir) = common::minilm::model_dir() else {
        return;
    };
    let Some(python) = ort_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(python)
        .arg(common::root("models/export/ort_dynamic.py"))
        .arg("--minilm")
        .arg(&model_dir)
        .arg(dir.path())
        .output()
        .expect("running ort_dynamic.py");
    assert!(
        out.status.success(),
        "ort_dynamic.py --minilm failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = "minilm-u8-channel";
    let model = import_file(&dir.path().join(format!("{name}.onnx"))).unwrap();
    let r = common::minilm::reference();
    let (n, seq) = (4, r.input_ids.shape()[1]);
    let mut io: Vec<(String, Tensor)> = vec![
        ("input:input_ids".into(), r.input_ids.slice_rows(0, n).unwrap()),
        (
            "input:attention_mask".into(),
            r.attention_mask.slice_rows(0, n).unwrap(),
        ),
        (
            "input:position_ids".into(),
            Tensor::from_vec(vec![seq], (0..seq as i64).collect::<Vec<_>>()).unwrap(),
        ),
    ];
    let s = Session::new(&model, Device::Cpu).unwrap();
    let got = s
        .run(io.iter().map(|(k, t)| (&k["input:".len()..], t.clone())))
        .unwrap();
    let y = got["sentence_embedding"].clone();
    // Against sentence-transformers' f32 embeddings: the error of W8A8 with
    // one activation scale per tensor (measured: lowest cosine 0.986).
    let cos = y
        .to_f32_vec()
        .chunks(y.shape()[1])
        .zip(&r.embeddings)
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
        .fold(1.0f32, f32::min);
    println!("{name}: lowest cosine to the f32 reference embeddings {cos:.5}");
    assert!(cos > 0.97, "{name}: cosine {cos}");
    io.push(("output:sentence_embedding".into(), y));
    io.push(("tolerance".into(), Tensor::from_vec(vec![1], vec![MINILM_TOL]).unwrap()));
    io.push((
        "min_cosine".into(),
        Tensor::from_vec(vec![1], vec![MINILM_MIN_COSINE]).unwrap(),
    ));
    save_tensors(dir.path().join(format!("{name}.io.safetensors")), &io).unwrap();
    check_with_onnxruntime(dir.path());
}

#[test]
fn w8a8_export_reads_back_as_the_w8a8_model() {
    let base = Model::load(common::root("models/digits-mlp/model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let x = digits();
    let devices = devices();
    for outliers in [0, 4] {
        let opts = QuantizeOptions::new(WeightFormat::W8A8 { outliers });
        let (m, _) = quantize(&base, &opts, |_, _| {}).unwrap();
        let path = dir.path().join(format!("w8a8-{outliers}.onnx"));
        export_onnx(&m, &path, &OnnxExportOptions::default()).unwrap();
        let back = import_file(&path).unwrap();
        let ops: Vec<&str> = back.graph().nodes().iter().map(|n| n.op.op_type()).collect();
        assert!(ops.contains(&"MatMulInteger") && ops.contains(&"ReduceMin"), "{ops:?}");
        let want = probabilities(&m, &Device::Cpu, &x);
        for device in &devices {
            let got = probabilities(&back, device, &x);
            let d = max_diff(&got, &want);
            println!("w8a8 with {outliers} outliers, imported, on {device}: max |Δ| to the W8A8 model {d:.2e}");
            // The reference device computes the outlier product in f64.
            let tol = tolerance(device, if outliers > 0 { 1e-5 } else { 1e-6 });
            assert!(d <= tol, "w8a8 {outliers} on {device}: {d:e} > {tol:e}");
        }
        let again_dir = dir.path().join("again");
        std::fs::create_dir_all(&again_dir).unwrap();
        let name = format!("w8a8-{outliers}-again");
        reexported(&back, &again_dir.join(format!("{name}.onnx")), &x);
        let io = vec![
            ("input:input".to_string(), x.clone()),
            ("output:probabilities".to_string(), want),
            (
                "tolerance".to_string(),
                Tensor::from_vec(vec![1], vec![1e-5f32]).unwrap(),
            ),
        ];
        save_tensors(again_dir.join(format!("{name}.io.safetensors")), &io).unwrap();
    }
    check_with_onnxruntime(&dir.path().join("again"));
}

/// Runs `models/export/check_ort.py` over `dir` with `WGINFER_ORT_PYTHON`,
/// or reports the skip.
fn check_with_onnxruntime(dir: &Path) {
    let Some(python) = ort_python() else {
        return;
    };
    let out = Command::new(python)
        .arg(common::root("models/export/check_ort.py"))
        .arg(dir)
        .output()
        .expect("runs WGINFER_ORT_PYTHON");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "onnxruntime check failed:\n{text}");
}
