//! `wginfer quantize DECODER --format q8_0|q4_0|q4_1|q4_k|q5_k|q6_k|q4_k_m|q5_k_m|f16|w8a8 -o OUT.gguf
//! [--calibration TEXT] [--eval TEXT]`: a decoder (GGUF or Hugging Face
//! directory) re-quantized and written as GGUF, with the perplexity of a
//! text before and after. Without calibration the matrices take ggml's
//! reference (round-to-nearest) quantizers; with `--calibration` a text
//! file calibrates GPTQ onto the same block formats, or (`w8a8`)
//! SmoothQuant's migration before Q8_0.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use wginfer::generate::calibrate::{self, gptq_decoder, smooth_decoder};
use wginfer::generate::export::{export_decoder, source_metadata, write_decoder, GgufExportOptions, GgufWeightType};
use wginfer::generate::{DecoderWeights, Generator, ModelParts};
use wginfer::quant::gptq::GptqOptions;
use wginfer::Device;

use super::bytes;

/// Tokens per perplexity chunk, and chunks scored at most.
const CHUNK: usize = 512;
const MAX_CHUNKS: usize = 8;

/// Calibration tokens by default.
pub const DEFAULT_CALIBRATION_TOKENS: usize = 4096;

/// Whether `path` is a decoder: a `.gguf` file or a directory whose
/// `config.json` names a llama-family `*ForCausalLM`.
pub fn is_decoder(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("config.json").is_file() && wginfer::generate::hf::read_config(path).is_ok();
    }
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// What to do with a decoder.
pub struct DecoderQuantize<'a> {
    /// The decoder (GGUF file or Hugging Face directory).
    pub model: &'a Path,
    /// `--format`.
    pub format: &'a str,
    /// The GGUF file to write.
    pub output: &'a Path,
    /// A text to report perplexity on before and after.
    pub eval: Option<&'a Path>,
    /// A calibration text (GPTQ; SmoothQuant for w8a8).
    pub calibration: Option<&'a Path>,
    /// Calibration tokens at most.
    pub calibration_tokens: usize,
    /// SmoothQuant's migration strength.
    pub alpha: f32,
}

/// Re-quantizes the decoder as `q` says and writes its output.
pub fn run(q: &DecoderQuantize<'_>, device: &Device) -> Result<()> {
    let w8a8 = q.format.eq_ignore_ascii_case("w8a8");
    let weight_type: GgufWeightType = if w8a8 {
        GgufWeightType::Q8_0
    } else {
        q.format.parse().map_err(|e: String| anyhow!(e))?
    };
    if matches!(weight_type, GgufWeightType::Keep) {
        bail!("--format for a decoder: q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, q4_k_m, q5_k_m, f16 or w8a8");
    }
    if w8a8 && q.calibration.is_none() {
        bail!("--format w8a8 for a decoder is calibrated on text: give --calibration TEXT");
    }
    if q.calibration.is_some() && weight_type == GgufWeightType::F16 {
        bail!("--calibration (GPTQ) quantizes to block formats (q4_0, q4_1, q8_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m) or w8a8, not f16");
    }
    let before = q.eval.map(|t| perplexity(q.model, t, device)).transpose()?;
    let opts = GgufExportOptions {
        weight_type,
        overwrite: true,
    };
    let report = match q.calibration {
        None => export_decoder(q.model, q.output, &opts)?,
        Some(text) => {
            let weights = calibrated(q, text, weight_type, w8a8)?;
            let carried = source_metadata(q.model, weights.config.vocab)?;
            write_decoder(&weights, &carried, q.output, &opts)?
        }
    };
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0);
    let types: Vec<String> = report.matrix_types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "wrote {} ({}; {} before): matrices {}",
        q.output.display(),
        bytes(size(q.output)),
        bytes(size(q.model)),
        types.join(", ")
    );
    if let (Some(before), Some(t)) = (before, q.eval) {
        let after = perplexity(q.output, t, device)?;
        println!(
            "perplexity over {} tokens of {}: {:.4} before, {:.4} after ({:+.2}%)",
            before.1,
            t.display(),
            before.0,
            after.0,
            (after.0 / before.0 - 1.0) * 100.0
        );
    }
    Ok(())
}

/// The decoder's weights quantized by GPTQ (or smoothed, for W8A8) on the
/// calibration text.
fn calibrated(q: &DecoderQuantize<'_>, text: &Path, weight_type: GgufWeightType, w8a8: bool) -> Result<DecoderWeights> {
    let parts = ModelParts::load(q.model).with_context(|| format!("loading {}", q.model.display()))?;
    let body = std::fs::read_to_string(text).with_context(|| format!("reading {}", text.display()))?;
    let tok = &parts.tokenizer;
    let ids = tok.encode(&body, false)?;
    let bos = tok.bos().filter(|_| tok.adds_bos());
    let chunks = calibrate::chunks(&ids, CHUNK, q.calibration_tokens, bos)
        .with_context(|| format!("calibration text {}", text.display()))?;
    let tokens: usize = chunks.iter().map(Vec::len).sum();
    let start = Instant::now();
    let weights = Arc::clone(&parts.weights);
    drop(parts);
    if w8a8 {
        let (w, report) = smooth_decoder(weights, &chunks, q.alpha)?;
        let top = report.max_factor.iter().flatten().fold(0f32, |m, &v| m.max(v));
        println!(
            "SmoothQuant (alpha {}) on {tokens} tokens of {} in {:.1} s: largest factor {top:.2}; weights to Q8_0",
            q.alpha,
            text.display(),
            start.elapsed().as_secs_f64()
        );
        return Ok(w);
    }
    let (layers, tied) = (weights.layers.len(), weights.output.is_none());
    let format_of = |name: &str, cols: usize| weight_type.format_for(name, cols, layers, tied);
    let (w, report) = gptq_decoder(weights, &chunks, &format_of, &GptqOptions::default(), |i, n| {
        eprint!("\rGPTQ: layer {i}/{n}");
    })?;
    eprintln!();
    let done: Vec<String> = report.matrices.iter().map(|(f, n)| format!("{n} {f}")).collect();
    println!(
        "GPTQ on {tokens} tokens of {} in {:.1} s: {}{}",
        text.display(),
        start.elapsed().as_secs_f64(),
        done.join(", "),
        if report.skipped > 0 {
            format!(" ({} matrices left to the reference quantizer)", report.skipped)
        } else {
            String::new()
        }
    );
    Ok(w)
}

/// Perplexity of `text` as `wginfer perplexity` computes it (chunks of
/// [`CHUNK`] tokens, llama.cpp's protocol). Returns it and the tokens scored.
fn perplexity(model: &Path, text: &Path, device: &Device) -> Result<(f64, usize)> {
    let mut g = Generator::load(model, device, Some(CHUNK)).with_context(|| format!("loading {}", model.display()))?;
    let text = std::fs::read_to_string(text).with_context(|| format!("reading {}", text.display()))?;
    let ids = g.tokenizer().encode(&text, false)?;
    let p = g.perplexity(&ids, CHUNK, Some(MAX_CHUNKS), |_, _| {})?;
    Ok((p.perplexity, p.scored))
}
