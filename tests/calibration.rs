//! Calibration-based quantization (GPTQ weights, static W8A8 activation
//! ranges) on real models: the digits MLP (calibrated on its training split,
//! measured on the test split) and all-MiniLM-L6-v2 (calibrated on
//! models/minilm/calibration.txt, measured on the 18 different texts of
//! models/minilm/texts.json against the f32 model).

mod common;

use std::io::Write;

use common::minilm;
use common::root;
use wginfer::backend::gpu::Placement;
use wginfer::embed::cosine;
use wginfer::eval::{evaluate, EvalOptions};
use wginfer::model::load_tensors;
use wginfer::optimize::{quantize, Calibration, QuantizeOptions};
use wginfer::quant::{self, WeightFormat};
use wginfer::{Device, Embedder, Model, Session, Tensor};

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn digits_split(name: &str) -> Vec<(String, Tensor)> {
    load_tensors(root(&format!("models/digits-mlp/digits_{name}.safetensors"))).expect("digits data")
}

fn get(data: &[(String, Tensor)], n: &str) -> Tensor {
    data.iter().find(|(k, _)| k == n).expect("tensor").1.clone()
}

fn digits_accuracy(model: &Model, data: &[(String, Tensor)]) -> f64 {
    let s = Session::new(model, Device::Cpu).expect("session");
    let opts = EvalOptions {
        input: "input".into(),
        output: "probabilities".into(),
        batch_size: 0,
    };
    evaluate(&s, &get(data, "input"), &get(data, "label"), &opts, |_, _| {})
        .expect("eval")
        .accuracy()
}

/// Σ over test samples and every linear layer of ‖x Wᵀ − x Ŵᵀ‖², each
/// layer fed the f32 model's own input to it (the quantity GPTQ minimises).
fn layer_output_error(f32_model: &Model, q: &Model, x: &Tensor) -> Vec<(String, f64)> {
    let g = f32_model.graph();
    let mut out = Vec::new();
    let mut values = vec![("input".to_string(), x.clone())];
    // The f32 model's values, node by node.
    for node in g.nodes() {
        let ins: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|n| {
                values
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, t)| t)
                    .or_else(|| f32_model.param(n))
                    .expect("value")
            })
            .collect();
        let y = node.op.cpu(&ins).expect("cpu");
        if node.op.op_type() == "Linear" {
            let qn = q.graph().nodes().iter().find(|n| n.name == node.name).expect("node");
            let mut qins: Vec<&Tensor> = vec![ins[0]];
            qins.extend(qn.inputs[1..].iter().map(|n| q.param(n).expect("param")));
            let packed = qn.op.cpu(&qins).expect("quantized cpu").remove(0);
            let yq = with_split(q, &node.name, ins[0], packed);
            let e: f64 = y[0]
                .to_f32_vec()
                .iter()
                .zip(yq.to_f32_vec())
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            out.push((node.name.clone(), e));
        }
        for (n, t) in node.outputs.iter().zip(y) {
            values.push((n.clone(), t));
        }
    }
    out
}

/// `packed` (the output of QLinear node `name` of `q` on `x`) plus the
/// layer's f32 outlier split, when `q` has one, run node by node.
fn with_split(q: &Model, name: &str, x: &Tensor, packed: Tensor) -> Tensor {
    let node = |suffix: &str| q.graph().nodes().iter().find(|n| n.name == format!("{name}.{suffix}"));
    let (Some(g), Some(l), Some(a)) = (node("outlier_gather"), node("outlier_linear"), node("outlier_add")) else {
        return packed;
    };
    let xo =
        g.op.cpu(&[x, q.param(&g.inputs[1]).expect("index")])
            .expect("gather")
            .remove(0);
    let yo =
        l.op.cpu(&[&xo, q.param(&l.inputs[1]).expect("weight")])
            .expect("linear")
            .remove(0);
    a.op.cpu(&[&packed, &yo]).expect("add").remove(0)
}

