//! `wginfer adapters`: every wgpu adapter with the features and limits that matter here.

use anyhow::Result;
use wginfer::backend::gpu::{list_adapters, AdapterSummary};

/// Arguments of `adapters`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_: &Args) -> Result<()> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        println!("no wgpu adapter found (install a Vulkan/Metal/DX12/GL driver, or Mesa's lavapipe for a software one); the cpu device always works");
        return Ok(());
    }
    println!("{}", AdapterSummary::table_header());
    for a in &adapters {
        println!("{a}");
    }
    println!("\n`--device gpu` (auto) picks the first hardware adapter and uses the CPU backend when there is none;");
    println!("name a software adapter with `--device software` or `--device name:<substring>`.");
    Ok(())
}
