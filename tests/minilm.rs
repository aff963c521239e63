//! The real all-MiniLM-L6-v2 (6 layers, 12 heads, hidden 384) built from its
//! Hugging Face directory, against sentence-transformers' embeddings and the
//! python tokenizer's ids (models/minilm/reference.safetensors, made by
//! models/minilm/make_reference.py). The directory comes from
//! `WGINFER_MINILM_DIR`; see tests/common/minilm.rs.

mod common;

use std::io::Write;

use common::minilm::{self, Reference};
use wginfer::backend::gpu::Placement;
use wginfer::embed::cosine;
use wginfer::optimize::quantize::{quantize, QuantizeOptions};
use wginfer::{Device, Embedder, Model};

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Per-text cosine of `got` to `want`; panics naming the worst text when one is below `min`.
fn check_cosines(what: &str, got: &[Vec<f32>], want: &[Vec<f32>], texts: &[String], min: f32) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "{what}: vector count");
    let cos: Vec<f32> = got.iter().zip(want).map(|(a, b)| cosine(a, b)).collect();
    let (worst_i, worst) = cos
        .iter()
        .copied()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 1.0));
    let mean = cos.iter().sum::<f32>() / cos.len().max(1) as f32;
    say(&format!(
        "{what}: cosine min {worst:.7} (text {worst_i}), mean {mean:.7}"
    ));
    assert!(
        worst >= min,
        "{what}: text {worst_i} ({:?}) has cosine {worst} < {min}",
        texts[worst_i].chars().take(60).collect::<String>()
    );
    (worst, mean)
}

#[test]
fn tokenizer_matches_python() {
    let Some(dir) = minilm::model_dir() else { return };
    let r = minilm::reference();
    let e = Embedder::load(&dir, Device::Cpu).expect("load");
    assert_eq!(e.max_tokens(), 256, "sentence_bert_config.json max_seq_length");
    let batch = e.tokenize(&r.text_refs()).expect("tokenize");
    assert_eq!(batch.token_counts, r.token_counts);
    assert_eq!(batch.input_ids.shape(), r.input_ids.shape());
    for i in 0..r.texts.len() {
        let seq = batch.input_ids.shape()[1];
        let got = &batch.input_ids.to_i64_vec()[i * seq..i * seq + r.token_counts[i]];
        assert_eq!(got, r.ids(i).as_slice(), "text {i} {:?}", r.texts[i]);
    }
    assert_eq!(batch.input_ids.to_i64_vec(), r.input_ids.to_i64_vec());
    assert_eq!(batch.attention_mask.to_i64_vec(), r.attention_mask.to_i64_vec());
}

#[test]
fn cpu_f32_matches_sentence_transformers() {
    let Some(dir) = minilm::model_dir() else { return };
    let r = minilm::reference();
    let e = Embedder::load(&dir, Device::Cpu).expect("load");
    let out = e.embed(&r.text_refs()).expect("embed");
    assert_eq!(out.token_counts, r.token_counts);
    for v in &out.vectors {
        assert_eq!(v.len(), 384);
        let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "norm {n}");
    }
    check_cosines(
        "cpu f32 vs sentence-transformers",
        &out.vectors,
        &r.embeddings,
        &r.texts,
        0.99999,
    );
    // One text at a time (no padding) gives the same vectors as the padded batch.
    for i in [0usize, 10, 15] {
        let one = e.embed(&[r.texts[i].as_str()]).expect("embed one");
        let c = cosine(&one.vectors[0], &out.vectors[i]);
        assert!(c > 0.999_999, "text {i}: alone vs in a padded batch: cosine {c}");
    }
    // Batches of 4: texts are grouped by length, yet each vector and token
    // count comes back in the caller's order.
    let small = Embedder::load(&dir, Device::Cpu).expect("load").with_batch_size(4);
    let by4 = small.embed(&r.text_refs()).expect("embed in batches of 4");
    assert_eq!(by4.token_counts, r.token_counts);
    for (i, (a, b)) in by4.vectors.iter().zip(&out.vectors).enumerate() {
        let c = cosine(a, b);
        assert!(c > 0.999_999, "text {i}: batches of 4 vs one batch: cosine {c}");
    }
}

