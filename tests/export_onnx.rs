//! ONNX export: import(export(m)) computes what m computes on the CPU for
//! the shipped digits MLP and CNN (f32 and quantized by wginfer's own
//! `quantize`) and MiniLM; and onnxruntime, an independent runtime, runs
//! every exported file within tolerance of wginfer's outputs
//! (`models/export/check_ort.py`, run when `WGINFER_ORT_PYTHON` names a
//! python with `onnxruntime` and `onnx`; skipped visibly otherwise).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use wginfer::model::onnx::export::{export_onnx, to_model_proto, ExportError, Int4Export, OnnxExportOptions};
use wginfer::model::onnx::import_file;
use wginfer::model::{load_tensors, save_tensors};
use wginfer::optimize::{quantize, QuantizeOptions};
use wginfer::quant::WeightFormat;
use wginfer::{Device, Model, Session, Tensor};

/// The f32 tolerance (weight-only formats dequantize to the same f32
/// weights in both runtimes, so it holds for them too).
const F32_TOL: f32 = 1e-4;

/// W8A8 quantizes activations at run time, so a float difference in the
/// last bit can move a code by one step and the step on through the
/// layers: wginfer's own fast CPU path and its reference differ by 1.4e-3
/// on MiniLM's unit-length W8A8 embeddings; onnxruntime by 2.9e-3 with its
/// basic graph optimizations and 5.6e-3 with all of them (its fused
/// SkipLayerNormalization, BiasGelu and FusedMatMul round differently);
/// digits: 4.2e-7.
const W8A8_TOL: f32 = 1e-2;

/// The round trip through wginfer's own importer, in every format: the
/// exports spell out wginfer's arithmetic (W8A8's in wginfer's order of f32
/// operations), so only accumulation order differs.
const ROUND_TRIP_TOL: f32 = F32_TOL;

