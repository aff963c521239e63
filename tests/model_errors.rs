//! Every kind of malformed model file gets a typed error that says what to fix.

mod common;

use std::collections::HashMap;

use common::root;
use wginfer::error::{Error, GraphError, ModelError};
use wginfer::Model;

fn shipped() -> Vec<u8> {
    std::fs::read(root("models/digits-mlp/model.safetensors")).unwrap()
}

/// The shipped model's graph JSON, as a value to edit.
fn graph_json() -> serde_json::Value {
    let bytes = shipped();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let json = &meta.metadata().as_ref().unwrap()["wginfer.graph"];
    serde_json::from_str(json).unwrap()
}

/// A model file with the shipped tensors (minus `drop`, plus `add`) and this graph JSON.
fn file_with(
    graph: Option<&serde_json::Value>,
    drop: &[&str],
    add: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)],
) -> Vec<u8> {
    let bytes = shipped();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !drop.contains(&n.as_str()))
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    for (n, d, s, b) in add {
        owned.retain(|(o, ..)| o != n);
        owned.push((n.to_string(), *d, s.clone(), b.clone()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = graph.map(|g| HashMap::from([("wginfer.graph".to_string(), g.to_string())]));
    safetensors::serialize(views, meta).unwrap()
}

fn err(bytes: &[u8]) -> ModelError {
    Model::from_bytes(bytes).expect_err("a malformed file must not load")
}

fn assert_msg(e: &ModelError, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "message `{msg}` should contain `{p}`");
    }
}

#[test]
fn shipped_model_loads() {
    Model::from_bytes(&shipped()).unwrap();
}

#[test]
fn truncated_file() {
    let bytes = shipped();
    for cut in [bytes.len() - 1, bytes.len() / 2, 100, 7, 0] {
        let e = err(&bytes[..cut]);
        assert!(matches!(e, ModelError::Truncated { .. }), "cut at {cut}: {e:?}");
        assert_msg(&e, &["truncated"]);
    }
}

#[test]
fn bad_header() {
    // Not JSON where the header should be.
    let mut bytes = 16u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"this is not json");
    let e = err(&bytes);
    assert!(matches!(e, ModelError::BadHeader { .. }), "{e:?}");
    assert_msg(&e, &["header is corrupt"]);
    // Random bytes: an absurd header length.
    let e = err(&[0xff; 64]);
    assert!(matches!(e, ModelError::BadHeader { .. }), "{e:?}");
    // Trailing garbage after the data.
    let mut bytes = shipped();
    bytes.extend_from_slice(b"junk");
    let e = err(&bytes);
    assert!(matches!(e, ModelError::BadHeader { .. }), "{e:?}");
    assert_msg(&e, &["4 unexpected bytes"]);
}

#[test]
fn plain_safetensors_is_not_a_model() {
    let e = err(&file_with(None, &[], &[]));
    assert!(matches!(e, ModelError::NotAModel), "{e:?}");
    assert_msg(&e, &["wginfer.graph"]);
}

#[test]
fn missing_tensor() {
    let e = err(&file_with(Some(&graph_json()), &["fc2.bias"], &[]));
    assert!(
        matches!(&e, ModelError::MissingTensor { name } if name == "fc2.bias"),
        "{e:?}"
    );
    assert_msg(&e, &["fc2.bias", "declared"]);
}

#[test]
fn wrong_tensor_shape() {
    let data = vec![0u8; 4 * 5];
    let e = err(&file_with(
        Some(&graph_json()),
        &[],
        &[("fc3.bias", safetensors::Dtype::F32, vec![5], data)],
    ));
    assert!(
        matches!(&e, ModelError::TensorShape { name, .. } if name == "fc3.bias"),
        "{e:?}"
    );
    assert_msg(&e, &["fc3.bias", "[5]", "[10]"]);
}