#[test]
fn digits_gptq_int4_beats_round_to_nearest() {
    let model = Model::load(root("models/digits-mlp/model.safetensors")).expect("model");
    let (train, test) = (digits_split("train"), digits_split("test"));
    let cal = Calibration::from_tensors(&model, &train).expect("calibration");
    assert_eq!(cal.rows(), 1347);
    let base = digits_accuracy(&model, &test);
    for format in ["int4", "int4-min", "int4/64", "int8"] {
        let f: WeightFormat = format.parse().expect("format");
        let (rtn, _) = quantize(&model, &QuantizeOptions::new(f), |_, _| {}).expect("rtn");
        let mut opts = QuantizeOptions::new(f);
        opts.calibration = Some(cal.clone());
        // Plain GPTQ here (the int4 outlier split: below).
        opts.outliers = Some(0);
        let (gq, report) = quantize(&model, &opts, |_, _| {}).expect("gptq");
        assert!(report.layers.iter().all(|l| l.gptq), "every layer by GPTQ");
        assert!(report.layers.iter().all(|l| l.split_outliers == 0));
        assert_eq!(report.calibration_rows, 1347);
        let (ar, ag) = (digits_accuracy(&rtn, &test), digits_accuracy(&gq, &test));
        let x = get(&test, "input");
        let (er, eg) = (
            layer_output_error(&model, &rtn, &x),
            layer_output_error(&model, &gq, &x),
        );
        say(&format!(
            "digits {format}: accuracy f32 {base:.4}, round-to-nearest {ar:.4}, GPTQ {ag:.4}; calibration {:.3} s",
            report.calibration_time.as_secs_f64()
        ));
        for ((name, r), (_, g)) in er.iter().zip(&eg) {
            say(&format!(
                "  {name}: test-set layer output error ‖xWᵀ−xŴᵀ‖² RTN {r:.4e}, GPTQ {g:.4e} ({:.2}x)",
                r / g
            ));
            // On held-out data, each layer's outputs are closer than round-to-nearest's.
            assert!(g < r, "{format} {name}: GPTQ {g} not below round-to-nearest {r}");
        }
        // The packed tensors are the ordinary format: same specs, and the
        // same file size as round-to-nearest.
        assert_eq!(report.bytes_after, rtn.param_bytes());
        assert!(ag >= base - 0.015, "{format}: GPTQ accuracy {ag} vs f32 {base}");
    }
}

