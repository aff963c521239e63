//! ONNX import end to end: the digits CNN and MLP exported to ONNX by
//! `models/digits-cnn/train.py` match onnxruntime's committed outputs within
//! 1e-4 on every test sample (CPU, CPU reference, and a software GPU adapter
//! when one exists, with every node on the GPU); `convert` writes a model that loads and runs the
//! same; corrupt files, missing external data and unsupported ops give clear
//! errors.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use prost::Message;
use wginfer::backend::gpu::{GpuContext, Placement};
use wginfer::model::load_tensors;
use wginfer::model::onnx::{import_bytes, proto, ImportOptions};
use wginfer::{AdapterChoice, DType, Device, Model, Session, Tensor};

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    load_tensors(path).unwrap().into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.to_f32_vec()
        .iter()
        .zip(b.to_f32_vec())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `cpu`, `cpu-reference`, and a software GPU adapter (lavapipe) when there
/// is one; without one the GPU part is skipped with a line written past the
/// harness's capture, or fails under `WGINFER_REQUIRE_GPU=1`.
fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu, Device::CpuReference];
    match GpuContext::shared(&AdapterChoice::Software) {
        Ok(_) => devices.push(Device::Gpu(AdapterChoice::Software)),
        Err(e) => {
            if std::env::var("WGINFER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("WGINFER_REQUIRE_GPU=1 but no software wgpu adapter could be opened ({e})");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED (GPU part): no software wgpu adapter ({e})");
        }
    }
    devices
}

/// `all_on_gpu`: assert the GPU plan puts every node on the GPU.
fn check_against_onnxruntime(model: &str, reference: &str, image: bool, all_on_gpu: bool) -> (f32, f64) {
    let m = Model::load(common::root(model)).unwrap();
    let test = tensors(&common::root("models/digits-mlp/digits_test.safetensors"));
    let mut x = test["input"].clone();
    if image {
        let n = x.shape()[0];
        x = x.reshape(vec![n, 1, 8, 8]).unwrap();
    }
    let labels = test["label"].to_i64_vec();
    let want = tensors(&common::root(reference))["probabilities"].clone();
    let mut worst = 0.0f32;
    let mut acc = 0.0;
    let devices = devices();
    for device in devices {
        let s = Session::new(&m, device.clone()).unwrap();
        if let Some(plan) = s.gpu_plan(Some(&[x.shape().to_vec()])) {
            // Every node on the GPU: no CPU fallback hides in the numbers.
            for n in &plan.unwrap().nodes {
                if let (false, Placement::Cpu { reason }) = (all_on_gpu, &n.placement) {
                    println!("{model}: node {} ({}) on the CPU: {reason}", n.node, n.op);
                    continue;
                }
                assert!(
                    !matches!(n.placement, Placement::Cpu { .. }),
                    "{model}: node {} ({}) ran on the CPU: {:?}",
                    n.node,
                    n.op,
                    n.placement
                );
            }
        }
        let got = s.run([("input", x.clone())]).unwrap()["probabilities"].clone();
        let d = max_diff(&got, &want);
        println!(
            "{model} on {device}: max |wginfer - onnxruntime| = {d:.3e} over {} samples",
            labels.len()
        );
        assert!(d <= 1e-4, "{model} on {device}: max difference {d} > 1e-4");
        worst = worst.max(d);
        let p = got.to_f32_vec();
        let correct = p
            .chunks(10)
            .zip(&labels)
            .filter(|(row, &l)| {
                let arg = row
                    .iter()
                    .enumerate()
                    .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                    .0;
                arg as i64 == l
            })
            .count();
        acc = correct as f64 / labels.len() as f64;
    }
    (worst, acc)
}

#[test]
fn digits_cnn_matches_onnxruntime() {
    let (d, acc) = check_against_onnxruntime(
        "models/digits-cnn/model.onnx",
        "models/digits-cnn/reference.safetensors",
        true,
        true,
    );
    println!("digits CNN: max difference {d:.3e}, test accuracy {:.2}%", acc * 100.0);
    assert!(acc > 0.95, "accuracy {acc}");
    // The BatchNormalization was folded into conv1; the Gemm became Linear.
    let m = Model::load(common::root("models/digits-cnn/model.onnx")).unwrap();
    let ops: Vec<&str> = m.graph().nodes().iter().map(|n| n.op.op_type()).collect();
    assert_eq!(
        ops,
        ["Conv", "Relu", "MaxPool", "Conv", "Relu", "Flatten", "Linear", "Softmax"]
    );
    assert_eq!(m.graph().inputs()[0].ty.to_string(), "f32[batch, 1, 8, 8]");
}

