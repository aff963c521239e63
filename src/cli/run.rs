//! `wginfer run MODEL --input FILE`

use std::path::PathBuf;

use anyhow::{bail, Result};
use wginfer::{Device, Session, Tensor};

use super::{load_data, load_model, path};

/// Arguments of `run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file.
    model: PathBuf,
    /// Input file: a .safetensors file whose tensor names match the model's
    /// inputs, or `NAME=FILE.npy` / `FILE.npy` (one per input). Repeatable.
    #[arg(long, short, required = true)]
    input: Vec<String>,
    /// Write the outputs to this .safetensors file instead of printing them.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Print every element (default: the first 20 per output).
    #[arg(long)]
    full: bool,
}

pub fn run(args: &Args, device: Device) -> Result<()> {
    let model = load_model(&args.model)?;
    let graph_inputs: Vec<String> = model.graph().inputs().iter().map(|i| i.name.clone()).collect();
    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    for spec in &args.input {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) if !n.is_empty() && !n.contains('/') => (Some(n.to_string()), f),
            _ => (None, spec.as_str()),
        };
        let tensors = load_data(&path(file))?;
        match name {
            Some(n) => match tensors.as_slice() {
                [(_, t)] => inputs.push((n, t.clone())),
                _ => bail!("`{spec}`: NAME=FILE needs a file with exactly one tensor"),
            },
            None => {
                if graph_inputs.len() == 1 && tensors.len() == 1 {
                    inputs.push((graph_inputs[0].clone(), tensors[0].1.clone()));
                    continue;
                }
                let mut used = 0;
                for (n, t) in tensors {
                    if graph_inputs.contains(&n) {
                        inputs.push((n, t));
                        used += 1;
                    }
                }
                if used == 0 {
                    bail!(
                        "`{file}` has no tensor named like a model input ({}); name it, or pass NAME=FILE",
                        graph_inputs.join(", ")
                    );
                }
            }
        }
    }
    let session = Session::new(&model, device)?;
    let started = std::time::Instant::now();
    let outputs = session.run(inputs)?;
    let elapsed = started.elapsed();
    if let Some(out) = &args.output {
        let named: Vec<(String, Tensor)> = outputs.into_iter().collect();
        wginfer::model::save_tensors(out, &named)?;
        println!(
            "wrote {} output(s) to {} in {:.3} ms",
            named.len(),
            out.display(),
            elapsed.as_secs_f64() * 1e3
        );
        return Ok(());
    }
    for (name, t) in &outputs {
        println!("{name}: {}{:?}", t.dtype(), t.shape());
        let v = t.to_f32_vec();
        let limit = if args.full { v.len() } else { v.len().min(20) };
        let row = t.shape().last().copied().unwrap_or(1).max(1);
        for chunk in v[..limit].chunks(row) {
            let items: Vec<String> = chunk.iter().map(|x| format!("{x:.6}")).collect();
            println!("  [{}]", items.join(", "));
        }
        if limit < v.len() {
            println!("  ... {} more (use --full)", v.len() - limit);
        }
    }
    eprintln!("ran on {} in {:.3} ms", session.device(), elapsed.as_secs_f64() * 1e3);
    Ok(())
}
