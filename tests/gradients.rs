//! Reverse-mode gradients checked against central finite differences: every
//! registered op that has a backward pass, and the whole digits MLP with
//! cross-entropy.

mod common;

use std::collections::HashMap;

use common::root;
use wginfer::error::OpError;
use wginfer::ops::{CaseRng, OpCase, REGISTRY};
use wginfer::{train, Model, Tensor};

/// L = Σ y ⊙ r over the reference outputs, in f64.
fn loss(case: &OpCase, inputs: &[Tensor], r: &[Vec<f32>]) -> f64 {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let outs = case.op.reference(&refs).unwrap();
    outs.iter()
        .zip(r)
        .map(|(y, r)| {
            y.to_f32_vec()
                .iter()
                .zip(r)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
        })
        .sum()
}

fn check_case(case: &OpCase, rng: &mut CaseRng) -> Result<usize, OpError> {
    let refs = case.input_refs();
    let outs = case.op.reference(&refs)?;
    let r: Vec<Vec<f32>> = outs
        .iter()
        .map(|o| (0..o.numel()).map(|_| rng.uniform(-1.0, 1.0)).collect())
        .collect();
    let r_t: Vec<Tensor> = outs
        .iter()
        .zip(&r)
        .map(|(o, r)| Tensor::from_vec(o.shape().to_vec(), r.clone()).unwrap())
        .collect();
    let out_refs: Vec<&Tensor> = outs.iter().collect();
    let grads = case.op.backward(&refs, &out_refs, &r_t.iter().collect::<Vec<_>>())?;
    let mut checked = 0;
    for (i, g) in grads.iter().enumerate() {
        let Some(g) = g else { continue };
        assert_eq!(
            g.shape(),
            case.inputs[i].shape(),
            "{}: gradient shape of input {i}",
            case.name
        );
        let g = g.to_f32_vec();
        let n = case.inputs[i].numel();
        for e in (0..n).step_by((n / 12).max(1)) {
            let x = case.inputs[i].to_f32_vec();
            let kinks = KINKS
                .iter()
                .find(|(op, _)| *op == case.op.op_type())
                .map_or(&[][..], |k| k.1);
            if kinks.iter().any(|k| (x[e] - k).abs() < 2e-2) {
                continue; // finite differences straddle a kink
            }
            let h = 1e-2f32.max(x[e].abs() * 1e-3);
            if near_a_tie(case, i, e, 2.0 * h) {
                continue; // Max/Min pick the other operand on one side
            }
            let mut plus = case.inputs.clone();
            let mut minus = case.inputs.clone();
            let mut xp = x.clone();
            xp[e] += h;
            plus[i] = Tensor::from_vec(case.inputs[i].shape().to_vec(), xp).unwrap();
            let mut xm = x.clone();
            xm[e] -= h;
            minus[i] = Tensor::from_vec(case.inputs[i].shape().to_vec(), xm).unwrap();
            let numeric = (loss(case, &plus, &r) - loss(case, &minus, &r)) / (2.0 * h as f64);
            let analytic = g[e] as f64;
            let tol = 2e-2 * (1.0 + analytic.abs().max(numeric.abs()));
            assert!(
                (numeric - analytic).abs() <= tol,
                "{}: d/d input{i}[{e}]: analytic {analytic:.6}, numeric {numeric:.6}",
                case.name
            );
            checked += 1;
        }
    }
    Ok(checked)
}

/// For Max and Min: element `e` of input `i` is within `d` of an operand it
/// is compared with, so a step of `d` can change which one is picked.
fn near_a_tie(case: &OpCase, i: usize, e: usize, d: f32) -> bool {
    use wginfer::ops::binary::{broadcast_offset, broadcast_shapes};
    if !matches!(case.op.op_type(), "Max" | "Min") {
        return false;
    }
    let (a, b) = (&case.inputs[0], &case.inputs[1]);
    let Ok(out) = broadcast_shapes(a.shape(), b.shape()) else {
        return false;
    };
    let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
    (0..out.iter().product::<usize>()).any(|k| {
        let (p, q) = (
            broadcast_offset(k, &out, a.shape()),
            broadcast_offset(k, &out, b.shape()),
        );
        let mine = if i == 0 { p } else { q };
        mine == e && (x[p] - y[q]).abs() < d
    })
}

/// Inputs where an op's derivative jumps: finite differences across them
/// measure neither side.
const KINKS: &[(&str, &[f32])] = &[("Relu", &[0.0]), ("HardSwish", &[-3.0, 3.0])];

#[test]
fn every_differentiable_op_matches_finite_differences() {
    let mut rng = CaseRng::new(99);
    for def in REGISTRY {
        let mut checked = 0;
        let mut cases: Vec<OpCase> = (0..6).map(|s| (def.sample)(&mut CaseRng::new(s))).collect();
        cases.extend(
            (def.cases)()
                .into_iter()
                .filter(|c| c.inputs.iter().map(Tensor::numel).sum::<usize>() < 5000),
        );
        let mut skipped = None;
        for case in &cases {
            match check_case(case, &mut rng) {
                Ok(n) => checked += n,
                Err(OpError::NoGradient(op)) => skipped = Some(op),
                Err(e) => panic!("{}: {e}", case.name),
            }
        }
        match skipped {
            Some(op) => common::skip(&format!("{op} has no backward pass, so there is no gradient to check")),
            None => {
                assert!(checked > 0, "{}: no gradient was checked", def.op_type);
                println!("{}: {checked} partial derivatives match", def.op_type);
            }
        }
    }
}

#[test]
fn digits_mlp_cross_entropy_gradient() {
    let model = Model::load(root("models/digits-mlp/model.safetensors")).unwrap();
    let data = wginfer::model::load_tensors(root("models/digits-mlp/digits_test.safetensors")).unwrap();
    let x = data
        .iter()
        .find(|(n, _)| n == "input")
        .unwrap()
        .1
        .slice_rows(0, 32)
        .unwrap();
    let labels: Vec<i64> = data.iter().find(|(n, _)| n == "label").unwrap().1.to_i64_vec()[..32].to_vec();
    let g = model.graph();
    let params: HashMap<String, Tensor> = g
        .params()
        .iter()
        .map(|p| (p.name.clone(), model.param(&p.name).unwrap().clone()))
        .collect();
    let (loss0, _, grads) = train::loss_and_grads(g, &params, ("input", x.clone()), &labels).unwrap();
    assert!(loss0.is_finite() && loss0 > 0.0);
    for name in ["fc1.weight", "fc2.bias", "fc3.weight"] {
        let grad = grads[name].to_f32_vec();
        let w = params[name].to_f32_vec();
        // The largest-gradient element and a few others.
        let big = grad
            .iter()
            .enumerate()
            .fold(0, |b, (i, v)| if v.abs() > grad[b].abs() { i } else { b });
        for e in [big, 0, w.len() / 2, w.len() - 1] {
            let h = 1e-2f32;
            let eval = |delta: f32| {
                let mut p = params.clone();
                let mut v = w.clone();
                v[e] += delta;
                p.insert(
                    name.to_string(),
                    Tensor::from_vec(params[name].shape().to_vec(), v).unwrap(),
                );
                train::loss_and_grads(g, &p, ("input", x.clone()), &labels).unwrap().0
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h as f64);
            let analytic = grad[e] as f64;
            assert!(
                (numeric - analytic).abs() <= 1e-3 + 2e-2 * analytic.abs(),
                "{name}[{e}]: analytic {analytic:.6e}, numeric {numeric:.6e}"
            );
        }
    }
}
