//! Generative language models in the server: a `.gguf` decoder in a model
//! version directory (`<repo>/<model>/<version>/model.gguf`) is served by an
//! [`LlmEngine`], a continuous-batching scheduler on its own thread.
//!
//! Each engine step is one batched forward pass over every running
//! sequence, within a budget of [`LlmSettings::max_batched_tokens`] tokens:
//! sequences that are decoding contribute one token each, and sequences
//! still reading their prompt their next chunk of
//! [`LlmSettings::prefill_chunk`] tokens, oldest first, as many chunks as
//! the rest of the budget holds (the oldest always gets one). A burst of
//! prompts is read in a few steps, and a long prompt never stalls the
//! streams already running. Every weight is read once per step, and every
//! row is computed on its own (16-bit activation blocks per row; attention
//! over its own cache), so greedy output does not depend on what else runs.
//! A request joins at the next step. On a GPU the step is one submission of
//! the GPU decoder over every running sequence, each on its own slot of the
//! device's cache; there a row's numbers may differ from those it gets
//! alone in the last bits (kernels for one or two rows and for more sum in
//! different orders).
//!
//! KV memory is a budget: a sequence reserves `prompt + max_tokens`
//! positions (up to the context) when it joins and frees them the moment
//! it finishes or its client goes away. Requests that do not fit wait in a
//! bounded queue (first come, first served); past its bound they get 503.
//!
//! Prefix caching (CPU): the keys and values of a sequence that ended stay
//! in the budget's free room, keyed by the tokens they hold. A new prompt
//! that starts with some of those tokens copies their positions instead of
//! computing them again (every row being computed on its own, the copied
//! positions are the numbers it would compute). Kept caches are dropped,
//! least recently used first, whenever a new sequence needs their room.
//!
//! Settings come from the model's `config.json` `parameters` (plain values
//! or Triton's `{"string_value": "..."}`):
//!
//! | parameter | default | what |
//! | --- | --- | --- |
//! | `max_num_seqs` | 16 | sequences in the running batch (on a GPU at most `kv_cache_mib` / one context's cache, at least 1) |
//! | `context_length` | trained context, at most 4096 | positions per sequence |
//! | `kv_cache_mib` | 1024 | the KV-cache budget of all sequences |
//! | `prefill_chunk` | 128 | prompt tokens per sequence per step |
//! | `max_batched_tokens` | 512 | tokens per step, all sequences together |
//! | `prefix_caching` | `true` | reuse the KV cache of ended sequences |
//! | `kv_cache_dtype` | `f32` | `f16` halves the cache (CPU and GPU) |
//!
//! The queue bound is `dynamic_batching.default_queue_policy.max_queue_size`
//! as for other models.

mod engine;
pub mod metrics;
mod prefix;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::config::{is_cpu, ModelConfig};
use super::error::ServeError;
use super::isolate::Health;
use crate::error::GenerateError;
use crate::generate::cache::KvDtype;
use crate::generate::chat::{ChatMessage, ChatTemplate};
use crate::generate::sample::{SamplingOptions, TokenLogprob};
use crate::generate::tokenizer::Tokenizer;
use crate::generate::{FinishReason, ModelParts};
use metrics::LlmMetrics;

/// What to generate for one request.
#[derive(Clone, Debug)]
pub struct LlmRequest {
    /// The prompt's token ids (chat template and BOS already applied).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (0: score the prompt only).
    pub max_tokens: usize,
    /// How to pick each token.
    pub sampling: SamplingOptions,
    /// Strings that end generation (not included in the text).
    pub stop: Vec<String>,
    /// Stop at the model's end-of-generation tokens.
    pub stop_at_eos: bool,
    /// `Some(k)`: every token event carries its log-probability and the `k`
    /// most likely tokens (`k` may be 0).
    pub logprobs: Option<usize>,
    /// `Some(k)`: a [`LlmEvent::Prompt`] comes first, with the
    /// log-probability of every prompt token and the `k` most likely ones.
    pub prompt_logprobs: Option<usize>,
}

/// The log-probabilities at one prompt position.
#[derive(Clone, Debug, PartialEq)]
pub struct PositionLogprobs {
    /// The prompt token.
    pub id: u32,
    /// Its log-probability given the tokens before it (`None` at position 0).
    pub logprob: Option<f32>,
    /// The most likely tokens at this position (empty at position 0).
    pub top: Vec<TokenLogprob>,
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenOut {
    /// Its id.
    pub id: u32,
    /// The text it completes (empty while a UTF-8 character or a possible
    /// stop string is held back).
    pub text: String,
    /// Its log-probability under the model, when the request asks for
    /// log-probabilities.
    pub logprob: Option<f32>,
    /// The most likely tokens at this position, when asked for.
    pub top: Vec<TokenLogprob>,
}

/// How a sequence ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// `Stop` (end of generation, stop string) or `Length` (`max_tokens`,
    /// context, or the server shutting down).
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Text held back until the end (a partial stop string that never
    /// completed); append it.
    pub text_tail: String,
}

/// What an [`LlmStream`] yields, in order: `Prompt` (when asked for), then
/// `Token`s, then `Done` or `Error`.
#[derive(Debug)]
pub enum LlmEvent {
    /// Prompt log-probabilities, one entry per prompt token.
    Prompt(Vec<PositionLogprobs>),
    /// A generated token.
    Token(TokenOut),
    /// The end.
    Done(Finished),
    /// The sequence failed.
    Error(ServeError),
}

/// The events of one request. Dropping it cancels the sequence at the next
/// engine step.
#[derive(Debug)]
pub struct LlmStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<LlmEvent>,
}

