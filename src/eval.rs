//! Classification evaluation: top-1 accuracy, a confusion matrix and latency
//! per batch, over a labelled data set. Used by `wginfer eval` and by the
//! optimization tools to report accuracy before and after.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::error::{Error, RunError};
use crate::session::Session;
use crate::tensor::Tensor;

/// What to evaluate and how.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Graph input to feed.
    pub input: String,
    /// Output holding class scores (logits or probabilities) on its last axis.
    pub output: String,
    /// Samples per run; 0 means the whole set in one run.
    pub batch_size: usize,
}

/// The result of an evaluation.
#[derive(Clone, Debug)]
pub struct EvalReport {
    /// Samples scored.
    pub samples: usize,
    /// Samples whose top-1 class equals the label.
    pub correct: usize,
    /// `confusion[label][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Wall time of each `Session::run`.
    pub batch_latencies: Vec<Duration>,
    /// Samples per batch.
    pub batch_size: usize,
    /// Predicted class per sample.
    pub predictions: Vec<usize>,
}

impl EvalReport {
    /// Top-1 accuracy in `[0, 1]`.
    pub fn accuracy(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.correct as f64 / self.samples as f64
        }
    }

    /// The `q`-quantile (0..=1) of batch latency.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        let mut v = self.batch_latencies.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        v[i]
    }

    /// Mean batch latency.
    pub fn latency_mean(&self) -> Duration {
        if self.batch_latencies.is_empty() {
            return Duration::ZERO;
        }
        self.batch_latencies.iter().sum::<Duration>() / self.batch_latencies.len() as u32
    }
}

/// The index of the largest value in each row of `row` elements.
pub fn argmax_rows(values: &[f32], row: usize) -> Vec<usize> {
    values
        .chunks(row.max(1))
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
                )
                .0
        })
        .collect()
}

/// Runs `session` over `inputs` (first axis = samples) in batches and scores
/// the top-1 class against `labels` (integers, one per sample). `progress` is
/// called with (samples done, total) after each batch.
pub fn evaluate(
    session: &Session,
    inputs: &Tensor,
    labels: &Tensor,
    opts: &EvalOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalReport, Error> {
    let n = inputs.shape().first().copied().unwrap_or(0);
    let labels: Vec<i64> = labels.to_i64_vec();
    if labels.len() != n {
        return Err(RunError::InputShape {
            name: "labels".into(),
            expected: format!("[{n}] (one label per input sample)"),
            got: vec![labels.len()],
        }
        .into());
    }
    let bs = if opts.batch_size == 0 {
        n.max(1)
    } else {
        opts.batch_size
    };
    let mut report = EvalReport {
        samples: 0,
        correct: 0,
        confusion: Vec::new(),
        batch_latencies: Vec::new(),
        batch_size: bs,
        predictions: Vec::with_capacity(n),
    };
    let mut start = 0;
    while start < n {
        let end = (start + bs).min(n);
        let batch = inputs.slice_rows(start, end)?;
        let t0 = Instant::now();
        let out = session.run([(opts.input.clone(), batch)])?;
        report.batch_latencies.push(t0.elapsed());
        let scores = out.get(&opts.output).ok_or_else(|| RunError::UnknownOutput {
            name: opts.output.clone(),
            expected: out.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        let classes = scores.shape().last().copied().unwrap_or(1);
        let preds = argmax_rows(&scores.to_f32_vec(), classes);
        if report.confusion.is_empty() {
            report.confusion = vec![vec![0; classes]; classes];
        }
        for (i, &p) in preds.iter().enumerate() {
            let label = labels[start + i];
            if label < 0 || label as usize >= classes {
                return Err(RunError::InputShape {
                    name: "labels".into(),
                    expected: format!("class indices in 0..{classes}"),
                    got: vec![label.max(0) as usize],
                }
                .into());
            }
            let l = label as usize;
            report.confusion[l][p] += 1;
            if l == p {
                report.correct += 1;
            }
        }
        report.samples += preds.len();
        report.predictions.extend(preds);
        progress(end, n);
        start = end;
    }
    Ok(report)
}
