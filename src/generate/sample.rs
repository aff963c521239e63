//! Choosing the next token from a decoder's logits: greedy decoding, or a
//! seeded draw after llama.cpp's chain (repetition penalty, top-k, top-p,
//! min-p, temperature); log-probabilities for scoring; stop strings that may
//! span tokens.
//!
//! Order of the chain, as llama.cpp's default sampler applies it: the
//! repetition penalty changes the logits of recent tokens; top-k, top-p and
//! min-p then pick the candidates on the model's own distribution
//! (temperature 1); the temperature scales the kept logits last, and a token
//! is drawn from their softmax. With `temperature == 0` the penalised
//! logits' argmax is taken and no random number is used.

use crate::error::GenerateError;

/// How [`Sampler`] chooses a token. `Default` is greedy decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// Divides the logits before the draw; `0` is greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` keeps all.
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities sum to at least
    /// `top_p` (in `(0, 1]`; `1` keeps all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one
    /// (in `[0, 1]`; `0` keeps all).
    pub min_p: f32,
    /// Penalty on tokens among the last `repeat_last_n` of the history:
    /// positive logits are divided by it, negative ones multiplied (`1` is
    /// off).
    pub repetition_penalty: f32,
    /// How many of the most recent tokens the penalty looks at (`0`: none).
    pub repeat_last_n: usize,
    /// Seed of the random draws: the same seed and logits give the same
    /// tokens.
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingOptions {
    /// Checks every option's range; the error names the option.
    pub fn validate(&self) -> Result<(), GenerateError> {
        let bad = |name: &'static str, message: String| Err(GenerateError::Sampling { name, message });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!("{} is not a finite value >= 0", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("{} is outside [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                format!("{} is not a finite value > 0", self.repetition_penalty),
            );
        }
        Ok(())
    }

    /// Whether tokens are chosen by argmax (no random draw).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// SplitMix64: a small, fast generator with a 64-bit state, enough for
/// drawing tokens (not for cryptography).
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Chooses tokens from logits with fixed [`SamplingOptions`]; holds the
/// random state, so successive calls continue one seeded sequence.
#[derive(Clone, Debug)]
pub struct Sampler {
    opts: SamplingOptions,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler for validated options, seeded with `opts.seed`.
    pub fn new(opts: SamplingOptions) -> Result<Self, GenerateError> {
        opts.validate()?;
        let rng = SplitMix64(opts.seed);
        Ok(Self { opts, rng })
    }

    /// The options.
    pub fn options(&self) -> &SamplingOptions {
        &self.opts
    }

    /// The next token for `logits` (one per vocabulary entry), given the
    /// tokens so far (`history`, prompt included) for the repetition
    /// penalty. NaN logits are never chosen unless all are NaN; history
    /// ids outside the logits are ignored; empty logits give token 0.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut penalized;
        let logits = if self.opts.repetition_penalty != 1.0 && self.opts.repeat_last_n > 0 {
            penalized = logits.to_vec();
            self.penalize(&mut penalized, history);
            &penalized[..]
        } else {
            logits
        };
        if self.opts.is_greedy() {
            return argmax(logits) as u32;
        }
        let candidates = self.candidates(logits);
        self.draw(logits, &candidates) as u32
    }

    /// Applies the repetition penalty to each distinct recent token once.
    fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.opts.repetition_penalty;
        if penalty == 1.0 || self.opts.repeat_last_n == 0 {
            return;
        }
        let recent = &history[history.len().saturating_sub(self.opts.repeat_last_n)..];
        let mut seen = std::collections::HashSet::with_capacity(recent.len());
        for &id in recent {
            if !seen.insert(id) {
                continue;
            }
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }

    /// The token ids that survive top-k, top-p and min-p (in no particular
    /// order). Each filter keeps a most-likely-first prefix, so the result is
    /// the shortest of the three prefixes; top-p's mass is taken over the
    /// top-k set, as llama.cpp's chain does. Only as much of the order as
    /// top-p needs is sorted.
    fn candidates(&self, logits: &[f32]) -> Vec<usize> {
        let key = |i: usize| finite_or_min(logits[i]);
        let by_logit = |a: &usize, b: &usize| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
        let mut ids: Vec<usize> = (0..logits.len()).collect();
        let k = self.opts.top_k;
        if k > 0 && k < ids.len() {
            ids.select_nth_unstable_by(k - 1, by_logit);
            ids.truncate(k);
        }
        let Some(max) = ids.iter().map(|&i| key(i)).max_by(f32::total_cmp) else {
            return ids;
        };
        let weight = |i: usize| f64::from(key(i) - max).exp();
        let total: f64 = if self.opts.top_p < 1.0 {
            ids.iter().map(|&i| weight(i)).sum()
        } else {
            0.0
        };
        if self.opts.min_p > 0.0 {
            let floor = f64::from(self.opts.min_p).ln();
            ids.retain(|&i| f64::from(key(i) - max) >= floor);
        }
        if self.opts.top_p < 1.0 {
            let target = f64::from(self.opts.top_p) * total;
            let mut prefix = 64;
            loop {
                let m = prefix.min(ids.len());
                prefix = prefix.saturating_mul(4);
                if m < ids.len() {
                    ids.select_nth_unstable_by(m - 1, by_logit);
                }
                ids[..m].sort_unstable_by(by_logit);
                let mut sum = 0.0;
                if let Some(p) = ids[..m].iter().position(|&i| {
                    sum += weight(i);
                    sum >= target
                }) {
                    ids.truncate(p + 1);
                    break;
                }
                if m == ids.len() {
                    break;
                }
            }
        }
        ids
    }

    /// Draws one of `candidates` with probability softmax(logit / T).
    fn draw(&mut self, logits: &[f32], candidates: &[usize]) -> usize {
        let key = |i: usize| f64::from(finite_or_min(logits[i]));
        let Some(max) = candidates.iter().map(|&i| key(i)).max_by(f64::total_cmp) else {
            return 0;
        };
        let t = f64::from(self.opts.temperature);
        let weights: Vec<f64> = candidates.iter().map(|&i| ((key(i) - max) / t).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (&id, w) in candidates.iter().zip(&weights) {
            if u < *w {
                return id;
            }
            u -= w;
        }
        // Rounding left `u` just past the last weight: the last candidate
        // with a non-zero weight.
        candidates
            .iter()
            .zip(&weights)
            .rev()
            .find(|(_, w)| **w > 0.0)
            .map_or(candidates[0], |(&id, _)| id)
    }
}