/// int4 with calibration keeps min(16, in/16) input channels per layer in an
/// f32 `Linear` beside the packed one (Gather → Linear → Add): the channels
/// with the largest Σx² (checked by hand for the first layer), 0 in the
/// packed symmetric weight, and the model computes `x·(Ŵ + W_f32)ᵀ + b`
/// (checked against a hand-written forward pass of the MLP); the file
/// saves and loads to the same outputs, the size counts the f32 part, and
/// each layer's held-out output error is below plain GPTQ's.
#[test]
fn digits_int4_outlier_split() {
    let model = Model::load(root("models/digits-mlp/model.safetensors")).expect("model");
    let (train, test) = (digits_split("train"), digits_split("test"));
    let cal = Calibration::from_tensors(&model, &train).expect("calibration");
    for format in ["int4", "int4-min"] {
        let f: WeightFormat = format.parse().expect("format");
        let mut opts = QuantizeOptions::new(f);
        opts.calibration = Some(cal.clone());
        let (sq, report) = quantize(&model, &opts, |_, _| {}).expect("split");
        opts.outliers = Some(0);
        let (plain, plain_report) = quantize(&model, &opts, |_, _| {}).expect("plain");
        let ks = [64usize, 128, 64];
        let ns = [128usize, 64, 10];
        let mut extra_bytes = 0;
        for (l, &k) in report.layers.iter().zip(&ks) {
            assert_eq!(l.split_outliers, k / 16, "{format} {}", l.node);
            assert!(l.gptq);
        }
        // Effective weights: dequantized packed tensors plus the f16 columns.
        let mut eff: Vec<Vec<f32>> = Vec::new();
        for (i, name) in ["fc1", "fc2", "fc3"].iter().enumerate() {
            let (n, k) = (ns[i], ks[i]);
            let qn = sq.graph().nodes().iter().find(|x| x.name == *name).expect("qlinear");
            let lin = sq
                .graph()
                .nodes()
                .iter()
                .find(|x| x.name == format!("{name}.outlier_linear"))
                .expect("split linear");
            let gather = sq
                .graph()
                .nodes()
                .iter()
                .find(|x| x.name == format!("{name}.outlier_gather"))
                .expect("split gather");
            assert_eq!(gather.inputs[0], qn.inputs[0], "the gather reads the layer input");
            let idx = sq.param(&gather.inputs[1]).expect("index").to_i64_vec();
            let wo = sq.param(&lin.inputs[1]).expect("f16 columns");
            assert_eq!(wo.shape(), &[n, k / 16]);
            assert_eq!(wo.dtype(), wginfer::DType::F16, "the split columns are stored as f16");
            extra_bytes += wo.size_in_bytes() + idx.len() * 8;
            let packed: Vec<&Tensor> = qn.inputs[1..1 + f.tensor_names().len()]
                .iter()
                .map(|p| sq.param(p).expect("packed"))
                .collect();
            let mut w = quant::dequantize(&f, &packed, n, k).expect("dequantize");
            let wv = wo.to_f32_vec();
            for r in 0..n {
                for (t, &c) in idx.iter().enumerate() {
                    if format == "int4" {
                        assert_eq!(w[r * k + c as usize], 0.0, "packed weight at a split channel");
                    }
                    w[r * k + c as usize] += wv[r * idx.len() + t];
                }
            }
            eff.push(w);
            if i == 0 {
                // The first layer reads the model input: its channels by hand.
                let x = get(&train, "input").to_f32_vec();
                let energy: Vec<f64> = (0..k)
                    .map(|c| x.chunks(k).map(|r| (r[c] as f64).powi(2)).sum())
                    .collect();
                let mut order: Vec<usize> = (0..k).collect();
                order.sort_by(|&a, &b| energy[b].total_cmp(&energy[a]).then(a.cmp(&b)));
                let mut want: Vec<i64> = order[..idx.len()].iter().map(|&c| c as i64).collect();
                want.sort_unstable();
                assert_eq!(idx, want, "split channels of the first layer");
            }
        }
        assert_eq!(
            report.bytes_after,
            plain_report.bytes_after + extra_bytes,
            "{format} size"
        );
        // The MLP by hand with the effective weights.
        let xt = get(&test, "input");
        let mut h = xt.to_f32_vec();
        let rows = xt.shape()[0];
        for (i, w) in eff.iter().enumerate() {
            let (n, k) = (ns[i], ks[i]);
            let b = model.param(&format!("fc{}.bias", i + 1)).expect("bias").to_f32_vec();
            let mut y = vec![0.0f32; rows * n];
            for r in 0..rows {
                for j in 0..n {
                    let d: f64 = (0..k).map(|c| h[r * k + c] as f64 * w[j * k + c] as f64).sum();
                    y[r * n + j] = d as f32 + b[j];
                    if i < 2 {
                        y[r * n + j] = y[r * n + j].max(0.0);
                    }
                }
            }
            h = y;
        }
        let run = |m: &Model| {
            Session::new(m, Device::Cpu)
                .expect("session")
                .run([("input", xt.clone())])
                .expect("run")["logits"]
                .to_f32_vec()
        };
        let got = run(&sq);
        let worst = got.iter().zip(&h).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst < 1e-3,
            "{format}: logits differ from the hand computation by {worst}"
        );
        // Save and load: the same outputs.
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("split.safetensors");
        sq.save(&file).expect("save");
        let back = Model::load(&file).expect("load");
        assert_eq!(run(&back), got, "{format}: round trip");
        // Each layer closer to f32 on held-out data than plain GPTQ.
        let (ep, es) = (
            layer_output_error(&model, &plain, &xt),
            layer_output_error(&model, &sq, &xt),
        );
        for ((name, p), (_, s)) in ep.iter().zip(&es) {
            say(&format!(
                "digits {format} {name}: layer output error GPTQ {p:.4e}, with the f16 split {s:.4e}"
            ));
            assert!(s < p, "{format} {name}: split {s} not below plain GPTQ {p}");
        }
        let (base, acc) = (digits_accuracy(&model, &test), digits_accuracy(&sq, &test));
        assert!(acc >= base - 0.01, "{format}: split accuracy {acc} vs f32 {base}");
    }
}