#[test]
fn wrong_tensor_dtype() {
    let data = vec![0u8; 8 * 10];
    let e = err(&file_with(
        Some(&graph_json()),
        &[],
        &[("fc3.bias", safetensors::Dtype::F64, vec![10], data)],
    ));
    assert!(
        matches!(&e, ModelError::TensorDType { name, .. } if name == "fc3.bias"),
        "{e:?}"
    );
    assert_msg(&e, &["fc3.bias", "f64", "f32"]);
    let data = vec![0u8; 4 * 10];
    let e = err(&file_with(
        Some(&graph_json()),
        &[],
        &[("fc3.bias", safetensors::Dtype::I32, vec![10], data)],
    ));
    assert!(
        matches!(&e, ModelError::TensorDType { name, .. } if name == "fc3.bias"),
        "{e:?}"
    );
    assert_msg(&e, &["fc3.bias", "i32", "f32"]);
}

#[test]
fn unknown_op() {
    let mut g = graph_json();
    g["nodes"][1]["op"] = "Frobnicate".into();
    let e = err(&file_with(Some(&g), &[], &[]));
    assert!(
        matches!(&e, ModelError::Graph(GraphError::UnknownOp { op, .. }) if op == "Frobnicate"),
        "{e:?}"
    );
    assert_msg(&e, &["Frobnicate", "relu1", "known ops", "Linear"]);
}

#[test]
fn unsupported_format_version() {
    let mut g = graph_json();
    g["version"] = 99.into();
    let e = err(&file_with(Some(&g), &[], &[]));
    assert!(matches!(e, ModelError::UnsupportedVersion { .. }), "{e:?}");
    assert_msg(&e, &["version 99", "upgrade"]);
}

#[test]
fn malformed_graph_json() {
    let e = err(&file_with(
        Some(&serde_json::Value::String("{not json".into())),
        &[],
        &[],
    ));
    assert!(matches!(e, ModelError::BadGraph { .. }), "{e:?}");
    let mut g = graph_json();
    g["nodes"][0].as_object_mut().unwrap().remove("inputs");
    let e = err(&file_with(Some(&g), &[], &[]));
    assert!(matches!(e, ModelError::BadGraph { .. }), "{e:?}");
    assert_msg(&e, &["inputs"]);
}

#[test]
fn graph_with_a_cycle() {
    let mut g = graph_json();
    // fc1 now reads relu2's output, which depends on fc1.
    g["nodes"][0]["inputs"][0] = "relu2.out".into();
    let e = err(&file_with(Some(&g), &[], &[]));
    match &e {
        ModelError::Graph(GraphError::Cycle { nodes }) => assert!(nodes.contains(&"fc1".to_string()), "{nodes:?}"),
        other => panic!("expected a cycle error, got {other:?}"),
    }
    assert_msg(&e, &["cycle", "acyclic"]);
}

#[test]
fn undefined_value() {
    let mut g = graph_json();
    g["nodes"][2]["inputs"][0] = "nowhere".into();
    let e = err(&file_with(Some(&g), &[], &[]));
    assert!(
        matches!(&e, ModelError::Graph(GraphError::UndefinedValue { node, value }) if node == "fc2" && value == "nowhere"),
        "{e:?}"
    );
    assert_msg(&e, &["fc2", "nowhere"]);
}

#[test]
fn shape_error_names_the_node() {
    let mut g = graph_json();
    // fc2 now reads the raw 64-feature input, but its weight takes 128.
    g["nodes"][2]["inputs"][0] = "input".into();
    let e = err(&file_with(Some(&g), &[], &[]));
    assert!(
        matches!(&e, ModelError::Graph(GraphError::Node { node, .. }) if node == "fc2"),
        "{e:?}"
    );
    assert_msg(&e, &["fc2", "64 features"]);
}

#[test]
fn missing_file_names_the_path() {
    let e = Model::load("/nonexistent/model.safetensors").unwrap_err();
    assert!(matches!(e, Error::Load { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/model.safetensors"), "{e}");
}
