//! `wginfer export DECODER --to gguf [--gguf-type keep|q8_0|q4_0|q4_1|q4_k|q5_k|q6_k|q4_k_m|q5_k_m|f16] -o OUT.gguf [--force]`

use std::path::Path;

use anyhow::Result;
use wginfer::generate::export::{export_decoder, GgufExportOptions, GgufWeightType};

use super::bytes;

/// Exports the decoder at `model` (a .gguf file or a Hugging Face directory) as GGUF.
pub fn run(model: &Path, output: &Path, weight_type: GgufWeightType, force: bool) -> Result<()> {
    let opts = GgufExportOptions {
        weight_type,
        overwrite: force,
    };
    let report = export_decoder(model, output, &opts)?;
    let size = std::fs::metadata(output).map(|m| m.len() as usize).unwrap_or(0);
    let types: Vec<String> = report.matrix_types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "wrote {} (GGUF v3, {}, architecture {}): {} tensors, matrices {}",
        output.display(),
        bytes(size),
        report.architecture,
        report.tensors,
        types.join(", ")
    );
    Ok(())
}