#[test]
fn model_file_round_trip_and_directory_load() {
    let Some(dir) = minilm::model_dir() else { return };
    let m = Model::load(&dir).expect("Model::load of a directory");
    assert_eq!(m.graph().inputs().len(), 3);
    let layers = m
        .graph()
        .nodes()
        .iter()
        .filter(|n| n.op.op_type() == "Attention")
        .count();
    assert_eq!(layers, 6);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("minilm.safetensors");
    m.save(&file).expect("save");
    let r = minilm::reference();
    let texts = r.text_refs();
    let texts = &texts[..6];
    let from_file =
        Embedder::load_with_tokenizer(&file, Some(&dir), Device::Cpu).expect("model file + --tokenizer dir");
    let from_dir = Embedder::load(&dir, Device::Cpu).expect("dir");
    let (a, b) = (
        from_file.embed(texts).expect("embed"),
        from_dir.embed(texts).expect("embed"),
    );
    assert_eq!(a, b, "a saved model file computes what the directory does");
    // Without a tokenizer beside the file: a typed error that says what to do.
    let err = Embedder::load(&file, Device::Cpu).expect_err("no tokenizer.json beside the file");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

fn quantized_embedder(dir: &std::path::Path, format: &str) -> Embedder {
    let m = Model::load(dir).expect("load");
    let (q, _) = quantize(&m, &QuantizeOptions::new(format.parse().expect("format")), |_, _| {}).expect("quantize");
    let tok = dir.join("tokenizer.json");
    Embedder::new(&q, &tok, Device::Cpu).expect("embedder")
}

#[test]
fn quantized_int8_and_int4_stay_close_to_f32() {
    let Some(dir) = minilm::model_dir() else { return };
    let r: Reference = minilm::reference();
    let f32_vecs = Embedder::load(&dir, Device::Cpu)
        .expect("load")
        .embed(&r.text_refs())
        .expect("embed")
        .vectors;
    // int4 (blocks of 32, f16 scales chosen per block for the least squared
    // error) measures 0.9506 at worst on these texts (plain round-to-nearest:
    // 0.935): a 0.99 bar is not reached (docs/transformers.md).
    for (format, min) in [("int8", 0.999f32), ("int4", 0.945)] {
        let e = quantized_embedder(&dir, format);
        let got = e.embed(&r.text_refs()).expect("embed").vectors;
        check_cosines(&format!("cpu {format} vs f32"), &got, &f32_vecs, &r.texts, min);
    }
}

/// W8A8 (asymmetric u8 activations per row, int8 weights): without
/// calibration, and with it (per layer the 8 input channels with the largest
/// mean square kept in f32, GPTQ on the rest), which reaches 0.999
/// on every text.
#[test]
fn quantized_w8a8_with_calibration_reaches_0999() {
    let Some(dir) = minilm::model_dir() else { return };
    let r: Reference = minilm::reference();
    let m = Model::load(&dir).expect("load");
    let tok = dir.join("tokenizer.json");
    let f32_vecs = Embedder::new(&m, &tok, Device::Cpu)
        .expect("embedder")
        .embed(&r.text_refs())
        .expect("embed")
        .vectors;
    let e = quantized_embedder(&dir, "w8a8");
    let got = e.embed(&r.text_refs()).expect("embed").vectors;
    let (min, mean) = check_cosines("cpu w8a8 vs f32", &got, &f32_vecs, &r.texts, 0.996);
    say(&format!("w8a8 without calibration: min {min:.5} mean {mean:.5}"));
    let cal_texts = minilm::calibration_texts();
    let refs: Vec<&str> = cal_texts.iter().map(String::as_str).collect();
    let mut opts = QuantizeOptions::new("w8a8".parse().expect("format"));
    opts.calibration = Some(wginfer::optimize::Calibration::from_texts(&m, &tok, &refs).expect("calibration"));
    let (q, report) = quantize(&m, &opts, |_, _| {}).expect("quantize");
    for l in &report.layers {
        assert_eq!(
            l.format,
            Some(wginfer::quant::WeightFormat::W8A8 { outliers: 8 }),
            "{}",
            l.node
        );
        assert!(l.gptq, "{}", l.node);
    }
    let got = Embedder::new(&q, &tok, Device::Cpu)
        .expect("embedder")
        .embed(&r.text_refs())
        .expect("embed")
        .vectors;
    let (min, mean) = check_cosines("cpu w8a8 calibrated vs f32", &got, &f32_vecs, &r.texts, 0.999);
    say(&format!(
        "w8a8 with calibration (8 outlier channels, GPTQ): min {min:.5} mean {mean:.5}"
    ));
}

#[test]
fn gpu_f32_matches_sentence_transformers() {
    let Some(dir) = minilm::model_dir() else { return };
    let Some(choice) = minilm::gpu_choice() else { return };
    let r = minilm::reference();
    let e = Embedder::load(&dir, Device::Gpu(choice)).expect("load on the GPU");
    say(&format!("minilm gpu test on {}", e.session().backend()));
    // Every node, the mask's Cast from i64 included, runs on the GPU.
    let shapes: Vec<Vec<usize>> = e
        .session()
        .graph()
        .inputs()
        .iter()
        .map(|i| i.ty.shape.iter().map(|d| d.known().unwrap_or(8)).collect())
        .collect();
    if let Some(plan) = e.session().gpu_plan(Some(&shapes)) {
        for n in &plan.expect("the GPU plan").nodes {
            assert!(
                !matches!(n.placement, Placement::Cpu { .. }),
                "node {} ({}) runs on the CPU: {:?}",
                n.node,
                n.op,
                n.placement
            );
        }
    }
    // A short batch (lavapipe does a few GFLOP/s): the first 14 texts (at most
    // 42 tokens, padded) and the 138-token text alone.
    let texts = r.text_refs();
    let mut got = e.embed(&texts[..14]).expect("embed").vectors;
    got.extend(e.embed(&texts[15..16]).expect("embed").vectors);
    let mut want: Vec<Vec<f32>> = r.embeddings[..14].to_vec();
    want.push(r.embeddings[15].clone());
    let mut names: Vec<String> = r.texts[..14].to_vec();
    names.push(r.texts[15].clone());
    check_cosines("gpu f32 vs sentence-transformers", &got, &want, &names, 0.99999);
}

/// W8A8 on the GPU (u8 activations with a zero point; without and with f32
/// outlier channels) against the same quantized model on the CPU: every node
/// on the GPU, and as close to f32 as the CPU is. The two do not agree to
/// float rounding: a rounding-level difference in any op (attention,
/// LayerNorm) moves an activation across a code boundary now and then, and
/// the change grows through the quantized layers — the CPU's fast path
/// against its own reference kernels measured 0.99975 with 8 outlier
/// channels, the GPU against the CPU 0.9987 at worst (no outliers, one
/// text). Each GPU QLinear on its own matches the reference to float
/// rounding (tests/gpu_parity.rs).
#[test]
fn gpu_w8a8_matches_the_cpu() {
    let Some(dir) = minilm::model_dir() else { return };
    let Some(choice) = minilm::gpu_choice() else { return };
    let r = minilm::reference();
    let m = Model::load(&dir).expect("load");
    let tok = dir.join("tokenizer.json");
    let texts = &r.text_refs()[..14];
    let names = &r.texts[..14];
    let f32_vecs = Embedder::new(&m, &tok, Device::Cpu)
        .expect("embedder")
        .embed(texts)
        .expect("embed")
        .vectors;
    for format in ["w8a8", "w8a8+o8"] {
        let opts = QuantizeOptions::new(format.parse().expect("format"));
        let (q, _) = quantize(&m, &opts, |_, _| {}).expect("quantize");
        let cpu = Embedder::new(&q, &tok, Device::Cpu)
            .expect("cpu embedder")
            .embed(texts)
            .expect("embed")
            .vectors;
        let e = Embedder::new(&q, &tok, Device::Gpu(choice.clone())).expect("gpu embedder");
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
                "{format}: node {} ({}) runs on the CPU: {:?}",
                n.node,
                n.op,
                n.placement
            );
        }
        let gpu = e.embed(texts).expect("embed").vectors;
        check_cosines(&format!("gpu {format} vs cpu {format}"), &gpu, &cpu, names, 0.998);
        let (cpu_min, _) = check_cosines(&format!("cpu {format} vs f32"), &cpu, &f32_vecs, names, 0.99);
        check_cosines(&format!("gpu {format} vs f32"), &gpu, &f32_vecs, names, cpu_min - 5e-4);
    }
}

