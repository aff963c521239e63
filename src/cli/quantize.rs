//! `wginfer quantize MODEL --format F -o OUT`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use serde::Deserialize;
use wginfer::eval::{evaluate, EvalOptions};
use wginfer::optimize::{quantize, Calibration, QuantizeOptions};
use wginfer::quant::WeightFormat;
use wginfer::{Device, Model, Session, Tensor};

use super::{bytes, load_data, load_model, thousands};

/// Arguments of `quantize`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file (or a decoder: .gguf, Hugging Face directory).
    model: PathBuf,
    /// Weight format: f16, int8, int8-affine, pow2, pow2-tensor, int4, int4-min,
    /// binary, binary-xnor, w8a8 (w8a8+o8: 8 input channels kept in f32).
    /// For a decoder (.gguf or a Hugging Face directory; the output is GGUF):
    /// q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, q4_k_m, q5_k_m (llama.cpp's mixes), f16;
    /// w8a8 (SmoothQuant on --calibration text, then q8_0).
    #[arg(long, short)]
    format: Option<String>,
    /// int4 block size (32, 64 or 128).
    #[arg(long)]
    block: Option<u32>,
    /// Fix the pow2 shift p (x_int = round(x·2^p)) instead of choosing it per channel.
    #[arg(long, allow_hyphen_values = true)]
    shift: Option<i8>,
    /// Layers (node names) to keep in f32, comma separated.
    #[arg(long, value_delimiter = ',')]
    keep: Vec<String>,
    /// Per-layer format, `NODE=FORMAT` (repeatable), e.g. `--layer fc1=f16`.
    #[arg(long)]
    layer: Vec<String>,
    /// A JSON config: {"format": "int4", "keep": ["fc3"], "layers": {"fc1": "f16"}}.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Calibration inputs: a safetensors/.npy file of model inputs (as `eval
    /// --data`; labels are ignored) or, for a text model, a .txt file (one
    /// text per line) or a .json list of texts. int4, int8 and w8a8 weights
    /// are then quantized by GPTQ on the layers' inputs. For a decoder, a
    /// text file: GPTQ onto its GGUF block formats (w8a8: SmoothQuant).
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// W8A8: input channels per layer kept in f32. With --calibration they are
    /// the channels with the largest inputs (default 8, at most in/16);
    /// without it, the columns with the largest weights. int4 with
    /// --calibration: the same channels go to an f16 layer beside the packed
    /// one (default 16, at most in/16; 0: none); without calibration, none.
    #[arg(long)]
    outliers: Option<u32>,
    /// Decoders with --calibration: calibration tokens at most (in chunks of 512).
    #[arg(long, default_value_t = super::quantize_decoder::DEFAULT_CALIBRATION_TOKENS)]
    calibration_tokens: usize,
    /// Decoders, w8a8: SmoothQuant's migration strength alpha (0 to 1).
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Labelled data to report accuracy before and after (as `eval --data`);
    /// for a decoder, a text file whose perplexity is reported before and after.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Where to write the quantized model.
    #[arg(long, short)]
    output: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    format: Option<String>,
    #[serde(default)]
    keep: Vec<String>,
    #[serde(default)]
    layers: HashMap<String, String>,
}

fn parse_format(s: &str, block: Option<u32>, shift: Option<i8>) -> Result<WeightFormat> {
    let mut f: WeightFormat = s.parse().map_err(|e: String| anyhow!(e))?;
    if let Some(b) = block {
        match &mut f {
            WeightFormat::Int4 { block, .. } => *block = b,
            _ => bail!("--block applies to int4 formats, not {f}"),
        }
    }
    if let Some(p) = shift {
        match &mut f {
            WeightFormat::Pow2 { fixed_shift, .. } => *fixed_shift = Some(p),
            _ => bail!("--shift applies to pow2 formats, not {f}"),
        }
    }
    f.validate()?;
    Ok(f)
}

fn accuracy(model: &Model, data: &[(String, Tensor)], device: &Device) -> Result<f64> {
    let g = model.graph();
    let input = g.inputs().first().ok_or_else(|| anyhow!("the model has no input"))?;
    let find = |n: &str| data.iter().find(|(k, _)| k == n).map(|(_, t)| t);
    let x = find(&input.name)
        .or_else(|| find("input"))
        .ok_or_else(|| anyhow!("eval data has no `{}` tensor", input.name))?;
    let y = find("label").ok_or_else(|| anyhow!("eval data has no `label` tensor"))?;
    let output = g
        .outputs()
        .iter()
        .find(|o| o.name == "probabilities")
        .or_else(|| g.outputs().first())
        .ok_or_else(|| anyhow!("the model has no outputs"))?;
    let session = Session::new(model, device.clone())?;
    let opts = EvalOptions {
        input: input.name.clone(),
        output: output.name.clone(),
        batch_size: 0,
    };
    Ok(evaluate(&session, x, y, &opts, |_, _| {})?.accuracy())
}

