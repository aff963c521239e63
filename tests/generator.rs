//! `Generator` and the `generate` / `inspect` commands on SmolLM2-135M
//! (WGINFER_SMOLLM2_GGUF; SKIPPED without it): greedy text against the numpy
//! reference's greedy continuation, stop strings, EOS and length limits,
//! seeded sampling, prefix reuse, the command's JSON.

mod common;

use std::process::Command;

use wginfer::generate::chat::ChatMessage;
use wginfer::generate::sample::SamplingOptions;
use wginfer::generate::{FinishReason, GenerateOptions, Generator};
use wginfer::Device;

fn smollm2() -> Option<String> {
    match std::env::var("WGINFER_SMOLLM2_GGUF") {
        Ok(p) => Some(p),
        Err(_) => {
            common::skip_or_fail(
                "WGINFER_REQUIRE_SMOLLM2",
                "WGINFER_SMOLLM2_GGUF is not set (.ci/run sets it)",
            );
            None
        }
    }
}

/// The chat prompt of models/smollm2/prompts.json, whose greedy continuation
/// under the numpy reference (`reference.py --generate`) is this answer.
const QUESTION: &str = "What is the capital of France? Answer in one short sentence.";
const ANSWER: &str = "The capital of France is Paris.";

fn run(g: &mut Generator, ids: &[u32], opts: &GenerateOptions) -> (String, Vec<u32>, Option<FinishReason>) {
    let mut gen = g.generate_ids(ids, opts).expect("starts");
    let (mut text, mut tokens) = (String::new(), Vec::new());
    for t in gen.by_ref() {
        let t = t.expect("token");
        text.push_str(&t.text);
        tokens.push(t.id);
    }
    text.push_str(&gen.flush());
    (text, tokens, gen.finish_reason())
}