fn reference_inputs(r: &Reference) -> Vec<(String, wginfer::Tensor)> {
    let seq = r.input_ids.shape()[1];
    vec![
        ("input_ids".into(), r.input_ids.clone()),
        ("attention_mask".into(), r.attention_mask.clone()),
        (
            "position_ids".into(),
            wginfer::Tensor::from_vec(vec![seq], (0..seq as i64).collect()).expect("positions"),
        ),
    ]
}

#[test]
fn layer_dropping_finds_six_encoder_blocks_and_drops_two() {
    use wginfer::optimize::prune::blocks::residual_blocks;
    use wginfer::optimize::{prune, PruneMethod, PruneOptions};
    let Some(dir) = minilm::model_dir() else { return };
    let r = minilm::reference();
    let m = Model::load(&dir).expect("load");
    let blocks = residual_blocks(m.graph());
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        (0..6).map(|i| format!("encoder.layer.{i}")).collect::<Vec<_>>(),
        "the six encoder layers are the residual blocks"
    );
    assert_eq!(blocks[0].input, "embeddings.LayerNorm.out");
    assert_eq!(blocks[5].output, "encoder.layer.5.output.LayerNorm.out");
    // Calibration on the first 10 (short) texts.
    let short: Vec<(String, wginfer::Tensor)> = reference_inputs(&r)
        .into_iter()
        .map(|(k, t)| {
            if t.rank() == 2 {
                let rows = t.slice_rows(0, 10).expect("rows");
                let seq = 16;
                let v = rows.to_i64_vec();
                let full = rows.shape()[1];
                let cut: Vec<i64> = (0..10).flat_map(|i| v[i * full..i * full + seq].to_vec()).collect();
                (k, wginfer::Tensor::from_vec(vec![10, seq], cut).expect("cut"))
            } else {
                (
                    k,
                    wginfer::Tensor::from_vec(vec![16], (0..16i64).collect()).expect("positions"),
                )
            }
        })
        .collect();
    let mut opts = PruneOptions::new(PruneMethod::Layers { count: 2 }, 0.0);
    opts.inputs = Some(short);
    let (dropped, report) = prune(&m, &opts, |_| {}).expect("prune");
    assert_eq!(report.dropped.len(), 2);
    say(&format!(
        "block influence: {:?}; dropped {:?}",
        report.layer_importance, report.dropped
    ));
    assert_eq!(
        dropped
            .graph()
            .nodes()
            .iter()
            .filter(|n| n.op.op_type() == "Attention")
            .count(),
        4
    );
    let full = Embedder::new(&m, &dir.join("tokenizer.json"), Device::Cpu)
        .expect("f32")
        .embed(&r.text_refs())
        .expect("embed")
        .vectors;
    let four = Embedder::new(&dropped, &dir.join("tokenizer.json"), Device::Cpu)
        .expect("4 layers")
        .embed(&r.text_refs())
        .expect("embed")
        .vectors;
    let cos: Vec<f32> = full.iter().zip(&four).map(|(a, b)| cosine(a, b)).collect();
    let (rho, top1) = minilm::ranking_agreement(&full, &four);
    say(&format!(
        "4 of 6 layers vs f32: cosine min {:.4} mean {:.4}; ranking: Spearman {rho:.3}, same nearest text {:.0}%",
        cos.iter().copied().fold(1.0, f32::min),
        cos.iter().sum::<f32>() / cos.len() as f32,
        top1 * 100.0
    ));
    // Reported, not asserted tightly: the dropped model still ranks broadly alike.
    assert!(rho > 0.5, "Spearman {rho}");
}

