//! TFLite export: the shipped digits MLP and CNN and MiniLM, f32 and
//! quantized by wginfer's own `quantize`, exported as `.tflite` files that LiteRT, an
//! independent runtime, runs within tolerance of wginfer's CPU outputs
//! (`models/export/check_litert.py`, run when `WGINFER_LITERT_PYTHON` names a
//! python with `ai-edge-litert`; skipped visibly otherwise). LiteRT's own
//! schema reader also checks that the int8 weights are stored as int8 with
//! per-channel scales. Then the bad inputs: ops and formats TFLite cannot
//! express, and an existing output without `--force`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wginfer::model::tflite::{export_tflite, to_tflite_bytes, ExportError, TfliteExportOptions};
use wginfer::model::{load_tensors, save_tensors};
use wginfer::ops::{lookup, Attrs, Op};
use wginfer::optimize::{quantize, QuantizeOptions};
use wginfer::quant::WeightFormat;
use wginfer::{Device, Model, Session, Tensor};

/// f32 outputs: LiteRT (XNNPACK) and wginfer sum in different orders.
/// Weight-only formats are exported as their quantized constants and a
/// `DEQUANTIZE` to the same f32 weights wginfer computes with, so the
/// f32 tolerance holds for them too.
const TOL: f32 = 1e-4;

/// W8A8 quantizes each activation row at run time in both runtimes. LiteRT's
/// builtin hybrid `FULLY_CONNECTED` (`asymmetric_quantize_inputs`) uses
/// wginfer's scheme, but a last-bit float difference can move a code by one
/// step and the step on through the layers, as in the ONNX export's W8A8
/// check. Its XNNPACK delegate quantizes the rows its own way, so that run
/// is reported, not compared (6.4e-2 on the digits MLP's logits).
const W8A8_TOL: f32 = 5e-3;

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

/// `m` quantized by wginfer's `quantize` (with W8A8, its convolutions too).
fn quantized(m: &Model, f: WeightFormat) -> Model {
    quantize(m, &QuantizeOptions::new(f), |_, _| {}).unwrap().0
}

/// Exports `model` as `dir/name.tflite` and saves the inputs, wginfer's CPU
/// outputs, the tolerances (`w8a8`: activations quantized at run time) and
/// the expected count of per-channel int8 weights beside it for
/// `check_litert.py`.
fn export_case(dir: &Path, name: &str, model: &Model, inputs: &[(String, Tensor)], int8_weights: usize, w8a8: bool) {
    let path = dir.join(format!("{name}.tflite"));
    export_tflite(model, &path, &TfliteExportOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[4..8], b"TFL3", "{name}: the TFLite file identifier");
    let s = Session::new(model, Device::Cpu).unwrap();
    let want = s.run(inputs.iter().map(|(n, t)| (n.as_str(), t.clone()))).unwrap();
    let mut io: Vec<(String, Tensor)> = inputs.iter().map(|(n, t)| (format!("input:{n}"), t.clone())).collect();
    for o in model.graph().outputs() {
        io.push((format!("output:{}", o.name), want[&o.name].clone()));
    }
    let (tol, xnnpack_tol) = if w8a8 { (W8A8_TOL, f32::INFINITY) } else { (TOL, TOL) };
    io.push(("tolerance".into(), Tensor::from_vec(vec![1], vec![tol]).unwrap()));
    io.push((
        "xnnpack_tolerance".into(),
        Tensor::from_vec(vec![1], vec![xnnpack_tol]).unwrap(),
    ));
    io.push((
        "int8_weights".into(),
        Tensor::from_vec(vec![1], vec![int8_weights as f32]).unwrap(),
    ));
    save_tensors(dir.join(format!("{name}.io.safetensors")), &io).unwrap();
}

/// Runs `models/export/check_litert.py` over `dir` with `WGINFER_LITERT_PYTHON`,
/// or reports the skip.
fn check_with_litert(dir: &Path) {
    let Some(python) = std::env::var_os("WGINFER_LITERT_PYTHON") else {
        common::skip_or_fail(
            "WGINFER_REQUIRE_LITERT",
            "set WGINFER_LITERT_PYTHON to a python with ai-edge-litert==2.3.0 (see docs/export.md)",
        );
        return;
    };
    let out = std::process::Command::new(python)
        .arg(common::root("models/export/check_litert.py"))
        .arg(dir)
        .output()
        .expect("runs WGINFER_LITERT_PYTHON");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "LiteRT check failed:\n{text}");
}

