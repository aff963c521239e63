//! Every registered op: the fast CPU path matches the naive reference, on the
//! fixed awkward-size cases and on random shapes (proptest), and shape
//! inference agrees with what the reference computes.

mod common;

use common::{assert_close, tolerance};
use proptest::prelude::*;
use wginfer::ops::{CaseRng, OpCase, REGISTRY};
use wginfer::tensor::ValueType;

fn check(case: &OpCase) {
    let inputs = case.input_refs();
    let want = case
        .op
        .reference(&inputs)
        .unwrap_or_else(|e| panic!("{}: reference failed: {e}", case.name));
    let got = case
        .op
        .cpu(&inputs)
        .unwrap_or_else(|e| panic!("{}: fast path failed: {e}", case.name));
    assert_eq!(got.len(), want.len(), "{}", case.name);
    for (g, w) in got.iter().zip(&want) {
        assert_close(g, w, tolerance(case.op.validation(), w.dtype()), &case.name);
    }
    // The fast path on data prepared from constant inputs (as a session
    // prepares it from the model's parameters): every input after the first
    // taken as a constant.
    let consts: Vec<Option<&wginfer::Tensor>> = inputs.iter().enumerate().map(|(i, t)| (i > 0).then_some(*t)).collect();
    if let Some(prepared) = case.op.prepare_cpu(&consts) {
        let got = case
            .op
            .cpu_prepared(&inputs, &prepared)
            .unwrap_or_else(|e| panic!("{}: prepared fast path failed: {e}", case.name));
        assert_eq!(got.len(), want.len(), "{}", case.name);
        for (g, w) in got.iter().zip(&want) {
            assert_close(
                g,
                w,
                tolerance(case.op.validation(), w.dtype()),
                &format!("{} (prepared)", case.name),
            );
        }
    }
    // Shape inference predicts the reference's outputs.
    let types: Vec<ValueType> = case
        .inputs
        .iter()
        .map(|t| ValueType::known(t.dtype(), t.shape()))
        .collect();
    let inferred = case
        .op
        .infer(&types)
        .unwrap_or_else(|e| panic!("{}: infer failed: {e}", case.name));
    for (t, w) in inferred.iter().zip(&want) {
        assert_eq!(
            t,
            &ValueType::known(w.dtype(), w.shape()),
            "{}: inferred type",
            case.name
        );
    }
}

#[test]
fn fixed_cases_fast_matches_reference() {
    let mut count = 0;
    for def in REGISTRY {
        let cases = (def.cases)();
        assert!(!cases.is_empty(), "{} has no test cases", def.op_type);
        for case in &cases {
            check(case);
            count += 1;
        }
    }
    println!("{count} fixed cases over {} ops", REGISTRY.len());
}

#[test]
fn registry_builds_every_op_from_its_saved_attributes() {
    for def in REGISTRY {
        for case in (def.cases)() {
            assert_eq!(case.op.op_type(), def.op_type);
            let rebuilt = (def.build)(&case.op.attrs()).unwrap();
            assert_eq!(rebuilt.attrs(), case.op.attrs(), "{}", case.name);
            let inputs = case.input_refs();
            assert_eq!(
                rebuilt.reference(&inputs).unwrap(),
                case.op.reference(&inputs).unwrap(),
                "{}",
                case.name
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_shapes_fast_matches_reference(op in 0..REGISTRY.len(), seed in any::<u64>()) {
        let case = (REGISTRY[op].sample)(&mut CaseRng::new(seed));
        check(&case);
    }
}

#[test]
fn every_op_is_sampled() {
    // The proptest above picks ops at random; make sure each one's sampler works.
    for def in REGISTRY {
        for seed in 0..16 {
            check(&(def.sample)(&mut CaseRng::new(seed)));
        }
    }
}
