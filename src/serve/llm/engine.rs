//! The scheduler thread of one generative model version: admits queued
//! requests while the batch and the KV budget have room, and steps every
//! running sequence together (see the module docs of [`super`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::LlmMetrics;
use super::prefix::PrefixCache;
use super::{Finished, LlmEvent, LlmRequest, LlmSettings, PositionLogprobs, TokenOut};
use crate::error::GenerateError;
use crate::generate::cache::KvCache;
use crate::generate::cpu::{CpuModel, RowMode, SeqTokens};
#[cfg(feature = "gpu")]
use crate::generate::gpu::{GpuDecoder, GpuSeq};
use crate::generate::sample::{log_softmax, top_logprobs};
use crate::generate::tokenizer::Tokenizer;
#[cfg(feature = "gpu")]
use crate::generate::Decoder;
use crate::generate::{DecoderWeights, GenerateOptions, Logits, TokenPicker};
use crate::serve::config::is_cpu;
use crate::serve::error::ServeError;
use crate::serve::isolate::{isolated, Health};
use crate::session::Device;

/// A queued request.
pub(super) struct Job {
    pub req: LlmRequest,
    pub events: UnboundedSender<LlmEvent>,
    pub arrived: Instant,
}

/// What the scheduler thread starts from.
pub(super) struct Start {
    pub weights: Arc<DecoderWeights>,
    pub device: Device,
    pub tokenizer: Arc<Tokenizer>,
    pub context: usize,
    pub budget: usize,
    pub settings: LlmSettings,
    pub waiting: Arc<AtomicUsize>,
    pub stopping: Arc<AtomicBool>,
    pub health: Arc<Health>,
    pub metrics: Arc<LlmMetrics>,
    pub what: String,
}

/// Where the forward passes run.
enum Backend {
    /// The CPU model over per-sequence caches.
    Cpu(CpuModel),
    /// The GPU decoder, one cache slot per running sequence; `free` lists
    /// the slots no sequence holds.
    #[cfg(feature = "gpu")]
    Gpu { decoder: Box<GpuDecoder>, free: Vec<usize> },
}

/// A running sequence's cache.
enum SeqCache {
    /// Its own CPU cache.
    Cpu(KvCache),
    /// A slot of the GPU decoder's cache holding `len` of `context` positions.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    Slot { slot: usize, len: usize, context: usize },
}

impl SeqCache {
    /// Whether another position fits.
    fn has_room(&self) -> bool {
        match self {
            SeqCache::Cpu(c) => c.len < c.context,
            SeqCache::Slot { len, context, .. } => len < context,
        }
    }
}

impl Backend {
    fn new(s: &Start) -> Result<Self, String> {
        let mut b = if is_cpu(&s.device) {
            Backend::Cpu(
                CpuModel::new(s.weights.clone(), s.context)
                    .map_err(|e| e.to_string())?
                    .with_kv_dtype(s.settings.kv_dtype),
            )
        } else {
            Self::gpu(s)?
        };
        // One token through the whole model: compiles GPU pipelines and
        // shows a broken model at load time rather than on a request.
        let mut cache = b.new_cache(1).map_err(|e| e.to_string())?;
        b.run(vec![(&mut cache, &[0u32][..], Logits::Last)], RowMode::Auto)
            .map_err(|e| format!("the warm-up run failed: {e}"))?;
        b.release(cache);
        Ok(b)
    }

    /// The GPU decoder with a cache slot for each of `max_num_seqs` sequences.
    #[cfg(feature = "gpu")]
    fn gpu(s: &Start) -> Result<Self, String> {
        let Device::Gpu(choice) = &s.device else {
            return Err(format!("{:?} is neither a CPU nor a GPU", s.device));
        };
        let slots = s.settings.max_num_seqs.max(1);
        let decoder = GpuDecoder::with_slots(&s.weights, s.context, choice, s.settings.kv_dtype, slots)
            .map_err(|e| e.to_string())?;
        Ok(Backend::Gpu {
            decoder: Box::new(decoder),
            free: (0..slots).rev().collect(),
        })
    }

