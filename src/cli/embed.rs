//! `wginfer embed MODEL "text" ... [--similarity] [--json]`: sentence
//! embeddings from a BERT model directory, a wginfer model file (e.g. a
//! quantized one) or an ONNX export, with the tokenizer from the directory,
//! from `tokenizer.json` beside the file, or from `--tokenizer`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use wginfer::{Device, Embedder};

/// Arguments of `embed`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model directory (config.json, model.safetensors, tokenizer.json), a
    /// wginfer model file or an .onnx export.
    model: PathBuf,
    /// The texts to embed (`-` reads one text per line from standard input).
    #[arg(required = true)]
    texts: Vec<String>,
    /// tokenizer.json, or a model directory holding it (and
    /// sentence_bert_config.json); default: the model directory, or
    /// tokenizer.json beside a model file.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Print the pairwise cosine-similarity matrix instead of the vectors.
    #[arg(long)]
    similarity: bool,
    /// Print JSON: every vector in full (and the matrix with --similarity).
    #[arg(long)]
    json: bool,
    /// Values of each vector to print (without --json).
    #[arg(long, default_value_t = 8)]
    show: usize,
    /// Texts per model run.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Time N more runs after the first (tokenization included) and print
    /// `latency p50 … ms, min … ms` to standard error.
    #[arg(long, default_value_t = 0)]
    repeat: usize,
}

pub fn run(args: &Args, device: Device) -> Result<()> {
    let mut texts = Vec::new();
    for t in &args.texts {
        if t == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading texts from standard input")?;
            texts.extend(s.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
        } else {
            texts.push(t.clone());
        }
    }
    if texts.is_empty() {
        bail!("no texts to embed");
    }
    let embedder = Embedder::load_with_tokenizer(&args.model, args.tokenizer.as_deref(), device)
        .with_context(|| format!("loading {}", args.model.display()))?
        .with_batch_size(args.batch_size);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let start = Instant::now();
    let out = embedder.embed(&refs)?;
    let elapsed = start.elapsed();
    if args.repeat > 0 {
        let mut times = Vec::with_capacity(args.repeat);
        for _ in 0..args.repeat {
            let t = Instant::now();
            embedder.embed(&refs)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "latency p50 {:.3} ms, min {:.3} ms over {} runs ({} tokens per text max)",
            times[times.len() / 2],
            times[0],
            times.len(),
            out.token_counts.iter().max().copied().unwrap_or(0)
        );
    }
    let dim = out.vectors.first().map_or(0, Vec::len);
    if args.json {
        let data: Vec<serde_json::Value> = texts
            .iter()
            .zip(&out.vectors)
            .zip(&out.token_counts)
            .map(|((t, v), n)| serde_json::json!({"text": t, "tokens": n, "embedding": v}))
            .collect();
        let mut doc = serde_json::json!({
            "model": args.model.display().to_string(),
            "backend": embedder.session().backend(),
            "dim": dim,
            "data": data,
        });
        if args.similarity {
            doc["similarity"] = serde_json::json!(out.similarity());
        }
        println!("{}", serde_json::to_string(&doc)?);
        return Ok(());
    }
    eprintln!(
        "{} texts, {} dims, on {} in {:.1} ms (truncation at {} tokens)",
        texts.len(),
        dim,
        embedder.session().backend(),
        elapsed.as_secs_f64() * 1e3,
        embedder.max_tokens()
    );
    let label = |t: &str| {
        let mut s: String = t.chars().take(40).collect();
        if t.chars().count() > 40 {
            s.push('…');
        }
        s
    };
    if args.similarity {
        for (i, t) in texts.iter().enumerate() {
            println!("[{i}] {}", label(t));
        }
        print!("{:>5}", "");
        for j in 0..texts.len() {
            print!(" {:>7}", format!("[{j}]"));
        }
        println!();
        for (i, row) in out.similarity().iter().enumerate() {
            print!("{:>5}", format!("[{i}]"));
            for c in row {
                print!(" {c:>7.4}");
            }
            println!();
        }
        return Ok(());
    }
    for (i, ((t, v), n)) in texts.iter().zip(&out.vectors).zip(&out.token_counts).enumerate() {
        let shown: Vec<String> = v.iter().take(args.show).map(|x| format!("{x:.5}")).collect();
        let more = if v.len() > args.show { ", …" } else { "" };
        println!("[{i}] {:?} ({n} tokens): [{}{more}]", label(t), shown.join(", "));
    }
    Ok(())
}
