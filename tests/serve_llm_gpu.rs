//! The generative-model engine of the server on a GPU: the committed
//! random-weight decoder `models/decoders/llama-q.gguf` (Q4_0/Q5_0/Q5_1/Q8_0,
//! with a small tokenizer) served with four cache slots. Concurrent greedy
//! requests, more than the slots, each equal the library's `Generator` run
//! alone on the same adapter, and the slots come back (a second round runs,
//! the gauges return to idle).
//!
//! GPU tests run on the first adapter wgpu lists (`WGINFER_TEST_ADAPTER`
//! overrides); without one they print SKIPPED, and fail under
//! `WGINFER_REQUIRE_GPU=1`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wginfer::generate::sample::SamplingOptions;
use wginfer::generate::{GenerateOptions, Generator};
use wginfer::serve::llm::{LlmEngine, LlmEvent, LlmRequest};
use wginfer::serve::{Metrics, Repository};
use wginfer::Device;

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

/// A request's generated token ids.
async fn collect(engine: &LlmEngine, req: LlmRequest) -> Vec<u32> {
    let mut s = engine.submit(req).expect("queued");
    let mut ids = Vec::new();
    while let Some(e) = s.recv().await {
        match e {
            LlmEvent::Token(t) => ids.push(t.id),
            LlmEvent::Done(d) => {
                assert_eq!(d.completion_tokens, ids.len());
                return ids;
            }
            LlmEvent::Prompt(_) => {}
            LlmEvent::Error(e) => panic!("the request failed: {e}"),
        }
    }
    panic!("the stream ended without Done");
}

/// Prompts of 3 to 13 token ids among 4..260 (byte symbols and merges; the
/// fixture's control tokens are its last three ids).
fn prompts() -> Vec<Vec<u32>> {
    (0..7u32)
        .map(|i| {
            (0..3 + (i as usize * 5) % 11)
                .map(|j| 4 + (i * 37 + j as u32 * 11) % 256)
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_greedy_requests_on_gpu_slots_equal_the_library_alone() {
    let Some(choice) = common::minilm::gpu_choice() else {
        return;
    };
    let device = Device::Gpu(choice);
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/decoders/llama-q.gguf");
    let dir = tempfile::tempdir().expect("tempdir");
    let v = dir.path().join("tiny/1");
    std::fs::create_dir_all(&v).expect("mkdir");
    std::fs::copy(&gguf, v.join("model.gguf")).expect("copy the model");
    std::fs::write(
        dir.path().join("tiny/config.json"),
        r#"{"parameters": {"max_num_seqs": 4, "context_length": 64, "prefill_chunk": 4, "max_batched_tokens": 12}}"#,
    )
    .expect("config");
    let metrics = Arc::new(Metrics::default());
    let repo = Repository::new(dir.path().to_path_buf(), device.clone(), None, metrics.clone());
    repo.load("tiny").await.expect("loads");
    let engine = repo.llm("tiny", None).expect("generative");

    let max_tokens = 10;
    let mut lib = Generator::load(&gguf, &device, Some(64)).expect("generator");
    let opts = GenerateOptions {
        max_tokens,
        sampling: greedy(Vec::new(), 0).sampling,
        ..GenerateOptions::default()
    };
    let want: Vec<Vec<u32>> = prompts()
        .iter()
        .map(|p| {
            lib.generate_ids(p, &opts)
                .expect("starts")
                .map(|t| t.expect("token").id)
                .collect()
        })
        .collect();
    let generated: usize = want.iter().map(Vec::len).sum();
    assert!(
        generated > 30,
        "only {generated} tokens generated: the test would show little"
    );
    for round in 0..2 {
        let runs: Vec<_> = prompts()
            .into_iter()
            .map(|p| {
                let engine = engine.clone();
                tokio::spawn(async move { collect(&engine, greedy(p, max_tokens)).await })
            })
            .collect();
        for (i, (h, want)) in runs.into_iter().zip(&want).enumerate() {
            let got = h.await.expect("joins");
            assert_eq!(&got, want, "round {round}: prompt {i} differs from the library alone");
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = metrics.render();
    for gauge in [
        "wginfer_num_requests_running{model=\"tiny\",version=\"1\"} 0\n",
        "wginfer_kv_cache_usage_ratio{model=\"tiny\",version=\"1\"} 0\n",
    ] {
        assert!(m.contains(gauge), "not idle: no `{}` in\n{m}", gauge.trim_end());
    }
    assert!(
        m.contains("wginfer_time_to_first_token_seconds_count{model=\"tiny\",version=\"1\"} 14"),
        "{m}"
    );
    // The scheduler thread releases the GPU decoder before the process exits.
    engine.stop();
    let stopped = tokio::task::spawn_blocking(move || engine.wait_stopped(Duration::from_secs(60)))
        .await
        .expect("joins");
    assert!(stopped, "the scheduler did not stop");
    assert!(
        repo.llm("tiny", None)
            .and_then(|e| e.submit(greedy(vec![5], 1)))
            .is_err(),
        "a stopped engine admitted a request"
    );
}
