//! Calibrated quantization of decoders (`generate::calibrate`), on the
//! random-weight llama and qwen2 fixtures (models/decoders/*.gguf) with
//! their own tokenizers:
//!
//! - GPTQ onto Q4_0 (and the fixtures' other block formats): for every layer
//!   matrix, the output error `Σ‖X Wᵀ − X Ŵᵀ‖²` on held-out activations
//!   (another text, run through the original model) is below that of
//!   ggml's round-to-nearest quantizer. Both errors are computed here from
//!   the dequantized rows (`linalg::ggml::dequantize_row`, equal to the
//!   `gguf` package's) of the original f32 weights.
//! - The written GGUF file loads with the GPTQ matrices byte for byte, and
//!   its teacher-forced logits stay close to the original model's.
//! - SmoothQuant leaves the function unchanged (up to f32 rounding).
//! - Bad input (an empty calibration text, calibration with f16, w8a8
//!   without calibration) is a clear error.

mod common;

use std::path::Path;
use std::sync::Arc;

use wginfer::error::GenerateError;
use wginfer::generate::calibrate::{self, gptq_decoder, smooth_decoder, smooth_factors};
use wginfer::generate::cpu::{CpuDecoder, CpuModel, LayerInput};
use wginfer::generate::export::{source_metadata, write_decoder, GgufExportOptions};
use wginfer::generate::tokenizer::Tokenizer;
use wginfer::generate::{load, Decoder, DecoderWeights, Logits, Matrix};
use wginfer::linalg::ggml::{dequantize_row, quantize_row, BlockFormat};
use wginfer::model::gguf::GgufFile;
use wginfer::quant::gptq::GptqOptions;

const FIXTURES: [&str; 2] = ["models/decoders/llama-q.gguf", "models/decoders/qwen2-k.gguf"];
/// Calibration and held-out texts: different documents.
const CALIBRATION: &str = "docs/quantization.md";
const HELD_OUT: &str = "docs/generation.md";
const CHUNK: usize = 128;

fn load(path: &Path) -> (Arc<DecoderWeights>, Tokenizer) {
    let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let w = load::from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (Arc::new(w), Tokenizer::from_gguf(&file).expect("tokenizer"))
}

fn text_chunks(tok: &Tokenizer, rel: &str, tokens: usize) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(common::root(rel)).expect("text");
    let ids = tok.encode(&text, false).expect("encode");
    assert!(ids.len() >= tokens, "{rel}: {} tokens", ids.len());
    calibrate::chunks(&ids, CHUNK, tokens, None).expect("chunks")
}

fn rows_f32(m: &Matrix) -> Vec<f32> {
    let mut out = vec![0f32; m.rows() * m.cols()];
    for (r, row) in out.chunks_exact_mut(m.cols()).enumerate() {
        m.dequantize_row(r, row);
    }
    out
}

/// Round-to-nearest: ggml's reference quantizer, dequantized.
fn rtn(w: &[f32], cols: usize, f: BlockFormat) -> Vec<f32> {
    let rb = f.row_bytes(cols).expect("whole blocks");
    let mut out = vec![0f32; w.len()];
    let mut block = vec![0u8; rb];
    for (x, o) in w.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        quantize_row(f, x, &mut block).expect("quantize");
        dequantize_row(f, &block, o);
    }
    out
}

/// A packed matrix dequantized row by row from its bytes.
fn dequantized(m: &Matrix) -> (BlockFormat, Vec<f32>) {
    let Matrix::Quant(q) = m else {
        panic!("GPTQ left a {} matrix", m.format_name())
    };
    let mut out = vec![0f32; q.rows() * q.cols()];
    for (r, o) in out.chunks_exact_mut(q.cols()).enumerate() {
        dequantize_row(q.format(), q.row(r), o);
    }
    (q.format(), out)
}

/// The fixture with every layer matrix in f32 plus deterministic uniform
/// noise of its RMS, so that no matrix is on a block grid (a matrix stored
/// as Q4_0 quantizes to itself whatever the method, and one near the grid
/// to nearly itself by rounding).
fn off_grid(w: &DecoderWeights) -> Arc<DecoderWeights> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noisy = |m: &Matrix| {
        let mut data = rows_f32(m);
        let rms = (data.iter().map(|v| v * v).sum::<f32>() / data.len() as f32).sqrt();
        for v in data.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *v += rms * ((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0);
        }
        Matrix::F32 {
            rows: m.rows(),
            cols: m.cols(),
            data,
        }
    };
    let mut out = w.clone();
    for l in out.layers.iter_mut() {
        for m in [
            &mut l.wq,
            &mut l.wk,
            &mut l.wv,
            &mut l.wo,
            &mut l.w_gate,
            &mut l.w_up,
            &mut l.w_down,
        ] {
            *m = noisy(m);
        }
    }
    Arc::new(out)
}