/// The MiniLM quantization table in docs/transformers.md: `bash models/minilm/quant_table.sh`.
#[test]
#[ignore = "makes the docs/transformers.md table; run by models/minilm/quant_table.sh"]
fn quant_table() {
    use wginfer::optimize::prune::blocks::residual_blocks;
    use wginfer::optimize::{prune, PruneMethod, PruneOptions};
    let Some(dir) = minilm::model_dir() else { return };
    let r = minilm::reference();
    let m = Model::load(&dir).expect("load");
    let tok = dir.join("tokenizer.json");
    let embed = |model: &Model| {
        Embedder::new(model, &tok, Device::Cpu)
            .expect("embedder")
            .embed(&r.text_refs())
            .expect("embed")
            .vectors
    };
    let base = embed(&m);
    let tmp = tempfile::tempdir().expect("tmp");
    let file_bytes = |model: &Model| {
        let p = tmp.path().join("m.safetensors");
        model.save(&p).expect("save");
        std::fs::metadata(&p).expect("size").len()
    };
    let linear_bytes = |model: &Model| -> usize {
        model
            .graph()
            .params()
            .iter()
            .filter(|p| p.name.starts_with("encoder."))
            .filter_map(|p| model.param(&p.name))
            .map(|t| t.size_in_bytes())
            .sum()
    };
    println!("| model | encoder weights | file | cosine to f32 (min / mean) | vs sentence-transformers (min) | ranking: Spearman / same nearest |");
    println!("|---|---|---|---|---|---|");
    let row = |label: &str, model: &Model, v: &[Vec<f32>]| {
        let cos: Vec<f32> = v.iter().zip(&base).map(|(a, b)| cosine(a, b)).collect();
        let st = v
            .iter()
            .zip(&r.embeddings)
            .map(|(a, b)| cosine(a, b))
            .fold(1.0f32, f32::min);
        let (rho, top1) = minilm::ranking_agreement(&base, v);
        println!(
            "| {label} | {:.2} MiB | {:.1} MiB | {:.6} / {:.6} | {st:.6} | {rho:.3} / {:.0}% |",
            linear_bytes(model) as f64 / (1 << 20) as f64,
            file_bytes(model) as f64 / (1 << 20) as f64,
            cos.iter().copied().fold(1.0, f32::min),
            cos.iter().sum::<f32>() / cos.len() as f32,
            top1 * 100.0
        );
    };
    row("f32", &m, &base);
    for f in [
        "f16",
        "int8",
        "int8-affine",
        "pow2",
        "int4",
        "int4-min",
        "w8a8",
        "binary",
    ] {
        let (q, _) = quantize(&m, &QuantizeOptions::new(f.parse().expect("format")), |_, _| {}).expect("quantize");
        let v = embed(&q);
        row(f, &q, &v);
    }
    // int4 with one kind of layer in int8.
    for (label, suffix) in [
        ("int4, FFN down-projections (output.dense) int8", "output.dense"),
        (
            "int4, FFN up-projections (intermediate.dense) int8",
            "intermediate.dense",
        ),
        ("int4, Q/K/V int8", "attention.self."),
    ] {
        let mut o = QuantizeOptions::new("int4".parse().expect("int4"));
        for n in m.graph().nodes() {
            if n.op.op_type() == "Linear" && n.name.contains(suffix) && !n.name.contains("attention.output") {
                o.layers.insert(n.name.clone(), "int8".parse().expect("int8"));
            }
        }
        let (q, _) = quantize(&m, &o, |_, _| {}).expect("quantize");
        let v = embed(&q);
        row(label, &q, &v);
    }
    // GPTQ on models/minilm/calibration.txt (none of it a test text).
    let cal_texts = minilm::calibration_texts();
    let refs: Vec<&str> = cal_texts.iter().map(String::as_str).collect();
    let cal = wginfer::optimize::Calibration::from_texts(&m, &tok, &refs).expect("calibration");
    for (label, f) in [
        ("int8, GPTQ", "int8"),
        ("int4-min, GPTQ + 16 f16 channels per layer", "int4-min"),
        ("w8a8, GPTQ + 8 f32 outlier channels per layer", "w8a8"),
    ] {
        let mut o = QuantizeOptions::new(f.parse().expect("format"));
        o.calibration = Some(cal.clone());
        let (q, _) = quantize(&m, &o, |_, _| {}).expect("quantize");
        let v = embed(&q);
        row(label, &q, &v);
    }
    let mut opts = PruneOptions::new(PruneMethod::Layers { count: 2 }, 0.0);
    opts.inputs = Some(reference_inputs(&r));
    assert_eq!(residual_blocks(m.graph()).len(), 6);
    let (d, rep) = prune(&m, &opts, |_| {}).expect("prune");
    let v = embed(&d);
    row(
        &format!("f32, 4 of 6 layers (dropped {})", rep.dropped.join(", ")),
        &d,
        &v,
    );
    let (dq, _) = quantize(&d, &QuantizeOptions::new("int8".parse().expect("int8")), |_, _| {}).expect("quantize");
    let v = embed(&dq);
    row("int8, 4 of 6 layers", &dq, &v);
}

