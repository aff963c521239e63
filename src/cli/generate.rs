//! `wginfer generate MODEL --prompt TEXT`: streams generated text from a
//! decoder (GGUF), ending with prompt and generation tokens/s; `--json`
//! prints one object with ids, text and optional log-probabilities.
//! `wginfer chat MODEL`: an interactive chat with the model's template.
//! `wginfer perplexity MODEL --text FILE`: perplexity over a text file.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use wginfer::generate::cache::KvDtype;
use wginfer::generate::chat::ChatMessage;
use wginfer::generate::generator::{decoder_with_kv, DEFAULT_CONTEXT};
use wginfer::generate::sample::{log_softmax, top_logprobs, SamplingOptions};
use wginfer::generate::{GenerateOptions, Generator, Logits, ModelParts};
use wginfer::Device;

/// Sampling and length options shared by `generate` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct SampleArgs {
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens whose probabilities sum to P.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalty for tokens among the last `--repeat-last-n` (1: none).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A string that ends generation (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Positions of the KV cache (default: the model's context, at most 4096).
    #[arg(long)]
    context: Option<usize>,
    /// How the KV cache stores keys and values: f32, or f16 (half the
    /// memory).
    #[arg(long, default_value = "f32")]
    kv_cache: KvDtype,
}

impl SampleArgs {
    fn options(&self, top_logprobs: Option<usize>) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: SamplingOptions {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                seed: self.seed,
            },
            stop: self.stop.clone(),
            top_logprobs,
            stop_at_eos: true,
        }
    }
}

/// Arguments of `generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model (.gguf).
    model: PathBuf,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_ids", required_unless_present = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object (prompt_tokens, tokens, text, logprobs) at the end.
    #[arg(long)]
    json: bool,
    /// With --json: the K most likely tokens at every position.
    #[arg(long)]
    top_logprobs: Option<usize>,
    /// With --json: also score the prompt's own positions (teacher forcing;
    /// with --max-tokens 0 this scores a given text).
    #[arg(long)]
    echo: bool,
    #[command(flatten)]
    sample: SampleArgs,
}

fn load(model: &Path, device: &Device, context: Option<usize>, kv: KvDtype) -> Result<Generator> {
    let t = Instant::now();
    let g = ModelParts::load(model)
        .and_then(|p| {
            let ctx = context.unwrap_or(p.weights.config.trained_context.min(DEFAULT_CONTEXT));
            let decoder = decoder_with_kv(p.weights, device, ctx, kv)?;
            Ok(Generator::from_parts(decoder, p.tokenizer, p.template))
        })
        .with_context(|| format!("loading {}", model.display()))?;
    eprintln!("loaded {} in {:.2} s", model.display(), t.elapsed().as_secs_f64());
    Ok(g)
}

/// Per-position scores of the prompt itself: entry `i` scores token `i + 1`.
fn echo_logprobs(g: &mut Generator, ids: &[u32], k: usize) -> Result<Vec<serde_json::Value>> {
    let decoder = g.decoder();
    decoder.truncate(0);
    let logits = decoder.forward(ids, Logits::All)?;
    let vocab = decoder.config().vocab;
    decoder.truncate(0);
    let mut out = Vec::new();
    for (row, &next) in logits.chunks_exact(vocab).zip(ids.iter().skip(1)) {
        let lp = log_softmax(row);
        out.push(position_json(
            g,
            next,
            lp.get(next as usize).copied(),
            &top_logprobs(&lp, k),
        ));
    }
    Ok(out)
}

fn position_json(
    g: &Generator,
    id: u32,
    logprob: Option<f32>,
    top: &[wginfer::generate::sample::TokenLogprob],
) -> serde_json::Value {
    let text = |id: u32| g.tokenizer().decode(&[id]).unwrap_or_default();
    json!({
        "token": id, "text": text(id), "logprob": logprob,
        "top": top.iter().map(|t| json!({"token": t.id, "text": text(t.id), "logprob": t.logprob})).collect::<Vec<_>>(),
    })
}

