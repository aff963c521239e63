//! `wginfer bench MODEL.gguf` / `wginfer bench --synthetic llama-1b`: prompt
//! processing and generation tokens/s of a decoder per device and thread
//! count, as llama-bench measures them (`pp N`: N prompt tokens in one pass
//! from an empty cache; `tg N`: N tokens decoded one at a time), with the
//! weight bytes read per generated token and the bandwidth that implies.
//! `tg N ×B` decodes B sequences at once in batched passes (after an
//! 8-token prompt each), as the server's engine does, on the CPU (per-
//! sequence caches) or a GPU (a cache slot per sequence, one submission per
//! step); its tokens/s counts every sequence's tokens.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use wginfer::generate::cache::KvDtype;
use wginfer::generate::cpu::{CpuModel, RowMode, SeqTokens};
use wginfer::generate::generator::decoder_on;
use wginfer::generate::gpu::{GpuDecoder, GpuSeq};
use wginfer::generate::{load, synthetic, DecoderWeights, Logits};
use wginfer::linalg::ggml::BlockFormat;
use wginfer::model::gguf::GgufFile;
use wginfer::{AdapterChoice, Device};

/// What `bench` measures on a decoder.
pub struct DecoderBench<'a> {
    /// A GGUF file, or `None` with `synthetic`.
    pub model: Option<&'a Path>,
    /// A named shape with random weights.
    pub synthetic: Option<&'a str>,
    /// The synthetic weights' block format (`q4_0`, `q8_0`, `q4_k`, ..., `f16`).
    pub weights: &'a str,
    /// Devices as given.
    pub devices: &'a [String],
    /// CPU thread counts (0: rayon's default).
    pub threads: &'a [usize],
    /// Prompt tokens (`pp`).
    pub prompt_tokens: usize,
    /// Generated tokens (`tg`).
    pub gen_tokens: usize,
    /// Repetitions of each test.
    pub repetitions: usize,
    /// Sequences decoded at once in the batched tests.
    pub batches: &'a [usize],
}

/// One measured test.
#[derive(Serialize, Debug)]
pub struct DecoderRecord {
    model: String,
    device: String,
    threads: usize,
    test: String,
    tokens_per_s: f64,
    stddev: f64,
    weight_bytes_per_token: usize,
    weight_gb_per_s: f64,
}

fn load_weights(b: &DecoderBench) -> Result<(String, Arc<DecoderWeights>)> {
    if let Some(name) = b.synthetic {
        let format = match b.weights.to_ascii_uppercase().as_str() {
            "F16" => None,
            f => Some(BlockFormat::from_name(f).ok_or_else(|| anyhow!("unknown weight format `{}`", b.weights))?),
        };
        let config = synthetic::preset(name)?;
        let t = Instant::now();
        let w = synthetic::random_weights(config, format, 2026)?;
        eprintln!(
            "built random {name} ({}) weights in {:.1} s",
            b.weights,
            t.elapsed().as_secs_f64()
        );
        return Ok((
            format!("{name} {} (random)", b.weights.to_ascii_uppercase()),
            Arc::new(w),
        ));
    }
    let path = b
        .model
        .ok_or_else(|| anyhow!("give a .gguf model or --synthetic NAME"))?;
    let file = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
    let w = load::from_gguf(&file).with_context(|| format!("loading {}", path.display()))?;
    let name = path
        .file_stem()
        .map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
    Ok((name, Arc::new(w)))
}

/// Weight bytes one decoded token reads: every layer's matrices, the
/// output head, one embedding row.
fn bytes_per_token(w: &DecoderWeights) -> usize {
    let head = w.head().stored_bytes();
    let embed_row = w.embed.stored_bytes() / w.config.vocab.max(1);
    w.stored_bytes() - w.embed.stored_bytes() + embed_row + if w.output.is_none() { head } else { 0 }
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len().max(2) - 1) as f64;
    (m, v.sqrt())
}

