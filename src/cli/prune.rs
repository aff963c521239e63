//! `wginfer prune MODEL --method ... -o OUT`

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::ValueEnum;
use wginfer::eval::{evaluate, EvalOptions};
use wginfer::optimize::prune::Importance;
use wginfer::optimize::{prune, Finetune, Labelled, PruneMethod, PruneOptions, Scope};
use wginfer::{Device, Model, Session};

use super::{bytes, load_data, load_model, thousands};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Method {
    /// Unstructured, by |w|.
    Magnitude,
    /// Unstructured, by first-order Taylor importance |w·Σ∂L/∂w| (needs --calibration).
    Taylor,
    /// N:M sparsity (--pattern, default 2:4), packed for a sparse kernel.
    Nm,
    /// Remove output channels of hidden layers (a smaller dense model).
    Channels,
    /// Replace the least important shape-preserving layers by identity (needs --calibration);
    /// in a transformer, whole residual blocks by block influence (unlabelled --calibration inputs).
    Layers,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ImportanceArg {
    Magnitude,
    Taylor,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScopeArg {
    Global,
    Layer,
}

/// Arguments of `prune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file.
    model: PathBuf,
    /// Pruning method.
    #[arg(long, value_enum)]
    method: Method,
    /// Fraction of weights (or channels) to remove.
    #[arg(long, default_value_t = 0.5)]
    sparsity: f32,
    /// Unstructured target across all layers, or per layer.
    #[arg(long, value_enum, default_value = "global")]
    scope: ScopeArg,
    /// N:M pattern for `--method nm`.
    #[arg(long, default_value = "2:4")]
    pattern: String,
    /// Importance for nm and channels.
    #[arg(long, value_enum, default_value = "magnitude")]
    importance: ImportanceArg,
    /// Layers to drop for `--method layers`.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Labelled calibration data (Taylor and layer importance); for layer
    /// dropping in a transformer, inputs named after the model's inputs.
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Labelled training data for recovery fine-tuning (masks held fixed).
    #[arg(long)]
    finetune: Option<PathBuf>,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Fine-tuning learning rate (SGD).
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// Fine-tuning batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Channels: zero and mask the pruned channels instead of removing them.
    #[arg(long)]
    no_shrink: bool,
    /// Node names never pruned, comma separated.
    #[arg(long, value_delimiter = ',')]
    keep: Vec<String>,
    /// Labelled data to report accuracy and latency before and after.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Where to write the pruned model.
    #[arg(long, short)]
    output: PathBuf,
}

fn labelled(model: &Model, path: &Path) -> Result<Labelled> {
    let data = load_data(path)?;
    let input_name = model
        .graph()
        .inputs()
        .first()
        .ok_or_else(|| anyhow!("the model has no input"))?
        .name
        .clone();
    let find = |n: &str| data.iter().find(|(k, _)| k == n).map(|(_, t)| t.clone());
    let input = find(&input_name)
        .or_else(|| find("input"))
        .ok_or_else(|| anyhow!("{}: no `{input_name}` (or `input`) tensor", path.display()))?;
    let labels = find("label")
        .ok_or_else(|| anyhow!("{}: no `label` tensor", path.display()))?
        .to_i64_vec();
    Ok(Labelled {
        input_name,
        input,
        labels,
    })
}

/// Calibration inputs: the data file's tensors named after the model's
/// inputs. A missing rank-1 `position_ids` (BERT) is `0..seq`.
fn unlabelled(model: &Model, path: &Path) -> Result<Vec<(String, wginfer::Tensor)>> {
    let data = load_data(path)?;
    let mut out = Vec::new();
    let mut seq = None;
    for i in model.graph().inputs() {
        if let Some((_, t)) = data.iter().find(|(k, _)| k == &i.name) {
            if t.rank() == 2 {
                seq = Some(t.shape()[1]);
            }
            out.push((i.name.clone(), t.clone()));
        }
    }
    for i in model.graph().inputs() {
        if out.iter().any(|(k, _)| k == &i.name) {
            continue;
        }
        match (i.name.as_str(), seq) {
            ("position_ids", Some(s)) if i.ty.rank() == 1 => {
                out.push((
                    i.name.clone(),
                    wginfer::Tensor::from_vec(vec![s], (0..s as i64).collect())?,
                ));
            }
            _ => bail!(
                "{}: no `{}` tensor (the model's inputs need one each)",
                path.display(),
                i.name
            ),
        }
    }
    Ok(out)
}

fn measure(model: &Model, data: &Labelled, device: &Device) -> Result<(f64, Duration, Duration)> {
    let session = Session::new(model, device.clone())?;
    let output = model
        .graph()
        .outputs()
        .iter()
        .find(|o| o.name == "probabilities")
        .or_else(|| model.graph().outputs().first())
        .ok_or_else(|| anyhow!("the model has no outputs"))?
        .name
        .clone();
    let labels = wginfer::Tensor::from_vec(vec![data.labels.len()], data.labels.clone())?;
    let all = EvalOptions {
        input: data.input_name.clone(),
        output: output.clone(),
        batch_size: 0,
    };
    let whole = evaluate(&session, &data.input, &labels, &all, |_, _| {})?;
    let one = EvalOptions { batch_size: 1, ..all };
    let single = evaluate(&session, &data.input, &labels, &one, |_, _| {})?;
    Ok((whole.accuracy(), single.latency_quantile(0.5), whole.latency_mean()))
}

pub fn run(args: &Args, device: Device) -> Result<()> {
    let model = load_model(&args.model)?;
    let importance = match args.importance {
        ImportanceArg::Magnitude => Importance::Magnitude,
        ImportanceArg::Taylor => Importance::Taylor,
    };
    let method = match args.method {
        Method::Magnitude => PruneMethod::Unstructured(Importance::Magnitude),
        Method::Taylor => PruneMethod::Unstructured(Importance::Taylor),
        Method::Nm => {
            let (n, m) = args
                .pattern
                .split_once(':')
                .ok_or_else(|| anyhow!("--pattern takes N:M, e.g. 2:4"))?;
            PruneMethod::NM {
                n: n.parse()?,
                m: m.parse()?,
                importance,
            }
        }
        Method::Channels => PruneMethod::Channels(importance),
        Method::Layers => PruneMethod::Layers { count: args.layers },
    };
    if !(0.0..=1.0).contains(&args.sparsity) {
        bail!("--sparsity must be in [0, 1], got {}", args.sparsity);
    }
    // A model of residual blocks (a transformer) drops whole blocks, ranked on
    // unlabelled calibration inputs.
    let by_blocks = matches!(args.method, Method::Layers)
        && wginfer::optimize::prune::blocks::residual_blocks(model.graph()).len() >= 2;
    let opts = PruneOptions {
        method,
        sparsity: args.sparsity,
        scope: match args.scope {
            ScopeArg::Global => Scope::Global,
            ScopeArg::Layer => Scope::PerLayer,
        },
        keep: args.keep.clone(),
        calibration: match by_blocks {
            true => None,
            false => args.calibration.as_deref().map(|p| labelled(&model, p)).transpose()?,
        },
        inputs: match by_blocks {
            true => args.calibration.as_deref().map(|p| unlabelled(&model, p)).transpose()?,
            false => None,
        },
        finetune: args
            .finetune
            .as_deref()
            .map(|p| -> Result<Finetune> {
                Ok(Finetune {
                    data: labelled(&model, p)?,
                    epochs: args.epochs,
                    lr: args.lr,
                    batch: args.batch,
                })
            })
            .transpose()?,
        shrink: !args.no_shrink,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    let (pruned, report) = prune(&model, &opts, |msg| bar.set_message(msg.to_string()))?;
    bar.finish_and_clear();
    pruned.save(&args.output)?;

    if !report.layers.is_empty() {
        println!(
            "{:<12} {:>9} {:>12} {:>12} {:>12} {:>12}",
            "layer", "sparsity", "params before", "params after", "bytes before", "bytes after"
        );
        for l in &report.layers {
            println!(
                "{:<12} {:>8.1}% {:>12} {:>12} {:>12} {:>12}",
                l.node,
                l.sparsity() * 100.0,
                thousands(l.params_before),
                thousands(l.params_after),
                bytes(l.bytes_before),
                bytes(l.bytes_after)
            );
        }
    }
    if !report.layer_importance.is_empty() {
        let imp: Vec<String> = report
            .layer_importance
            .iter()
            .map(|(n, v)| format!("{n} {v:.3e}"))
            .collect();
        let what = if by_blocks {
            "block influence 1 − cos(in, out)"
        } else {
            "layer importance |Σ ∂L/∂out·out|"
        };
        println!("{what}: {}", imp.join(", "));
    }
    if !report.dropped.is_empty() {
        println!("dropped (now identity): {}", report.dropped.join(", "));
    }
    if !report.finetune_loss.is_empty() {
        let l: Vec<String> = report.finetune_loss.iter().map(|v| format!("{v:.4}")).collect();
        println!("fine-tuning loss per epoch: {}", l.join(" -> "));
    }
    println!(
        "parameters {} -> {}",
        bytes(report.bytes_before),
        bytes(report.bytes_after)
    );
    if let Some(p) = &args.eval {
        let data = labelled(&model, p)?;
        let (a0, l1_0, lall_0) = measure(&model, &data, &device)?;
        let (a1, l1_1, lall_1) = measure(&pruned, &data, &device)?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("accuracy   {a0:.4} -> {a1:.4} ({:+.2} points)", (a1 - a0) * 100.0);
        println!(
            "latency on {device}: batch 1 p50 {:.4} -> {:.4} ms; whole set {:.3} -> {:.3} ms",
            ms(l1_0),
            ms(l1_1),
            ms(lall_0),
            ms(lall_1)
        );
    }
    println!("wrote {}", args.output.display());
    Ok(())
}
