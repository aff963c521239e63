//! The real all-MiniLM-L6-v2 (6 layers, 12 heads, hidden 384) built from its
//! Hugging Face directory, against sentence-transformers' embeddings and the
//! python tokenizer's ids (models/minilm/reference.safetensors, made by
//! models/minilm/make_reference.py). The directory comes from
//! `WGINFER_MINILM_DIR`; see tests/common/minilm.rs.

mod common;

use std::io::Write;

use common::minilm::{self, Reference};
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
    for (format, min) in [("int8", 0.999f32), ("int4", 0.99)] {
        let e = quantized_embedder(&dir, format);
        let got = e.embed(&r.text_refs()).expect("embed").vectors;
        check_cosines(&format!("cpu {format} vs f32"), &got, &f32_vecs, &r.texts, min);
    }
}

#[test]
fn gpu_f32_matches_sentence_transformers() {
    let Some(dir) = minilm::model_dir() else { return };
    let Some(choice) = minilm::gpu_choice() else { return };
    let r = minilm::reference();
    let e = Embedder::load(&dir, Device::Gpu(choice)).expect("load on the GPU");
    say(&format!("minilm gpu test on {}", e.session().backend()));
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
