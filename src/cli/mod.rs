//! Command-line front end (clap). `anyhow` lives here and nowhere in the library.
#![forbid(unsafe_code)]

mod adapters;
mod bench;
mod bench_decoder;
mod convert;
mod embed;
mod eval;
mod export;
mod export_gguf;
mod generate;
mod inspect;
mod prune;
mod quantize;
mod quantize_decoder;
mod run;
mod serve;
mod svg;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use wginfer::{Device, Model, Tensor};

/// Run, inspect and evaluate neural-network models on the CPU or any GPU.
#[derive(Parser, Debug)]
#[command(name = "wginfer", version, about, propagate_version = true)]
pub struct Cli {
    /// Where to run: `cpu`, `cpu-reference` (every op's naive reference), `gpu`
    /// (auto: a hardware adapter, else the CPU), `vulkan`, `metal`, `dx12`, `gl`,
    /// `software` (lavapipe/llvmpipe/WARP) or `name:<adapter substring>`.
    #[arg(long, global = true, env = "WGINFER_DEVICE", default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the GPU adapters wgpu finds, with the features and limits wginfer uses.
    Adapters(adapters::Args),
    /// Show a model's graph, parameter count and bytes per dtype/format.
    Inspect(inspect::Args),
    /// Run a model on inputs from a file and print or save the outputs.
    Run(run::Args),
    /// Benchmark a model (or one op) per device, batch size and weight format.
    Bench(bench::Args),
    /// Measure top-1 accuracy and latency on a labelled data set.
    Eval(eval::Args),
    /// Serve a model repository over HTTP (KServe v2 / Open Inference Protocol).
    Serve(serve::Args),
    /// Prune a model (magnitude, Taylor, N:M, channels, layers) and report the cost.
    Prune(prune::Args),
    /// Quantize a model's weights (f16, int8, pow2, int4, binary, w8a8) and report the cost.
    Quantize(quantize::Args),
    /// Convert an ONNX model to a wginfer model file (.safetensors).
    Convert(convert::Args),
    /// Export a model (quantized or not) to ONNX for onnxruntime and other runtimes.
    Export(export::Args),
    /// Generate text with a decoder language model (GGUF), streaming tokens.
    Generate(generate::Args),
    /// Chat interactively with a decoder language model, using its chat template.
    Chat(generate::ChatArgs),
    /// Perplexity of a decoder language model over a text file.
    Perplexity(generate::PerplexityArgs),
    /// Sentence embeddings (BERT / all-MiniLM-L6-v2 directories, or model files made from them).
    Embed(embed::Args),
}

/// Parses arguments, runs the command, prints errors with their causes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = (|| -> Result<()> {
        let device: Device = cli.device.parse().map_err(|e: String| anyhow!(e))?;
        match &cli.command {
            Command::Adapters(a) => adapters::run(a),
            Command::Inspect(a) => inspect::run(a, device),
            Command::Run(a) => run::run(a, device),
            Command::Bench(a) => bench::run(a),
            Command::Eval(a) => eval::run(a, device),
            Command::Serve(a) => serve::run(a, device),
            Command::Prune(a) => prune::run(a, device),
            Command::Quantize(a) => quantize::run(a, device),
            Command::Convert(a) => convert::run(a),
            Command::Export(a) => export::run(a),
            Command::Embed(a) => embed::run(a, device),
            Command::Generate(a) => generate::run(a, device),
            Command::Chat(a) => generate::chat(a, device),
            Command::Perplexity(a) => generate::perplexity(a, device),
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Loads a model, with the path in the error.
fn load_model(path: &Path) -> Result<Model> {
    Model::load(path).with_context(|| format!("loading model {}", path.display()))
}

/// Loads a data file (safetensors or .npy).
fn load_data(path: &Path) -> Result<Vec<(String, Tensor)>> {
    wginfer::model::load_tensors(path).with_context(|| format!("loading data {}", path.display()))
}

/// `1234567` → `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Human-readable bytes.
fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The file argument as a path.
fn path(p: &str) -> PathBuf {
    PathBuf::from(p)
}
