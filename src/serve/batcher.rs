//! Scheduling requests onto a session: directly (each request runs alone,
//! at most `instances` at once) or through a dynamic batcher that merges
//! concurrent requests along the first axis, runs them once and splits the
//! outputs back. Both keep a bounded queue: a request beyond it gets 503
//! instead of making the queue grow.
//!
//! Each input merges as its [`Merge`] says: tensors concatenate along the
//! first axis; the token ids and masks of text requests of different
//! lengths are right-padded with zeros to the longest first (ragged
//! batching); an input shared by every row, such as `position_ids [1, seq]`,
//! takes the longest request's value when the others are its prefixes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::config::ModelConfig;
use super::error::ServeError;
use super::isolate::{isolated, Health};
use super::metrics::{ModelMetrics, PendingGuard};
use crate::error::{Error, RunError};
use crate::session::Session;
use crate::tensor::Tensor;

/// Outputs in graph-output order, or the error to answer.
type JobResult = Result<Vec<Tensor>, ServeError>;

/// How one graph input of several requests merges into a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Merge {
    /// Concatenated along the first axis; every other axis must agree.
    Rows,
    /// Concatenated along the first axis after right-padding the second
    /// axis with zeros to the longest request (token ids, attention masks:
    /// a zero mask makes the padding invisible to the model).
    PaddedRows,
    /// One value for every row whose last axis grows with the request (the
    /// position ids `0..seq`): the longest request's value, used when every
    /// other request's value is its prefix.
    Shared,
}

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<JobResult>,
    pending: Option<PendingGuard>,
}

enum Kind {
    Direct {
        queue: Arc<Semaphore>,
        exec: Arc<Semaphore>,
    },
    Batched {
        tx: mpsc::Sender<Job>,
    },
}

/// Runs requests for one model version.
pub(crate) struct Scheduler {
    session: Arc<Session>,
    health: Arc<Health>,
    kind: Kind,
    label: String,
    max_queue_size: usize,
    metrics: Arc<ModelMetrics>,
}

impl Scheduler {
    /// A scheduler for `session` as `config` says. Must be called inside a
    /// tokio runtime (a batcher is a task). `merge` says how each graph
    /// input merges in a batch (missing entries: [`Merge::Rows`]). A run
    /// that panics marks `health` failed.
    pub fn new(
        session: Arc<Session>,
        health: Arc<Health>,
        config: &ModelConfig,
        label: String,
        metrics: Arc<ModelMetrics>,
        merge: Vec<Merge>,
    ) -> Self {
        let instances = config.instances.max(1);
        let kind = match &config.batching {
            None => Kind::Direct {
                queue: Arc::new(Semaphore::new(config.max_queue_size + instances)),
                exec: Arc::new(Semaphore::new(instances)),
            },
            Some(b) => {
                let (tx, rx) = mpsc::channel(config.max_queue_size.max(1));
                let batcher = Batcher {
                    session: session.clone(),
                    health: health.clone(),
                    rx,
                    max_batch: config.max_batch_size.max(1),
                    delay: b.max_queue_delay,
                    exec: Arc::new(Semaphore::new(instances)),
                    metrics: metrics.clone(),
                    merge,
                };
                tokio::spawn(batcher.run());
                Kind::Batched { tx }
            }
        };
        Self {
            session,
            health,
            kind,
            label,
            max_queue_size: config.max_queue_size,
            metrics,
        }
    }