/// Calibration inputs from `path`: texts (.txt, one per line; .json, a list)
/// tokenized with the model's `tokenizer.json`, else a tensor file.
fn calibration(model: &Model, model_path: &Path, path: &Path) -> Result<Calibration> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let texts: Option<Vec<String>> = match ext.as_str() {
        "txt" => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
        ),
        "json" => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: calibration JSON must be a list of texts", path.display()))?,
            )
        }
        _ => None,
    };
    let cal = match texts {
        Some(texts) => {
            if texts.is_empty() {
                bail!("{}: no calibration texts", path.display());
            }
            let tok = if model_path.is_dir() {
                model_path.join("tokenizer.json")
            } else {
                model_path.parent().unwrap_or(Path::new(".")).join("tokenizer.json")
            };
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            Calibration::from_texts(model, &tok, &refs)?
        }
        None => Calibration::from_tensors(model, &load_data(path)?)?,
    };
    if cal.passes.is_empty() {
        bail!("{}: no calibration samples", path.display());
    }
    Ok(cal)
}

pub fn run(args: &Args, device: Device) -> Result<()> {
    if super::quantize_decoder::is_decoder(&args.model) {
        let format = args
            .format
            .as_deref()
            .ok_or_else(|| anyhow!("give --format for a decoder"))?;
        let q = super::quantize_decoder::DecoderQuantize {
            model: &args.model,
            format,
            output: &args.output,
            eval: args.eval.as_deref(),
            calibration: args.calibration.as_deref(),
            calibration_tokens: args.calibration_tokens,
            alpha: args.alpha,
        };
        return super::quantize_decoder::run(&q, &device);
    }
    let config: Config = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not a valid quantize config", p.display()))?
        }
        None => Config::default(),
    };
    let default = args
        .format
        .as_deref()
        .or(config.format.as_deref())
        .ok_or_else(|| anyhow!("give --format (or \"format\" in --config)"))?;
    let mut opts = QuantizeOptions::new(parse_format(default, args.block, args.shift)?);
    opts.keep = config.keep.iter().chain(&args.keep).cloned().collect();
    for (node, f) in &config.layers {
        opts.layers.insert(node.clone(), parse_format(f, None, None)?);
    }
    for spec in &args.layer {
        let (node, f) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--layer takes NODE=FORMAT, got `{spec}`"))?;
        opts.layers.insert(node.to_string(), parse_format(f, None, None)?);
    }

    let model = load_model(&args.model)?;
    if args.outliers.is_some() && args.calibration.is_none() && matches!(opts.format, WeightFormat::Int4 { .. }) {
        bail!(
            "--outliers with an int4 format needs --calibration (the split-off channels are chosen from the layers' inputs)"
        );
    }
    opts.outliers = args.outliers;
    if let Some(path) = &args.calibration {
        opts.calibration = Some(calibration(&model, &args.model, path)?);
    }
    let bar = ProgressBar::new(model.graph().nodes().len() as u64);
    let (quantized, report) = quantize(&model, &opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    quantized.save(&args.output)?;

    println!(
        "{:<14} {:<17} {:>12} {:>12} {:>12} {:>7} {:>11} {:>11}",
        "layer", "format", "parameters", "bytes before", "bytes after", "ratio", "max |err|", "mean |err|"
    );
    for l in &report.layers {
        println!(
            "{:<14} {:<17} {:>12} {:>12} {:>12} {:>6.2}x {:>11.3e} {:>11.3e}",
            l.node,
            match l.format {
                Some(f) if l.gptq && l.split_outliers > 0 => format!("{f}+o{} gptq", l.split_outliers),
                Some(f) if l.gptq => format!("{f} gptq"),
                Some(f) => f.name(),
                None => "f32 (kept)".into(),
            },
            thousands(l.params),
            bytes(l.bytes_before),
            bytes(l.bytes_after),
            l.bytes_before as f64 / l.bytes_after.max(1) as f64,
            l.max_abs_err,
            l.mean_abs_err
        );
    }
    // A model directory (BERT): its weights file.
    let file = |p: &PathBuf| {
        let p = if p.is_dir() {
            p.join("model.safetensors")
        } else {
            p.clone()
        };
        std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0)
    };
    println!(
        "\nparameters {} -> {} ({:.2}x smaller); file {} -> {}",
        bytes(report.bytes_before),
        bytes(report.bytes_after),
        report.bytes_before as f64 / report.bytes_after.max(1) as f64,
        bytes(file(&args.model)),
        bytes(file(&args.output))
    );
    if report.calibration_rows > 0 {
        println!(
            "calibration: {} rows in {:.2} s",
            thousands(report.calibration_rows),
            report.calibration_time.as_secs_f64()
        );
    }
    if let Some(data) = &args.eval {
        let data = load_data(data)?;
        let before = accuracy(&model, &data, &device)?;
        let after = accuracy(&quantized, &data, &device)?;
        println!(
            "accuracy   {:.4} -> {:.4} ({:+.2} points) on {}",
            before,
            after,
            (after - before) * 100.0,
            args.eval.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    println!("wrote {}", args.output.display());
    Ok(())
}
