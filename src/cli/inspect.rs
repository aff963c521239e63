//! `wginfer inspect MODEL`

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use wginfer::{Device, Session};

use super::{bytes, load_model, thousands};

/// Arguments of `inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file (.safetensors).
    model: PathBuf,
    /// Also print the execution plan for `--device` (GPU: placements, buffers,
    /// peak intermediate bytes, dispatches and submits per run).
    #[arg(long)]
    plan: bool,
    /// Batch size for the plan's symbolic dimensions.
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

pub fn run(args: &Args, device: Device) -> Result<()> {
    let model = load_model(&args.model)?;
    let g = model.graph();
    let file_size = std::fs::metadata(&args.model).map(|m| m.len() as usize).unwrap_or(0);
    println!("model   {} ({})", args.model.display(), bytes(file_size));
    println!("graph   {}", if g.name().is_empty() { "(unnamed)" } else { g.name() });
    println!("\ninputs");
    for i in g.inputs() {
        println!("  {:<20} {}", i.name, i.ty);
    }
    println!("outputs");
    for o in g.outputs() {
        println!("  {:<20} {}", o.name, o.ty);
    }
    println!("\nnodes ({})", g.nodes().len());
    println!("  {:<4} {:<16} {:<10} {:<40} outputs", "#", "name", "op", "inputs");
    for (i, n) in g.nodes().iter().enumerate() {
        let outs: Vec<String> = n
            .outputs
            .iter()
            .map(|o| match g.value_type(o) {
                Some(t) => format!("{o} {t}"),
                None => o.clone(),
            })
            .collect();
        let attrs = n.op.attrs();
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {}", serde_json::Value::Object(attrs))
        };
        println!(
            "  {:<4} {:<16} {:<10} {:<40} {}{}",
            i,
            n.name,
            n.op.op_type(),
            n.inputs.join(", "),
            outs.join(", "),
            attrs
        );
    }
    let mut by_format: BTreeMap<(String, String), (usize, usize, usize)> = BTreeMap::new();
    for p in g.params() {
        let e = by_format.entry((p.dtype.to_string(), p.format.clone())).or_default();
        e.0 += 1;
        e.1 += p.numel();
        e.2 += p.numel() * p.dtype.size_in_bytes();
    }
    println!(
        "\nparameters  {} in {} tensors, {}",
        thousands(g.param_count()),
        g.params().len(),
        bytes(model.param_bytes())
    );
    println!(
        "  {:<8} {:<10} {:>8} {:>14} {:>12}",
        "dtype", "format", "tensors", "parameters", "bytes"
    );
    for ((dtype, format), (n, count, b)) in by_format {
        println!(
            "  {:<8} {:<10} {:>8} {:>14} {:>12}",
            dtype,
            format,
            n,
            thousands(count),
            bytes(b)
        );
    }
    if args.plan {
        let session = Session::new(&model, device)?;
        let shapes: Vec<Vec<usize>> = g
            .inputs()
            .iter()
            .map(|i| i.ty.shape.iter().map(|d| d.known().unwrap_or(args.batch)).collect())
            .collect();
        println!();
        match session.gpu_plan(Some(&shapes)) {
            Some(plan) => print!("{}", plan?),
            None => println!(
                "plan on {}: {} nodes run in order on the CPU, each intermediate freed after its last reader",
                session.backend(),
                g.nodes().len()
            ),
        }
    }
    Ok(())
}
