//! The shipped digits CNN quantized W8A8 (`quantize --format w8a8`: both
//! convolutions become `QConv`, the classifier `QLinear`): accuracy on the
//! 450 held-out digits against the f32 model's (which must be the
//! accuracy onnxruntime measured when the model was exported), the fast CPU
//! path against every op's reference, and a GPU session (the convolutions
//! on the CPU, the rest on the adapter) against the CPU.

mod common;

use common::root;
use wginfer::backend::gpu::{AdapterChoice, GpuContext, Placement};
use wginfer::model::load_tensors;
use wginfer::optimize::{quantize, QuantizeOptions};
use wginfer::quant::WeightFormat;
use wginfer::{Device, Model, Session, Tensor};

/// The test split as images `[450, 1, 8, 8]` and its labels.
fn digits() -> (Tensor, Vec<i64>) {
    let data = load_tensors(root("models/digits-mlp/digits_test.safetensors")).unwrap();
    let get = |name: &str| data.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let x = get("input");
    let n = x.shape()[0];
    assert_eq!(n, 450, "the held-out split");
    (x.reshape(vec![n, 1, 8, 8]).unwrap(), get("label").to_i64_vec())
}

fn cnn() -> Model {
    Model::load(root("models/digits-cnn/model.onnx")).unwrap()
}

fn w8a8(m: &Model, convolutions: bool) -> Model {
    let mut opts = QuantizeOptions::new(WeightFormat::W8A8 { outliers: 0 });
    opts.convolutions = convolutions;
    quantize(m, &opts, |_, _| {}).unwrap().0
}

/// Probabilities `[n, 10]` in runs of `batch` samples.
fn probabilities(model: &Model, device: Device, x: &Tensor, batch: usize) -> Vec<f32> {
    let session = Session::new(model, device).unwrap();
    let n = x.shape()[0];
    let mut out = Vec::with_capacity(n * 10);
    for start in (0..n).step_by(batch) {
        let xs = x.slice_rows(start, (start + batch).min(n)).unwrap();
        out.extend_from_slice(session.run([("input", xs)]).unwrap()["probabilities"].as_f32().unwrap());
    }
    out
}

fn accuracy(probs: &[f32], labels: &[i64]) -> f64 {
    let argmax = |r: &[f32]| (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b });
    let right = probs
        .chunks(10)
        .zip(labels)
        .filter(|(r, &l)| argmax(r) as i64 == l)
        .count();
    right as f64 / labels.len() as f64
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn digits_cnn_w8a8_stays_within_a_point_of_f32() {
    let (x, labels) = digits();
    let f32_model = cnn();
    let q = w8a8(&f32_model, true);
    let ops: Vec<&str> = q.graph().nodes().iter().map(|n| n.op.op_type()).collect();
    assert_eq!(ops.iter().filter(|o| **o == "QConv").count(), 2, "{ops:?}");
    assert!(!ops.contains(&"Conv"), "{ops:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root("models/digits-cnn/accuracy.json")).unwrap()).unwrap();
    let ort = json["test_accuracy_onnxruntime"].as_f64().unwrap();
    let f32_acc = accuracy(&probabilities(&f32_model, Device::Cpu, &x, 450), &labels);
    assert!((f32_acc - ort).abs() < 1e-9, "f32 {f32_acc} vs onnxruntime's {ort}");
    let linear_only = accuracy(&probabilities(&w8a8(&f32_model, false), Device::Cpu, &x, 450), &labels);
    for batch in [1, 64, 450] {
        let acc = accuracy(&probabilities(&q, Device::Cpu, &x, batch), &labels);
        println!("digits CNN batch {batch}: f32 {f32_acc:.4}, w8a8 {acc:.4}, w8a8 linear only {linear_only:.4}");
        assert!(
            (acc - f32_acc).abs() <= 0.01,
            "batch {batch}: w8a8 {acc} vs f32 {f32_acc}"
        );
    }
}

/// The fast path (packed VNNI/AVX2 kernels, fused ReLU) against every op's
/// reference on the whole split: the same classes, probabilities within
/// 1e-3. The references' epilogues run in f64, the fast path's in f32; an
/// ulp's difference can move a next layer's activation code by one step,
/// which the probabilities show at about 1e-4.
#[test]
fn digits_cnn_w8a8_fast_path_matches_reference() {
    let (x, _) = digits();
    let q = w8a8(&cnn(), true);
    let fast = probabilities(&q, Device::Cpu, &x, 450);
    let reference = probabilities(&q, Device::CpuReference, &x, 450);
    let d = max_diff(&fast, &reference);
    println!("w8a8 CNN: max |cpu - cpu-reference| {d:.2e}");
    assert!(d <= 1e-3, "max |Δprob| {d:e}");
    let labels: Vec<i64> = reference
        .chunks(10)
        .map(|r| (0..10).fold(0, |b, i| if r[i] > r[b] { i } else { b }) as i64)
        .collect();
    assert_eq!(accuracy(&fast, &labels), 1.0, "classes differ from the reference's");
}

/// On a software adapter the QConv nodes fall back to the CPU (visibly, in
/// the plan) and the model's classes match the CPU session's.
#[test]
fn digits_cnn_w8a8_on_gpu_runs_qconv_on_the_cpu() {
    if let Err(e) = GpuContext::shared(&AdapterChoice::Software) {
        common::skip_or_fail("WGINFER_REQUIRE_GPU", &format!("no software wgpu adapter ({e})"));
        return;
    }
    let (x, labels) = digits();
    let q = w8a8(&cnn(), true);
    let device = Device::Gpu(AdapterChoice::Software);
    let session = Session::new(&q, device.clone()).unwrap();
    let plan = session.gpu_plan(Some(&[vec![64, 1, 8, 8]])).unwrap().unwrap();
    for n in &plan.nodes {
        if n.op == "QConv" {
            assert!(
                matches!(n.placement, Placement::Cpu { .. }),
                "{}: {}",
                n.node,
                n.placement
            );
        }
    }
    let gpu = probabilities(&q, device, &x, 64);
    let cpu = probabilities(&q, Device::Cpu, &x, 64);
    // The GPU's W8A8 classifier rounds its activations on the adapter.
    let d = max_diff(&gpu, &cpu);
    let (ag, ac) = (accuracy(&gpu, &labels), accuracy(&cpu, &labels));
    println!("w8a8 CNN on the software adapter: accuracy {ag:.4} (CPU {ac:.4}), max |Δprob| {d:.2e}");
    assert!(d <= 5e-3, "max |Δprob| {d:e}");
    assert!((ag - ac).abs() <= 1.0 / 450.0 + 1e-9, "gpu {ag} vs cpu {ac}");
}