/// `Σ‖X Wᵀ − X Ŵᵀ‖²` over the rows of `x`.
fn output_error(x: &[f32], w: &[f32], wq: &[f32], cols: usize) -> f64 {
    let diff: Vec<f64> = w.iter().zip(wq).map(|(a, b)| f64::from(a - b)).collect();
    x.chunks_exact(cols)
        .map(|xr| {
            diff.chunks_exact(cols)
                .map(|d| {
                    let e: f64 = d.iter().zip(xr).map(|(a, b)| a * f64::from(*b)).sum();
                    e * e
                })
                .sum::<f64>()
        })
        .sum()
}

/// Every matrix input of every layer of the original model on `chunks`.
fn activations(w: &Arc<DecoderWeights>, chunks: &[Vec<u32>]) -> Vec<[Vec<f32>; 4]> {
    let model = CpuModel::new(w.clone(), CHUNK).expect("model");
    let mut cache = model.new_cache(CHUNK).expect("cache");
    let d = w.config.d_model;
    let mut out: Vec<[Vec<f32>; 4]> = (0..w.layers.len()).map(|_| Default::default()).collect();
    for c in chunks {
        let mut x = vec![0f32; c.len() * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(c) {
            w.embed.dequantize_row(t as usize, row);
        }
        cache.len = 0;
        for (li, lw) in w.layers.iter().enumerate() {
            let acts = &mut out[li];
            let mut seen = |at: LayerInput, v: &[f32]| acts[at as usize].extend_from_slice(v);
            model.layer_pass(li, lw, &mut x, &mut cache, &mut seen).expect("layer");
        }
    }
    out
}

fn logits(w: Arc<DecoderWeights>, toks: &[u32]) -> Vec<f32> {
    let mut d = CpuDecoder::new(w, toks.len()).expect("decoder");
    d.forward(toks, Logits::All).expect("forward")
}

#[test]
fn gptq_beats_round_to_nearest_on_held_out_layer_outputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    for fixture in FIXTURES {
        let src = common::root(fixture);
        let (w, tok) = load(&src);
        let w = off_grid(&w);
        let cal = text_chunks(&tok, CALIBRATION, 16 * CHUNK);
        let held = text_chunks(&tok, HELD_OUT, 4 * CHUNK);
        let acts = activations(&w, &held);
        let format_of = |_: &str, cols: usize| cols.is_multiple_of(32).then_some(BlockFormat::Q4_0);
        let (q, report) = gptq_decoder(w.clone(), &cal, &format_of, &GptqOptions::default(), |_, _| {}).expect("gptq");
        assert_eq!(report.matrices, [("Q4_0".to_string(), 7 * w.layers.len())]);
        assert_eq!(report.tokens, 16 * CHUNK);
        for (li, (orig, new)) in w.layers.iter().zip(&q.layers).enumerate() {
            let pairs = [
                ("q", &orig.wq, &new.wq, 0),
                ("k", &orig.wk, &new.wk, 0),
                ("v", &orig.wv, &new.wv, 0),
                ("o", &orig.wo, &new.wo, 1),
                ("gate", &orig.w_gate, &new.w_gate, 2),
                ("up", &orig.w_up, &new.w_up, 2),
                ("down", &orig.w_down, &new.w_down, 3),
            ];
            for (name, a, b, input) in pairs {
                let cols = a.cols();
                let wf = rows_f32(a);
                let (f, gq) = dequantized(b);
                assert_eq!(f, BlockFormat::Q4_0);
                let x = &acts[li][input];
                let (eg, er) = (
                    output_error(x, &wf, &gq, cols),
                    output_error(x, &wf, &rtn(&wf, cols, f), cols),
                );
                eprintln!(
                    "{fixture} layer {li} {name}: held-out output error GPTQ {eg:.4e}, RTN {er:.4e} ({:.2}x)",
                    er / eg
                );
                assert!(eg < er, "{fixture} layer {li} {name}: GPTQ {eg} vs RTN {er}");
            }
        }
        // The file holds those blocks and runs closer to the original than
        // the round-to-nearest file of the same weights (embeddings Q4_0 in both).
        let carried = source_metadata(&src, w.config.vocab).expect("metadata");
        let opts = GgufExportOptions {
            weight_type: "q4_0".parse().expect("type"),
            overwrite: true,
        };
        let (gptq_file, rtn_file) = (dir.path().join("gptq.gguf"), dir.path().join("rtn.gguf"));
        write_decoder(&q, &carried, &gptq_file, &opts).expect("write");
        write_decoder(&w, &carried, &rtn_file, &opts).expect("write");
        let ((back, _), (rtn_back, _)) = (load(&gptq_file), load(&rtn_file));
        for (a, b) in back.layers.iter().zip(&q.layers) {
            for (x, y) in [(&a.wq, &b.wq), (&a.wv, &b.wv), (&a.w_down, &b.w_down)] {
                let (Matrix::Quant(x), Matrix::Quant(y)) = (x, y) else {
                    panic!("{fixture}: not packed after the round trip")
                };
                assert_eq!(x.data(), y.data(), "{fixture}: the file's blocks are GPTQ's");
            }
        }
        let toks: Vec<u32> = held[0].clone();
        let reference = logits(w.clone(), &toks);
        let (kl, top1) = common::kl_top1(&reference, &logits(back, &toks), w.config.vocab);
        let (kl_rtn, top1_rtn) = common::kl_top1(&reference, &logits(rtn_back, &toks), w.config.vocab);
        eprintln!(
            "{fixture}: logits against the original: GPTQ Q4_0 file mean KL {kl:.3e} (top-1 {top1:.3}), \
             round-to-nearest Q4_0 file {kl_rtn:.3e} (top-1 {top1_rtn:.3})"
        );
        assert!(kl < 0.75 * kl_rtn, "{fixture}: KL {kl} (round-to-nearest {kl_rtn})");
    }
}

