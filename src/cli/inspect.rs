//! `wginfer inspect MODEL`: a model file's graph and parameters, or a GGUF
//! file's metadata, tensor formats and decoder configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use wginfer::model::gguf::{GgufFile, MetaValue};
use wginfer::{Device, Session};

use super::{bytes, load_model, thousands};

/// Arguments of `inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file (.safetensors), or a GGUF file (.gguf).
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
    if args.model.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return inspect_gguf(&args.model);
    }
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

/// A metadata value for display: long arrays are summarized.
fn show_meta(v: &MetaValue) -> String {
    match v {
        MetaValue::Array(items) if items.len() > 8 => {
            let head: Vec<String> = items.iter().take(4).map(show_meta).collect();
            format!("[{}, ... {} items]", head.join(", "), thousands(items.len()))
        }
        MetaValue::Array(items) => format!("[{}]", items.iter().map(show_meta).collect::<Vec<_>>().join(", ")),
        MetaValue::String(s) if s.chars().count() > 80 => {
            format!(
                "{:?}... ({} chars)",
                s.chars().take(60).collect::<String>(),
                s.chars().count()
            )
        }
        MetaValue::String(s) => format!("{s:?}"),
        other => other.as_f64().map_or_else(|| format!("{other:?}"), |f| format!("{f}")),
    }
}

/// `inspect` of a GGUF file: metadata, tensor count and bytes per ggml type,
/// and the decoder configuration wginfer reads from it.
fn inspect_gguf(path: &std::path::Path) -> Result<()> {
    let file = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
    let size = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0);
    println!("model   {} ({}, GGUF v{})", path.display(), bytes(size), file.version());
    println!("\nmetadata ({})", file.metadata_entries().len());
    for (k, v) in file.metadata_entries() {
        println!("  {k:<44} {}", show_meta(v));
    }
    let mut per_type: BTreeMap<String, (usize, u64, usize)> = BTreeMap::new();
    for t in file.tensors() {
        let e = per_type.entry(t.ggml_type.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.numel();
        e.2 += t.range.len();
    }
    println!("\ntensors ({})", file.tensors().len());
    println!("  {:<8} {:>8} {:>16} {:>12}", "type", "tensors", "elements", "bytes");
    for (ty, (n, numel, b)) in &per_type {
        println!("  {ty:<8} {n:>8} {:>16} {:>12}", thousands(*numel as usize), bytes(*b));
    }
    match wginfer::generate::load::gguf_config(&file) {
        Ok(c) => println!(
            "\ndecoder {} · {} layers · d {} · heads {}/{} kv · head dim {} · ffn {} · vocab {} · RoPE θ {} ({:?}) · context {}",
            c.architecture, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn, c.vocab,
            c.rope_theta, c.rope_layout, c.trained_context
        ),
        Err(e) => println!("\ndecoder: not loadable by wginfer: {e}"),
    }
    Ok(())
}