    #[cfg(not(feature = "gpu"))]
    fn gpu(_: &Start) -> Result<Self, String> {
        Err("this build has no GPU backend (the `gpu` feature)".into())
    }

    /// A cache for a new sequence of up to `positions` positions.
    fn new_cache(&mut self, positions: usize) -> Result<SeqCache, GenerateError> {
        match self {
            Backend::Cpu(m) => m.new_cache(positions).map(SeqCache::Cpu),
            #[cfg(feature = "gpu")]
            Backend::Gpu { decoder, free } => match free.pop() {
                Some(slot) => Ok(SeqCache::Slot {
                    slot,
                    len: 0,
                    context: decoder.context(),
                }),
                None => Err(GenerateError::Config {
                    key: "max_num_seqs".into(),
                    message: format!("all {} GPU cache slots are taken", decoder.slots()),
                }),
            },
        }
    }

    /// Takes back an ended sequence's cache: a GPU slot is free again; a
    /// CPU cache is returned (for the prefix cache).
    fn release(&mut self, cache: SeqCache) -> Option<KvCache> {
        match (self, cache) {
            (_, SeqCache::Cpu(c)) => Some(c),
            #[cfg(feature = "gpu")]
            (Backend::Gpu { free, .. }, SeqCache::Slot { slot, .. }) => {
                free.push(slot);
                None
            }
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    fn run(
        &mut self,
        group: Vec<(&mut SeqCache, &[u32], Logits)>,
        mode: RowMode,
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        let mismatch = || GenerateError::Config {
            key: "cache".into(),
            message: "a sequence's cache is not of the backend it runs on".into(),
        };
        match self {
            Backend::Cpu(m) => {
                let mut seqs = Vec::with_capacity(group.len());
                for (cache, tokens, logits) in group {
                    let SeqCache::Cpu(cache) = cache else {
                        return Err(mismatch());
                    };
                    seqs.push(SeqTokens { cache, tokens, logits });
                }
                m.forward(&mut seqs, mode)
            }
            #[cfg(feature = "gpu")]
            Backend::Gpu { decoder, .. } => {
                let mut seqs = Vec::with_capacity(group.len());
                let mut lens = Vec::with_capacity(group.len());
                for (cache, tokens, logits) in group {
                    let SeqCache::Slot { slot, len, .. } = cache else {
                        return Err(mismatch());
                    };
                    seqs.push(GpuSeq {
                        slot: *slot,
                        pos0: *len,
                        tokens,
                        logits,
                    });
                    lens.push(len);
                }
                let out = decoder.forward_seqs(&seqs)?;
                for (len, s) in lens.into_iter().zip(&seqs) {
                    *len += s.tokens.len();
                }
                Ok(out)
            }
        }
    }
}

/// What a sequence does in a step.
#[derive(Clone, Copy, Debug)]
enum Work {
    /// Runs its last generated token.
    Decode,
    /// Runs prompt tokens `start..end`.
    Prefill { start: usize, end: usize },
}

/// A running sequence.
struct Seq<'t> {
    job: Job,
    picker: TokenPicker<'t>,
    cache: SeqCache,
    reserved: usize,
    /// Prompt tokens run so far.
    fed: usize,
    /// The last generated token, to run next.
    next: Option<u32>,
    /// The prompt and the generated tokens: the cache holds the first
    /// `cache.len`.
    tokens: Vec<u32>,
    prompt_logprobs: Vec<PositionLogprobs>,
    last_token: Option<Instant>,
    done: bool,
    /// Its cache may hold wrong values (a pass failed): not kept.
    failed: bool,
}

impl Seq<'_> {
    fn send(&mut self, e: LlmEvent) {
        if self.job.events.send(e).is_err() {
            self.done = true;
        }
    }

