//! Pruning: masks hit their targets exactly, N:M patterns are valid and
//! packed, structured pruning computes exactly what the masked model does,
//! fine-tuning keeps masks fixed, and the accuracy cost on the digits split.

mod common;

use common::root;
use wginfer::eval::{evaluate, EvalOptions};
use wginfer::model::load_tensors;
use wginfer::optimize::prune::scores::{is_nm, Importance};
use wginfer::optimize::{prune, Finetune, Labelled, PruneMethod, PruneOptions, Scope};
use wginfer::quant::{self, WeightFormat};
use wginfer::{Device, Model, Session, Tensor};

fn model() -> Model {
    Model::load(root("models/digits-mlp/model.safetensors")).unwrap()
}

fn split(name: &str) -> Labelled {
    let data = load_tensors(root(&format!("models/digits-mlp/digits_{name}.safetensors"))).unwrap();
    let get = |n: &str| data.iter().find(|(k, _)| k == n).unwrap().1.clone();
    Labelled {
        input_name: "input".into(),
        input: get("input"),
        labels: get("label").to_i64_vec(),
    }
}

fn accuracy(m: &Model) -> f64 {
    let test = split("test");
    let s = Session::new(m, Device::Cpu).unwrap();
    let y = Tensor::from_vec(vec![test.labels.len()], test.labels.clone()).unwrap();
    let opts = EvalOptions {
        input: "input".into(),
        output: "probabilities".into(),
        batch_size: 0,
    };
    evaluate(&s, &test.input, &y, &opts, |_, _| {}).unwrap().accuracy()
}

fn weights(m: &Model, name: &str) -> Vec<f32> {
    m.param(name).unwrap().to_f32_vec()
}

const LAYERS: [&str; 3] = ["fc1.weight", "fc2.weight", "fc3.weight"];

#[test]
fn global_magnitude_mask_is_exact() {
    let base = model();
    let (p, report) = prune(
        &base,
        &PruneOptions::new(PruneMethod::Unstructured(Importance::Magnitude), 0.5),
        |_| {},
    )
    .unwrap();
    let total: usize = LAYERS.iter().map(|l| weights(&base, l).len()).sum();
    let zeros: usize = LAYERS
        .iter()
        .map(|l| weights(&p, l).iter().filter(|v| **v == 0.0).count())
        .sum();
    assert_eq!(zeros, total / 2, "exactly half of {total} weights are zero");
    // The kept weights are the largest: every kept |w| >= every pruned |w|.
    let (mut min_kept, mut max_pruned) = (f32::INFINITY, 0.0f32);
    for l in LAYERS {
        for (a, b) in weights(&base, l).iter().zip(weights(&p, l)) {
            if b == 0.0 {
                max_pruned = max_pruned.max(a.abs());
            } else {
                assert_eq!(*a, b, "kept weights are unchanged");
                min_kept = min_kept.min(a.abs());
            }
        }
    }
    assert!(min_kept >= max_pruned);
    // The bit-packed mask in the file matches the zeros.
    for (l, layer) in LAYERS.iter().zip(&report.layers) {
        let w = weights(&p, l);
        let cols = base.param(l).unwrap().shape()[1];
        let mask = p
            .param(&format!("{l}.mask"))
            .unwrap()
            .as_slice::<u8>()
            .unwrap()
            .to_vec();
        let words = cols.div_ceil(32) * 4;
        for (r, row) in w.chunks(cols).enumerate() {
            let bits = quant::unpack_bits(&mask[r * words..(r + 1) * words], cols);
            for (c, &v) in row.iter().enumerate() {
                assert_eq!(bits[c], v != 0.0, "{l}[{r},{c}]");
            }
        }
        assert_eq!(layer.params_after, w.iter().filter(|v| **v != 0.0).count());
    }
}

#[test]
fn per_layer_scope_prunes_each_layer_to_the_target() {
    let mut opts = PruneOptions::new(PruneMethod::Unstructured(Importance::Magnitude), 0.3);
    opts.scope = Scope::PerLayer;
    let (_, report) = prune(&model(), &opts, |_| {}).unwrap();
    for l in &report.layers {
        let want = l.params_before - (0.3 * l.params_before as f32).round() as usize;
        assert_eq!(l.params_after, want, "{}", l.node);
    }
}

