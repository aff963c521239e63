//! The shipped digits MLP against its trainer (scikit-learn's MLPClassifier):
//! same class on every held-out sample, probabilities within 1e-5.

mod common;

use common::root;
use wginfer::model::load_tensors;
use wginfer::{Device, Model, Session, Tensor};

fn tensor<'a>(set: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &set.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .1
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > row[b] { i } else { b })
}

fn check_against_trainer(device: Device, batch: usize) {
    let model = Model::load(root("models/digits-mlp/model.safetensors")).unwrap();
    let data = load_tensors(root("models/digits-mlp/digits_test.safetensors")).unwrap();
    let reference = load_tensors(root("models/digits-mlp/reference.safetensors")).unwrap();
    let (x, labels, want) = (
        tensor(&data, "input"),
        tensor(&data, "label"),
        tensor(&reference, "probabilities"),
    );
    let n = x.shape()[0];
    assert_eq!(n, 450, "the held-out split is 25% of load_digits' 1797 samples");
    let want = want.as_f32().unwrap();
    let labels = labels.to_i64_vec();
    let session = Session::new(&model, device.clone()).unwrap();
    let (mut max_diff, mut correct) = (0.0f32, 0);
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let out = session.run([("input", x.slice_rows(start, end).unwrap())]).unwrap();
        let probs = out["probabilities"].as_f32().unwrap();
        for (i, row) in probs.chunks(10).enumerate() {
            let s = start + i;
            let w = &want[s * 10..s * 10 + 10];
            assert_eq!(
                argmax(row),
                argmax(w),
                "{device}: sample {s}: class differs from the trainer's"
            );
            for (a, b) in row.iter().zip(w) {
                max_diff = max_diff.max((a - b).abs());
            }
            correct += (argmax(row) as i64 == labels[s]) as usize;
        }
    }
    let acc = correct as f64 / n as f64;
    println!("{device} batch {batch}: accuracy {acc:.4}, max |Δprob| vs trainer {max_diff:.2e}");
    assert!(max_diff <= 1e-5, "{device}: max |Δprob| {max_diff:e} > 1e-5");
    assert!(acc >= 0.96, "{device}: accuracy {acc} < 0.96");
}

#[test]
fn cpu_matches_trainer_whole_split() {
    check_against_trainer(Device::Cpu, 450);
}

#[test]
fn cpu_matches_trainer_batch_1_and_odd_batches() {
    check_against_trainer(Device::Cpu, 1);
    check_against_trainer(Device::Cpu, 17);
}

#[test]
fn cpu_reference_matches_trainer() {
    check_against_trainer(Device::CpuReference, 64);
}

#[test]
fn save_load_gives_identical_outputs() {
    let model = Model::load(root("models/digits-mlp/model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.safetensors");
    model.save(&path).unwrap();
    let copy = Model::load(&path).unwrap();
    assert_eq!(copy.graph().to_doc().nodes.len(), model.graph().nodes().len());
    let data = load_tensors(root("models/digits-mlp/digits_test.safetensors")).unwrap();
    let x = tensor(&data, "input").clone();
    let a = Session::new(&model, Device::Cpu)
        .unwrap()
        .run([("input", x.clone())])
        .unwrap();
    let b = Session::new(&copy, Device::Cpu).unwrap().run([("input", x)]).unwrap();
    assert_eq!(a, b, "outputs must be bit-identical after save -> load");
    // The graph and every weight survive the round trip unchanged.
    let doc = |m: &Model| serde_json::to_value(m.graph().to_doc()).unwrap();
    assert_eq!(doc(&model), doc(&copy));
    for p in model.graph().params() {
        assert_eq!(model.param(&p.name), copy.param(&p.name), "{}", p.name);
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let model = Model::load(root("models/digits-mlp/model.safetensors")).unwrap();
    let s = Session::new(&model, Device::Cpu).unwrap();
    let ok = Tensor::from_vec(vec![2, 64], vec![0.0f32; 128]).unwrap();
    let cases: Vec<(Vec<(&str, Tensor)>, &str)> = vec![
        (vec![], "missing input `input`"),
        (
            vec![("input", ok.clone()), ("extra", ok.clone())],
            "unknown input `extra`",
        ),
        (
            vec![("input", Tensor::from_vec(vec![2, 63], vec![0.0f32; 126]).unwrap())],
            "shape [2, 63]",
        ),
        (
            vec![("input", Tensor::from_vec(vec![128], vec![0.0f32; 128]).unwrap())],
            "shape [128]",
        ),
        (vec![("input", ok.cast(wginfer::DType::F16))], "dtype f16"),
    ];
    for (inputs, want) in cases {
        let e = s.run(inputs).unwrap_err().to_string();
        assert!(e.contains(want), "error `{e}` should mention `{want}`");
    }
}

#[test]
fn op_times_cover_every_node_and_leave_outputs_unchanged() {
    let model = Model::load(root("models/digits-mlp/model.safetensors")).unwrap();
    let data = load_tensors(root("models/digits-mlp/digits_test.safetensors")).unwrap();
    let x = tensor(&data, "input").clone();
    let session = Session::new(&model, Device::Cpu).unwrap();
    let plain = session.run([("input", x.clone())]).unwrap();
    let (out, times) = session.run_op_times([("input", x)]).unwrap();
    assert_eq!(out, plain, "timing must not change the outputs");
    let times = times.expect("a CPU session times its nodes");
    let nodes = model.graph().nodes();
    assert_eq!(times.len(), nodes.len(), "one time per node");
    let mut names: Vec<&str> = times.iter().map(|t| t.node.as_str()).collect();
    names.sort();
    let mut expected: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    expected.sort();
    assert_eq!(names, expected);
    for t in &times {
        let node = nodes.iter().find(|n| n.name == t.node).unwrap();
        assert_eq!(t.op, node.op.op_type());
    }
}
