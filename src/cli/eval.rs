//! `wginfer eval MODEL --data FILE`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressStyle};
use wginfer::eval::{evaluate, EvalOptions};
use wginfer::{Device, Session, Tensor};

use super::{load_data, load_model};

/// Arguments of `eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file.
    model: PathBuf,
    /// Labelled data: a .safetensors file with an input tensor (first axis =
    /// samples) and integer labels.
    #[arg(long)]
    data: PathBuf,
    /// Tensor in the data file to feed (default: the model's input name, or `input`).
    #[arg(long)]
    input_name: Option<String>,
    /// Tensor in the data file holding labels.
    #[arg(long, default_value = "label")]
    label_name: String,
    /// Model output holding class scores (default: `probabilities` if present, else the first).
    #[arg(long)]
    output: Option<String>,
    /// Samples per run; 0 = the whole set in one run.
    #[arg(long, short, default_value_t = 1)]
    batch_size: usize,
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

pub fn run(args: &Args, device: Device) -> Result<()> {
    let model = load_model(&args.model)?;
    let g = model.graph();
    let [graph_input] = g.inputs() else {
        return Err(anyhow!(
            "eval needs a model with exactly one input; this one has {}",
            g.inputs().len()
        ));
    };
    let output = match &args.output {
        Some(o) => o.clone(),
        None => g
            .outputs()
            .iter()
            .find(|o| o.name == "probabilities")
            .or_else(|| g.outputs().first())
            .map(|o| o.name.clone())
            .ok_or_else(|| anyhow!("the model has no outputs"))?,
    };
    let data = load_data(&args.data)?;
    let find = |name: &str| -> Option<&Tensor> { data.iter().find(|(n, _)| n == name).map(|(_, t)| t) };
    let names = || {
        data.iter()
            .map(|(n, t)| format!("{n} {}{:?}", t.dtype(), t.shape()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let inputs = match &args.input_name {
        Some(n) => find(n),
        None => find(&graph_input.name).or_else(|| find("input")),
    }
    .ok_or_else(|| {
        anyhow!(
            "{}: no input tensor found (use --input-name); the file holds: {}",
            args.data.display(),
            names()
        )
    })?;
    let labels = find(&args.label_name).ok_or_else(|| {
        anyhow!(
            "{}: no label tensor `{}` (use --label-name); the file holds: {}",
            args.data.display(),
            args.label_name,
            names()
        )
    })?;
    let session = Session::new(&model, device)?;
    let n = inputs.shape().first().copied().unwrap_or(0);
    let opts = EvalOptions {
        input: graph_input.name.clone(),
        output: output.clone(),
        batch_size: args.batch_size,
    };
    let batches = if args.batch_size == 0 {
        1
    } else {
        n.div_ceil(args.batch_size)
    };
    let bar = if batches >= 20 {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} samples ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // One untimed run first: the first run on a GPU compiles pipelines and
    // allocates buffers for the shape; latency is reported for the runs after.
    let first = if args.batch_size == 0 {
        n
    } else {
        args.batch_size.min(n)
    };
    session.run([(graph_input.name.clone(), inputs.slice_rows(0, first)?)])?;
    let report = evaluate(&session, inputs, labels, &opts, |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();

    println!("model     {}  on {}", args.model.display(), session.device());
    println!(
        "data      {}: {} samples, batch {} ({} runs), scoring `{output}`",
        args.data.display(),
        report.samples,
        report.batch_size,
        report.batch_latencies.len()
    );
    println!(
        "accuracy  {:.4}  ({}/{})",
        report.accuracy(),
        report.correct,
        report.samples
    );
    println!("\nper class");
    println!(
        "  {:>5} {:>6} {:>8} {:>8} {:>9}  most confused with",
        "class", "n", "correct", "recall", "precision"
    );
    let k = report.confusion.len();
    for c in 0..k {
        let row = &report.confusion[c];
        let total: usize = row.iter().sum();
        let predicted: usize = (0..k).map(|r| report.confusion[r][c]).sum();
        let hit = row[c];
        let confused = (0..k)
            .filter(|&p| p != c && row[p] > 0)
            .max_by_key(|&p| row[p])
            .map(|p| format!("{p} ({}x)", row[p]))
            .unwrap_or_else(|| "-".into());
        let ratio = |a: usize, b: usize| {
            if b == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", a as f64 / b as f64)
            }
        };
        println!(
            "  {:>5} {:>6} {:>8} {:>8} {:>9}  {}",
            c,
            total,
            hit,
            ratio(hit, total),
            ratio(hit, predicted),
            confused
        );
    }
    let total: Duration = report.batch_latencies.iter().sum();
    println!("\nlatency per batch of {} (after one warm-up run)", report.batch_size);
    println!(
        "  mean {}  p50 {}  p90 {}  p99 {}  min {}  max {}",
        ms(report.latency_mean()),
        ms(report.latency_quantile(0.5)),
        ms(report.latency_quantile(0.9)),
        ms(report.latency_quantile(0.99)),
        ms(report.latency_quantile(0.0)),
        ms(report.latency_quantile(1.0))
    );
    if total > Duration::ZERO {
        println!(
            "  throughput {:.0} samples/s",
            report.samples as f64 / total.as_secs_f64()
        );
    }
    Ok(())
}