/// The same model from an independent ONNX export (models/minilm/export_onnx.py,
/// onnx.helper over the same weights): imported, embedded, compared with
/// sentence-transformers. Needs `WGINFER_MINILM_ONNX` (an export) or
/// `WGINFER_MINILM_ONNX_PYTHON` (a python with onnx and numpy to make one).
#[test]
fn onnx_export_imports_and_matches() {
    let Some(dir) = minilm::model_dir() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let onnx = match (
        std::env::var_os("WGINFER_MINILM_ONNX"),
        std::env::var_os("WGINFER_MINILM_ONNX_PYTHON"),
    ) {
        (Some(p), _) => std::path::PathBuf::from(p),
        (None, Some(py)) => {
            let out = tmp.path().join("minilm.onnx");
            let status = std::process::Command::new(py)
                .arg(common::root("models/minilm/export_onnx.py"))
                .arg(&dir)
                .arg(&out)
                .status()
                .expect("run export_onnx.py");
            assert!(status.success(), "export_onnx.py failed");
            out
        }
        (None, None) => {
            common::skip_or_fail(
                "WGINFER_REQUIRE_MINILM",
                "set WGINFER_MINILM_ONNX (an ONNX export) or WGINFER_MINILM_ONNX_PYTHON (a python with onnx and numpy) for the ONNX export test",
            );
            return;
        }
    };
    let r = minilm::reference();
    let e = Embedder::load_with_tokenizer(&onnx, Some(&dir), Device::Cpu).expect("import the ONNX export");
    assert_eq!(e.max_tokens(), 256);
    let texts = r.text_refs();
    let got = e.embed(&texts).expect("embed").vectors;
    check_cosines(
        "onnx import vs sentence-transformers",
        &got,
        &r.embeddings,
        &r.texts,
        0.99999,
    );
}