fn measure(b: &DecoderBench, w: &Arc<DecoderWeights>, device: &Device) -> Result<Vec<(String, f64, f64)>> {
    let ctx = (b.prompt_tokens + b.gen_tokens).max(1);
    let mut dec = decoder_on(w.clone(), device, ctx)?;
    let vocab = w.config.vocab as u32;
    let prompt: Vec<u32> = (0..b.prompt_tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let mut out = Vec::new();
    // One warm-up pass of each kind (the first decoding pass on the CPU
    // also repacks the weights in panels).
    dec.forward(&prompt[..prompt.len().min(8)], Logits::Last)?;
    dec.truncate(0);
    dec.forward(&[1 % vocab], Logits::Last)?;
    dec.truncate(0);
    if b.prompt_tokens > 0 {
        let mut rates = Vec::new();
        for _ in 0..b.repetitions {
            dec.truncate(0);
            let t = Instant::now();
            dec.forward(&prompt, Logits::Last)?;
            rates.push(b.prompt_tokens as f64 / t.elapsed().as_secs_f64());
        }
        let (m, s) = mean_std(&rates);
        out.push((format!("pp{}", b.prompt_tokens), m, s));
    }
    if b.gen_tokens > 0 {
        let mut rates = Vec::new();
        for _ in 0..b.repetitions {
            dec.truncate(0);
            let t = Instant::now();
            let mut tok = 1 % vocab;
            for _ in 0..b.gen_tokens {
                let logits = dec.forward(&[tok], Logits::Last)?;
                tok = logits
                    .iter()
                    .enumerate()
                    .max_by(|a, c| a.1.total_cmp(c.1))
                    .map_or(0, |(i, _)| i as u32);
            }
            rates.push(b.gen_tokens as f64 / t.elapsed().as_secs_f64());
        }
        let (m, s) = mean_std(&rates);
        out.push((format!("tg{}", b.gen_tokens), m, s));
    }
    Ok(out)
}

/// `gen_tokens` batched steps over `batch` sequences: tokens/s of all.
fn measure_batched(b: &DecoderBench, w: &Arc<DecoderWeights>, batch: usize) -> Result<(String, f64, f64)> {
    let model = CpuModel::new(w.clone(), 8 + b.gen_tokens)?;
    model.pack_panels();
    let vocab = w.config.vocab as u32;
    let mut rates = Vec::new();
    for _ in 0..b.repetitions {
        let mut caches = (0..batch)
            .map(|_| model.new_cache(8 + b.gen_tokens))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, cache) in caches.iter_mut().enumerate() {
            let prompt: Vec<u32> = (0..8u32).map(|j| (j * 7919 + 13 * i as u32) % vocab).collect();
            let mut seq = [SeqTokens {
                cache,
                tokens: &prompt,
                logits: Logits::Last,
            }];
            model.forward(&mut seq, RowMode::Auto)?;
        }
        let mut toks: Vec<u32> = (0..batch as u32).map(|i| (i + 1) % vocab).collect();
        let t = Instant::now();
        for _ in 0..b.gen_tokens {
            let mut seqs: Vec<SeqTokens> = caches
                .iter_mut()
                .zip(&toks)
                .map(|(cache, t)| SeqTokens {
                    cache,
                    tokens: std::slice::from_ref(t),
                    logits: Logits::Last,
                })
                .collect();
            let logits = model.forward(&mut seqs, RowMode::Independent)?;
            toks = logits
                .iter()
                .map(|l| wginfer::generate::sample::argmax(l) as u32)
                .collect();
        }
        rates.push((batch * b.gen_tokens) as f64 / t.elapsed().as_secs_f64());
    }
    let (m, s) = mean_std(&rates);
    Ok((format!("tg{} ×{batch}", b.gen_tokens), m, s))
}