/// The int4 outlier split runs on the GPU (every node placed there) and
/// matches the CPU.
#[test]
fn digits_int4_outlier_split_gpu() {
    let Some(choice) = minilm::gpu_choice() else { return };
    let model = Model::load(root("models/digits-mlp/model.safetensors")).expect("model");
    let (train, test) = (digits_split("train"), digits_split("test"));
    let mut opts = QuantizeOptions::new("int4".parse().expect("format"));
    opts.calibration = Some(Calibration::from_tensors(&model, &train).expect("calibration"));
    let (sq, _) = quantize(&model, &opts, |_, _| {}).expect("split");
    let xt = get(&test, "input");
    let run = |d: Device| {
        let s = Session::new(&sq, d).expect("session");
        if let Some(plan) = s.gpu_plan(Some(&[xt.shape().to_vec()])) {
            let plan = plan.expect("the GPU plan");
            for n in &plan.nodes {
                assert!(
                    !matches!(n.placement, Placement::Cpu { .. }),
                    "node {} ({}) runs on the CPU: {:?}",
                    n.node,
                    n.op,
                    n.placement
                );
            }
        }
        s.run([("input", xt.clone())]).expect("run")["logits"].to_f32_vec()
    };
    let (cpu, gpu) = (run(Device::Cpu), run(Device::Gpu(choice)));
    let worst = cpu.iter().zip(&gpu).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    say(&format!("digits int4 split: GPU vs CPU logits max |diff| {worst:.2e}"));
    assert!(worst < 1e-3, "GPU vs CPU {worst}");
}

/// W8A8 with calibration: per layer the min(8, in/16) input channels with the
/// largest Σx² over the calibration rows stay in f32 (checked against the
/// training inputs directly for the first layer), GPTQ quantizes the rest,
/// and every layer's outputs (activation quantization included) are closer
/// to f32 on held-out data than plain W8A8's.
#[test]
fn digits_w8a8_calibration_keeps_outlier_channels() {
    let model = Model::load(root("models/digits-mlp/model.safetensors")).expect("model");
    let (train, test) = (digits_split("train"), digits_split("test"));
    let cal = Calibration::from_tensors(&model, &train).expect("calibration");
    let f: WeightFormat = "w8a8".parse().expect("format");
    let (plain, _) = quantize(&model, &QuantizeOptions::new(f), |_, _| {}).expect("plain");
    let mut opts = QuantizeOptions::new(f);
    opts.calibration = Some(cal);
    let (cq, report) = quantize(&model, &opts, |_, _| {}).expect("calibrated");
    for l in &report.layers {
        let node = model.graph().nodes().iter().find(|n| n.name == l.node).expect("node");
        let k = model.param(&node.inputs[1]).expect("weight").shape()[1];
        assert_eq!(
            l.format,
            Some(WeightFormat::W8A8 {
                outliers: (k / 16).min(8) as u32
            }),
            "{}",
            l.node
        );
        assert!(l.gptq, "{}", l.node);
    }
    // The first layer reads the model input: its outlier channels by hand.
    let first = &cq.graph().nodes()[0];
    let idx = cq.param(&first.inputs[4]).expect("outlier_index").to_i64_vec();
    let x = get(&train, "input");
    let k = x.shape()[1];
    let xv = x.to_f32_vec();
    let energy: Vec<f64> = (0..k)
        .map(|c| xv.chunks(k).map(|r| (r[c] as f64).powi(2)).sum())
        .collect();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| energy[b].total_cmp(&energy[a]).then(a.cmp(&b)));
    let mut want: Vec<i64> = order[..idx.len()].iter().map(|&c| c as i64).collect();
    want.sort_unstable();
    assert_eq!(idx, want, "outlier channels of the first layer");
    let xt = get(&test, "input");
    let (ep, ec) = (
        layer_output_error(&model, &plain, &xt),
        layer_output_error(&model, &cq, &xt),
    );
    for ((name, p), (_, c)) in ep.iter().zip(&ec) {
        say(&format!(
            "digits w8a8 {name}: layer output error plain {p:.4e}, calibrated {c:.4e}"
        ));
        assert!(c < p, "{name}: calibrated W8A8 error {c} not below plain {p}");
    }
    let (base, acc) = (digits_accuracy(&model, &test), digits_accuracy(&cq, &test));
    assert!(acc >= base - 0.005, "calibrated W8A8 accuracy {acc} vs f32 {base}");
}

