//! `wginfer convert` and `.onnx` paths in the other commands.

mod common;

use std::process::Command;

fn wginfer(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wginfer"))
        .args(args)
        .env("WGINFER_DEVICE", "cpu")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn convert_writes_a_model_that_inspect_and_eval_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cnn.safetensors");
    let onnx = common::root("models/digits-cnn/model.onnx");
    let (ok, text) = wginfer(&["convert", onnx.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("Conv×2") && text.contains("Linear×1"), "{text}");
    let (ok, text) = wginfer(&["inspect", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    let (ok, text) = wginfer(&["inspect", onnx.to_str().unwrap()]);
    assert!(ok && text.contains("MaxPool"), "{text}");
}

#[test]
fn convert_rejects_an_onnx_output_and_a_corrupt_input() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = common::root("models/digits-cnn/model.onnx");
    let (ok, text) = wginfer(&["convert", onnx.to_str().unwrap(), "-o", "x.onnx"]);
    assert!(!ok && text.contains("name the output *.safetensors"), "{text}");
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"\xff\xff\xff").unwrap();
    let (ok, text) = wginfer(&["convert", bad.to_str().unwrap(), "-o", "y.safetensors"]);
    assert!(!ok && text.contains("not a valid ONNX"), "{text}");
}

#[test]
fn an_imported_model_evaluates_and_quantizes() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = common::root("models/digits-cnn/digits_mlp.onnx");
    let data = common::root("models/digits-mlp/digits_test.safetensors");
    let (ok, text) = wginfer(&[
        "eval",
        onnx.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "-b",
        "0",
    ]);
    assert!(ok, "{text}");
    let out = dir.path().join("mlp_int8.safetensors");
    let (ok, text) = wginfer(&[
        "quantize",
        onnx.to_str().unwrap(),
        "-f",
        "int8",
        "--eval",
        data.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(out.exists(), "{text}");
    println!("{text}");
}