/// The digits model `base` as f32 and in every weight format with a TFLite
/// form, with the number of int8 weight tensors each holds (`linears`;
/// with W8A8 the `convs` too).
fn run_digits(name: &str, base: &Model, image: bool, linears: usize, convs: usize) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let inputs = digits_inputs(image);
    export_case(&dir, &format!("{name}-f32"), base, &inputs, 0, false);
    for (f, int8) in [
        ("int8", linears),
        ("int8-affine", linears),
        ("pow2", linears),
        ("binary", linears),
        ("f16", 0),
        ("2:4", 0),
    ] {
        let m = quantized(base, f.parse().unwrap());
        export_case(
            &dir,
            &format!("{name}-{}", f.replace(':', "of")),
            &m,
            &inputs,
            int8,
            false,
        );
    }
    for outliers in [0, 4] {
        let m = quantized(base, WeightFormat::W8A8 { outliers });
        let qconvs = m.graph().nodes().iter().filter(|n| n.op.op_type() == "QConv").count();
        assert_eq!(qconvs, convs, "{name}: W8A8 quantizes every convolution");
        let case = format!("{name}-w8a8-outliers{outliers}");
        export_case(&dir, &case, &m, &inputs, linears + convs, true);
    }
    check_with_litert(&dir);
    dir
}