#[test]
fn cli_quantize_with_calibration() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("int4.safetensors");
    let run = |cal: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wginfer"))
            .args(["quantize", "--format", "int4", "--calibration"])
            .arg(root(cal))
            .arg(root("models/digits-mlp/model.safetensors"))
            .arg("--eval")
            .arg(root("models/digits-mlp/digits_test.safetensors"))
            .arg("-o")
            .arg(&out)
            .output()
            .expect("run wginfer")
    };
    let o = run("models/digits-mlp/digits_train.safetensors");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    // Default with calibration: min(16, in/16) f16 channels per layer.
    assert_eq!(text.matches("int4+o4 gptq").count(), 2, "{text}");
    assert_eq!(text.matches("int4+o8 gptq").count(), 1, "{text}");
    assert!(text.contains("calibration: 1,347 rows"), "{text}");
    let q = Model::load(&out).expect("load the written model");
    assert!(digits_accuracy(&q, &digits_split("test")) > 0.96);
    // --outliers 0: plain GPTQ.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_wginfer"))
        .args(["quantize", "--format", "int4", "--outliers", "0", "--calibration"])
        .arg(root("models/digits-mlp/digits_train.safetensors"))
        .arg(root("models/digits-mlp/model.safetensors"))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run wginfer");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text.matches("int4 gptq").count(), 3, "{text}");
    // --outliers for int4 without calibration: an error, not a silent no-op.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_wginfer"))
        .args(["quantize", "--format", "int4", "--outliers", "4"])
        .arg(root("models/digits-mlp/model.safetensors"))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run wginfer");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--calibration"));
    // Texts for a model without a tokenizer: an error that names the file.
    let bad = tmp.path().join("texts.txt");
    std::fs::write(&bad, "one\ntwo\n").expect("write");
    let o = run(bad.to_str().expect("path"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("tokenizer.json"));
}

/// `quantize --format w8a8 --calibration ... --outliers 2`: two f32 input
/// channels per layer, GPTQ on the rest; without calibration `--outliers`
/// still sets the count (columns chosen from the weights).
#[test]
fn cli_quantize_w8a8_outliers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("w8a8.safetensors");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wginfer"))
            .args(["quantize", "--format", "w8a8", "--outliers", "2"])
            .args(extra)
            .arg(root("models/digits-mlp/model.safetensors"))
            .arg("-o")
            .arg(&out)
            .output()
            .expect("run wginfer")
    };
    let cal = root("models/digits-mlp/digits_train.safetensors");
    let o = run(&["--calibration", cal.to_str().expect("path")]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text.matches("w8a8+o2 gptq").count(), 3, "{text}");
    let q = Model::load(&out).expect("load the written model");
    assert!(digits_accuracy(&q, &digits_split("test")) > 0.96);
    let o = run(&[]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text.matches("w8a8+o2").count(), 3, "{text}");
}

#[test]
fn calibration_data_errors_are_typed() {
    let model = Model::load(root("models/digits-mlp/model.safetensors")).expect("model");
    let x = Tensor::from_vec(vec![4, 64], vec![0.5f32; 256]).expect("x");
    let err = Calibration::from_tensors(&model, &[("nope".into(), x)]).expect_err("wrong name");
    assert!(err.to_string().contains("input"), "{err}");
    // A GPTQ-quantized layer still checks shapes like plain quantization.
    assert!(quant::gptq::supports(&"int4".parse().expect("f")));
    assert!(!quant::gptq::supports(&"binary".parse().expect("f")));
}

fn minilm_calibration_texts() -> Vec<String> {
    minilm::calibration_texts()
}

/// MiniLM quantized to `format` (with or without calibration; `outliers`:
/// [`QuantizeOptions::outliers`]), with the quantize time in seconds.
fn minilm_quantized(
    m: &Model,
    format: &str,
    cal: Option<&Calibration>,
    outliers: Option<u32>,
) -> (Model, wginfer::optimize::QuantizeReport, f64) {
    let mut opts = QuantizeOptions::new(format.parse().expect("format"));
    opts.calibration = cal.cloned();
    opts.outliers = outliers;
    let start = std::time::Instant::now();
    let (q, report) = quantize(m, &opts, |_, _| {}).expect("quantize");
    (q, report, start.elapsed().as_secs_f64())
}

/// Min and mean cosine of `q`'s embeddings (on `device`) to `base`.
fn minilm_min_mean(q: &Model, tok: &std::path::Path, texts: &[&str], base: &[Vec<f32>], device: Device) -> (f32, f32) {
    let v = Embedder::new(q, tok, device)
        .expect("embedder")
        .embed(texts)
        .expect("embed")
        .vectors;
    let cos: Vec<f32> = v.iter().zip(base).map(|(a, b)| cosine(a, b)).collect();
    (
        cos.iter().copied().fold(1.0, f32::min),
        cos.iter().sum::<f32>() / cos.len() as f32,
    )
}

