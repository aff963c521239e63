//! `wginfer export MODEL --to onnx|tflite|gguf -o OUT [--force] [--int4 matmulnbits|dq] [--gguf-type T]`

use std::path::PathBuf;

use anyhow::{bail, Result};
use wginfer::generate::export::GgufWeightType;
use wginfer::model::onnx::export::{export_onnx, Int4Export, OnnxExportOptions, OPSET};

use super::{bytes, load_model};

/// Arguments of `export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to export (wginfer .safetensors, .onnx, or a BERT directory;
    /// for `--to gguf` a decoder: .gguf or a Hugging Face *ForCausalLM directory).
    model: PathBuf,
    /// The target format: `onnx`, `tflite` (LiteRT) or `gguf` (decoders, for llama.cpp).
    #[arg(long, default_value = "onnx")]
    to: String,
    /// Where to write the exported file.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    /// How int4 block weights are written: `matmulnbits` (onnxruntime's
    /// com.microsoft.MatMulNBits) or `dq` (standard DequantizeLinear with
    /// block_size, opset 21).
    #[arg(long, default_value = "matmulnbits")]
    int4: Int4Export,
    /// With `--to gguf`: how matrices are stored: `keep` (as loaded, GGUF
    /// blocks copied), or re-quantized to `q8_0`, `q4_0`, `q4_1`, `q4_k`,
    /// `q5_k`, `q6_k`, `f16`, or llama.cpp's mixes `q4_k_m`, `q5_k_m`.
    #[arg(long, default_value = "keep")]
    gguf_type: GgufWeightType,
}

pub fn run(args: &Args) -> Result<()> {
    match args.to.as_str() {
        "onnx" => {}
        "tflite" => return export_tflite(args),
        "gguf" => return super::export_gguf::run(&args.model, &args.output, args.gguf_type, args.force),
        other => bail!("unknown export format `{other}`: use onnx, tflite or gguf"),
    }
    let model = load_model(&args.model)?;
    let opts = OnnxExportOptions {
        int4: args.int4,
        overwrite: args.force,
    };
    export_onnx(&model, &args.output, &opts)?;
    let size = std::fs::metadata(&args.output).map(|m| m.len() as usize).unwrap_or(0);
    println!(
        "wrote {} (ONNX opset {OPSET}, {}): {} nodes in wginfer's graph",
        args.output.display(),
        bytes(size),
        model.graph().nodes().len()
    );
    Ok(())
}

/// `--to tflite`: a LiteRT flatbuffer.
fn export_tflite(args: &Args) -> Result<()> {
    use wginfer::model::tflite::{export_tflite, TfliteExportOptions, SCHEMA_VERSION};
    let model = load_model(&args.model)?;
    let opts = TfliteExportOptions { overwrite: args.force };
    export_tflite(&model, &args.output, &opts)?;
    let size = std::fs::metadata(&args.output).map(|m| m.len() as usize).unwrap_or(0);
    println!(
        "wrote {} (TFLite schema {SCHEMA_VERSION}, {}): {} nodes in wginfer's graph",
        args.output.display(),
        bytes(size),
        model.graph().nodes().len()
    );
    Ok(())
}