    /// Runs one request: `inputs` in graph-input order, `rows` its batch
    /// size. Waits at most `timeout` for the result.
    pub async fn infer(&self, inputs: Vec<Tensor>, rows: usize, timeout: Option<Duration>) -> JobResult {
        let deadline = timeout.map(|t| Instant::now() + t);
        let timed_out = |t: Duration| {
            ServeError::Unavailable(format!(
                "the request timed out after {} ms waiting for {}; retry, raise the timeout, or reduce the load",
                t.as_millis(),
                self.label
            ))
        };
        let queue_full = || {
            ServeError::Unavailable(format!(
                "the queue of {} is full ({} requests waiting); retry later",
                self.label, self.max_queue_size
            ))
        };
        match &self.kind {
            Kind::Direct { queue, exec } => {
                let _slot = queue.clone().try_acquire_owned().map_err(|_| queue_full())?;
                let pending = self.metrics.pending();
                let enqueued = Instant::now();
                let permit = match timeout {
                    Some(t) => tokio::time::timeout(t, exec.clone().acquire_owned())
                        .await
                        .map_err(|_| timed_out(t))?,
                    None => exec.clone().acquire_owned().await,
                }
                .map_err(|_| ServeError::Unavailable(format!("{} is shutting down", self.label)))?;
                drop(pending);
                self.metrics.queued(micros(enqueued.elapsed()));
                let session = self.session.clone();
                let health = self.health.clone();
                let metrics = self.metrics.clone();
                let run = tokio::task::spawn_blocking(move || {
                    let _permit: OwnedSemaphorePermit = permit;
                    let started = Instant::now();
                    let out = run_session(&session, &health, inputs);
                    metrics.execution(0, micros(started.elapsed()), 0);
                    out
                });
                let joined = match timeout.zip(deadline) {
                    Some((t, d)) => tokio::time::timeout_at(d.into(), run).await.map_err(|_| timed_out(t))?,
                    None => run.await,
                };
                joined.map_err(|e| ServeError::Internal(format!("the model run panicked: {e}")))?
            }
            Kind::Batched { tx } => {
                let (reply, rx) = oneshot::channel();
                let job = Job {
                    inputs,
                    rows,
                    enqueued: Instant::now(),
                    deadline,
                    reply,
                    pending: Some(self.metrics.pending()),
                };
                tx.try_send(job).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => queue_full(),
                    mpsc::error::TrySendError::Closed(_) => {
                        ServeError::Unavailable(format!("{} is shutting down", self.label))
                    }
                })?;
                let answer = match timeout.zip(deadline) {
                    Some((t, d)) => tokio::time::timeout_at(d.into(), rx).await.map_err(|_| timed_out(t))?,
                    None => rx.await,
                };
                answer.map_err(|_| ServeError::Internal(format!("the batcher of {} stopped", self.label)))?
            }
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs the session on graph-ordered inputs, returning graph-ordered
/// outputs. A panic in the engine marks the version failed in `health` and
/// answers 500.
fn run_session(session: &Session, health: &Health, inputs: Vec<Tensor>) -> JobResult {
    if let Some(why) = health.failure() {
        return Err(ServeError::Unavailable(format!("the model version failed: {why}")));
    }
    let graph = session.graph();
    let named: Vec<(String, Tensor)> = graph.inputs().iter().map(|i| i.name.clone()).zip(inputs).collect();
    let ran = isolated("running the model", || Ok(session.run(named))).map_err(|why| {
        health.fail(&why);
        ServeError::Internal(why)
    })?;
    let mut out = ran.map_err(|e| match e {
        Error::Run(
            e @ (RunError::InputShape { .. }
            | RunError::InputDType { .. }
            | RunError::MissingInput { .. }
            | RunError::UnknownInput { .. }),
        ) => ServeError::BadRequest(e.to_string()),
        other => ServeError::Internal(format!("running the model: {other}")),
    })?;
    graph
        .outputs()
        .iter()
        .map(|o| {
            out.remove(&o.name)
                .ok_or_else(|| ServeError::Internal(format!("the session did not return output `{}`", o.name)))
        })
        .collect()
}

struct Batcher {
    session: Arc<Session>,
    health: Arc<Health>,
    rx: mpsc::Receiver<Job>,
    max_batch: usize,
    delay: Duration,
    exec: Arc<Semaphore>,
    metrics: Arc<ModelMetrics>,
    merge: Vec<Merge>,
}

impl Batcher {
    /// Runs until every sender is gone and the queue is drained: requests
    /// already queued when a version is replaced still finish on it.
    async fn run(mut self) {
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(j) => j,
                None => match self.rx.recv().await {
                    Some(j) => j,
                    None => break,
                },
            };
            // Wait for a free instance first: requests that arrive meanwhile
            // queue up and join this batch.
            let Ok(permit) = self.exec.clone().acquire_owned().await else {
                break;
            };
            let deadline = first.enqueued + self.delay;
            let mut rows = first.rows;
            let mut batch = vec![first];
            while rows < self.max_batch {
                let next = match self.rx.try_recv() {
                    Ok(j) => Some(j),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => tokio::time::timeout_at(deadline.into(), self.rx.recv())
                        .await
                        .unwrap_or_default(),
                };
                let Some(job) = next else { break };
                if rows + job.rows > self.max_batch || !compatible(&batch[0], &job, &self.merge) {
                    carry = Some(job);
                    break;
                }
                rows += job.rows;
                batch.push(job);
            }
            let now = Instant::now();
            batch.iter_mut().for_each(|j| drop(j.pending.take()));
            batch.retain(|j| {
                if j.reply.is_closed() {
                    return false;
                }
                if j.deadline.is_some_and(|d| d <= now) {
                    return false;
                }
                self.metrics.queued(micros(now.duration_since(j.enqueued)));
                true
            });
            if batch.is_empty() {
                continue;
            }
            let session = self.session.clone();
            let health = self.health.clone();
            let metrics = self.metrics.clone();
            let merge = self.merge.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                execute(&session, &health, batch, &metrics, &merge);
            });
        }
    }
}