/// Min and mean cosine of `format` (with or without calibration) to f32 on
/// the test texts, the calibration and quantize times, and the linear
/// layers' bytes (the f16 split included).
fn minilm_cosines(
    m: &Model,
    tok: &std::path::Path,
    texts: &[&str],
    base: &[Vec<f32>],
    format: &str,
    cal: Option<&Calibration>,
    outliers: Option<u32>,
) -> (f32, f32, f64, f64, usize) {
    let (q, report, total) = minilm_quantized(m, format, cal, outliers);
    let (min, mean) = minilm_min_mean(&q, tok, texts, base, Device::Cpu);
    let bytes = report.layers.iter().map(|l| l.bytes_after).sum();
    (min, mean, report.calibration_time.as_secs_f64(), total, bytes)
}

#[test]
fn minilm_calibration_texts_are_not_the_test_texts() {
    let r = minilm::reference();
    let cal = minilm_calibration_texts();
    assert!(cal.len() >= 64, "{} calibration texts", cal.len());
    for t in &r.texts {
        assert!(!cal.contains(t), "test text {t:?} is in the calibration set");
    }
}

#[test]
fn minilm_gptq_int4_is_closer_to_f32() {
    let Some(dir) = minilm::model_dir() else { return };
    let r = minilm::reference();
    let m = Model::load(&dir).expect("load");
    let tok = dir.join("tokenizer.json");
    let texts = r.text_refs();
    let base = Embedder::new(&m, &tok, Device::Cpu)
        .expect("embedder")
        .embed(&texts)
        .expect("embed")
        .vectors;
    let cal_texts = minilm_calibration_texts();
    let refs: Vec<&str> = cal_texts.iter().map(String::as_str).collect();
    let cal = Calibration::from_texts(&m, &tok, &refs).expect("calibration");
    let (min, mean, secs, total, _) = minilm_cosines(&m, &tok, &texts, &base, "int4", Some(&cal), Some(0));
    say(&format!(
        "MiniLM int4 GPTQ: cosine to f32 min {min:.5} mean {mean:.5} (forward passes {secs:.2} s, quantize {total:.2} s, {} tokens)",
        cal.rows()
    ));
    // Measured 0.9856 / mean 0.9901 (round-to-nearest with the per-block
    // scale search: 0.9506; with only the first 114 texts of the calibration
    // set, no short texts, punctuation or non-Latin scripts: 0.9796).
    assert!(min >= 0.98, "int4 GPTQ min cosine {min}");
    assert!(mean >= 0.987, "int4 GPTQ mean cosine {mean}");
}