#[test]
fn n_m_is_valid_packed_and_matches_the_mask() {
    let base = model();
    let (p, report) = prune(
        &base,
        &PruneOptions::new(
            PruneMethod::NM {
                n: 2,
                m: 4,
                importance: Importance::Magnitude,
            },
            0.5,
        ),
        |_| {},
    )
    .unwrap();
    for (l, layer) in LAYERS.iter().zip(&report.layers) {
        let shape = base.param(l).unwrap().shape().to_vec();
        let (out, inp) = (shape[0], shape[1]);
        let packed: Vec<&Tensor> = ["values", "index"]
            .iter()
            .map(|s| p.param(&format!("{l}.{s}")).unwrap())
            .collect();
        let dense = quant::dequantize(&WeightFormat::NM { n: 2, m: 4 }, &packed, out, inp).unwrap();
        let keep: Vec<bool> = dense.iter().map(|v| *v != 0.0).collect();
        assert!(is_nm(&keep, inp, 2, 4), "{l} violates 2:4");
        // Kept values are the original weights, the two largest of each group.
        let orig = weights(&base, l);
        for (a, b) in orig.iter().zip(&dense) {
            assert!(*b == 0.0 || a == b);
        }
        // Half the weight bytes (values) plus 4-bit indices.
        assert_eq!(layer.bytes_after, out * inp / 2 * 4 + out * inp / 4);
    }
    // The packed model computes what the masked dense model computes.
    let x = split("test").input;
    let packed_out = Session::new(&p, Device::CpuReference)
        .unwrap()
        .run([("input", x.clone())])
        .unwrap();
    let mut dense_params = std::collections::HashMap::new();
    for pi in base.graph().params() {
        dense_params.insert(pi.name.clone(), base.param(&pi.name).unwrap().clone());
    }
    for l in LAYERS {
        let shape = base.param(l).unwrap().shape().to_vec();
        let packed: Vec<&Tensor> = ["values", "index"]
            .iter()
            .map(|s| p.param(&format!("{l}.{s}")).unwrap())
            .collect();
        let dense = quant::dequantize(&WeightFormat::NM { n: 2, m: 4 }, &packed, shape[0], shape[1]).unwrap();
        dense_params.insert(l.to_string(), Tensor::from_vec(shape, dense).unwrap());
    }
    let masked = Model::new(base.graph().clone(), dense_params).unwrap();
    let dense_out = Session::new(&masked, Device::CpuReference)
        .unwrap()
        .run([("input", x)])
        .unwrap();
    common::assert_close(
        &packed_out["probabilities"],
        &dense_out["probabilities"],
        common::Tolerance { atol: 1e-6, rtol: 1e-5 },
        "2:4",
    );
}

#[test]
fn structured_equals_masked() {
    let base = model();
    let opts = PruneOptions::new(PruneMethod::Channels(Importance::Magnitude), 0.5);
    let (small, report) = prune(&base, &opts, |_| {}).unwrap();
    let (masked, _) = prune(&base, &PruneOptions { shrink: false, ..opts }, |_| {}).unwrap();
    assert_eq!(small.param("fc1.weight").unwrap().shape(), &[64, 64]);
    assert_eq!(small.param("fc2.weight").unwrap().shape(), &[32, 64]);
    assert_eq!(small.param("fc3.weight").unwrap().shape(), &[10, 32]);
    assert_eq!(masked.param("fc1.weight").unwrap().shape(), &[128, 64]);
    assert!(
        small.param_bytes() * 2 < base.param_bytes() + 4096,
        "{} vs {}",
        small.param_bytes(),
        base.param_bytes()
    );
    assert!(report.layers.iter().all(|l| l.params_after < l.params_before));
    let x = split("test").input;
    let a = Session::new(&small, Device::CpuReference)
        .unwrap()
        .run([("input", x.clone())])
        .unwrap();
    let b = Session::new(&masked, Device::CpuReference)
        .unwrap()
        .run([("input", x)])
        .unwrap();
    // Removing exact zeros from f64 sums changes nothing.
    assert_eq!(a["logits"], b["logits"]);
}