/// Requests can share a batch when every input has the same dtype and a
/// shape that its [`Merge`] can join: the same past the first axis
/// (`Rows`), past the second (`PaddedRows`), or but for the last (`Shared`).
fn compatible(a: &Job, b: &Job, merge: &[Merge]) -> bool {
    a.inputs.len() == b.inputs.len()
        && a.inputs.iter().zip(&b.inputs).enumerate().all(|(i, (x, y))| {
            let (sx, sy) = (x.shape(), y.shape());
            x.dtype() == y.dtype()
                && sx.len() == sy.len()
                && match merge.get(i).copied().unwrap_or(Merge::Rows) {
                    Merge::Rows => sx.get(1..) == sy.get(1..),
                    Merge::PaddedRows => sx.len() >= 2 && sx.get(2..) == sy.get(2..),
                    Merge::Shared => !sx.is_empty() && sx[..sx.len() - 1] == sy[..sy.len() - 1],
                }
        })
}

/// One input of every request in a batch, merged as `merge` says.
fn merge_input(parts: &[&Tensor], merge: Merge, total: usize) -> Result<Tensor, String> {
    let Some(first) = parts.first() else {
        return Err("an empty batch".into());
    };
    let dtype = first.dtype();
    let elem = dtype.size_in_bytes();
    match merge {
        Merge::Rows => {
            let mut bytes = Vec::with_capacity(first.size_in_bytes() * parts.len());
            for t in parts {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
            let mut shape = first.shape().to_vec();
            if let Some(d) = shape.first_mut() {
                *d = total;
            }
            Tensor::from_le_bytes(dtype, shape, &bytes).map_err(|e| e.to_string())
        }
        Merge::PaddedRows => {
            let longest = parts
                .iter()
                .map(|t| t.shape().get(1).copied().unwrap_or(0))
                .max()
                .unwrap_or(0);
            let inner: usize = first.shape().get(2..).unwrap_or(&[]).iter().product();
            let row_bytes = longest * inner * elem;
            let mut bytes = Vec::with_capacity(total * row_bytes);
            for t in parts {
                let raw = t.to_le_bytes();
                let seq = t.shape().get(1).copied().unwrap_or(0);
                let have = seq * inner * elem;
                for r in 0..t.shape().first().copied().unwrap_or(0) {
                    let row = raw
                        .get(r * have..(r + 1) * have)
                        .ok_or("a request's rows are shorter than its shape")?;
                    bytes.extend_from_slice(row);
                    bytes.resize(bytes.len() + row_bytes - have, 0);
                }
            }
            let mut shape = first.shape().to_vec();
            shape[0] = total;
            shape[1] = longest;
            Tensor::from_le_bytes(dtype, shape, &bytes).map_err(|e| e.to_string())
        }
        Merge::Shared => {
            let long = parts
                .iter()
                .max_by_key(|t| t.numel())
                .ok_or_else(|| "an empty batch".to_string())?;
            let long_bytes = long.to_le_bytes();
            let long_last = long.shape().last().copied().unwrap_or(0) * elem;
            for t in parts {
                let last = t.shape().last().copied().unwrap_or(0) * elem;
                let b = t.to_le_bytes();
                let prefix = b
                    .chunks(last.max(1))
                    .zip(long_bytes.chunks(long_last.max(1)))
                    .all(|(s, l)| l.starts_with(s));
                if !prefix {
                    return Err("a shared input differs between requests".into());
                }
            }
            Ok((*long).clone())
        }
    }
}

/// Runs one batch and answers every request in it.
fn execute(session: &Session, health: &Health, batch: Vec<Job>, metrics: &ModelMetrics, merge: &[Merge]) {
    if batch.len() == 1 {
        let mut batch = batch;
        let Some(job) = batch.pop() else { return };
        let started = Instant::now();
        let out = run_session(session, health, job.inputs);
        metrics.execution(0, micros(started.elapsed()), 0);
        let _ = job.reply.send(out);
        return;
    }
    let t0 = Instant::now();
    let rows: Vec<usize> = batch.iter().map(|j| j.rows).collect();
    let total: usize = rows.iter().sum();
    let n_inputs = batch[0].inputs.len();
    let mut merged = Vec::with_capacity(n_inputs);
    for i in 0..n_inputs {
        let parts: Vec<&Tensor> = batch.iter().map(|j| &j.inputs[i]).collect();
        match merge_input(&parts, merge.get(i).copied().unwrap_or(Merge::Rows), total) {
            Ok(t) => merged.push(t),
            Err(e) => {
                // Requests that cannot share a run (a shared input that
                // differs) run one by one.
                log::debug!("cannot merge a batch ({e}); running its requests one by one");
                for j in batch {
                    let started = Instant::now();
                    let out = run_session(session, health, j.inputs);
                    metrics.execution(0, micros(started.elapsed()), 0);
                    let _ = j.reply.send(out);
                }
                return;
            }
        }
    }
    let t1 = Instant::now();
    let result = run_session(session, health, merged);
    let t2 = Instant::now();
    match result {
        Err(e) => {
            // A batch fails as a whole only for engine errors; answer each
            // request alone so one bad request cannot fail the others.
            let msg = e.to_string();
            log::warn!(
                "a batch of {} requests failed ({msg}); running them one by one",
                batch.len()
            );
            for j in batch {
                let out = run_session(session, health, j.inputs);
                let _ = j.reply.send(out);
            }
        }
        Ok(outputs) => {
            let mut start = 0;
            let mut answers: Vec<JobResult> = Vec::with_capacity(batch.len());
            for &r in &rows {
                let part: Result<Vec<Tensor>, _> = outputs
                    .iter()
                    .map(|o| {
                        o.slice_rows(start, start + r)
                            .map_err(|e| ServeError::Internal(format!("splitting a batch: {e}")))
                    })
                    .collect();
                answers.push(part);
                start += r;
            }
            let t3 = Instant::now();
            metrics.execution(micros(t1 - t0), micros(t2 - t1), micros(t3 - t2));
            for (j, a) in batch.into_iter().zip(answers) {
                let _ = j.reply.send(a);
            }
        }
    }
}