    fn fail(&mut self, e: &GenerateError) {
        log::error!("a sequence failed: {e}");
        self.send(LlmEvent::Error(ServeError::Internal(e.to_string())));
        self.done = true;
        self.failed = true;
    }
}

/// How often an idle scheduler checks whether the engine is stopping.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Starts the scheduler thread; returns where to send jobs and the thread,
/// which ends (dropping the model and its device buffers) once the engine is
/// stopping and no sequence runs, or once every sender is gone.
pub(super) fn start(s: Start) -> Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>), String> {
    let backend = isolated(&s.what, || Backend::new(&s))?;
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("wginfer-llm".into())
        .spawn(move || {
            let (what, health) = (s.what.clone(), s.health.clone());
            let mut sched = Scheduler {
                backend,
                used: 0,
                prefix: PrefixCache::default(),
                s,
            };
            if let Err(e) = isolated(&what, || {
                sched.run(rx);
                Ok(())
            }) {
                health.fail(&e);
            }
        })
        .map_err(|e| format!("cannot start the scheduler thread: {e}"))?;
    Ok((tx, thread))
}

struct Scheduler {
    backend: Backend,
    /// KV positions reserved by running sequences.
    used: usize,
    /// Caches of ended sequences, in the budget's free room.
    prefix: PrefixCache,
    s: Start,
}

