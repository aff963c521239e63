//! The generative-model engine of the server on SmolLM2-135M
//! (WGINFER_SMOLLM2_GGUF; SKIPPED without it): a `.gguf` version in a model
//! repository, concurrent greedy requests against the library's
//! `Generator` run alone (batch invariance), prompt log-probabilities
//! against `Generator::score`, cancellation, the KV budget and the queue
//! bound, the prefix cache (same tokens with and without it), and the
//! metrics.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wginfer::generate::sample::SamplingOptions;
use wginfer::generate::{FinishReason, GenerateOptions, Generator};
use wginfer::serve::llm::{LlmEngine, LlmEvent, LlmRequest};
use wginfer::serve::{Metrics, Repository, ServeError};
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

/// A repository holding the model as `<repo>/smol/1/model.gguf` with these
/// `parameters`; returns it loaded, with its metrics.
async fn repo_with(gguf: &str, dir: &Path, parameters: &str, queue: usize) -> (Repository, Arc<Metrics>) {
    let v = dir.join("smol/1");
    std::fs::create_dir_all(&v).expect("mkdir");
    std::fs::copy(gguf, v.join("model.gguf")).expect("copy the model");
    let config = format!(r#"{{"parameters": {parameters}, "default_queue_policy": {{"max_queue_size": {queue}}}}}"#);
    std::fs::write(dir.join("smol/config.json"), config).expect("config");
    let metrics = Arc::new(Metrics::default());
    let repo = Repository::new(dir.to_path_buf(), Device::Cpu, None, metrics.clone());
    repo.load("smol").await.expect("loads");
    (repo, metrics)
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> LlmRequest {
    LlmRequest {
        prompt,
        max_tokens,
        sampling: SamplingOptions {
            temperature: 0.0,
            ..SamplingOptions::default()
        },
        stop: Vec::new(),
        stop_at_eos: true,
        logprobs: None,
        prompt_logprobs: None,
    }
}

/// Each prompt's ids and its greedy tokens from the library's `Generator`,
/// nothing else running.
fn alone_greedy(lib: &mut Generator, prompts: &[&str], max_tokens: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    let opts = GenerateOptions {
        max_tokens,
        sampling: greedy(Vec::new(), 0).sampling,
        ..GenerateOptions::default()
    };
    prompts
        .iter()
        .map(|p| {
            let ids = lib.encode(p).expect("encode");
            let toks = lib
                .generate_ids(&ids, &opts)
                .expect("starts")
                .map(|t| t.expect("token").id)
                .collect();
            (ids, toks)
        })
        .collect()
}

/// The metrics once the engine has settled, checked idle: no sequence
/// running or waiting, no KV budget reserved.
async fn settled_metrics(metrics: &Metrics) -> String {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = metrics.render();
    for gauge in [
        "wginfer_num_requests_running{model=\"smol\",version=\"1\"} 0\n",
        "wginfer_num_requests_waiting{model=\"smol\",version=\"1\"} 0\n",
        "wginfer_kv_cache_usage_ratio{model=\"smol\",version=\"1\"} 0\n",
    ] {
        assert!(m.contains(gauge), "not idle: no `{}` in\n{m}", gauge.trim_end());
    }
    m
}

/// Every event of a request: token ids, text, and how it ended.
async fn collect(engine: &LlmEngine, req: LlmRequest) -> (Vec<u32>, String, FinishReason) {
    let mut s = engine.submit(req).expect("queued");
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(e) = s.recv().await {
        match e {
            LlmEvent::Token(t) => {
                ids.push(t.id);
                text.push_str(&t.text);
            }
            LlmEvent::Done(d) => {
                text.push_str(&d.text_tail);
                assert_eq!(d.completion_tokens, ids.len());
                return (ids, text, d.reason);
            }
            LlmEvent::Prompt(_) => {}
            LlmEvent::Error(e) => panic!("the request failed: {e}"),
        }
    }
    panic!("the stream ended without Done");
}

const PROMPTS: [&str; 6] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at",
    "A haiku about the sea:",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_greedy_requests_equal_the_library_alone() {
    let Some(gguf) = smollm2() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // Prompts in chunks of 4 within 10 tokens a step: several steps run
    // a mix of prompt chunks and decoding tokens, and some chunks wait.
    let (repo, metrics) = repo_with(
        &gguf,
        dir.path(),
        r#"{"max_num_seqs": 8, "context_length": 512, "prefill_chunk": 4, "max_batched_tokens": 10}"#,
        64,
    )
    .await;
    let engine = repo.llm("smol", None).expect("generative");
    let max_tokens = 12;
    let mut lib = Generator::load(&gguf, &Device::Cpu, Some(512)).expect("generator");
    let want = alone_greedy(&mut lib, &PROMPTS, max_tokens);
    let runs = want.iter().map(|(ids, _)| {
        let engine = engine.clone();
        let req = greedy(ids.clone(), max_tokens);
        tokio::spawn(async move { collect(&engine, req).await })
    });
    let got: Vec<_> = futures_join(runs.collect()).await;
    for ((_, toks), (ids, text, _)) in want.iter().zip(&got) {
        assert_eq!(
            ids, toks,
            "batched greedy tokens differ from the library's for {text:?}"
        );
        assert_eq!(*text, lib.tokenizer().decode(toks).expect("decode"));
    }
    let m = metrics.render();
    assert!(
        m.contains("wginfer_time_to_first_token_seconds_count{model=\"smol\",version=\"1\"} 6"),
        "{m}"
    );
    let generated: usize = got.iter().map(|(ids, ..)| ids.len()).sum();
    assert!(
        m.contains(&format!(
            "wginfer_generation_tokens_total{{model=\"smol\",version=\"1\"}} {generated}"
        )),
        "{m}"
    );
    assert_eq!(repo.llm_names(), vec!["smol".to_string()]);
    let err = repo.get("smol", None).unwrap_err();
    assert!(err.to_string().contains("/v1/chat/completions"), "{err}");
}

async fn futures_join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_logprobs_equal_the_library_scores() {
    let Some(gguf) = smollm2() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // A chunk of 5 tokens: the prompt runs in several steps.
    let (repo, _) = repo_with(&gguf, dir.path(), r#"{"context_length": 256, "prefill_chunk": 5}"#, 8).await;
    let engine = repo.llm("smol", None).expect("generative");
    let mut lib = Generator::load(&gguf, &Device::Cpu, Some(256)).expect("generator");
    let ids = lib
        .encode("The quick brown fox jumps over the lazy dog.")
        .expect("encode");
    let scores = lib.score(&ids).expect("score");
    let mut req = greedy(ids.clone(), 0);
    req.prompt_logprobs = Some(3);
    let mut s = engine.submit(req).expect("queued");
    let Some(LlmEvent::Prompt(lp)) = s.recv().await else {
        panic!("no prompt log-probabilities first")
    };
    assert_eq!(lp.len(), ids.len());
    assert_eq!(lp[0].logprob, None);
    // The engine's rows run with 16-bit activation blocks, the library's
    // single pass with f32 GEMM: log-probabilities agree to ~1e-2.
    let mut sum = 0.0;
    for (i, (p, want)) in lp[1..].iter().zip(&scores).enumerate() {
        assert_eq!(p.id, ids[i + 1]);
        let got = p.logprob.expect("a log-probability");
        assert!((got - want).abs() < 2e-2, "position {}: {got} vs {want}", i + 1);
        sum += (got - want).abs();
        assert_eq!(p.top.len(), 3);
        assert!(p.top[0].logprob >= got - 1e-6);
    }
    let mean = sum / scores.len() as f32;
    assert!(mean < 5e-3, "mean difference {mean}");
    match s.recv().await {
        Some(LlmEvent::Done(d)) => {
            assert_eq!(
                (d.reason, d.completion_tokens, d.prompt_tokens),
                (FinishReason::Length, 0, ids.len())
            )
        }
        other => panic!("expected Done, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_finished_sequences_free_the_budget_and_the_queue_is_bounded() {
    let Some(gguf) = smollm2() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // One sequence at a time, one waiting at most; a budget of 7 MiB holds
    // about 150 positions of SmolLM2 (46 KiB each).
    let (repo, metrics) = repo_with(
        &gguf,
        dir.path(),
        r#"{"max_num_seqs": 1, "context_length": 256, "kv_cache_mib": 7}"#,
        1,
    )
    .await;
    let engine = repo.llm("smol", None).expect("generative");
    let ids = engine.encode("Tell me a long story about a dragon.").expect("encode");
    // Past the budget: refused at once.
    let err = engine.submit(greedy(ids.clone(), 200)).unwrap_err();
    assert!(
        matches!(err, ServeError::BadRequest(_)) && err.to_string().contains("kv_cache_mib"),
        "{err}"
    );
    let mut long = greedy(ids.clone(), 100);
    long.stop_at_eos = false;
    let mut a = engine.submit(long.clone()).expect("a runs");
    let mut tokens = 0;
    while tokens < 2 {
        if let Some(LlmEvent::Token(_)) = a.recv().await {
            tokens += 1;
        }
    }
    let b = engine.submit(long.clone()).expect("b waits");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = engine.submit(long.clone());
    assert!(
        matches!(c, Err(ServeError::Unavailable(_))),
        "a third request must get 503: {c:?}"
    );
    // Cancel the running one and the waiting one.
    drop(a);
    drop(b);
    // Both leave at the engine's next step (waited for by the gauges, not
    // by a fixed time: a step's length depends on the machine's load).
    let idle = [
        "wginfer_num_requests_running{model=\"smol\",version=\"1\"} 0\n",
        "wginfer_num_requests_waiting{model=\"smol\",version=\"1\"} 0\n",
    ];
    let start = std::time::Instant::now();
    while !idle.iter().all(|g| metrics.render().contains(g)) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the cancelled requests are still counted:\n{}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next request runs to its end with the whole budget.
    let (ids2, _, reason) = collect(&engine, {
        let mut r = greedy(ids.clone(), 5);
        r.stop_at_eos = false;
        r
    })
    .await;
    assert_eq!((ids2.len(), reason), (5, FinishReason::Length));
    let m = settled_metrics(&metrics).await;
    let generated: u64 = m
        .lines()
        .find(|l| l.starts_with("wginfer_generation_tokens_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("generated counter");
    assert!(
        generated < 20,
        "the cancelled sequences kept running: {generated} tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_settings_are_clear_errors() {
    let Some(gguf) = smollm2() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, _) = repo_with(&gguf, dir.path(), r#"{"context_length": 64}"#, 8).await;
    let engine = repo.llm("smol", None).expect("generative");
    let e = engine.submit(greedy(vec![1; 60], 10)).unwrap_err().to_string();
    assert!(e.contains("past the context of 64"), "{e}");
    let e = engine.submit(greedy(vec![], 10)).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let e = engine.submit(greedy(vec![1, 999_999], 10)).unwrap_err().to_string();
    assert!(e.contains("999999"), "{e}");
    let mut r = greedy(vec![1, 2], 3);
    r.sampling.top_p = 2.0;
    assert!(engine.submit(r).is_err());
    assert!(repo.llm("nope", None).is_err());
    // Shutting down: no new request is admitted.
    repo.stop_generating();
    let e = engine.submit(greedy(vec![1, 2], 3)).unwrap_err();
    assert!(matches!(e, ServeError::Unavailable(_)), "{e}");
    // A bad parameter fails the load and names the field.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let v = dir2.path().join("smol/1");
    std::fs::create_dir_all(&v).expect("mkdir");
    std::fs::copy(&gguf, v.join("model.gguf")).expect("copy");
    std::fs::write(
        dir2.path().join("smol/config.json"),
        r#"{"parameters": {"max_num_seqs": "many"}}"#,
    )
    .expect("config");
    let repo2 = Repository::new(
        dir2.path().to_path_buf(),
        Device::Cpu,
        None,
        Arc::new(Metrics::default()),
    );
    let e = repo2.load("smol").await.unwrap_err().to_string();
    assert!(e.contains("max_num_seqs"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hugging_face_directory_serves_as_a_generative_model() {
    let Some(hf) = std::env::var_os("WGINFER_SMOLLM2_HF") else {
        common::skip_or_fail(
            "WGINFER_REQUIRE_SMOLLM2_HF",
            "WGINFER_SMOLLM2_HF is not set (models/smollm2/to_hf.py writes the directory; .ci/run does)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("smolhf")).expect("mkdir");
    std::os::unix::fs::symlink(&hf, dir.path().join("smolhf/1")).expect("link the version");
    std::fs::write(
        dir.path().join("smolhf/config.json"),
        r#"{"parameters": {"max_num_seqs": 4, "context_length": 256}}"#,
    )
    .expect("config");
    let repo = Repository::new(
        dir.path().to_path_buf(),
        Device::Cpu,
        None,
        Arc::new(Metrics::default()),
    );
    repo.load("smolhf").await.expect("loads");
    let engine = repo.llm("smolhf", None).expect("generative");
    let mut lib = Generator::load(&hf, &Device::Cpu, Some(256)).expect("generator");
    for (p, (ids, want)) in PROMPTS.iter().zip(alone_greedy(&mut lib, &PROMPTS[..3], 8)) {
        assert_eq!(ids, engine.encode(p).expect("encode"));
        let (got, ..) = collect(&engine, greedy(ids, 8)).await;
        assert_eq!(got, want, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_streams_get_their_greedy_text_alone_and_leave_no_slot_behind() {
    let Some(gguf) = smollm2() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, metrics) = repo_with(
        &gguf,
        dir.path(),
        r#"{"max_num_seqs": 32, "context_length": 256, "prefill_chunk": 64}"#,
        256,
    )
    .await;
    let engine = repo.llm("smol", None).expect("generative");
    let max_tokens = 10;
    let mut lib = Generator::load(&gguf, &Device::Cpu, Some(256)).expect("generator");
    let alone = Arc::new(alone_greedy(&mut lib, &PROMPTS, max_tokens));
    // 32 clients, two requests each, one after the other.
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let (engine, alone) = (engine.clone(), alone.clone());
            tokio::spawn(async move {
                let mut differ = 0;
                for r in 0..2 {
                    let (ids, want) = &alone[(2 * c + r) % alone.len()];
                    let (got, ..) = collect(&engine, greedy(ids.clone(), max_tokens)).await;
                    differ += usize::from(got != *want);
                }
                differ
            })
        })
        .collect();
    let differ: usize = futures_join(clients).await.into_iter().sum();
    assert_eq!(differ, 0, "{differ} of 64 streams differ from their greedy text alone");
    settled_metrics(&metrics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_at_once_are_served_or_shed_and_nothing_leaks() {
    let Some(gguf) = smollm2() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, metrics) = repo_with(&gguf, dir.path(), r#"{"max_num_seqs": 8, "context_length": 64}"#, 100).await;
    let engine = repo.llm("smol", None).expect("generative");
    let ids = engine.encode("Hello").expect("encode");
    let (mut streams, mut shed) = (Vec::new(), 0);
    for _ in 0..1000 {
        match engine.submit(greedy(ids.clone(), 1)) {
            Ok(s) => streams.push(s),
            Err(ServeError::Unavailable(_)) => shed += 1,
            Err(e) => panic!("a full queue must answer 503, not {e}"),
        }
    }
    assert!(
        shed > 0 && streams.len() >= 100,
        "{} queued, {shed} shed",
        streams.len()
    );
    for mut s in streams {
        let mut done = false;
        while let Some(e) = s.recv().await {
            match e {
                LlmEvent::Done(d) => {
                    assert_eq!(d.completion_tokens, 1);
                    done = true;
                }
                LlmEvent::Error(e) => panic!("a queued request failed: {e}"),
                _ => {}
            }
        }
        assert!(done, "a queued request ended without Done");
    }
    settled_metrics(&metrics).await;
    // Still serving.
    let (ids2, ..) = collect(&engine, greedy(ids, 2)).await;
    assert!(!ids2.is_empty());
}

/// The value of a metric line starting with `name{`.
fn metric(m: &str, name: &str) -> f64 {
    m.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{m}"))
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefix_cache_reuses_shared_prompts_and_changes_no_token() {
    let Some(gguf) = smollm2() else { return };
    // A budget of 7 MiB holds about 150 positions: the last request needs
    // 140 of them, so the kept caches are dropped for it.
    let params = |caching: bool| {
        format!(r#"{{"max_num_seqs": 4, "context_length": 256, "kv_cache_mib": 7, "prefix_caching": {caching}}}"#)
    };
    let (dir_on, dir_off) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (repo_on, metrics) = repo_with(&gguf, dir_on.path(), &params(true), 8).await;
    let (repo_off, metrics_off) = repo_with(&gguf, dir_off.path(), &params(false), 8).await;
    let (on, off) = (
        repo_on.llm("smol", None).expect("generative"),
        repo_off.llm("smol", None).expect("generative"),
    );
    let run = |engine: Arc<LlmEngine>, prompt: Vec<u32>, max_tokens: usize| async move {
        let mut r = greedy(prompt, max_tokens);
        r.stop_at_eos = false;
        collect(&engine, r).await.0
    };
    let system = "You are a helpful assistant who answers in one short sentence. Question: ";
    let a = on
        .encode(&format!("{system}What is the capital of France?"))
        .expect("encode");
    let b = on.encode(&format!("{system}Why is the sky blue?")).expect("encode");
    let mut want = Vec::new();
    let mut got = Vec::new();
    let gen_a = run(on.clone(), a.clone(), 20).await;
    got.push(gen_a.clone());
    want.push(run(off.clone(), a.clone(), 20).await);
    for p in [&b, &a] {
        got.push(run(on.clone(), p.clone(), 20).await);
        want.push(run(off.clone(), p.clone(), 20).await);
    }
    // A follow-up: the first prompt, its answer, and more; it reuses the
    // positions of generated tokens too.
    let follow: Vec<u32> = a.iter().chain(&gen_a).chain(&b[..4]).copied().collect();
    got.push(run(on.clone(), follow.clone(), 10).await);
    want.push(run(off.clone(), follow.clone(), 10).await);
    // Expected hits: `b` shares the system text with the kept `a` (its
    // prompt and 19 of its 20 tokens ran); `a` again takes all but its
    // last token; the follow-up takes all of the first run's positions.
    let kept_a: Vec<u32> = a.iter().chain(&gen_a[..19]).copied().collect();
    let hits = common_prefix(&kept_a, &b) + (a.len() - 1) + kept_a.len();
    assert!(common_prefix(&a, &b) > 10, "the prompts share the system text");
    let m = settled_metrics(&metrics).await;
    assert_eq!(
        metric(&m, "wginfer_prefix_cache_hit_tokens_total") as usize,
        hits,
        "{m}"
    );
    // Needs 140 of the budget's ~150 positions: the kept caches make room.
    let long: Vec<u32> = b.iter().rev().cycle().take(100).copied().collect();
    got.push(run(on.clone(), long.clone(), 40).await);
    want.push(run(off.clone(), long, 40).await);
    assert_eq!(
        got, want,
        "greedy tokens with the prefix cache differ from those without"
    );
    let m = settled_metrics(&metrics).await;
    let held = metric(&m, "wginfer_prefix_cache_usage_ratio");
    assert!(held > 0.0 && held <= 1.0, "{m}");
    let m_off = settled_metrics(&metrics_off).await;
    assert_eq!(metric(&m_off, "wginfer_prefix_cache_hit_tokens_total"), 0.0);
    assert_eq!(metric(&m_off, "wginfer_prefix_cache_usage_ratio"), 0.0);
}
