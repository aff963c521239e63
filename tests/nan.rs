//! NaN propagates through Relu, MaxPool, Softmax, LogSoftmax,
//! GlobalAveragePool, LayerNorm and the shipped digits CNN on `cpu`,
//! `cpu-reference` and a software GPU adapter (lavapipe; skipped with a
//! visible line when there is none, failed under `WGINFER_REQUIRE_GPU=1`),
//! with every node on the GPU there.
//!
//! onnxruntime 1.x (CPU provider, opset 17) gives, for the same inputs:
//! - `Relu([-1, NaN, 2, 0])` = `[0, NaN, 2, 0]`.
//! - `Max([1, NaN, 3, -1, NaN], [2, 0, NaN, 0, NaN])` = `[2, NaN, NaN, 0, NaN]`,
//!   `Min` of the same `[1, NaN, NaN, -1, NaN]`.
//! - `Clip([-2, NaN, 0.5, 7], 0, 6)` = `[0, NaN, 0.5, 6]`.
//! - `MaxPool` (2×2, stride 2) of `0..16` as `[1, 1, 4, 4]` with a NaN at
//!   (1, 1), the last element of the first window: `[NaN, 7, 13, 15]`. With
//!   the NaN at (0, 0), (0, 1) or (1, 0) it gives `[5, 7, 13, 15]`: its
//!   running max drops a NaN that is not last. wginfer's MaxPool is IEEE 754
//!   `maximum` over the window (NaN wherever the window holds one), so it
//!   agrees with onnxruntime wherever onnxruntime gives NaN.
//! - `Softmax` and `LogSoftmax` (axis -1) of `[[1, NaN, 3], [1, 2, 3]]`: the
//!   first row all NaN, the second finite.
//! - `GlobalAveragePool` of a `[1, 2, 2, 2]` input with one NaN in channel 0:
//!   `[NaN, 5.5]`.
//! - `LayerNormalization` (axis -1, scale 1, bias 0) of
//!   `[[1, NaN, 3, 4], [1, 2, 3, 4]]`: the first row all NaN, the second finite.
//! - The digits CNN (`models/digits-cnn/model.onnx`) with one NaN pixel
//!   (at (0, 0), (3, 4), (4, 0) or (7, 7)) in an image of 0.5: all ten
//!   probabilities NaN.

mod common;

use std::sync::Arc;

use wginfer::backend::gpu::{GpuContext, Placement};
use wginfer::ops::{lookup, Attrs, Op};
use wginfer::{AdapterChoice, Device, Model, Session, Tensor};

const NAN: f32 = f32::NAN;

/// `cpu`, `cpu-reference`, and a software GPU adapter when there is one.
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

/// The registered op `op_type` built from JSON attributes.
fn op(op_type: &str, attrs: serde_json::Value) -> Arc<dyn Op> {
    let attrs: Attrs = match attrs {
        serde_json::Value::Object(m) => m,
        _ => Attrs::new(),
    };
    let def = lookup(op_type).unwrap_or_else(|| panic!("{op_type} is registered"));
    (def.build)(&attrs).unwrap_or_else(|e| panic!("{op_type}: {e}"))
}

/// Runs `model` on every device (every node on the GPU there) and checks
/// output `name` with `check`.
fn on_every_device(model: &Model, inputs: &[(&str, Tensor)], name: &str, check: impl Fn(&[f32], &Device)) {
    for device in devices() {
        let s = Session::new(model, device.clone()).expect("session");
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|(_, t)| t.shape().to_vec()).collect();
        if let Some(plan) = s.gpu_plan(Some(&shapes)) {
            for n in &plan.expect("plan").nodes {
                assert!(
                    !matches!(n.placement, Placement::Cpu { .. }),
                    "node {} ({}) ran on the CPU: {:?}",
                    n.node,
                    n.op,
                    n.placement
                );
            }
        }
        let out = s
            .run(inputs.iter().map(|(n, t)| (n.to_string(), t.clone())))
            .unwrap_or_else(|e| panic!("{device}: {e}"));
        check(&out[name].to_f32_vec(), &device);
    }
}