impl LlmStream {
    /// The next event; `None` after the last.
    pub async fn recv(&mut self) -> Option<LlmEvent> {
        self.rx.recv().await
    }

    /// The next event, waiting on this thread (not in async code).
    pub fn blocking_recv(&mut self) -> Option<LlmEvent> {
        self.rx.blocking_recv()
    }
}

/// The scheduler's settings (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlmSettings {
    /// Sequences in the running batch.
    pub max_num_seqs: usize,
    /// Positions per sequence (`None`: the model's trained context, at most
    /// [`crate::generate::generator::DEFAULT_CONTEXT`]).
    pub context: Option<usize>,
    /// Bytes of KV cache all sequences share.
    pub kv_cache_bytes: usize,
    /// Prompt tokens per sequence per step.
    pub prefill_chunk: usize,
    /// Tokens per step, all sequences together (decoding sequences count
    /// one each; the oldest prompt chunk runs even past it).
    pub max_batched_tokens: usize,
    /// Keep the KV cache of ended sequences for prompts that share a prefix.
    pub prefix_caching: bool,
    /// Requests waiting at most; more get 503.
    pub max_queue: usize,
    /// How the CPU caches store keys and values.
    pub kv_dtype: KvDtype,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            max_num_seqs: 16,
            context: None,
            kv_cache_bytes: 1 << 30,
            prefill_chunk: 128,
            max_batched_tokens: 512,
            prefix_caching: true,
            max_queue: super::config::DEFAULT_MAX_QUEUE_SIZE,
            kv_dtype: KvDtype::F32,
        }
    }
}

fn param_bool(params: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    let Some(v) = params.get(key) else {
        return Ok(None);
    };
    let v = v.get("string_value").unwrap_or(v);
    match v {
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(Some(true)),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(Some(false)),
        _ => Err(format!("parameters.{key} must be true or false, not {v}")),
    }
}

fn param_usize(params: &Map<String, Value>, key: &str) -> Result<Option<usize>, String> {
    let Some(v) = params.get(key) else {
        return Ok(None);
    };
    let v = v.get("string_value").unwrap_or(v);
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n.and_then(|n| usize::try_from(n).ok()) {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(format!("parameters.{key} must be a positive integer, not {v}")),
    }
}

impl LlmSettings {
    /// The settings in a model config's `parameters`.
    pub fn from_config(config: &ModelConfig) -> Result<Self, String> {
        let p = &config.parameters;
        let mut s = Self {
            max_queue: config.max_queue_size,
            ..Self::default()
        };
        if let Some(n) = param_usize(p, "max_num_seqs")? {
            s.max_num_seqs = n;
        }
        s.context = param_usize(p, "context_length")?;
        if let Some(mib) = param_usize(p, "kv_cache_mib")? {
            s.kv_cache_bytes = mib.checked_mul(1 << 20).ok_or("parameters.kv_cache_mib is too large")?;
        }
        if let Some(n) = param_usize(p, "prefill_chunk")? {
            s.prefill_chunk = n;
        }
        if let Some(n) = param_usize(p, "max_batched_tokens")? {
            s.max_batched_tokens = n;
        }
        if let Some(b) = param_bool(p, "prefix_caching")? {
            s.prefix_caching = b;
        }
        if let Some(v) = p.get("kv_cache_dtype") {
            let v = v.get("string_value").unwrap_or(v);
            s.kv_dtype = v
                .as_str()
                .ok_or_else(|| format!("parameters.kv_cache_dtype must be \"f16\" or \"f32\", not {v}"))?
                .parse()
                .map_err(|e| format!("parameters.kv_cache_dtype: {e}"))?;
        }
        Ok(s)
    }
}

/// A generative model version being served: tokenizer, chat template, and
/// the handle of its scheduler thread.
pub struct LlmEngine {
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    context: usize,
    vocab: usize,
    /// Positions of KV cache the budget holds.
    budget: usize,
    created: u64,
    jobs: mpsc::Sender<engine::Job>,
    /// The scheduler thread, until [`LlmEngine::wait_stopped`] joins it.
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    waiting: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    max_queue: usize,
    health: Arc<Health>,
    metrics: Arc<LlmMetrics>,
}