#[test]
fn smoothing_keeps_the_function() {
    for fixture in FIXTURES {
        let (w, tok) = load(&common::root(fixture));
        let cal = text_chunks(&tok, CALIBRATION, 2 * CHUNK);
        let (s, report) = smooth_decoder(w.clone(), &cal, 0.5).expect("smooth");
        assert_eq!(report.max_factor.len(), w.layers.len());
        assert!(report.max_factor.iter().flatten().all(|&m| m > 0.0 && m.is_finite()));
        assert_ne!(s.layers[0].attn_norm, w.layers[0].attn_norm);
        let toks = text_chunks(&tok, HELD_OUT, CHUNK).remove(0);
        let (a, b) = (logits(w.clone(), &toks), logits(Arc::new(s), &toks));
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= 1e-3 * scale,
            "{fixture}: logits moved by {worst} (scale {scale})"
        );
    }
    // s = max|X|^α / max|W|^(1−α); 1 where either is zero.
    let s = smooth_factors(&[4.0, 9.0, 0.0, 2.0], &[1.0, 4.0, 3.0, 0.0], 0.5);
    assert_eq!(s, [2.0, 1.5, 1.0, 1.0]);
    assert_eq!(smooth_factors(&[8.0], &[2.0], 1.0), [8.0]);
}

#[test]
fn bad_calibration_input_is_a_clear_error() {
    let e = calibrate::chunks(&[], 512, 8192, None);
    assert!(
        matches!(e, Err(GenerateError::Calibration(ref m)) if m.contains("no tokens")),
        "{e:?}"
    );
    assert!(matches!(
        calibrate::chunks(&[1, 2, 3], 512, 0, None),
        Err(GenerateError::Calibration(_))
    ));
    assert!(matches!(
        calibrate::chunks(&[1, 2, 3], 1, 10, None),
        Err(GenerateError::Calibration(_))
    ));
    assert_eq!(
        calibrate::chunks(&[1, 2, 3, 4, 5], 2, 5, Some(9)).expect("chunks"),
        [vec![9, 2], vec![9, 4], vec![9]]
    );
    let (w, _) = load(&common::root(FIXTURES[0]));
    let format_of = |_: &str, _: usize| Some(BlockFormat::Q4_0);
    let e = gptq_decoder(
        w.clone(),
        &[vec![u32::MAX]],
        &format_of,
        &GptqOptions::default(),
        |_, _| {},
    );
    assert!(matches!(e, Err(GenerateError::TokenId { .. })), "{e:?}");
    assert!(smooth_decoder(w, &[vec![1, 2]], 1.5).is_err());

    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").expect("write");
    let src = common::root(FIXTURES[0]);
    let out = dir.path().join("o.gguf");
    let run = |format: &str, cal: Option<&Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wginfer"));
        cmd.arg("quantize").arg(&src).args(["--format", format, "-o"]).arg(&out);
        if let Some(c) = cal {
            cmd.arg("--calibration").arg(c);
        }
        let o = cmd.output().expect("runs wginfer");
        assert!(!o.status.success(), "{format}: succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let msg = run("q4_0", Some(&empty));
    assert!(msg.contains("no tokens"), "{msg}");
    let msg = run("f16", Some(&common::root(CALIBRATION)));
    assert!(msg.contains("not f16"), "{msg}");
    let msg = run("w8a8", None);
    assert!(msg.contains("--calibration"), "{msg}");
    assert!(!out.exists());
}