fn digits_inputs(image: bool) -> Vec<(String, Tensor)> {
    let data: HashMap<String, Tensor> = load_tensors(common::root("models/digits-mlp/digits_test.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let x = data["input"].slice_rows(0, 64).unwrap();
    let x = if image {
        x.reshape(vec![64, 1, 8, 8]).unwrap()
    } else {
        x
    };
    vec![("input".to_string(), x)]
}

fn run(model: &Model, inputs: &[(String, Tensor)]) -> std::collections::BTreeMap<String, Tensor> {
    let s = Session::new(model, Device::Cpu).unwrap();
    s.run(inputs.iter().map(|(n, t)| (n.as_str(), t.clone()))).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.to_f32_vec()
        .iter()
        .zip(b.to_f32_vec())
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// One exported case: the file, the inputs and wginfer's outputs saved
/// beside it for the onnxruntime check, and the tolerance.
struct Case {
    name: String,
    model: Model,
    inputs: Vec<(String, Tensor)>,
    opts: OnnxExportOptions,
    tol: f32,
    /// Whether wginfer's importer reads the export back.
    importable: bool,
}

/// `m` quantized by wginfer's `quantize` (with W8A8, its convolutions too).
fn quantized(m: &Model, f: WeightFormat) -> Model {
    quantize(m, &QuantizeOptions::new(f), |_, _| {}).unwrap().0
}

/// The op types of `m`'s nodes.
fn op_types(m: &Model) -> Vec<&'static str> {
    m.graph().nodes().iter().map(|n| n.op.op_type()).collect()
}

fn opts(int4: Int4Export) -> OnnxExportOptions {
    OnnxExportOptions { int4, overwrite: false }
}

/// The digits model `base` as f32 and in every weight format that has an ONNX form.
fn digits_cases(name: &str, base: &Model, image: bool) -> Vec<Case> {
    let inputs = digits_inputs(image);
    let int4 = WeightFormat::Int4 {
        block: 32,
        with_min: false,
    };
    let int4_min = WeightFormat::Int4 {
        block: 32,
        with_min: true,
    };
    let mut variants: Vec<(String, Model, OnnxExportOptions, f32, bool)> = vec![
        ("f32".into(), base.clone(), opts(Int4Export::default()), F32_TOL, true),
        (
            "int4-dq".into(),
            quantized(base, int4),
            opts(Int4Export::DequantizeLinear),
            F32_TOL,
            true,
        ),
        (
            "int4-nbits".into(),
            quantized(base, int4),
            opts(Int4Export::MatMulNBits),
            F32_TOL,
            true,
        ),
        (
            "int4-min-nbits".into(),
            quantized(base, int4_min),
            opts(Int4Export::MatMulNBits),
            F32_TOL,
            true,
        ),
        (
            "w8a8".into(),
            quantized(base, WeightFormat::W8A8 { outliers: 0 }),
            opts(Int4Export::default()),
            W8A8_TOL,
            true,
        ),
    ];
    for f in ["f16", "int8", "int8-affine", "pow2", "pow2-tensor", "binary", "2:4"] {
        let format: WeightFormat = f.parse().unwrap();
        variants.push((
            f.into(),
            quantized(base, format),
            opts(Int4Export::default()),
            F32_TOL,
            true,
        ));
    }
    variants
        .into_iter()
        .map(|(v, model, opts, tol, importable)| Case {
            name: format!("{name}-{}", v.replace(':', "of")),
            model,
            inputs: inputs.clone(),
            opts,
            tol,
            importable,
        })
        .collect()
}

/// Exports a case into `dir`, checks the round trip through wginfer's
/// importer, and saves inputs and outputs for onnxruntime. Returns the
/// largest round-trip difference (`None` when the export is not importable).
fn export_case(dir: &Path, c: &Case) -> Option<f32> {
    let path = dir.join(format!("{}.onnx", c.name));
    export_onnx(&c.model, &path, &c.opts).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let proto = to_model_proto(&c.model, &c.opts).unwrap();
    let graph = proto.graph.as_ref().unwrap();
    for t in &graph.initializer {
        let read =
            graph.node.iter().any(|n| n.input.contains(&t.name)) || graph.output.iter().any(|o| o.name == t.name);
        assert!(
            read,
            "{}: initializer `{}` is written but no node reads it",
            c.name, t.name
        );
    }
    let want = run(&c.model, &c.inputs);
    let mut io: Vec<(String, Tensor)> = c
        .inputs
        .iter()
        .map(|(n, t)| (format!("input:{n}"), t.clone()))
        .collect();
    for o in c.model.graph().outputs() {
        io.push((format!("output:{}", o.name), want[&o.name].clone()));
    }
    io.push(("tolerance".into(), Tensor::from_vec(vec![1], vec![c.tol]).unwrap()));
    save_tensors(dir.join(format!("{}.io.safetensors", c.name)), &io).unwrap();
    if !c.importable {
        return None;
    }
    let back = import_file(&path).unwrap_or_else(|e| panic!("{}: importing the export: {e}", c.name));
    let names = |m: &Model| {
        (
            m.graph().inputs().iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
            m.graph().outputs().iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(names(&back), names(&c.model), "{}: input and output names", c.name);
    if c.opts.int4 == Int4Export::MatMulNBits && c.name.contains("int4") {
        // MatMulNBits of f16-exact scales comes back packed, not as f32.
        let formats: Vec<&str> = back.graph().params().iter().map(|p| p.format.as_str()).collect();
        assert!(
            formats.iter().any(|f| f.starts_with("int4")),
            "{}: imported weight formats {formats:?}",
            c.name
        );
    }
    let got = run(&back, &c.inputs);
    let mut worst = 0.0f32;
    for o in c.model.graph().outputs() {
        let d = max_diff(&got[&o.name], &want[&o.name]);
        assert!(
            d <= ROUND_TRIP_TOL,
            "{}: output {}: round trip differs by {d:e} > {:e}",
            c.name,
            o.name,
            ROUND_TRIP_TOL
        );
        worst = worst.max(d);
    }
    Some(worst)
}

/// Runs `models/export/check_ort.py` over `dir` with `WGINFER_ORT_PYTHON`,
/// or reports the skip.
fn check_with_onnxruntime(dir: &Path) {
    let Some(python) = std::env::var_os("WGINFER_ORT_PYTHON") else {
        common::skip_or_fail(
            "WGINFER_REQUIRE_ORT",
            "set WGINFER_ORT_PYTHON to a python with onnxruntime==1.22.* and onnx (see docs/export.md)",
        );
        return;
    };
    let out = std::process::Command::new(python)
        .arg(common::root("models/export/check_ort.py"))
        .arg(dir)
        .output()
        .expect("runs WGINFER_ORT_PYTHON");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "onnxruntime check failed:\n{text}");
}

fn run_cases(cases: &[Case]) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    for c in cases {
        match export_case(&dir, c) {
            Some(d) => println!("{}: round trip max |Δ| {d:.3e}", c.name),
            None => common::skip(&format!(
                "{}: round trip (wginfer's importer does not read this export); onnxruntime checks it",
                c.name
            )),
        }
    }
    check_with_onnxruntime(&dir);
    dir
}

#[test]
fn digits_mlp_exports_in_every_format() {
    let m = Model::load(common::root("models/digits-mlp/model.safetensors")).unwrap();
    let dir = run_cases(&digits_cases("mlp", &m, false));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn digits_cnn_exports_in_every_format() {
    let m = Model::load(common::root("models/digits-cnn/model.onnx")).unwrap();
    let cases = digits_cases("cnn", &m, true);
    // W8A8 quantizes both convolutions (QConv) and the Linear: the export
    // writes them as ConvInteger and MatMulInteger.
    let w8a8 = cases.iter().find(|c| c.name == "cnn-w8a8").unwrap();
    let ops = op_types(&w8a8.model);
    assert_eq!(ops.iter().filter(|&&o| o == "QConv").count(), 2, "{ops:?}");
    let proto = to_model_proto(&w8a8.model, &w8a8.opts).unwrap();
    let onnx_ops: Vec<&str> = proto
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    assert!(
        onnx_ops.contains(&"ConvInteger") && !onnx_ops.contains(&"Conv"),
        "{onnx_ops:?}"
    );
    let dir = run_cases(&cases);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn minilm_exports_f32_int8_int4_w8a8() {
    let Some(model_dir) = common::minilm::model_dir() else {
        return;
    };
    let m = Model::load(&model_dir).unwrap();
    let r = common::minilm::reference();
    let (n, seq) = (4, r.input_ids.shape()[1]);
    let ids = r.input_ids.slice_rows(0, n).unwrap();
    let mask = r.attention_mask.slice_rows(0, n).unwrap();
    let mut inputs = Vec::new();
    for i in m.graph().inputs() {
        let t = match i.name.as_str() {
            "input_ids" => ids.clone(),
            "attention_mask" => mask.clone(),
            _ if i.ty.rank() == 1 => Tensor::from_vec(vec![seq], (0..seq as i64).collect::<Vec<_>>()).unwrap(),
            other => panic!("MiniLM input {other}"),
        };
        inputs.push((i.name.clone(), t));
    }
    let int4 = WeightFormat::Int4 {
        block: 32,
        with_min: false,
    };
    let mk = |name: &str, model: Model, int4e: Int4Export, tol: f32, importable: bool| Case {
        name: name.into(),
        model,
        inputs: inputs.clone(),
        opts: opts(int4e),
        tol,
        importable,
    };
    let cases = vec![
        mk("minilm-f32", m.clone(), Int4Export::default(), F32_TOL, true),
        mk(
            "minilm-int8",
            quantized(&m, "int8".parse().unwrap()),
            Int4Export::default(),
            F32_TOL,
            true,
        ),
        mk(
            "minilm-int4-dq",
            quantized(&m, int4),
            Int4Export::DequantizeLinear,
            F32_TOL,
            true,
        ),
        mk(
            "minilm-int4-nbits",
            quantized(&m, int4),
            Int4Export::MatMulNBits,
            F32_TOL,
            true,
        ),
        mk(
            "minilm-w8a8",
            quantized(&m, WeightFormat::W8A8 { outliers: 0 }),
            Int4Export::default(),
            W8A8_TOL,
            true,
        ),
    ];
    let dir = run_cases(&cases);
    let _ = std::fs::remove_dir_all(dir);
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Convolutions the digits CNN lacks, as f32 `Conv`s for `quantize`: two
/// groups with strides, dilations and uneven pads; `SAME_UPPER` with a
/// stride and no bias; no pads with a bias; a dynamic batch.
fn conv_stack() -> Model {
    use wginfer::graph::{Graph, Node, ParamInfo, ValueInfo};
    use wginfer::ops::{lookup, Attrs};
    use wginfer::tensor::{DType, Dim, ValueType};
    let mut params = HashMap::new();
    let mut infos = Vec::new();
    let mut param = |name: &str, shape: Vec<usize>| {
        let n = shape.iter().product();
        infos.push(ParamInfo::plain(name, DType::F32, shape.clone()));
        params.insert(
            name.to_string(),
            Tensor::from_vec(shape, values(n, n as u64 + 3)).unwrap(),
        );
    };
    param("w1", vec![6, 2, 3, 2]);
    param("b1", vec![6]);
    param("w2", vec![5, 6, 3, 3]);
    param("w3", vec![3, 5, 2, 2]);
    param("b3", vec![3]);
    let node = |name: &str, op_type: &str, attrs: serde_json::Value, ins: &[&str]| {
        let attrs: Attrs = attrs.as_object().cloned().unwrap_or_default();
        Node {
            name: name.into(),
            op: (lookup(op_type).unwrap().build)(&attrs).unwrap(),
            inputs: ins.iter().map(|s| s.to_string()).collect(),
            outputs: vec![format!("{name}.out")],
        }
    };
    let nodes = vec![
        node(
            "c1",
            "Conv",
            serde_json::json!({"group": 2, "strides": [2, 1], "dilations": [1, 2], "pads": [0, 1, 2, 0]}),
            &["x", "w1", "b1"],
        ),
        node("r1", "Relu", serde_json::json!({}), &["c1.out"]),
        node(
            "c2",
            "Conv",
            serde_json::json!({"auto_pad": "SAME_UPPER", "strides": [1, 2]}),
            &["r1.out", "w2"],
        ),
        node("c3", "Conv", serde_json::json!({}), &["c2.out", "w3", "b3"]),
    ];
    let b = || Dim::Sym("batch".into());
    let x = ValueType {
        dtype: DType::F32,
        shape: vec![b(), Dim::Known(4), Dim::Known(9), Dim::Known(7)],
    };
    let inputs = vec![ValueInfo {
        name: "x".into(),
        ty: x,
    }];
    let out = |name: &str, c: usize, h: usize, w: usize| ValueInfo {
        name: name.into(),
        ty: ValueType {
            dtype: DType::F32,
            shape: vec![b(), Dim::Known(c), Dim::Known(h), Dim::Known(w)],
        },
    };
    let outputs = vec![out("r1.out", 6, 5, 6), out("c3.out", 3, 4, 2)];
    let g = Graph::new("conv_stack", inputs, outputs, infos, nodes).unwrap();
    Model::new(g, params).unwrap()
}

#[test]
fn w8a8_convolutions_with_groups_strides_and_pads_export() {
    let m = quantized(&conv_stack(), WeightFormat::W8A8 { outliers: 0 });
    assert_eq!(op_types(&m), ["QConv", "Relu", "QConv", "QConv"]);
    let x = Tensor::from_vec(vec![3, 4, 9, 7], values(3 * 4 * 63, 11)).unwrap();
    let case = Case {
        name: "conv-stack-w8a8".into(),
        model: m,
        inputs: vec![("x".into(), x)],
        opts: opts(Int4Export::default()),
        tol: W8A8_TOL,
        importable: true,
    };
    let dir = run_cases(&[case]);
    let _ = std::fs::remove_dir_all(dir);
}

/// An imported `ConvInteger` (per-channel weight zero points, group 2,
/// strides and pads) exports as itself and reads back to the same i32 sums.
#[test]
fn conv_integer_exports_as_itself() {
    use wginfer::ops::lookup;
    let attrs = serde_json::json!({"group": 2, "strides": [2, 1], "pads": [1, 0, 0, 1]});
    let op = (lookup("ConvInteger").unwrap().build)(attrs.as_object().unwrap()).unwrap();
    let bytes = |n: usize, k: u64| {
        Tensor::from_vec(
            vec![n],
            (0..n as u64).map(|i| ((i * 37 + k) % 256) as u8).collect::<Vec<_>>(),
        )
        .unwrap()
    };
    let x = bytes(2 * 4 * 5 * 5, 1).reshape(vec![2, 4, 5, 5]).unwrap();
    let w = bytes(6 * 2 * 3 * 3, 2).reshape(vec![6, 2, 3, 3]).unwrap();
    let (zx, zw) = (Tensor::from_vec(vec![], vec![7u8]).unwrap(), bytes(6, 3));
    let inputs = [x, w, zx, zw];
    let m = common::one_op_model(op, &inputs);
    let named: Vec<(String, Tensor)> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("x{i}"), t.clone()))
        .collect();
    let proto = to_model_proto(&m, &OnnxExportOptions::default()).unwrap();
    let ops: Vec<&str> = proto
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    assert_eq!(ops, ["ConvInteger"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ci.onnx");
    export_onnx(&m, &path, &OnnxExportOptions::default()).unwrap();
    let back = import_file(&path).unwrap();
    let (want, got) = (run(&m, &named), run(&back, &named));
    for (name, t) in &want {
        assert_eq!(t.dtype(), wginfer::DType::I32);
        assert_eq!(&got[name], t, "{name}");
    }
}

#[test]
fn an_existing_output_is_refused_without_overwrite() {
    let m = Model::load(common::root("models/digits-mlp/model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, b"keep me").unwrap();
    let err = export_onnx(&m, &path, &OnnxExportOptions::default()).unwrap_err();
    assert!(matches!(err, ExportError::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    let forced = OnnxExportOptions {
        overwrite: true,
        ..Default::default()
    };
    export_onnx(&m, &path, &forced).unwrap();
    assert!(import_file(&path).is_ok());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left beside the output");
}

#[test]
fn formats_onnx_cannot_hold_are_typed_errors_naming_the_node() {
    let m = Model::load(common::root("models/digits-mlp/model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let xnor = quantized(&m, WeightFormat::Binary { xnor: true });
    let err = export_onnx(&xnor, &dir.path().join("x.onnx"), &OnnxExportOptions::default()).unwrap_err();
    let ExportError::Format { node, format, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(format, "binary-xnor");
    assert!(m.graph().nodes().iter().any(|n| &n.name == node), "{err}");
    let int4_min = quantized(
        &m,
        WeightFormat::Int4 {
            block: 32,
            with_min: true,
        },
    );
    let err = export_onnx(
        &int4_min,
        &dir.path().join("y.onnx"),
        &opts(Int4Export::DequantizeLinear),
    )
    .unwrap_err();
    assert!(err.to_string().contains("matmulnbits"), "{err}");
    assert!(!dir.path().join("x.onnx").exists() && !dir.path().join("y.onnx").exists());
}
