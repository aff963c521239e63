//! `wginfer convert MODEL.onnx -o MODEL.safetensors`

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};

use super::{bytes, load_model, thousands};

/// Arguments of `convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to convert (.onnx, or a wginfer .safetensors model).
    model: PathBuf,
    /// Where to write the wginfer model (.safetensors).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    if args.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        bail!(
            "`{}`: convert writes wginfer's .safetensors model format, not ONNX; name the output *.safetensors",
            args.output.display()
        );
    }
    let model = load_model(&args.model)?;
    model.save(&args.output)?;
    let g = model.graph();
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for n in g.nodes() {
        *ops.entry(n.op.op_type()).or_default() += 1;
    }
    let ops: Vec<String> = ops.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    println!(
        "wrote {}: {} nodes ({}), {} parameters ({})",
        args.output.display(),
        g.nodes().len(),
        ops.join(", "),
        thousands(g.param_count()),
        bytes(model.param_bytes())
    );
    for i in g.inputs() {
        println!("  input  {}: {}", i.name, i.ty);
    }
    for o in g.outputs() {
        println!("  output {}: {}", o.name, o.ty);
    }
    Ok(())
}