impl std::fmt::Debug for LlmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmEngine")
            .field("context", &self.context)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl LlmEngine {
    /// Loads a decoder file and starts its scheduler.
    pub fn load(path: &Path, config: &ModelConfig, metrics: Arc<LlmMetrics>, what: String) -> Result<Self, String> {
        let mut settings = LlmSettings::from_config(config)?;
        let parts = ModelParts::load(path).map_err(|e| e.to_string())?;
        let c = &parts.weights.config;
        let context = settings
            .context
            .unwrap_or(c.trained_context.min(crate::generate::generator::DEFAULT_CONTEXT))
            .max(1);
        let per_position = c
            .kv_dim()
            .saturating_mul(2 * settings.kv_dtype.size() * c.n_layers)
            .max(1);
        let budget = settings.kv_cache_bytes / per_position;
        if budget == 0 {
            return Err(format!(
                "parameters.kv_cache_mib holds no position of this model ({per_position} bytes each); raise it"
            ));
        }
        if !is_cpu(&config.device) {
            // A GPU cache slot holds a whole context.
            settings.max_num_seqs = settings.max_num_seqs.min(budget / context).max(1);
        }
        let (vocab, tokenizer) = (c.vocab, Arc::new(parts.tokenizer));
        let health = Arc::new(Health::default());
        let waiting = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let (jobs, thread) = engine::start(engine::Start {
            weights: parts.weights,
            device: config.device.clone(),
            tokenizer: tokenizer.clone(),
            context,
            budget,
            settings: settings.clone(),
            waiting: waiting.clone(),
            stopping: stopping.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            what,
        })?;
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(Self {
            tokenizer,
            template: parts.template,
            context,
            vocab,
            budget,
            created,
            jobs,
            thread: Arc::new(Mutex::new(Some(thread))),
            waiting,
            stopping,
            max_queue: settings.max_queue,
            health,
            metrics,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Renders a conversation with the model's chat template, ending with
    /// the opening of the assistant's turn.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, GenerateError> {
        match &self.template {
            Some(t) => t.render(messages, true),
            None => Err(GenerateError::Tokenizer(
                "the model has no chat template (tokenizer.chat_template); use /v1/completions".to_string(),
            )),
        }
    }

    /// Token ids of a prompt (with BOS when the model wants one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        self.tokenizer.encode(text, true)
    }

    /// Positions per sequence.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Unix seconds when the model was loaded.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<LlmMetrics> {
        &self.metrics
    }

    /// Why the engine stopped serving (its thread panicked), if it did.
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Stops admitting (server shutdown): new and queued requests get 503,
    /// running sequences go on to their end or until their client leaves.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// After [`LlmEngine::stop`]: waits up to `timeout` for the running
    /// sequences to end and the scheduler thread to release the model (its
    /// device buffers included); whether it did. Call it before the process
    /// exits, so no thread still holds a GPU device then.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut slot = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        let Some(handle) = slot.as_ref() else {
            return true;
        };
        while !handle.is_finished() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(h) = slot.take() {
            // A panic in the thread was already caught and recorded as the
            // engine's failure (`isolated`).
            let _ = h.join();
        }
        true
    }

    /// Queues a request. 400 when it cannot fit (prompt plus `max_tokens`
    /// past the context or the KV budget, a token id out of the vocabulary,
    /// bad sampling options), 503 when the queue is full or the engine
    /// failed.
    pub fn submit(&self, req: LlmRequest) -> Result<LlmStream, ServeError> {
        self.check(&req)?;
        if let Some(why) = self.failure() {
            return Err(ServeError::Unavailable(format!(
                "the model failed: {why}; load it again"
            )));
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ServeError::Unavailable("the server is shutting down".to_string()));
        }
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        if queued >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ServeError::Unavailable(format!(
                "{queued} requests are waiting already (max_queue_size); retry later"
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let job = engine::Job {
            req,
            events: tx,
            arrived: Instant::now(),
        };
        if self.jobs.send(job).is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ServeError::Unavailable("the model is shutting down".to_string()));
        }
        Ok(LlmStream { rx })
    }

    fn check(&self, req: &LlmRequest) -> Result<(), ServeError> {
        if req.prompt.is_empty() {
            return Err(ServeError::bad("the prompt is empty"));
        }
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(ServeError::bad(format!(
                "token id {id} is not in the vocabulary of {} tokens",
                self.vocab
            )));
        }
        let needed = req.prompt.len().saturating_add(req.max_tokens);
        if needed > self.context {
            return Err(ServeError::bad(format!(
                "the prompt ({} tokens) plus max_tokens ({}) is {needed} tokens, past the context of {}; shorten the prompt or lower max_tokens",
                req.prompt.len(),
                req.max_tokens,
                self.context
            )));
        }
        if needed > self.budget {
            return Err(ServeError::bad(format!(
                "the prompt plus max_tokens needs {needed} positions of KV cache; the model's budget is {} (parameters.kv_cache_mib)",
                self.budget
            )));
        }
        req.sampling.validate().map_err(|e| ServeError::bad(e.to_string()))
    }
}
