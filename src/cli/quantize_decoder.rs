//! `wginfer quantize DECODER --format q8_0|q4_0|q4_1|q4_k|q5_k|q6_k|q4_k_m|q5_k_m|f16 -o OUT.gguf [--eval TEXT]`:
//! a decoder (GGUF or Hugging Face directory) re-quantized with ggml's
//! reference quantizers and written as GGUF, with the perplexity of a text
//! before and after.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use wginfer::generate::export::{export_decoder, GgufExportOptions, GgufWeightType};
use wginfer::generate::Generator;
use wginfer::Device;

use super::bytes;

/// Tokens per perplexity chunk, and chunks scored at most.
const CHUNK: usize = 512;
const MAX_CHUNKS: usize = 8;

/// Whether `path` is a decoder: a `.gguf` file or a directory whose
/// `config.json` names a llama-family `*ForCausalLM`.
pub fn is_decoder(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("config.json").is_file() && wginfer::generate::hf::read_config(path).is_ok();
    }
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Re-quantizes the decoder at `model` to `format` and writes `output`.
pub fn run(model: &Path, format: &str, output: &Path, text: Option<&Path>, gptq: bool, device: &Device) -> Result<()> {
    if gptq {
        bail!("--calibration (GPTQ) is not available for decoders; quantize with the reference quantizers (no --calibration)");
    }
    let weight_type: GgufWeightType = format.parse().map_err(|e: String| anyhow!(e))?;
    if weight_type == GgufWeightType::Keep {
        bail!("--format for a decoder: q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, q4_k_m, q5_k_m or f16");
    }
    let before = text.map(|t| perplexity(model, t, device)).transpose()?;
    let opts = GgufExportOptions {
        weight_type,
        overwrite: true,
    };
    let report = export_decoder(model, output, &opts)?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0);
    let types: Vec<String> = report.matrix_types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "wrote {} ({}; {} before): matrices {}",
        output.display(),
        bytes(size(output)),
        bytes(size(model)),
        types.join(", ")
    );
    if let (Some(before), Some(t)) = (before, text) {
        let after = perplexity(output, t, device)?;
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

/// Perplexity of `text` as `wginfer perplexity` computes it (chunks of
/// [`CHUNK`] tokens, llama.cpp's protocol). Returns it and the tokens scored.
fn perplexity(model: &Path, text: &Path, device: &Device) -> Result<(f64, usize)> {
    let mut g = Generator::load(model, device, Some(CHUNK)).with_context(|| format!("loading {}", model.display()))?;
    let text = std::fs::read_to_string(text).with_context(|| format!("reading {}", text.display()))?;
    let ids = g.tokenizer().encode(&text, false)?;
    let p = g.perplexity(&ids, CHUNK, Some(MAX_CHUNKS), |_, _| {})?;
    Ok((p.perplexity, p.scored))
}