/// `got` equals `want` elementwise, NaN matching NaN, within `tol`.
fn assert_matches(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() { g.is_nan() } else { (g - w).abs() <= tol };
        assert!(ok, "{what}: element {i} is {g}, want {w} (got {got:?})");
    }
}

/// One op on one input (`x0`): output `y` matches `want` on every device.
fn check_op(op_type: &str, attrs: serde_json::Value, x: Tensor, want: &[f32]) {
    check_op_inputs(op_type, attrs, vec![x], want);
}

fn check_op_inputs(op_type: &str, attrs: serde_json::Value, inputs: Vec<Tensor>, want: &[f32]) {
    let model = common::one_op_model(op(op_type, attrs), &inputs);
    let named: Vec<(String, Tensor)> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("x{i}"), t))
        .collect();
    let named: Vec<(&str, Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    on_every_device(&model, &named, "y", |got, device| {
        assert_matches(got, want, 1e-5, &format!("{op_type} on {device}"))
    });
}

fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v).expect("tensor")
}

#[test]
fn relu_keeps_nan() {
    check_op(
        "Relu",
        serde_json::json!({}),
        t(&[4], vec![-1.0, NAN, 2.0, 0.0]),
        &[0.0, NAN, 2.0, 0.0],
    );
}

#[test]
fn max_and_min_are_nan_where_an_operand_is_nan() {
    let a = t(&[5], vec![1.0, NAN, 3.0, -1.0, NAN]);
    let b = t(&[5], vec![2.0, 0.0, NAN, 0.0, NAN]);
    let json = serde_json::json!({});
    check_op_inputs(
        "Max",
        json.clone(),
        vec![a.clone(), b.clone()],
        &[2.0, NAN, NAN, 0.0, NAN],
    );
    check_op_inputs("Min", json, vec![a, b], &[1.0, NAN, NAN, -1.0, NAN]);
}