#[test]
fn digits_mlp_runs_in_litert() {
    let m = Model::load(common::root("models/digits-mlp/model.safetensors")).unwrap();
    let dir = run_digits("mlp", &m, false, 3, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn digits_cnn_runs_in_litert() {
    let m = Model::load(common::root("models/digits-cnn/model.onnx")).unwrap();
    let dir = run_digits("cnn", &m, true, 1, 2);
    let _ = std::fs::remove_dir_all(dir);
}

/// MiniLM's encoder ops (embedding `GATHER`, `LayerNormalization`,
/// `Attention`, `Gelu`, `MaskedMeanPool`, `L2Normalize`) spelled out in
/// builtins, f32 and int8, with a dynamic batch and sequence length.
#[test]
fn minilm_runs_in_litert() {
    let Some(model_dir) = common::minilm::model_dir() else {
        return;
    };
    let m = Model::load(&model_dir).unwrap();
    let r = common::minilm::reference();
    let (n, seq) = (4, r.input_ids.shape()[1]);
    let mut inputs = Vec::new();
    for i in m.graph().inputs() {
        let t = match i.name.as_str() {
            "input_ids" => r.input_ids.slice_rows(0, n).unwrap(),
            "attention_mask" => r.attention_mask.slice_rows(0, n).unwrap(),
            _ if i.ty.rank() == 1 => Tensor::from_vec(vec![seq], (0..seq as i64).collect::<Vec<_>>()).unwrap(),
            other => panic!("MiniLM input {other}"),
        };
        inputs.push((i.name.clone(), t));
    }
    let dir = tempfile::tempdir().unwrap().keep();
    export_case(&dir, "minilm-f32", &m, &inputs, 0, false);
    let int8 = quantized(&m, "int8".parse().unwrap());
    export_case(&dir, "minilm-int8", &int8, &inputs, 36, false);
    let w8a8 = quantized(&m, WeightFormat::W8A8 { outliers: 0 });
    export_case(&dir, "minilm-w8a8", &w8a8, &inputs, 36, true);
    check_with_litert(&dir);
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

/// A conv stack with what the digits CNN lacks: pads TFLite's SAME cannot
/// express (a `PAD` op), SAME pads, average pools with and without the pads
/// counted, an `Add` of two NHWC values, `GlobalAveragePool`, a graph
/// output taken from inside the NHWC stack, an output named like a tensor
/// the exporter derives, and a dynamic batch.
fn conv_stack() -> Model {
    use wginfer::graph::{Graph, Node, ParamInfo, ValueInfo};
    use wginfer::tensor::{DType, Dim, ValueType};
    let mut params = HashMap::new();
    let mut infos = Vec::new();
    let mut param = |name: &str, shape: Vec<usize>| {
        let n = shape.iter().product();
        infos.push(ParamInfo::plain(name, DType::F32, shape.clone()));
        params.insert(name.to_string(), Tensor::from_vec(shape, values(n, n as u64)).unwrap());
    };
    param("w1", vec![4, 3, 3, 3]);
    param("b1", vec![4]);
    param("w2", vec![4, 4, 3, 3]);
    param("fc.w", vec![5, 4]);
    param("fc.b", vec![5]);
    let node = |name: &str, op_type: &str, attrs: serde_json::Value, ins: &[&str]| Node {
        name: name.into(),
        op: op(op_type, attrs),
        inputs: ins.iter().map(|s| s.to_string()).collect(),
        outputs: vec![format!("{name}.out")],
    };
    let nodes = vec![
        node(
            "c1",
            "Conv",
            serde_json::json!({"pads": [0, 1, 1, 0], "strides": [2, 2]}),
            &["x", "w1", "b1"],
        ),
        node("r1", "Relu", serde_json::json!({}), &["c1.out"]),
        node(
            "c2",
            "Conv",
            serde_json::json!({"pads": [1, 1, 1, 1]}),
            &["r1.out", "w2"],
        ),
        node(
            "a1",
            "AveragePool",
            serde_json::json!({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
            &["r1.out"],
        ),
        node("sum", "Add", serde_json::json!({}), &["c2.out", "a1.out"]),
        node(
            "a2",
            "AveragePool",
            serde_json::json!({"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 1, 1], "count_include_pad": 1}),
            &["sum.out"],
        ),
        node("gap", "GlobalAveragePool", serde_json::json!({}), &["a2.out"]),
        node("flat", "Flatten", serde_json::json!({"axis": 1}), &["gap.out"]),
        node("fc", "Linear", serde_json::json!({}), &["flat.out", "fc.w", "fc.b"]),
        node("sig", "Sigmoid", serde_json::json!({}), &["fc.out"]),
    ];
    // The output takes the name the exporter would give x's NHWC form: the
    // graph's name wins and the derived tensor gets another.
    let mut nodes = nodes;
    nodes[9].outputs = vec!["x.nhwc".into()];
    let x = ValueType {
        dtype: DType::F32,
        shape: vec![Dim::Sym("batch".into()), Dim::Known(3), Dim::Known(9), Dim::Known(9)],
    };
    let inputs = vec![ValueInfo {
        name: "x".into(),
        ty: x,
    }];
    let out = |name: &str, shape: Vec<Dim>| ValueInfo {
        name: name.into(),
        ty: ValueType {
            dtype: DType::F32,
            shape,
        },
    };
    let b = || Dim::Sym("batch".into());
    let outputs = vec![
        out("x.nhwc", vec![b(), Dim::Known(5)]),
        out("sum.out", vec![b(), Dim::Known(4), Dim::Known(4), Dim::Known(4)]),
    ];
    let g = Graph::new("conv_stack", inputs, outputs, infos, nodes).unwrap();
    Model::new(g, params).unwrap()
}

#[test]
fn a_conv_stack_with_pads_pools_and_nhwc_outputs_runs_in_litert() {
    let m = conv_stack();
    let x = Tensor::from_vec(vec![3, 3, 9, 9], values(3 * 243, 7)).unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    export_case(&dir, "conv-stack", &m, &[("x".to_string(), x.clone())], 0, false);
    // Tensor names are stored as strings: the PAD ops' outputs are there
    // for the uneven conv pads and the pool that counts its pads only.
    let bytes = to_tflite_bytes(&m, &TfliteExportOptions::default()).unwrap();
    let has = |name: &str| bytes.windows(name.len()).any(|w| w == name.as_bytes());
    assert!(has("c1.padded") && has("a2.padded"), "PAD before c1 and a2");
    assert!(!has("c2.padded") && !has("a1.padded"), "c2 and a1 use SAME");
    // W8A8: both convolutions (uneven pads with a bias, SAME pads without)
    // as hybrid CONV_2Ds, and the Linear, over a batch of 3.
    let w8a8 = quantized(&m, WeightFormat::W8A8 { outliers: 0 });
    let qconvs = w8a8
        .graph()
        .nodes()
        .iter()
        .filter(|n| n.op.op_type() == "QConv")
        .count();
    assert_eq!(qconvs, 2);
    export_case(&dir, "conv-stack-w8a8", &w8a8, &[("x".to_string(), x)], 3, true);
    check_with_litert(&dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// One `Conv` over `x [batch, 4, 6, 6]` with a weight parameter `[out, 4/group, 3, 3]`.
fn one_conv(attrs: serde_json::Value, group: usize, out: usize) -> Model {
    use wginfer::graph::{Graph, Node, ParamInfo, ValueInfo};
    use wginfer::tensor::{DType, ValueType};
    let shape = vec![out, 4 / group, 3, 3];
    let n = shape.iter().product();
    let w = Tensor::from_vec(shape.clone(), values(n, 5)).unwrap();
    let mut x = ValueType::known(DType::F32, &[1, 4, 6, 6]);
    x.shape[0] = wginfer::tensor::Dim::Sym("batch".into());
    let op = op("Conv", attrs);
    let y = op.infer(&[x.clone(), ValueType::known(DType::F32, &shape)]).unwrap();
    let node = Node {
        name: "conv".into(),
        op,
        inputs: vec!["x".into(), "w".into()],
        outputs: vec!["y".into()],
    };
    let io = |name: &str, ty: ValueType| ValueInfo { name: name.into(), ty };
    let g = Graph::new(
        "one_conv",
        vec![io("x", x)],
        vec![io("y", y[0].clone())],
        vec![ParamInfo::plain("w", DType::F32, shape)],
        vec![node],
    )
    .unwrap();
    Model::new(g, HashMap::from([("w".to_string(), w)])).unwrap()
}

/// W8A8 convolutions over inputs with negative values (a non-zero zero
/// point): pads of 1 (TFLite's SAME, padded with the zero point), one
/// output channel (one scale, given a second channel so that LiteRT keeps
/// its per-channel hybrid kernel), `SAME_UPPER` with a stride.
#[test]
fn w8a8_convolutions_with_pads_strides_and_one_channel_run_in_litert() {
    let dir = tempfile::tempdir().unwrap().keep();
    let x = Tensor::from_vec(vec![5, 4, 6, 6], values(5 * 144, 9)).unwrap();
    for (name, attrs, out) in [
        ("qconv-pads", serde_json::json!({"pads": [1, 1, 1, 1]}), 4),
        ("qconv-one-channel", serde_json::json!({"pads": [1, 1, 1, 1]}), 1),
        (
            "qconv-strided",
            serde_json::json!({"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
            3,
        ),
    ] {
        let m = quantized(&one_conv(attrs, 1, out), WeightFormat::W8A8 { outliers: 0 });
        export_case(&dir, name, &m, &[("x".to_string(), x.clone())], 1, true);
    }
    check_with_litert(&dir);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn w8a8_convolutions_tflite_cannot_run_are_errors_naming_the_node() {
    let opts = TfliteExportOptions::default();
    for (attrs, group, why) in [
        (serde_json::json!({"group": 2}), 2, "group"),
        (serde_json::json!({"dilations": [2, 1]}), 1, "dilation"),
    ] {
        let m = quantized(&one_conv(attrs, group, 4), WeightFormat::W8A8 { outliers: 0 });
        let err = to_tflite_bytes(&m, &opts).unwrap_err();
        let ExportError::Unsupported { node, op, target, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(
            (node.as_str(), op.as_str(), *target),
            ("conv", "QConv", "TFLite"),
            "{err}"
        );
        assert!(err.to_string().contains(why), "{err}");
    }
}

fn op(op_type: &str, attrs: serde_json::Value) -> Arc<dyn Op> {
    let attrs: Attrs = match attrs {
        serde_json::Value::Object(m) => m,
        _ => Attrs::new(),
    };
    let def = lookup(op_type).unwrap_or_else(|| panic!("{op_type} is registered"));
    (def.build)(&attrs).unwrap_or_else(|e| panic!("{op_type}: {e}"))
}

#[test]
fn ops_tflite_cannot_express_are_errors_naming_node_and_op() {
    let x = Tensor::from_vec(vec![2, 3, 4], vec![0.5f32; 24]).unwrap();
    let opts = TfliteExportOptions::default();
    let erf = common::one_op_model(op("Erf", serde_json::json!({})), std::slice::from_ref(&x));
    let err = to_tflite_bytes(&erf, &opts).unwrap_err();
    let ExportError::Unsupported {
        node,
        op: op_type,
        target,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((op_type.as_str(), *target), ("Erf", "TFLite"), "{err}");
    assert_eq!(node, &erf.graph().nodes()[0].name);
    let softmax = common::one_op_model(op("Softmax", serde_json::json!({"axis": 1})), std::slice::from_ref(&x));
    let err = to_tflite_bytes(&softmax, &opts).unwrap_err();
    assert!(
        matches!(&err, ExportError::Unsupported { op, .. } if op == "Softmax") && err.to_string().contains("last axis"),
        "{err}"
    );
}

#[test]
fn formats_tflite_cannot_hold_are_typed_errors_naming_the_node() {
    let m = Model::load(common::root("models/digits-mlp/model.safetensors")).unwrap();
    let opts = TfliteExportOptions::default();
    for f in [
        WeightFormat::Int4 {
            block: 32,
            with_min: false,
        },
        WeightFormat::Binary { xnor: true },
    ] {
        let q = quantized(&m, f);
        let err = to_tflite_bytes(&q, &opts).unwrap_err();
        let ExportError::Format {
            node, format, target, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((format.as_str(), *target), (f.name().as_str(), "TFLite"));
        assert!(m.graph().nodes().iter().any(|n| &n.name == node), "{err}");
    }
}

#[test]
fn an_existing_output_is_refused_without_overwrite() {
    let m = Model::load(common::root("models/digits-mlp/model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tflite");
    std::fs::write(&path, b"keep me").unwrap();
    let err = export_tflite(&m, &path, &TfliteExportOptions::default()).unwrap_err();
    assert!(matches!(err, ExportError::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    export_tflite(&m, &path, &TfliteExportOptions { overwrite: true }).unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[4..8], b"TFL3");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left beside the output");
}

#[test]
fn the_cli_exports_tflite_and_refuses_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp.tflite");
    let export = |force: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_wginfer"));
        c.arg("export")
            .arg(common::root("models/digits-mlp/model.safetensors"))
            .args(["--to", "tflite", "-o"])
            .arg(&out);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let first = export(false);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let again = export(false);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(export(true).status.success());
}