#[test]
fn taylor_needs_calibration_and_differs_from_magnitude() {
    let base = model();
    let e = prune(
        &base,
        &PruneOptions::new(PruneMethod::Unstructured(Importance::Taylor), 0.5),
        |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("--calibration"), "{e}");
    let mut opts = PruneOptions::new(PruneMethod::Unstructured(Importance::Taylor), 0.5);
    opts.calibration = Some(split("train"));
    let (t, report) = prune(&base, &opts, |_| {}).unwrap();
    let (m, _) = prune(
        &base,
        &PruneOptions::new(PruneMethod::Unstructured(Importance::Magnitude), 0.5),
        |_| {},
    )
    .unwrap();
    let differ = LAYERS
        .iter()
        .map(|l| {
            weights(&t, l)
                .iter()
                .zip(weights(&m, l))
                .filter(|(a, b)| (**a == 0.0) != (*b == 0.0))
                .count()
        })
        .sum::<usize>();
    assert!(differ > 100, "Taylor and magnitude masks should differ ({differ})");
    // Every node the loss flows back through (all but the final softmax) is scored.
    let scored: Vec<&str> = report.layer_importance.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(scored, ["fc1", "relu1", "fc2", "relu2", "fc3"]);
    let (acc0, acc) = (accuracy(&base), accuracy(&t));
    println!("taylor 50%: {acc0:.4} -> {acc:.4}");
    assert!(
        acc0 - acc <= 0.01,
        "50% Taylor pruning loses {:.2} points (aim <= 1)",
        (acc0 - acc) * 100.0
    );
}

#[test]
fn finetuning_keeps_masks_and_recovers() {
    let base = model();
    let mut opts = PruneOptions::new(PruneMethod::Unstructured(Importance::Magnitude), 0.8);
    let (no_ft, _) = prune(&base, &opts, |_| {}).unwrap();
    opts.finetune = Some(Finetune {
        data: split("train"),
        epochs: 2,
        lr: 0.05,
        batch: 32,
    });
    let (ft, report) = prune(&base, &opts, |_| {}).unwrap();
    assert_eq!(report.finetune_loss.len(), 2);
    assert!(report.finetune_loss[1] <= report.finetune_loss[0]);
    for l in LAYERS {
        let (a, b) = (weights(&no_ft, l), weights(&ft, l));
        assert!(
            a.iter().zip(&b).all(|(x, y)| (*x == 0.0) == (*y == 0.0)),
            "{l}: mask changed during fine-tuning"
        );
    }
    let (a, b) = (accuracy(&no_ft), accuracy(&ft));
    println!("80% magnitude: {a:.4} without recovery, {b:.4} with");
    assert!(b > a);
}

#[test]
fn layer_dropping_removes_the_least_important_shape_preserving_node() {
    let base = model();
    let mut opts = PruneOptions::new(PruneMethod::Layers { count: 1 }, 0.0);
    opts.calibration = Some(split("train"));
    let (p, report) = prune(&base, &opts, |_| {}).unwrap();
    assert_eq!(report.dropped.len(), 1);
    let dropped = &report.dropped[0];
    assert!(
        dropped == "relu1" || dropped == "relu2",
        "only the ReLUs keep their input's shape: {dropped}"
    );
    let imp = |n: &str| report.layer_importance.iter().find(|(k, _)| k == n).unwrap().1;
    let other = if dropped == "relu1" { "relu2" } else { "relu1" };
    assert!(imp(dropped) <= imp(other));
    assert_eq!(p.graph().nodes().len(), base.graph().nodes().len() - 1);
    let mut too_many = opts.clone();
    too_many.method = PruneMethod::Layers { count: 3 };
    assert!(prune(&base, &too_many, |_| {})
        .unwrap_err()
        .to_string()
        .contains("only 2 nodes"));
}