#[test]
fn digits_mlp_matches_onnxruntime() {
    let (d, acc) = check_against_onnxruntime(
        "models/digits-cnn/digits_mlp.onnx",
        "models/digits-cnn/digits_mlp_reference.safetensors",
        false,
        true,
    );
    println!(
        "digits MLP from ONNX: max difference {d:.3e}, test accuracy {:.2}%",
        acc * 100.0
    );
    let m = Model::load(common::root("models/digits-cnn/digits_mlp.onnx")).unwrap();
    assert!(m.graph().nodes().iter().filter(|n| n.op.op_type() == "Linear").count() == 3);
}

/// Weight-only QDQ (DequantizeLinear on constant int8/uint8 weights feeding
/// Gemm and MatMul, as quantization tools write it) imports as QLinear over
/// the int8 weights, and matches onnxruntime on the same file.
#[test]
fn qdq_int8_weights_become_qlinear_and_match_onnxruntime() {
    // QLinear's GPU kernels may be missing on an adapter: placement is printed, not asserted.
    let (d, acc) = check_against_onnxruntime(
        "models/digits-cnn/digits_mlp_qdq.onnx",
        "models/digits-cnn/digits_mlp_qdq_reference.safetensors",
        false,
        false,
    );
    println!(
        "digits MLP, QDQ int8: max difference {d:.3e}, test accuracy {:.2}%",
        acc * 100.0
    );
    assert!(acc > 0.95, "accuracy {acc}");
    let m = Model::load(common::root("models/digits-cnn/digits_mlp_qdq.onnx")).unwrap();
    let ops: Vec<&str> = m.graph().nodes().iter().map(|n| n.op.op_type()).collect();
    assert_eq!(ops, ["QLinear", "Relu", "QLinear", "Add", "Relu", "QLinear", "Softmax"]);
    let formats: Vec<(String, String)> = m
        .graph()
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.format.clone()))
        .collect();
    let format_of = |n: &str| formats.iter().find(|(p, _)| p == n).map(|(_, f)| f.as_str());
    // fc1: symmetric (zero points 0); fc2: uint8 affine; fc3: int8 with a zero point, shifted to uint8 affine.
    assert_eq!(format_of("fc1.w.q"), Some("int8"), "{formats:?}");
    assert_eq!(format_of("fc2.w.q"), Some("int8-affine"), "{formats:?}");
    assert_eq!(format_of("fc3.w.zero"), Some("int8-affine"), "{formats:?}");
    // No f32 copy of a weight: every 2-D parameter is 8-bit.
    for p in m.graph().params().iter().filter(|p| p.shape.len() == 2) {
        assert!(matches!(p.dtype, DType::I8 | DType::U8), "{} is {}", p.name, p.dtype);
    }
    // Saved and loaded back: the same model.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qdq.safetensors");
    m.save(&out).unwrap();
    let back = Model::load(&out).unwrap();
    let x = tensors(&common::root("models/digits-mlp/digits_test.safetensors"))["input"]
        .slice_rows(0, 5)
        .unwrap();
    let a = Session::new(&m, Device::Cpu)
        .unwrap()
        .run([("input", x.clone())])
        .unwrap();
    let b = Session::new(&back, Device::Cpu).unwrap().run([("input", x)]).unwrap();
    assert_eq!(a["probabilities"], b["probabilities"]);
}

