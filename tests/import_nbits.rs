//! onnxruntime's int4 `com.microsoft.MatMulNBits`, imported from files that
//! onnxruntime's own quantizer wrote (`models/export/ort_nbits.py`: the
//! shipped digits MLP, symmetric and asymmetric, blocks of 16, 32 and 128),
//! runs in wginfer within 1e-4 of onnxruntime's outputs on the digits test
//! images. Needs `WGINFER_ORT_PYTHON` (a python with onnxruntime and onnx);
//! skipped visibly without it.

mod common;

use std::collections::HashMap;
use std::process::Command;

use wginfer::model::load_tensors;
use wginfer::model::onnx::import_file;
use wginfer::{Device, Session, Tensor};

const ROWS: usize = 64;

#[test]
fn matmul_nbits_from_onnxruntimes_quantizer_matches_onnxruntime() {
    let Some(python) = std::env::var_os("WGINFER_ORT_PYTHON") else {
        common::skip_or_fail(
            "WGINFER_REQUIRE_ORT",
            "set WGINFER_ORT_PYTHON to a python with onnxruntime==1.22.* and onnx (see docs/export.md)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let digits = common::root("models/digits-mlp/digits_test.safetensors");
    let out = Command::new(python)
        .arg(common::root("models/export/ort_nbits.py"))
        .arg(common::root("models/digits-cnn/digits_mlp.onnx"))
        .arg(&digits)
        .arg(ROWS.to_string())
        .arg(dir.path())
        .output()
        .expect("running ort_nbits.py");
    assert!(
        out.status.success(),
        "ort_nbits.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data: HashMap<String, Tensor> = load_tensors(&digits).unwrap().into_iter().collect();
    let x = data["input"].slice_rows(0, ROWS).unwrap();
    // (variant, whether wginfer keeps the weights packed as int4)
    let variants = [
        ("sym-b32", false),
        ("asym-b32", false),
        ("asym-b128", false),
        ("sym-b16", false),
        ("sym-b32-f16scales", true),
        // An integer zero point times an f16 scale needs more bits than an
        // f16 minimum holds: dequantized.
        ("asym-b32-f16scales", false),
    ];
    for (name, packed) in variants {
        let model = import_file(&dir.path().join(format!("{name}.onnx"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        let formats: Vec<&str> = model.graph().params().iter().map(|p| p.format.as_str()).collect();
        let int4 = formats.iter().filter(|f| f.starts_with("int4")).count();
        // Three layers: q and scale (and min) per layer when packed.
        assert_eq!(int4 > 0, packed, "{name}: weight formats {formats:?}");
        let want =
            wginfer::tensor::read_npy(&std::fs::read(dir.path().join(format!("{name}.out.npy"))).unwrap()).unwrap();
        let s = Session::new(&model, Device::Cpu).unwrap();
        let got = s.run([("input", x.clone())]).unwrap();
        let got = &got["probabilities"];
        assert_eq!(got.shape(), want.shape(), "{name}");
        let d = got
            .to_f32_vec()
            .iter()
            .zip(want.to_f32_vec())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("{name}: max |wginfer - onnxruntime| = {d:.2e}; int4 tensors {int4}");
        assert!(d <= 1e-4, "{name}: wginfer differs from onnxruntime by {d:e}");
    }
}