impl Scheduler {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        let tokenizer = self.s.tokenizer.clone();
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut running: Vec<Seq<'_>> = Vec::new();
        let mut open = true;
        loop {
            if running.is_empty() && waiting.is_empty() {
                if self.s.stopping.load(Ordering::SeqCst) {
                    break;
                }
                // Wakes now and then to see a stop with nothing to run.
                match rx.recv_timeout(IDLE_POLL) {
                    Ok(j) if open => waiting.push_back(j),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
            while open {
                match rx.try_recv() {
                    Ok(j) => waiting.push_back(j),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            self.drop_cancelled(&mut waiting, &mut running);
            if self.s.stopping.load(Ordering::SeqCst) {
                self.s.waiting.fetch_sub(waiting.len(), Ordering::SeqCst);
                for j in waiting.drain(..) {
                    let _ = j.events.send(LlmEvent::Error(ServeError::Unavailable(
                        "the server is shutting down".to_string(),
                    )));
                }
            }
            self.admit(&mut waiting, &mut running, &tokenizer);
            self.report(running.len(), waiting.len());
            if !running.is_empty() {
                self.step(&mut running);
            }
            self.drop_cancelled(&mut waiting, &mut running);
            self.report(running.len(), waiting.len());
        }
    }

    /// Publishes the batch, queue, KV-budget and prefix-cache gauges.
    fn report(&self, running: usize, waiting: usize) {
        let budget = self.s.budget.max(1) as f64;
        self.s.metrics.state(running, waiting, self.used as f64 / budget);
        self.s
            .metrics
            .prefix_cache_usage(self.prefix.positions() as f64 / budget);
    }

    /// Forgets queued requests and sequences whose client went away, and
    /// sequences that ended.
    fn drop_cancelled(&mut self, waiting: &mut VecDeque<Job>, running: &mut Vec<Seq<'_>>) {
        let before = waiting.len();
        waiting.retain(|j| !j.events.is_closed());
        self.s.waiting.fetch_sub(before - waiting.len(), Ordering::SeqCst);
        let mut i = 0;
        while i < running.len() {
            if !running[i].done && !running[i].job.events.is_closed() {
                i += 1;
                continue;
            }
            let q = running.remove(i);
            self.used -= q.reserved;
            let kept = self.backend.release(q.cache);
            if let (Some(cache), true) = (kept, self.s.settings.prefix_caching && !q.failed) {
                self.prefix.keep(&q.tokens, cache);
            }
        }
    }

    /// The kept cache to start `req`'s prompt from: its index and how many
    /// positions to take (at least the prompt's last token is left to run,
    /// for its logits; none when the request wants every prompt position's
    /// log-probabilities).
    fn prefix_hit(&self, req: &LlmRequest) -> Option<(usize, usize)> {
        if !self.s.settings.prefix_caching || req.prompt_logprobs.is_some() {
            return None;
        }
        let (i, n) = self.prefix.lookup(&req.prompt)?;
        let n = n.min(req.prompt.len().saturating_sub(1));
        (n > 0).then_some((i, n))
    }

    fn admit<'t>(&mut self, waiting: &mut VecDeque<Job>, running: &mut Vec<Seq<'t>>, tokenizer: &'t Tokenizer) {
        while running.len() < self.s.settings.max_num_seqs {
            let Some(job) = waiting.front() else { break };
            let need = (job.req.prompt.len() + job.req.max_tokens).min(self.s.context);
            if self.used + need > self.s.budget {
                break;
            }
            let Some(job) = waiting.pop_front() else { break };
            self.s.waiting.fetch_sub(1, Ordering::SeqCst);
            let hit = self.prefix_hit(&job.req);
            let room = self.s.budget - self.used - need;
            let kept = self.prefix.shrink_to(room, hit.map(|h| h.0));
            let opts = GenerateOptions {
                max_tokens: job.req.max_tokens,
                sampling: job.req.sampling.clone(),
                stop: job.req.stop.clone(),
                top_logprobs: job.req.logprobs,
                stop_at_eos: job.req.stop_at_eos,
            };
            let made = TokenPicker::new(tokenizer, &job.req.prompt, &opts)
                .and_then(|p| Ok((p, self.backend.new_cache(need)?)));
            match made {
                Ok((picker, mut cache)) => {
                    self.used += need;
                    let fed = match (hit, kept, &mut cache) {
                        (Some((_, n)), Some(i), SeqCache::Cpu(c)) => n * usize::from(self.prefix.copy_into(i, n, c)),
                        _ => 0,
                    };
                    self.s.metrics.prefix_cache_hit(fed);
                    running.push(Seq {
                        tokens: job.req.prompt.clone(),
                        job,
                        picker,
                        cache,
                        reserved: need,
                        fed,
                        next: None,
                        prompt_logprobs: Vec::new(),
                        last_token: None,
                        done: false,
                        failed: false,
                    });
                }
                Err(e) => {
                    let _ = job.events.send(LlmEvent::Error(ServeError::bad(e.to_string())));
                }
            }
        }
    }

    /// What each sequence runs in the next step: every decoding sequence
    /// its next token, and sequences still reading their prompt their next
    /// chunk, oldest first, as many as the rest of `max_batched_tokens`
    /// holds (the oldest always runs one). A chunk is never cut to fit, so a
    /// prompt's chunks do not depend on what else runs.
    fn plan(&self, running: &[Seq<'_>]) -> Vec<Option<Work>> {
        let chunk = self.s.settings.prefill_chunk.max(1);
        let decoding = running.iter().filter(|q| !q.done && q.next.is_some()).count();
        let mut left = self.s.settings.max_batched_tokens.saturating_sub(decoding);
        let mut first = true;
        running
            .iter()
            .map(|q| {
                let len = q.job.req.prompt.len();
                if q.done {
                    None
                } else if q.next.is_some() {
                    Some(Work::Decode)
                } else if q.fed < len {
                    let end = (q.fed + chunk).min(len);
                    if end - q.fed > left && !first {
                        return None;
                    }
                    first = false;
                    left = left.saturating_sub(end - q.fed);
                    Some(Work::Prefill { start: q.fed, end })
                } else {
                    None
                }
            })
            .collect()
    }

    /// One iteration, one batched pass over the [`Scheduler::plan`]. Every
    /// row is computed on its own ([`RowMode::Independent`]), so what else
    /// runs never changes a sequence's numbers.
    fn step(&mut self, running: &mut [Seq<'_>]) {
        let plan = self.plan(running);
        let group: Vec<_> = running
            .iter_mut()
            .zip(&plan)
            .filter_map(|(q, w)| {
                let Seq { cache, job, next, .. } = q;
                match w.as_ref()? {
                    Work::Decode => Some((cache, next.as_slice(), Logits::Last)),
                    Work::Prefill { start, end } => {
                        let all = job.req.prompt_logprobs.is_some();
                        let mode = if all { Logits::All } else { Logits::Last };
                        Some((cache, &job.req.prompt[*start..*end], mode))
                    }
                }
            })
            .collect();
        if group.is_empty() {
            return;
        }
        let out = self.backend.run(group, RowMode::Independent);
        let working = running.iter_mut().zip(plan).filter_map(|(q, w)| Some((q, w?)));
        match out {
            Ok(logits) => {
                for ((q, w), l) in working.zip(logits) {
                    match w {
                        Work::Decode => Self::pick(q, &l, &self.s.metrics),
                        Work::Prefill { start, end } => self.prefilled(q, start, end, &l),
                    }
                }
            }
            Err(e) => working.for_each(|(q, _)| q.fail(&e)),
        }
    }

    /// After a sequence's prompt ran up to `end` (`logits`: the last
    /// position's, or every position's when the request wants prompt
    /// log-probabilities): collects those, and at the prompt's end picks the
    /// first token.
    fn prefilled(&self, q: &mut Seq<'_>, start: usize, end: usize, logits: &[f32]) {
        q.fed = end;
        let rows = if q.job.req.prompt_logprobs.is_some() {
            end - start
        } else {
            1
        };
        let vocab = logits.len() / rows.max(1);
        if let Some(k) = q.job.req.prompt_logprobs {
            if start == 0 {
                q.prompt_logprobs.push(PositionLogprobs {
                    id: q.job.req.prompt[0],
                    logprob: None,
                    top: Vec::new(),
                });
            }
            for (r, row) in logits.chunks_exact(vocab.max(1)).enumerate() {
                let Some(&id) = q.job.req.prompt.get(start + r + 1) else {
                    break;
                };
                let lp = log_softmax(row);
                q.prompt_logprobs.push(PositionLogprobs {
                    id,
                    logprob: Some(lp[id as usize]),
                    top: top_logprobs(&lp, k),
                });
            }
        }
        if end < q.job.req.prompt.len() {
            return;
        }
        self.s.metrics.prompt_tokens(q.job.req.prompt.len());
        if q.job.req.prompt_logprobs.is_some() {
            let lp = std::mem::take(&mut q.prompt_logprobs);
            q.send(LlmEvent::Prompt(lp));
        }
        let row = logits.len().saturating_sub(vocab);
        Self::pick(q, &logits[row..], &self.s.metrics);
    }

    /// Picks a sequence's next token from its logits and sends it; sends
    /// the end when the sequence ends.
    fn pick(q: &mut Seq<'_>, logits: &[f32], metrics: &LlmMetrics) {
        let room = q.cache.has_room();
        match q.picker.pick(logits, room) {
            Ok(Some(t)) => {
                let now = Instant::now();
                match q.last_token {
                    None => metrics.first_token(now - q.job.arrived),
                    Some(prev) => metrics.next_token(now - prev),
                }
                metrics.generated(1);
                q.last_token = Some(now);
                q.next = Some(t.id);
                q.tokens.push(t.id);
                q.send(LlmEvent::Token(TokenOut {
                    id: t.id,
                    text: t.text,
                    logprob: t.logprob,
                    top: t.top,
                }));
            }
            Ok(None) => {}
            Err(e) => return q.fail(&e),
        }
        if let Some(reason) = q.picker.finish_reason() {
            let done = Finished {
                reason,
                prompt_tokens: q.job.req.prompt.len(),
                completion_tokens: q.picker.produced(),
                text_tail: q.picker.flush(),
            };
            q.send(LlmEvent::Done(done));
            q.next = None;
            q.done = true;
        }
    }
}