/// A tiny random BERT (no download needed): config and checkpoint errors are
/// typed and name the field or tensor; the graph builds and runs.
#[test]
fn bad_configs_and_checkpoints_are_typed_errors() {
    use std::collections::HashMap;
    use wginfer::error::ModelError;
    use wginfer::model::bert::{build, BertConfig, Pooling};
    use wginfer::ops::CaseRng;
    let cfg = r#"{"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 6,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}"#;
    let c = BertConfig::from_json(cfg).expect("config");
    for (edit, field) in [
        (cfg.replace(r#""vocab_size": 10,"#, ""), "vocab_size"),
        (
            cfg.replace(r#""hidden_size": 8"#, r#""hidden_size": "8""#),
            "hidden_size",
        ),
        (
            cfg.replace(r#""num_attention_heads": 2"#, r#""num_attention_heads": 3"#),
            "num_attention_heads",
        ),
        (
            cfg.replace(r#""hidden_act": "gelu""#, r#""hidden_act": "relu""#),
            "hidden_act",
        ),
    ] {
        match BertConfig::from_json(&edit) {
            Err(ModelError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a Config error, got {other:?}"),
        }
    }
    let mut rng = CaseRng::new(9);
    let mut t: HashMap<String, wginfer::Tensor> = HashMap::new();
    let mut put = |name: &str, shape: &[usize]| {
        t.insert(name.to_string(), rng.tensor(shape, -0.5, 0.5));
    };
    put("embeddings.word_embeddings.weight", &[10, 8]);
    put("embeddings.position_embeddings.weight", &[6, 8]);
    put("embeddings.token_type_embeddings.weight", &[2, 8]);
    put("embeddings.LayerNorm.weight", &[8]);
    put("embeddings.LayerNorm.bias", &[8]);
    for i in 0..2 {
        for (n, o, k) in [
            ("attention.self.query", 8, 8),
            ("attention.self.key", 8, 8),
            ("attention.self.value", 8, 8),
            ("attention.output.dense", 8, 8),
            ("intermediate.dense", 16, 8),
            ("output.dense", 8, 16),
        ] {
            put(&format!("encoder.layer.{i}.{n}.weight"), &[o, k]);
            put(&format!("encoder.layer.{i}.{n}.bias"), &[o]);
        }
        for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(&format!("encoder.layer.{i}.{n}.weight"), &[8]);
            put(&format!("encoder.layer.{i}.{n}.bias"), &[8]);
        }
    }
    let m = build("tiny", &c, Pooling::default(), &t).expect("tiny bert");
    let out = wginfer::Session::new(&m, Device::Cpu)
        .expect("session")
        .run([
            (
                "input_ids",
                wginfer::Tensor::from_vec(vec![2, 3], vec![1i64, 5, 2, 1, 9, 0]).expect("ids"),
            ),
            (
                "attention_mask",
                wginfer::Tensor::from_vec(vec![2, 3], vec![1i64, 1, 1, 1, 1, 0]).expect("mask"),
            ),
            (
                "position_ids",
                wginfer::Tensor::from_vec(vec![3], vec![0i64, 1, 2]).expect("pos"),
            ),
        ])
        .expect("run");
    let v = out["sentence_embedding"].to_f32_vec();
    assert_eq!(v.len(), 16);
    for row in v.chunks(8) {
        let n: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "norm {n}");
    }
    let mut missing = t.clone();
    missing.remove("encoder.layer.1.output.dense.bias");
    match build("tiny", &c, Pooling::default(), &missing) {
        Err(ModelError::MissingTensor { name }) => assert_eq!(name, "encoder.layer.1.output.dense.bias"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    let mut wrong = t.clone();
    wrong.insert(
        "encoder.layer.0.intermediate.dense.weight".into(),
        wginfer::Tensor::zeros(wginfer::DType::F32, vec![8, 16]),
    );
    match build("tiny", &c, Pooling::default(), &wrong) {
        Err(ModelError::TensorShape { name, expected, found }) => {
            assert_eq!(name, "encoder.layer.0.intermediate.dense.weight");
            assert_eq!((expected, found), (vec![16, 8], vec![8, 16]));
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
}

/// The command line: `wginfer quantize DIR --format int8 -o FILE`, then
/// `wginfer embed FILE --tokenizer DIR --json` and `--similarity`.
#[test]
fn cli_quantize_then_embed() {
    let Some(dir) = minilm::model_dir() else { return };
    let r = minilm::reference();
    let exe = env!("CARGO_BIN_EXE_wginfer");
    let tmp = tempfile::tempdir().expect("tmp");
    let q = tmp.path().join("minilm-int8.safetensors");
    let out = std::process::Command::new(exe)
        .args(["quantize", dir.to_str().expect("utf-8 path"), "--format", "int8", "-o"])
        .arg(&q)
        .output()
        .expect("run quantize");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(exe)
        .arg("embed")
        .arg(&q)
        .args([
            "--tokenizer",
            dir.to_str().expect("utf-8 path"),
            "--json",
            "--similarity",
        ])
        .args(&r.texts[1..3])
        .output()
        .expect("run embed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["dim"], 384);
    for (i, d) in doc["data"].as_array().expect("data").iter().enumerate() {
        let v: Vec<f32> = d["embedding"]
            .as_array()
            .expect("embedding")
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect();
        assert_eq!(d["tokens"], r.token_counts[i + 1]);
        let c = cosine(&v, &r.embeddings[i + 1]);
        assert!(c > 0.999, "int8 from the command line: cosine {c}");
    }
    let s = doc["similarity"][0][1].as_f64().expect("similarity");
    let want = cosine(&r.embeddings[1], &r.embeddings[2]) as f64;
    assert!((s - want).abs() < 0.01, "similarity {s} vs {want}");
    // Without a tokenizer beside the file or --tokenizer: a clear error.
    let out = std::process::Command::new(exe)
        .arg("embed")
        .arg(&q)
        .arg("hello")
        .output()
        .expect("run embed");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tokenizer"));
}