pub fn run(args: &Args, device: Device) -> Result<()> {
    let mut g = load(&args.model, &device, args.sample.context, args.sample.kv_cache)?;
    let ids = match (&args.prompt, &args.prompt_ids) {
        (_, Some(ids)) => ids.clone(),
        (Some(p), None) if args.chat => {
            let text = g.chat_prompt(&[ChatMessage {
                role: "user".into(),
                content: p.clone(),
            }])?;
            g.tokenizer().encode(&text, false)?
        }
        (Some(p), None) => g.encode(p)?,
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    let k = args.top_logprobs.unwrap_or(0);
    let mut logprobs = if args.json && args.echo {
        echo_logprobs(&mut g, &ids, k)?
    } else {
        Vec::new()
    };
    // With --echo the JSON scores the generated tokens as well.
    let opts = args.sample.options(args.top_logprobs.or(args.echo.then_some(0)));
    let start = Instant::now();
    let mut gen = g.generate_ids(&ids, &opts)?;
    let prompt_s = start.elapsed().as_secs_f64();
    let (mut tokens, mut text, mut steps) = (Vec::new(), String::new(), Vec::new());
    let mut out = std::io::stdout().lock();
    for t in gen.by_ref() {
        let t = t?;
        if !args.json {
            write!(out, "{}", t.text)?;
            out.flush()?;
        }
        tokens.push(t.id);
        text.push_str(&t.text);
        steps.push((t.id, t.logprob, t.top));
    }
    let tail = gen.flush();
    let finish = gen.finish_reason();
    drop(gen);
    text.push_str(&tail);
    let gen_s = start.elapsed().as_secs_f64() - prompt_s;
    if args.json {
        for (id, lp, top) in &steps {
            logprobs.push(position_json(&g, *id, *lp, top));
        }
        let mut obj = json!({
            "prompt_tokens": ids, "tokens": tokens, "text": text,
            "finish_reason": match finish { Some(wginfer::generate::FinishReason::Length) => "length", _ => "stop" },
        });
        if args.top_logprobs.is_some() || args.echo {
            obj["logprobs"] = json!(logprobs);
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&obj)?)?;
    } else {
        writeln!(out, "{tail}")?;
    }
    eprintln!(
        "prompt {} tokens in {:.3} s ({:.1} tok/s); generated {} tokens in {:.3} s ({:.1} tok/s)",
        ids.len(),
        prompt_s,
        ids.len() as f64 / prompt_s.max(1e-9),
        tokens.len(),
        gen_s,
        tokens.len().saturating_sub(1) as f64 / gen_s.max(1e-9),
    );
    Ok(())
}

/// Arguments of `chat`.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// The model (.gguf).
    model: PathBuf,
    /// A system message that starts the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sample: SampleArgs,
}

/// An interactive chat on standard input/output; an empty line or EOF ends it.
pub fn chat(args: &ChatArgs, device: Device) -> Result<()> {
    let mut g = load(&args.model, &device, args.sample.context, args.sample.kv_cache)?;
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(ChatMessage {
            role: "system".into(),
            content: s.clone(),
        });
    }
    let opts = args.sample.options(None);
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: line.trim_end().to_string(),
        });
        let prompt = g.chat_prompt(&messages)?;
        let ids = g.tokenizer().encode(&prompt, false)?;
        let mut reply = String::new();
        let mut gen = g.generate_ids(&ids, &opts)?;
        for t in gen.by_ref() {
            let t = t?;
            write!(out, "{}", t.text)?;
            out.flush()?;
            reply.push_str(&t.text);
        }
        reply.push_str(&gen.flush());
        writeln!(out)?;
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: reply,
        });
    }
}

/// Arguments of `perplexity`.
#[derive(clap::Args, Debug)]
pub struct PerplexityArgs {
    /// The model (.gguf).
    model: PathBuf,
    /// The text file to score.
    #[arg(long)]
    text: PathBuf,
    /// Tokens per chunk; each chunk is scored from a fresh cache, BOS first
    /// when the tokenizer adds BOS, and only its second half counts (as
    /// llama.cpp's perplexity tool does).
    #[arg(long, default_value_t = 512)]
    chunk: usize,
    /// Chunks to score at most (0: all).
    #[arg(long, default_value_t = 0)]
    chunks: usize,
}

/// Perplexity of a text by llama.cpp's protocol ([`Generator::perplexity`]).
pub fn perplexity(args: &PerplexityArgs, device: Device) -> Result<()> {
    let mut g = load(&args.model, &device, Some(args.chunk), KvDtype::F32)?;
    let text = std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    let ids = g.tokenizer().encode(&text, false)?;
    let start = Instant::now();
    let max_chunks = (args.chunks > 0).then_some(args.chunks);
    let p = g.perplexity(&ids, args.chunk, max_chunks, |i, ppl| println!("[{i}] {ppl:.4}"))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "perplexity {:.4} over {} chunks of {} tokens ({} scored); {:.1} tok/s",
        p.perplexity,
        p.chunks,
        args.chunk,
        p.scored,
        (p.chunks * args.chunk) as f64 / secs.max(1e-9)
    );
    Ok(())
}