#[test]
fn greedy_answers_stop_strings_limits_and_seeds() {
    let Some(path) = smollm2() else { return };
    let mut g = Generator::load(&path, &Device::Cpu, Some(256)).expect("loads");
    let prompt = g
        .chat_prompt(&[
            ChatMessage::new(
                "system",
                "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            ),
            ChatMessage::new("user", QUESTION),
        ])
        .expect("template");
    let ids = g.tokenizer().encode(&prompt, false).expect("encodes");
    assert_eq!(ids.len(), 43, "the chat case of prompts.json has 43 tokens");

    let greedy = GenerateOptions {
        max_tokens: 32,
        ..Default::default()
    };
    let (text, tokens, finish) = run(&mut g, &ids, &greedy);
    assert_eq!(text, ANSWER);
    assert_eq!(finish, Some(FinishReason::Stop), "ends at <|im_end|>");
    assert_eq!(tokens.last(), Some(&2), "the last token is EOS (<|im_end|> = 2)");

    let stop = GenerateOptions {
        stop: vec!["Paris".into()],
        ..greedy.clone()
    };
    let (text, _, finish) = run(&mut g, &ids, &stop);
    assert_eq!(
        (text.as_str(), finish),
        ("The capital of France is ", Some(FinishReason::Stop))
    );

    let short = GenerateOptions {
        max_tokens: 3,
        ..greedy.clone()
    };
    let (text, tokens, finish) = run(&mut g, &ids, &short);
    assert_eq!((tokens.len(), finish), (3, Some(FinishReason::Length)));
    assert!(ANSWER.starts_with(&text), "{text:?}");

    let sampled = |seed| GenerateOptions {
        max_tokens: 12,
        sampling: SamplingOptions {
            temperature: 1.0,
            top_p: 0.95,
            seed,
            ..Default::default()
        },
        stop_at_eos: false,
        ..Default::default()
    };
    let a = run(&mut g, &ids, &sampled(1)).1;
    let b = run(&mut g, &ids, &sampled(1)).1;
    assert_eq!(a, b, "the same seed gives the same tokens");
    let others: Vec<Vec<u32>> = (2..6).map(|s| run(&mut g, &ids, &sampled(s)).1).collect();
    assert!(others.iter().any(|o| *o != a), "different seeds give different text");
}

#[test]
fn a_shared_prefix_is_reused_and_gives_the_same_tokens() {
    let Some(path) = smollm2() else { return };
    let mut g = Generator::load(&path, &Device::Cpu, Some(128)).expect("loads");
    let first = g.encode("The Eiffel Tower is in").expect("encodes");
    let second = g
        .encode("The Eiffel Tower is in Paris, and the Colosseum is in")
        .expect("encodes");
    let opts = GenerateOptions {
        max_tokens: 4,
        stop_at_eos: false,
        ..Default::default()
    };
    run(&mut g, &first, &opts);
    let reused = run(&mut g, &second, &opts).1;
    let mut fresh = Generator::load(&path, &Device::Cpu, Some(128)).expect("loads");
    assert_eq!(reused, run(&mut fresh, &second, &opts).1);
    let e = g.generate_ids(&vec![1; 200], &opts).err().expect("past the context");
    assert!(e.to_string().contains("do not fit the context of 128"), "{e}");
}

fn wginfer(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wginfer"))
        .args(args)
        .env_remove("WGINFER_DEVICE")
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_json_and_inspect_commands() {
    let Some(path) = smollm2() else { return };
    let (ok, out, err) = wginfer(&[
        "generate",
        &path,
        "--prompt",
        QUESTION,
        "--chat",
        "--json",
        "--top-logprobs",
        "2",
        "--max-tokens",
        "16",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["finish_reason"], "stop");
    let tokens = v["tokens"].as_array().expect("tokens");
    let logprobs = v["logprobs"].as_array().expect("logprobs");
    assert_eq!(tokens.len(), logprobs.len());
    for lp in logprobs {
        let top = lp["top"].as_array().expect("top");
        assert_eq!(top.len(), 2);
        assert!(lp["logprob"].as_f64().expect("lp") <= 0.0);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
    }
    assert!(err.contains("tok/s"), "{err}");

    let (ok, out, err) = wginfer(&["generate", &path, "--prompt-ids", "1,2,999999", "--max-tokens", "1"]);
    assert!(
        !ok && err.contains("token id 999999 is outside the vocabulary of 49152"),
        "{out}{err}"
    );

    let (ok, out, err) = wginfer(&["inspect", &path]);
    assert!(ok, "{err}");
    assert!(
        out.contains("decoder llama · 30 layers · d 576 · heads 9/3 kv"),
        "{out}"
    );
    assert!(out.contains("Q4_1") && out.contains("tokenizer.ggml.tokens"), "{out}");
}

#[test]
fn an_f16_kv_cache_gives_the_reference_answer() {
    let Some(path) = smollm2() else { return };
    let (ok, out, err) = wginfer(&[
        "generate",
        &path,
        "--prompt",
        QUESTION,
        "--chat",
        "--json",
        "--kv-cache",
        "f16",
        "--max-tokens",
        "16",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["text"], ANSWER);
    let (ok, _, err) = wginfer(&["generate", &path, "--prompt", "hi", "--kv-cache", "q8"]);
    assert!(!ok && err.contains("f32 or f16"), "{err}");
}

/// `Generator::perplexity` against the numpy reference's teacher-forced
/// logits (WGINFER_DECODER_REF, written by .ci/run): one chunk covering a
/// case scores positions `chunk / 2 + 1 ..` as llama-perplexity does, each
/// chunk starts from an empty cache, and bad chunk sizes are typed errors.
#[test]
fn perplexity_follows_llama_cpp_protocol_on_the_reference_logits() {
    let Some(path) = smollm2() else { return };
    let Some(dir) = std::env::var_os("WGINFER_DECODER_REF") else {
        common::skip_or_fail(
            "WGINFER_REQUIRE_DECODER_REF",
            "WGINFER_DECODER_REF is not set (.ci/run sets it)",
        );
        return;
    };
    let case = std::path::Path::new(&dir).join("prose.json");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&case).expect("case json")).expect("json");
    let ids: Vec<u32> = meta["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect();
    let logits =
        wginfer::tensor::read_npy(&std::fs::read(case.with_extension("logits.npy")).expect("npy")).expect("npy");
    let logits = logits.as_f32().expect("f32 logits");
    let mut g = Generator::load(&path, &Device::Cpu, Some(ids.len())).expect("loads");
    assert!(!g.tokenizer().adds_bos(), "SmolLM2's GGUF does not ask for BOS");
    let vocab = logits.len() / ids.len();
    let chunk = ids.len();
    let (mut nll, mut n) = (0f64, 0usize);
    for j in chunk / 2..chunk - 1 {
        let row = &logits[j * vocab..(j + 1) * vocab];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
        let lse = max + row.iter().map(|&x| (f64::from(x) - max).exp()).sum::<f64>().ln();
        nll += lse - f64::from(row[ids[j + 1] as usize]);
        n += 1;
    }
    let want = (nll / n as f64).exp();
    // The same case twice: two chunks, each from an empty cache, score alike.
    let twice: Vec<u32> = ids.iter().chain(ids.iter()).copied().collect();
    let mut seen = Vec::new();
    let got = g
        .perplexity(&twice, chunk, None, |i, p| seen.push((i, p)))
        .expect("perplexity");
    println!(
        "perplexity {:.6} (reference {want:.6}) over {} tokens",
        got.perplexity, got.scored
    );
    assert_eq!((got.chunks, got.scored), (2, 2 * (chunk - chunk / 2 - 1)));
    assert!(
        (got.perplexity / want - 1.0).abs() < 2e-3,
        "{} vs {want}",
        got.perplexity
    );
    assert_eq!(seen.len(), 2);
    assert!((seen[0].1 / seen[1].1 - 1.0).abs() < 1e-9, "{seen:?}");
    let one = g.perplexity(&twice, chunk, Some(1), |_, _| {}).expect("one chunk");
    assert_eq!(one.chunks, 1);
    for (bad_chunk, needle) in [(3, "too short"), (chunk * 3, "fewer than one chunk")] {
        let err = g
            .perplexity(&twice, bad_chunk, None, |_, _| {})
            .expect_err("refused")
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}