#[test]
fn converted_model_round_trips() {
    let m = Model::load(common::root("models/digits-cnn/model.onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cnn.safetensors");
    m.save(&out).unwrap();
    let back = Model::load(&out).unwrap();
    let x = tensors(&common::root("models/digits-mlp/digits_test.safetensors"))["input"]
        .slice_rows(0, 7)
        .unwrap()
        .reshape(vec![7, 1, 8, 8])
        .unwrap();
    let a = Session::new(&m, Device::Cpu)
        .unwrap()
        .run([("input", x.clone())])
        .unwrap();
    let b = Session::new(&back, Device::Cpu).unwrap().run([("input", x)]).unwrap();
    assert_eq!(a["probabilities"], b["probabilities"]);
}

#[test]
fn corrupt_protobuf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.onnx");
    std::fs::write(&p, b"\x0a\xff\xff\xff\xff\x0fgarbage").unwrap();
    let e = Model::load(&p).unwrap_err().to_string();
    assert!(e.contains("not a valid ONNX ModelProto protobuf"), "{e}");
    assert!(e.contains("bad.onnx"), "{e}");
}

fn mlp_proto() -> proto::ModelProto {
    let bytes = std::fs::read(common::root("models/digits-cnn/digits_mlp.onnx")).unwrap();
    proto::ModelProto::decode(bytes.as_slice()).unwrap()
}