/// ONNX `Clip` imports as `Min(Max(x, lo), hi)`: NaN stays NaN.
#[test]
fn clip_keeps_nan() {
    use prost::Message;
    use wginfer::model::onnx::{import_bytes, proto, ImportOptions};
    let info = |name: &str, dims: &[i64]| proto::ValueInfoProto {
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
    };
    let scalar = |name: &str, v: f32| proto::TensorProto {
        name: name.into(),
        data_type: proto::data_type::FLOAT,
        float_data: vec![v],
        ..Default::default()
    };
    let m = proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(proto::GraphProto {
            node: vec![proto::NodeProto {
                input: vec!["x".into(), "lo".into(), "hi".into()],
                output: vec!["y".into()],
                name: "clip".into(),
                op_type: "Clip".into(),
                ..Default::default()
            }],
            initializer: vec![scalar("lo", 0.0), scalar("hi", 6.0)],
            input: vec![info("x", &[4])],
            output: vec![info("y", &[4])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = import_bytes(&m.encode_to_vec(), std::path::Path::new("."), &ImportOptions::default()).expect("import");
    let x = t(&[4], vec![-2.0, NAN, 0.5, 7.0]);
    on_every_device(&model, &[("x", x)], "y", |got, device| {
        assert_matches(got, &[0.0, NAN, 0.5, 6.0], 0.0, &format!("Clip on {device}"))
    });
}

/// The 4×4 image `0..16` with a NaN at (`row`, `col`).
fn grid_with_nan(row: usize, col: usize) -> Tensor {
    let mut v: Vec<f32> = (0..16).map(|i| i as f32).collect();
    v[row * 4 + col] = NAN;
    t(&[1, 1, 4, 4], v)
}

#[test]
fn max_pool_is_nan_where_its_window_holds_a_nan() {
    let attrs = serde_json::json!({"kernel_shape": [2, 2], "strides": [2, 2]});
    // Where onnxruntime gives NaN: the NaN is the window's last element.
    check_op("MaxPool", attrs.clone(), grid_with_nan(1, 1), &[NAN, 7.0, 13.0, 15.0]);
    // Anywhere else in the window: IEEE maximum (onnxruntime gives 5 here).
    for (r, c) in [(0, 0), (0, 1), (1, 0)] {
        check_op("MaxPool", attrs.clone(), grid_with_nan(r, c), &[NAN, 7.0, 13.0, 15.0]);
    }
    // Padded 3×3 windows: every window that covers (1, 1) is NaN.
    let attrs = serde_json::json!({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]});
    let mut want = vec![NAN, NAN, NAN, 7.0, NAN, NAN, NAN, 11.0, NAN, NAN, NAN, 15.0];
    want.extend([13.0, 14.0, 15.0, 15.0]);
    check_op("MaxPool", attrs, grid_with_nan(1, 1), &want);
}

/// With the Indices output onnxruntime keeps a NaN only when it is the
/// window's first element: NaN at (0, 0) gives `[NaN, 7, 13, 15]` and indices
/// `[0, 7, 13, 15]`. wginfer's index is the window's first NaN.
#[test]
fn max_pool_indices_point_at_the_nan() {
    let attrs = serde_json::json!({"kernel_shape": [2, 2], "strides": [2, 2], "outputs": 2});
    for (r, c) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let x = grid_with_nan(r, c);
        let model = common::one_op_model(op("MaxPool", attrs.clone()), std::slice::from_ref(&x));
        let at = (r * 4 + c) as f32;
        on_every_device(&model, &[("x0", x.clone())], "y1", |got, device| {
            assert_matches(
                got,
                &[at, 7.0, 13.0, 15.0],
                0.0,
                &format!("MaxPool indices on {device}"),
            )
        });
        on_every_device(&model, &[("x0", x)], "y", |got, device| {
            assert_matches(
                got,
                &[NAN, 7.0, 13.0, 15.0],
                0.0,
                &format!("MaxPool values on {device}"),
            )
        });
    }
}

#[test]
fn softmax_and_log_softmax_rows_with_a_nan_are_nan() {
    let x = t(&[2, 3], vec![1.0, NAN, 3.0, 1.0, 2.0, 3.0]);
    let attrs = serde_json::json!({"axis": -1});
    check_op(
        "Softmax",
        attrs.clone(),
        x.clone(),
        &[NAN, NAN, NAN, 0.090_030_57, 0.244_728_48, 0.665_240_94],
    );
    check_op(
        "LogSoftmax",
        attrs,
        x,
        &[NAN, NAN, NAN, -2.407_606, -1.407_606, -0.407_606],
    );
}

#[test]
fn global_average_pool_of_a_plane_with_a_nan_is_nan() {
    let mut v: Vec<f32> = (0..8).map(|i| i as f32).collect();
    v[1] = NAN;
    check_op(
        "GlobalAveragePool",
        serde_json::json!({}),
        t(&[1, 2, 2, 2], v),
        &[NAN, 5.5],
    );
}

#[test]
fn layer_norm_rows_with_a_nan_are_nan() {
    let x = t(&[2, 4], vec![1.0, NAN, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]);
    let scale = t(&[4], vec![1.0; 4]);
    let bias = t(&[4], vec![0.0; 4]);
    let (a, b) = (1.341_635_5, 0.447_211_83);
    check_op_inputs(
        "LayerNormalization",
        serde_json::json!({"axis": -1}),
        vec![x, scale, bias],
        &[NAN, NAN, NAN, NAN, -a, -b, b, a],
    );
}

#[test]
fn one_nan_pixel_makes_every_digits_cnn_probability_nan() {
    let model = Model::load(common::root("models/digits-cnn/model.onnx")).expect("digits CNN");
    for (r, c) in [(0, 0), (3, 4), (4, 0), (7, 7)] {
        let mut v = vec![0.5f32; 64];
        v[r * 8 + c] = NAN;
        let x = t(&[1, 1, 8, 8], v);
        on_every_device(&model, &[("input", x)], "probabilities", |got, device| {
            assert_matches(
                got,
                &[NAN; 10],
                0.0,
                &format!("digits CNN, NaN at ({r}, {c}), on {device}"),
            )
        });
    }
}