/// As [`measure_batched`] on a GPU: `batch` cache slots, every step one
/// [`GpuDecoder::forward_seqs`] pass over all of them.
fn measure_batched_gpu(
    b: &DecoderBench,
    w: &Arc<DecoderWeights>,
    choice: &AdapterChoice,
    batch: usize,
) -> Result<(String, f64, f64)> {
    let ctx = 8 + b.gen_tokens;
    let mut dec = GpuDecoder::with_slots(w, ctx, choice, KvDtype::F32, batch)?;
    let vocab = w.config.vocab as u32;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|i| (0..8u32).map(|j| (j * 7919 + 13 * i as u32) % vocab).collect())
        .collect();
    let mut rates = Vec::new();
    for _ in 0..b.repetitions {
        let first: Vec<GpuSeq> = prompts
            .iter()
            .enumerate()
            .map(|(slot, p)| GpuSeq {
                slot,
                pos0: 0,
                tokens: p,
                logits: Logits::Last,
            })
            .collect();
        dec.forward_seqs(&first)?;
        let mut toks: Vec<u32> = (0..batch as u32).map(|i| (i + 1) % vocab).collect();
        let t = Instant::now();
        for step in 0..b.gen_tokens {
            let seqs: Vec<GpuSeq> = toks
                .iter()
                .enumerate()
                .map(|(slot, t)| GpuSeq {
                    slot,
                    pos0: 8 + step,
                    tokens: std::slice::from_ref(t),
                    logits: Logits::Last,
                })
                .collect();
            let logits = dec.forward_seqs(&seqs)?;
            toks = logits
                .iter()
                .map(|l| wginfer::generate::sample::argmax(l) as u32)
                .collect();
        }
        rates.push((batch * b.gen_tokens) as f64 / t.elapsed().as_secs_f64());
    }
    let (m, s) = mean_std(&rates);
    Ok((format!("tg{} ×{batch}", b.gen_tokens), m, s))
}

/// Runs the decoder benchmark and prints a llama-bench style table.
pub fn run(b: &DecoderBench, json: Option<&Path>) -> Result<()> {
    let (name, w) = load_weights(b)?;
    let per_token = bytes_per_token(&w);
    println!("| model | device | threads | test | tokens/s | weight GB/s |");
    println!("|---|---|---:|---|---:|---:|");
    let mut records = Vec::new();
    for dev in b.devices {
        let device: Device = dev.parse().map_err(|e: String| anyhow!(e))?;
        let cpu = matches!(device, Device::Cpu | Device::CpuReference);
        let threads: Vec<usize> = if cpu { b.threads.to_vec() } else { vec![0] };
        for &t in &threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
            let mut results = pool.install(|| measure(b, &w, &device))?;
            if b.gen_tokens > 0 {
                for &batch in b.batches.iter().filter(|&&n| n > 0) {
                    let r = match &device {
                        Device::Gpu(choice) => measure_batched_gpu(b, &w, choice, batch),
                        _ => pool.install(|| measure_batched(b, &w, batch)),
                    };
                    results.push(r?);
                }
            }
            let shown = if t == 0 { pool.current_num_threads() } else { t };
            for (test, m, s) in results {
                let seqs = test
                    .split('×')
                    .nth(1)
                    .and_then(|n| n.parse::<f64>().ok())
                    .unwrap_or(1.0);
                let gbs = if test.starts_with("tg") {
                    m / seqs * per_token as f64 / 1e9
                } else {
                    0.0
                };
                println!(
                    "| {name} | {dev} | {shown} | {test} | {m:.1} ± {s:.1} | {} |",
                    if gbs > 0.0 { format!("{gbs:.2}") } else { "-".into() }
                );
                records.push(DecoderRecord {
                    model: name.clone(),
                    device: dev.clone(),
                    threads: shown,
                    test,
                    tokens_per_s: m,
                    stddev: s,
                    weight_bytes_per_token: per_token,
                    weight_gb_per_s: gbs,
                });
            }
        }
    }
    println!("weights read per generated token: {:.1} MB", per_token as f64 / 1e6);
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&records)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