#[test]
fn external_data_is_read_beside_the_model_and_a_missing_file_is_named() {
    let mut m = mlp_proto();
    let g = m.graph.as_mut().unwrap();
    // Move every initializer's data into one side file.
    let mut side = Vec::new();
    for t in &mut g.initializer {
        let raw = if t.raw_data.is_empty() {
            t.float_data.iter().flat_map(|f| f.to_le_bytes()).collect()
        } else {
            std::mem::take(&mut t.raw_data)
        };
        t.float_data.clear();
        let entry = |k: &str, v: String| proto::StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        t.external_data = vec![
            entry("location", "weights.bin".into()),
            entry("offset", side.len().to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = proto::DATA_LOCATION_EXTERNAL;
        side.extend_from_slice(&raw);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp_external.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let e = Model::load(&path).unwrap_err().to_string();
    assert!(e.contains("weights.bin") && e.contains("side file"), "{e}");
    std::fs::write(dir.path().join("weights.bin"), &side).unwrap();
    let ext = Model::load(&path).unwrap();
    let plain = Model::load(common::root("models/digits-cnn/digits_mlp.onnx")).unwrap();
    for p in plain.graph().params() {
        assert_eq!(ext.param(&p.name), plain.param(&p.name), "{}", p.name);
    }
}

#[test]
fn unsupported_ops_are_listed_once_with_their_nodes() {
    let mut m = mlp_proto();
    let g = m.graph.as_mut().unwrap();
    for (i, n) in g.node.iter_mut().enumerate() {
        if n.op_type == "Relu" {
            n.op_type = if i < 2 { "Frobnicate".into() } else { "Mish".into() };
        }
    }
    g.node.push(proto::NodeProto {
        input: vec!["input".into()],
        output: vec!["extra".into()],
        name: "late".into(),
        op_type: "Frobnicate".into(),
        ..Default::default()
    });
    let e = import_bytes(&m.encode_to_vec(), Path::new("."), &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Frobnicate (nodes: relu1, late)"), "{e}");
    assert!(e.contains("Mish (nodes: relu2)"), "{e}");
}

fn tensor_proto(name: &str, dims: &[i64], data: Vec<f32>) -> proto::TensorProto {
    proto::TensorProto {
        dims: dims.to_vec(),
        data_type: proto::data_type::FLOAT,
        float_data: data,
        name: name.into(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[i64]) -> proto::ValueInfoProto {
    proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TypeProtoTensor {
                elem_type: proto::data_type::FLOAT,
                shape: Some(proto::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| proto::Dimension {
                            dim_value: Some(d),
                            ..Default::default()
                        })
                        .collect(),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_1d_conv_runs_as_a_2d_conv_over_a_height_of_one() {
    let ints = |name: &str, v: Vec<i64>| proto::AttributeProto {
        name: name.into(),
        r#type: proto::attr_type::INTS,
        ints: v,
        ..Default::default()
    };
    let model = proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(proto::GraphProto {
            node: vec![proto::NodeProto {
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                name: "conv1d".into(),
                op_type: "Conv".into(),
                attribute: vec![ints("pads", vec![1, 0]), ints("kernel_shape", vec![2])],
                ..Default::default()
            }],
            initializer: vec![tensor_proto("w", &[1, 1, 2], vec![1.0, 1.0])],
            input: vec![value_info("x", &[1, 1, 5])],
            output: vec![value_info("y", &[1, 1, 5])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let m = import_bytes(&model.encode_to_vec(), Path::new("."), &ImportOptions::default()).unwrap();
    let x = Tensor::from_vec(vec![1, 1, 5], vec![1.0f32, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let devices = devices();
    for device in devices {
        let y = Session::new(&m, device).unwrap().run([("x", x.clone())]).unwrap();
        assert_eq!(y["y"].shape(), &[1, 1, 5]);
        assert_eq!(y["y"].as_f32().unwrap(), &[1.0, 3.0, 5.0, 7.0, 9.0]);
    }
}

/// A BatchNormalization after a Gemm over `[batch, features]` folds into the
/// Linear's weight and bias; the result matches Gemm then BatchNormalization
/// computed here in f64.
#[test]
fn batchnorm_after_gemm_folds_into_the_linear() {
    let (n, k, b) = (5usize, 7usize, 3usize);
    let val = |i: usize, s: f32| (i as f32 * 0.37 + s).sin() * 0.8;
    let w: Vec<f32> = (0..n * k).map(|i| val(i, 0.1)).collect();
    let bias: Vec<f32> = (0..n).map(|i| val(i, 1.0)).collect();
    let scale: Vec<f32> = (0..n).map(|i| 1.0 + val(i, 2.0) * 0.5).collect();
    let shift: Vec<f32> = (0..n).map(|i| val(i, 3.0)).collect();
    let mean: Vec<f32> = (0..n).map(|i| val(i, 4.0)).collect();
    let var: Vec<f32> = (0..n).map(|i| 0.5 + val(i, 5.0).abs()).collect();
    let eps = 1e-3f32;
    let node = |op: &str, ins: &[&str], out: &str| proto::NodeProto {
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: out.into(),
        op_type: op.into(),
        ..Default::default()
    };
    let mut gemm = node("Gemm", &["x", "w", "b"], "h");
    gemm.attribute.push(proto::AttributeProto {
        name: "transB".into(),
        r#type: proto::attr_type::INT,
        i: 1,
        ..Default::default()
    });
    let mut bn = node("BatchNormalization", &["h", "scale", "shift", "mean", "var"], "y");
    bn.attribute.push(proto::AttributeProto {
        name: "epsilon".into(),
        r#type: proto::attr_type::FLOAT,
        f: eps,
        ..Default::default()
    });
    let model = proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(proto::GraphProto {
            node: vec![gemm, bn],
            initializer: vec![
                tensor_proto("w", &[n as i64, k as i64], w.clone()),
                tensor_proto("b", &[n as i64], bias.clone()),
                tensor_proto("scale", &[n as i64], scale.clone()),
                tensor_proto("shift", &[n as i64], shift.clone()),
                tensor_proto("mean", &[n as i64], mean.clone()),
                tensor_proto("var", &[n as i64], var.clone()),
            ],
            input: vec![value_info("x", &[b as i64, k as i64])],
            output: vec![value_info("y", &[b as i64, n as i64])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let m = import_bytes(&model.encode_to_vec(), Path::new("."), &ImportOptions::default()).unwrap();
    let ops: Vec<&str> = m.graph().nodes().iter().map(|n| n.op.op_type()).collect();
    assert_eq!(ops, ["Linear"]);
    let xv: Vec<f32> = (0..b * k).map(|i| val(i, 6.0)).collect();
    let mut want = vec![0.0f32; b * n];
    for r in 0..b {
        for c in 0..n {
            let h: f64 = bias[c] as f64 + (0..k).map(|j| xv[r * k + j] as f64 * w[c * k + j] as f64).sum::<f64>();
            let y = (h - mean[c] as f64) / (var[c] as f64 + eps as f64).sqrt() * scale[c] as f64 + shift[c] as f64;
            want[r * n + c] = y as f32;
        }
    }
    let x = Tensor::from_vec(vec![b, k], xv).unwrap();
    let devices = devices();
    for device in devices {
        let y = Session::new(&m, device.clone())
            .unwrap()
            .run([("x", x.clone())])
            .unwrap();
        let got = y["y"].to_f32_vec();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
                "{device}: element {i}: {g} vs {w}"
            );
        }
    }
}
