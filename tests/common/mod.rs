//! Shared test helpers: the one tolerance table, `assert_close`, paths, and
//! the visible skip (`skip`, `skip_or_fail`).
#![allow(dead_code)]

pub mod gguf;
pub mod minilm;

use std::io::Write;
use std::path::PathBuf;

use wginfer::ops::Validation;
use wginfer::{DType, Tensor};

/// Absolute and relative tolerance: `|got - want| <= atol + rtol * |want|`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f32,
    /// Relative part.
    pub rtol: f32,
}

/// The tolerance table: validation class × dtype of the compared values.
///
/// - `Exact`: data movement and single IEEE operations: bit-equal.
/// - `Rounding`: a few f32 operations per element.
/// - `Approximate`: long f32 accumulations (matmul with K up to 1000, against an
///   f64-accumulating reference) and transcendental functions in f32.
pub fn tolerance(v: Validation, dtype: DType) -> Tolerance {
    let half = matches!(dtype, DType::F16 | DType::BF16);
    match (v, half) {
        (Validation::Exact, _) => Tolerance { atol: 0.0, rtol: 0.0 },
        (Validation::Rounding, false) => Tolerance { atol: 1e-6, rtol: 1e-6 },
        (Validation::Approximate, false) => Tolerance { atol: 1e-4, rtol: 1e-4 },
        (_, true) => Tolerance { atol: 1e-2, rtol: 1e-2 },
    }
}

/// The tolerance of a `QLinear` output computed on another backend than the
/// reference. Weight-only formats dequantize to the very same f32 weights
/// everywhere, so only accumulation differs: `Approximate`. W8A8 also
/// quantizes activations at run time, and a backend whose division is not
/// exactly rounded (WGSL promises 2.5 ULP) may round an activation that sits
/// on a .5 boundary the other way: allow two activation steps (the largest
/// row's `s_x = (hi - lo)/255`, from the row without its outlier channels,
/// which are not quantized) times the largest weight (`127·s_w`) per output.
pub fn qlinear_tolerance(format: &wginfer::quant::WeightFormat, inputs: &[Tensor]) -> Tolerance {
    let base = tolerance(Validation::Approximate, DType::F32);
    let wginfer::quant::WeightFormat::W8A8 { outliers } = *format else {
        return base;
    };
    let max_abs = |t: &Tensor| t.to_f32_vec().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let k = inputs[0].shape().last().copied().unwrap_or(1).max(1);
    // inputs: x, q, scale, wsum, then outlier_index when there are outliers.
    let skip: Vec<usize> = if outliers > 0 {
        inputs[4].to_f32_vec().iter().map(|&c| c as usize).collect()
    } else {
        Vec::new()
    };
    let step_x = inputs[0]
        .to_f32_vec()
        .chunks(k)
        .map(|row| {
            let (mut lo, mut hi) = (0.0f32, 0.0f32);
            for (c, &v) in row.iter().enumerate() {
                let v = if skip.contains(&c) { 0.0 } else { v };
                lo = lo.min(v);
                hi = hi.max(v);
            }
            (hi - lo) / 255.0
        })
        .fold(0.0f32, f32::max);
    let max_w = 127.0 * max_abs(&inputs[2]);
    Tolerance {
        atol: base.atol + 2.0 * step_x * max_w,
        rtol: base.rtol,
    }
}

/// Asserts two tensors have the same shape and dtype and values within `tol`
/// (NaN equals NaN; infinities must match exactly). Reports the worst element.
pub fn assert_close(got: &Tensor, want: &Tensor, tol: Tolerance, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes differ");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtypes differ");
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        if a.is_nan() && b.is_nan() {
            continue;
        }
        if a.is_infinite() || b.is_infinite() {
            assert_eq!(a, b, "{what}: element {i}: got {a}, want {b}");
            continue;
        }
        let err = (a - b).abs();
        let excess = err - (tol.atol + tol.rtol * b.abs());
        if excess > 0.0 && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i}: got {}, want {} (|diff| {:.3e} > atol {:.1e} + rtol {:.1e}·|want|)",
            g[i],
            w[i],
            (g[i] - w[i]).abs(),
            tol.atol,
            tol.rtol
        );
    }
}

/// A path under the crate root.
pub fn root(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Reports a test (or part of one) that cannot run its check: writes
/// `SKIPPED <test>: <reason>` to the process's standard error.
///
/// The test harness captures only the `print!`/`eprint!` family of macros, so
/// their lines vanish when a test passes; a direct write to
/// `std::io::stderr()` is not captured and shows in plain `cargo test` output.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map(|n| format!(" {n}"))
        .unwrap_or_default();
    // One write, so that the line is not split by the harness's own output.
    let line = format!("\nSKIPPED{test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// A skip that CI forbids: panics when the environment variable `require`
/// (one of the `WGINFER_REQUIRE_*` variables `.ci/run` sets) is `1`, else
/// reports the skip with [`skip`].
#[track_caller]
pub fn skip_or_fail(require: &str, reason: &str) {
    if std::env::var(require).is_ok_and(|v| v == "1") {
        panic!("{require}=1 but this test cannot run: {reason}");
    }
    skip(reason);
}

/// A model of one node reading graph inputs `x0, x1, ...` and writing `y`
/// (and `y1, y2, ...` when the op has more outputs).
pub fn one_op_model(op: std::sync::Arc<dyn wginfer::ops::Op>, inputs: &[Tensor]) -> wginfer::Model {
    let types: Vec<wginfer::tensor::ValueType> = inputs
        .iter()
        .map(|t| wginfer::tensor::ValueType::known(t.dtype(), t.shape()))
        .collect();
    let out = op.infer(&types).expect("infers");
    let infos: Vec<wginfer::graph::ValueInfo> = types
        .into_iter()
        .enumerate()
        .map(|(i, ty)| wginfer::graph::ValueInfo {
            name: format!("x{i}"),
            ty,
        })
        .collect();
    let node = wginfer::graph::Node {
        name: "n".into(),
        op,
        inputs: infos.iter().map(|i| i.name.clone()).collect(),
        outputs: (0..out.len()).map(output_name).collect(),
    };
    let outputs = out
        .into_iter()
        .enumerate()
        .map(|(i, ty)| wginfer::graph::ValueInfo {
            name: output_name(i),
            ty,
        })
        .collect();
    let graph = wginfer::graph::Graph::new("one_op", infos, outputs, vec![], vec![node]).expect("graph");
    wginfer::Model::new(graph, Default::default()).expect("model")
}

fn output_name(i: usize) -> String {
    if i == 0 {
        "y".into()
    } else {
        format!("y{i}")
    }
}

/// Mean KL(reference ‖ ours) per position (rows of `vocab` logits) and the
/// fraction of positions whose most likely token agrees.
pub fn kl_top1(reference: &[f32], ours: &[f32], vocab: usize) -> (f64, f64) {
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
        row.iter().map(|&v| v as f64 - lse).collect()
    };
    let argmax = |row: &[f32]| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
    let (mut kl, mut agree, mut n) = (0.0, 0usize, 0usize);
    for (r, o) in reference.chunks_exact(vocab).zip(ours.chunks_exact(vocab)) {
        let (lr, lo) = (log_softmax(r), log_softmax(o));
        kl += lr.iter().zip(&lo).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
        agree += usize::from(argmax(r) == argmax(o));
        n += 1;
    }
    (kl / n as f64, agree as f64 / n as f64)
}