/// int4-min (blocks of 32) by GPTQ with the default 16 input
/// channels per layer split off into f16 keeps every test text at a cosine
/// of at least 0.99 to f32, on the CPU and on the GPU; the quantized model
/// saves and loads to the same embeddings.
#[test]
fn minilm_int4_min_outlier_split_reaches_099() {
    let Some(dir) = minilm::model_dir() else { return };
    let r = minilm::reference();
    let m = Model::load(&dir).expect("load");
    let tok = dir.join("tokenizer.json");
    let texts = r.text_refs();
    let base = Embedder::new(&m, &tok, Device::Cpu)
        .expect("embedder")
        .embed(&texts)
        .expect("embed")
        .vectors;
    let cal_texts = minilm_calibration_texts();
    let refs: Vec<&str> = cal_texts.iter().map(String::as_str).collect();
    let cal = Calibration::from_texts(&m, &tok, &refs).expect("calibration");
    let (q, report, total) = minilm_quantized(&m, "int4-min", Some(&cal), None);
    let split: Vec<usize> = report.layers.iter().map(|l| l.split_outliers).collect();
    assert_eq!(split, vec![16; 36], "16 f16 channels in each of the 36 linear layers");
    let (min, mean) = minilm_min_mean(&q, &tok, &texts, &base, Device::Cpu);
    say(&format!(
        "MiniLM int4-min GPTQ + 16 f16 channels: cosine to f32 min {min:.5} mean {mean:.5} (quantize {total:.2} s)"
    ));
    // Measured 0.99166 / mean 0.99431 (torch simulation: 0.99165; symmetric int4 + 16: 0.9875, int4-min without the split: 0.9877).
    assert!(min >= 0.99, "int4-min + split min cosine {min}");
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("int4-min-split.safetensors");
    q.save(&file).expect("save");
    let back = Model::load(&file).expect("load");
    let embed = |model: &Model, device: Device| {
        Embedder::new(model, &tok, device)
            .expect("embedder")
            .embed(&texts)
            .expect("embed")
            .vectors
    };
    let cpu = embed(&q, Device::Cpu);
    assert_eq!(embed(&back, Device::Cpu), cpu, "save/load round trip");
    if let Some(choice) = minilm::gpu_choice() {
        let e = Embedder::new(&back, &tok, Device::Gpu(choice)).expect("gpu embedder");
        let shapes: Vec<Vec<usize>> = e
            .session()
            .graph()
            .inputs()
            .iter()
            .map(|i| i.ty.shape.iter().map(|d| d.known().unwrap_or(8)).collect())
            .collect();
        let plan = e
            .session()
            .gpu_plan(Some(&shapes))
            .expect("a GPU session")
            .expect("the GPU plan");
        for n in &plan.nodes {
            assert!(
                !matches!(n.placement, Placement::Cpu { .. }),
                "node {} ({}) runs on the CPU: {:?}",
                n.node,
                n.op,
                n.placement
            );
        }
        let gpu = e.embed(&texts).expect("embed").vectors;
        let worst_gpu = gpu.iter().zip(&cpu).map(|(a, b)| cosine(a, b)).fold(1.0f32, f32::min);
        let (gmin, _) = minilm_min_mean(
            &back,
            &tok,
            &texts,
            &base,
            Device::Gpu(minilm::gpu_choice().expect("gpu")),
        );
        say(&format!(
            "MiniLM int4-min split on the GPU: cosine to the CPU's >= {worst_gpu:.6}, to f32 min {gmin:.5}"
        ));
        assert!(worst_gpu >= 0.9999, "GPU vs CPU {worst_gpu}");
        assert!(gmin >= min - 5e-4, "GPU min cosine to f32 {gmin} vs CPU {min}");
    }
}

/// The MiniLM GPTQ table in docs/quantization.md: `cargo test --release --test calibration minilm_table -- --ignored --nocapture`.
#[test]
#[ignore = "prints the MiniLM calibration table"]
fn minilm_table() {
    let Some(dir) = minilm::model_dir() else { return };
    let r = minilm::reference();
    let m = Model::load(&dir).expect("load");
    let tok = dir.join("tokenizer.json");
    let texts = r.text_refs();
    let base = Embedder::new(&m, &tok, Device::Cpu)
        .expect("embedder")
        .embed(&texts)
        .expect("embed")
        .vectors;
    let cal_texts = minilm_calibration_texts();
    let refs: Vec<&str> = cal_texts.iter().map(String::as_str).collect();
    let cal = Calibration::from_texts(&m, &tok, &refs).expect("calibration");
    println!("calibration: {} texts, {} tokens", cal_texts.len(), cal.rows());
    println!("| format | cosine to f32, min / mean | linear weights | quantize time (forward passes) |");
    println!("|---|---|---|---|");
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let mut int4_min_split = 0.0f32;
    for f in ["int4", "int4-min", "int4/128", "int8", "w8a8"] {
        let (a, b, _, t0, s0) = minilm_cosines(&m, &tok, &texts, &base, f, None, None);
        println!("| {f} | {a:.5} / {b:.5} | {:.2} MiB | {t0:.1} s |", mib(s0));
        let int4 = f.starts_with("int4");
        let (c, d, t, t1, s1) = minilm_cosines(&m, &tok, &texts, &base, f, Some(&cal), int4.then_some(0));
        println!(
            "| {f} GPTQ | {c:.5} / {d:.5} | {:.2} MiB | {t1:.1} s ({t:.1} s) |",
            mib(s1)
        );
        if int4 {
            for o in [8, 12, 16, 24] {
                let (c, d, t, t1, s1) = minilm_cosines(&m, &tok, &texts, &base, f, Some(&cal), Some(o));
                println!(
                    "| {f} GPTQ + {o} f16 channels | {c:.5} / {d:.5} | {:.2} MiB | {t1:.1} s ({t:.1} s) |",
                    mib(s1)
                );
                if f == "int4-min" && o == 16 {
                    int4_min_split = c;
                }
            }
        }
    }
    // The 0.99 bar, reached by the default split (measured 0.99166).
    assert!(
        int4_min_split >= 0.99,
        "int4-min + 16 f16 channels: min cosine {int4_min_split}"
    );
}