/// A NaN or -inf logit as the lowest finite value, so ordering and weights
/// stay defined.
fn finite_or_min(l: f32) -> f32 {
    if l.is_nan() {
        f32::MIN
    } else {
        l.max(f32::MIN)
    }
}

/// The index of the largest logit (the first of equals; NaN counts as the
/// lowest value); 0 for empty logits.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        let l = finite_or_min(l);
        if l > best_value {
            best = i;
            best_value = l;
        }
    }
    best
}

/// A token and its log-probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token id.
    pub id: u32,
    /// Its natural-log probability.
    pub logprob: f32,
}

/// The log-probabilities `logits - logsumexp(logits)`, computed in f64. NaN
/// logits stay NaN and are left out of the sum; when no logit is finite, or
/// one is +inf, every entry is NaN.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits
        .iter()
        .filter(|l| !l.is_nan())
        .fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
    if !max.is_finite() {
        // Every logit -inf or NaN, or one +inf: no distribution to normalise.
        return vec![f32::NAN; logits.len()];
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| (f64::from(l) - max).exp())
        .sum();
    let lse = max + sum.ln();
    logits.iter().map(|&l| (f64::from(l) - lse) as f32).collect()
}

/// The `k` most likely tokens, most likely first (equal values by lower id;
/// NaN entries are left out).
pub fn top_logprobs(logprobs: &[f32], k: usize) -> Vec<TokenLogprob> {
    let mut all: Vec<TokenLogprob> = logprobs
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_nan())
        .map(|(i, &logprob)| TokenLogprob { id: i as u32, logprob })
        .collect();
    let order = |a: &TokenLogprob, b: &TokenLogprob| b.logprob.total_cmp(&a.logprob).then(a.id.cmp(&b.id));
    if k < all.len() && k > 0 {
        all.select_nth_unstable_by(k - 1, order);
    }
    all.truncate(k);
    all.sort_unstable_by(order);
    all
}

/// Watches generated text for stop strings, which may be split across
/// tokens: text that could be the start of a stop string is held back until
/// it is known not to be.
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopStrings {
    /// A watcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            pending: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds generated text; returns the text that is safe to show (up to,
    /// not including, the earliest stop string) and whether a stop string
    /// was found. After a stop every call returns `("", true)`.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(text);
        let earliest = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min();
        if let Some(at) = earliest {
            self.stopped = true;
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        let hold = self.held_suffix();
        let out = self.pending[..self.pending.len() - hold].to_string();
        self.pending.drain(..self.pending.len() - hold);
        (out, false)
    }

    /// The text held back at the end of generation (empty after a stop).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// The length of the longest end of `pending` that begins a stop string.
    fn held_suffix(&self) -> usize {
        let p = &self.pending;
        self.stops
            .iter()
            .filter_map(|s| {
                (1..s.len().min(p.len() + 1)).rev().find(|&n| {
                    let start = p.len() - n;
                    p.is_char_boundary(start) && s.is_char_boundary(n) && p[start..] == s[..n]
                })
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_out_of_range_are_named() {
        let cases: [(&str, SamplingOptions); 5] = [
            (
                "temperature",
                SamplingOptions {
                    temperature: -1.0,
                    ..Default::default()
                },
            ),
            (
                "temperature",
                SamplingOptions {
                    temperature: f32::NAN,
                    ..Default::default()
                },
            ),
            (
                "top_p",
                SamplingOptions {
                    top_p: 0.0,
                    ..Default::default()
                },
            ),
            (
                "min_p",
                SamplingOptions {
                    min_p: 1.5,
                    ..Default::default()
                },
            ),
            (
                "repetition_penalty",
                SamplingOptions {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
            ),
        ];
        for (want, opts) in cases {
            match Sampler::new(opts) {
                Err(GenerateError::Sampling { name, .. }) => assert_eq!(name, want),
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    #[test]
    fn splitmix_matches_its_published_first_outputs() {
        // The reference sequence for seed 1234567 (Vigna's splitmix64.c).
        let mut rng = SplitMix64(1_234_567);
        let want = [
            6_457_827_717_110_365_317u64,
            3_203_168_211_198_807_973,
            9_817_491_932_198_370_423,
        ];
        for w in want {
            assert_eq!(rng.next_u64(), w);
        }
    }
}
