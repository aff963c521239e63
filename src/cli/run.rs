//! `wginfer run MODEL --input FILE`

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use wginfer::{DType, Device, Session, Tensor};

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
    /// Write the outputs to this file instead of printing them: FILE.npy
    /// for a model with one output, FILE.safetensors for any number.
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
        write_outputs(out, &named)?;
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

/// Writes the outputs in the format `out`'s extension names.
fn write_outputs(out: &Path, outputs: &[(String, Tensor)]) -> Result<()> {
    let ext = out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let names = || outputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    match ext.as_deref() {
        Some("safetensors") => wginfer::model::save_tensors(out, outputs)?,
        Some("npy") => match outputs {
            [(_, t)] => std::fs::write(out, npy_bytes(t)?).with_context(|| format!("writing {}", out.display()))?,
            _ => bail!(
                "-o {}: a .npy file holds one array, but the model has {} outputs ({}); write them to a .safetensors file",
                out.display(),
                outputs.len(),
                names()
            ),
        },
        Some("npz") => bail!(
            "-o {}: .npz is not supported; write a .safetensors file (any number of outputs) or a .npy file (one output)",
            out.display()
        ),
        _ => bail!(
            "-o {}: name the output file .safetensors (any number of outputs) or .npy (one output)",
            out.display()
        ),
    }
    Ok(())
}

/// A tensor as a `.npy` file (format 1.0, C order, little-endian).
fn npy_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let descr = match t.dtype() {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::I16 => "<i2",
        DType::U16 => "<u2",
        DType::I32 => "<i4",
        DType::U32 => "<u4",
        DType::I64 => "<i8",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        other => bail!("an output of type {other} has no .npy type; write a .safetensors file"),
    };
    let dims: Vec<String> = t.shape().iter().map(usize::to_string).collect();
    let shape = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + newline: a multiple of 64.
    header.push_str(&" ".repeat(63 - (10 + header.len()) % 64));
    header.push('\n');
    let len = u16::try_from(header.len()).context("the .npy header is too long (too many dimensions)")?;
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&t.to_le_bytes());
    Ok(bytes)
}
