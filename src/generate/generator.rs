//! [`Generator`]: a decoder with its tokenizer, chat template and sampler,
//! streaming tokens to a library caller, the command line and the server.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, GenerateError};
use crate::generate::cache::KvDtype;
use crate::generate::chat::{ChatMessage, ChatTemplate};
use crate::generate::cpu::CpuDecoder;
use crate::generate::sample::{log_softmax, top_logprobs, Sampler, SamplingOptions, StopStrings, TokenLogprob};
use crate::generate::tokenizer::{TextStream, Tokenizer};
use crate::generate::{load, Decoder, DecoderWeights, Logits};
use crate::model::gguf::GgufFile;
use crate::Device;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// How to pick each token.
    pub sampling: SamplingOptions,
    /// Strings that end generation (not included in the text).
    pub stop: Vec<String>,
    /// Log-probabilities: each generated token's and the `k` most likely
    /// tokens at its position (`Some(0)`: the token's alone). `None` skips
    /// the log-softmax over the vocabulary.
    pub top_logprobs: Option<usize>,
    /// Stop at the tokenizer's end-of-generation tokens.
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            sampling: SamplingOptions::default(),
            stop: Vec::new(),
            top_logprobs: None,
            stop_at_eos: true,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
}

/// One generated token.
#[derive(Clone, Debug)]
pub struct GeneratedToken {
    /// Its id.
    pub id: u32,
    /// The text it completes (may be empty while a UTF-8 character or a
    /// possible stop string is pending).
    pub text: String,
    /// Its log-probability under the model (before sampling options), when
    /// [`GenerateOptions::top_logprobs`] asks for log-probabilities.
    pub logprob: Option<f32>,
    /// The most likely tokens at this position, when asked for.
    pub top: Vec<TokenLogprob>,
}

/// The longest default context: a model's trained context, capped here.
pub const DEFAULT_CONTEXT: usize = 4096;

/// What a decoder file holds: weights, tokenizer, chat template.
#[derive(Debug)]
pub struct ModelParts {
    /// The weights (shared by every decoder built on them).
    pub weights: Arc<DecoderWeights>,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, when the model has one.
    pub template: Option<ChatTemplate>,
}

impl ModelParts {
    /// Reads a GGUF decoder file or a Hugging Face directory (see
    /// [`hf`](crate::generate::hf)).
    pub fn load(path: &Path) -> Result<Self, Error> {
        if path.is_dir() {
            let (tokenizer, template) = crate::generate::hf::tokenizer_and_template(path)?;
            return Ok(Self {
                weights: Arc::new(crate::generate::hf::from_dir(path)?),
                tokenizer,
                template,
            });
        }
        let file = GgufFile::open(path).map_err(GenerateError::from)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let template = ChatTemplate::from_gguf(&file)?;
        let weights = Arc::new(load::from_gguf(&file)?);
        Ok(Self {
            weights,
            tokenizer,
            template,
        })
    }
}

/// A decoder language model ready to generate: decoder (CPU or GPU),
/// tokenizer, chat template.
pub struct Generator {
    decoder: Box<dyn Decoder>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    /// Tokens in the decoder's cache, so a prompt sharing a prefix reuses it.
    cached_tokens: Vec<u32>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("config", self.decoder.config())
            .finish_non_exhaustive()
    }
}

/// Builds a decoder for `weights` on `device` with an f32 cache of `context` positions.
pub fn decoder_on(weights: Arc<DecoderWeights>, device: &Device, context: usize) -> Result<Box<dyn Decoder>, Error> {
    decoder_with_kv(weights, device, context, KvDtype::F32)
}

/// As [`decoder_on`], with the cache holding `kv` values.
pub fn decoder_with_kv(
    weights: Arc<DecoderWeights>,
    device: &Device,
    context: usize,
    kv: KvDtype,
) -> Result<Box<dyn Decoder>, Error> {
    match device {
        Device::Cpu | Device::CpuReference => Ok(Box::new(CpuDecoder::with_kv_dtype(weights, context, kv)?)),
        #[cfg(feature = "gpu")]
        Device::Gpu(choice) => Ok(Box::new(crate::generate::gpu::GpuDecoder::with_kv_dtype(
            &weights, context, choice, kv,
        )?)),
        #[cfg(not(feature = "gpu"))]
        Device::Gpu(_) => Err(Error::FeatureDisabled {
            feature: "gpu",
            what: "a GPU decoder".to_string(),
        }),
    }
}

impl Generator {
    /// Loads a decoder with its tokenizer and chat template from a GGUF
    /// file or a Hugging Face directory (see [`hf`](crate::generate::hf)).
    /// `context` defaults to the model's trained context, capped at 4096
    /// positions.
    pub fn load(path: impl AsRef<Path>, device: &Device, context: Option<usize>) -> Result<Self, Error> {
        let parts = ModelParts::load(path.as_ref())?;
        let context = context.unwrap_or(parts.weights.config.trained_context.min(DEFAULT_CONTEXT));
        let decoder = decoder_on(parts.weights, device, context)?;
        Ok(Self::from_parts(decoder, parts.tokenizer, parts.template))
    }

    /// A generator from its parts.
    pub fn from_parts(decoder: Box<dyn Decoder>, tokenizer: Tokenizer, template: Option<ChatTemplate>) -> Self {
        Self {
            decoder,
            tokenizer,
            template,
            cached_tokens: Vec::new(),
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The decoder.
    pub fn decoder(&mut self) -> &mut dyn Decoder {
        self.decoder.as_mut()
    }

    /// Renders a conversation with the model's chat template, ending with
    /// the assistant's turn.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, GenerateError> {
        match &self.template {
            Some(t) => t.render(messages, true),
            None => Err(GenerateError::Tokenizer(
                "the model has no chat template (tokenizer.chat_template)".to_string(),
            )),
        }
    }

    /// Token ids of a prompt (with BOS when the model wants one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        self.tokenizer.encode(text, true)
    }

    /// Runs the prompt through the decoder, reusing the cached prefix it
    /// shares with the previous prompt, and returns the last position's logits.
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, GenerateError> {
        if prompt.is_empty() {
            return Err(GenerateError::Tokenizer("the prompt is empty".to_string()));
        }
        let shared = self
            .cached_tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // Re-run at least the last prompt token: its logits start generation.
        let keep = shared.min(prompt.len() - 1).min(self.decoder.cached());
        self.decoder.truncate(keep);
        self.cached_tokens.truncate(keep);
        let logits = self.decoder.forward(&prompt[keep..], Logits::Last)?;
        self.cached_tokens.extend_from_slice(&prompt[keep..]);
        Ok(logits)
    }

    /// Starts generating after `prompt` (token ids); the returned iterator
    /// yields each token as it is sampled.
    pub fn generate_ids(&mut self, prompt: &[u32], opts: &GenerateOptions) -> Result<Generation<'_>, GenerateError> {
        let needed = prompt.len().saturating_add(opts.max_tokens.min(1));
        if needed > self.decoder.context() {
            return Err(GenerateError::Context {
                needed,
                context: self.decoder.context(),
            });
        }
        Sampler::new(opts.sampling.clone())?;
        let logits = self.prefill(prompt)?;
        Ok(Generation {
            picker: TokenPicker::new(&self.tokenizer, prompt, opts)?,
            logits,
            decoder: self.decoder.as_mut(),
            cached_tokens: &mut self.cached_tokens,
        })
    }

    /// Teacher-forced log-probabilities of every token of `ids` after the
    /// first (scoring and perplexity): `result[i]` scores `ids[i + 1]`.
    pub fn score(&mut self, ids: &[u32]) -> Result<Vec<f32>, GenerateError> {
        self.decoder.truncate(0);
        self.cached_tokens.clear();
        let logits = self.decoder.forward(ids, Logits::All)?;
        let vocab = self.decoder.config().vocab;
        Ok(logits
            .chunks_exact(vocab)
            .zip(ids.iter().skip(1))
            .map(|(row, &next)| log_softmax(row)[next as usize])
            .collect())
    }

    /// Perplexity of `ids` by llama.cpp's protocol (`llama-perplexity`):
    /// the ids cut into chunks of `chunk` tokens (a partial last chunk
    /// dropped), each run from an empty cache with its first token replaced
    /// by BOS when the tokenizer adds BOS (`add_bos_token`), and the tokens
    /// at positions `chunk / 2 + 1 .. chunk` scored. At most `max_chunks`
    /// chunks run; `on_chunk(i, ppl)` sees the running perplexity after
    /// chunk `i` (from 1).
    pub fn perplexity(
        &mut self,
        ids: &[u32],
        chunk: usize,
        max_chunks: Option<usize>,
        mut on_chunk: impl FnMut(usize, f64),
    ) -> Result<Perplexity, GenerateError> {
        if chunk < 4 {
            return Err(GenerateError::Perplexity(format!(
                "a chunk of {chunk} tokens is too short: use at least 4"
            )));
        }
        let chunks = (ids.len() / chunk).min(max_chunks.unwrap_or(usize::MAX));
        if chunks == 0 {
            return Err(GenerateError::Perplexity(format!(
                "the text has {} tokens, fewer than one chunk of {chunk}",
                ids.len()
            )));
        }
        let bos = self.tokenizer.bos().filter(|_| self.tokenizer.adds_bos());
        let (mut nll, mut scored) = (0f64, 0usize);
        for (i, c) in ids.chunks_exact(chunk).take(chunks).enumerate() {
            let mut tokens = c.to_vec();
            if let Some(b) = bos {
                tokens[0] = b;
            }
            // `score(..)[j]` scores `tokens[j + 1]`.
            for lp in &self.score(&tokens)?[chunk / 2..] {
                nll -= f64::from(*lp);
                scored += 1;
            }
            on_chunk(i + 1, (nll / scored as f64).exp());
        }
        Ok(Perplexity {
            perplexity: (nll / scored as f64).exp(),
            chunks,
            scored,
        })
    }
}

/// What [`Generator::perplexity`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perplexity {
    /// `exp` of the mean negative log-likelihood of the scored tokens.
    pub perplexity: f64,
    /// Chunks run.
    pub chunks: usize,
    /// Tokens scored.
    pub scored: usize,
}

/// The token-picking side of one sequence: sampler, repetition history,
/// incremental detokenizer, stop strings and limits. It turns each step's
/// logits into a [`GeneratedToken`]; whoever runs the decoder (a
/// [`Generation`], the server's batching engine) feeds it the next logits.
pub struct TokenPicker<'a> {
    tokenizer: &'a Tokenizer,
    stream: TextStream<'a>,
    sampler: Sampler,
    stops: StopStrings,
    history: Vec<u32>,
    produced: usize,
    opts: GenerateOptions,
    finish: Option<FinishReason>,
}

impl<'a> TokenPicker<'a> {
    /// A picker for the tokens after `prompt`.
    pub fn new(tokenizer: &'a Tokenizer, prompt: &[u32], opts: &GenerateOptions) -> Result<Self, GenerateError> {
        Ok(Self {
            tokenizer,
            stream: TextStream::new(tokenizer),
            sampler: Sampler::new(opts.sampling.clone())?,
            stops: StopStrings::new(opts.stop.clone()),
            history: prompt.to_vec(),
            produced: 0,
            opts: opts.clone(),
            finish: if opts.max_tokens == 0 {
                Some(FinishReason::Length)
            } else {
                None
            },
        })
    }

    /// Why the sequence ended (`None` while it goes on).
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Tokens picked so far.
    pub fn produced(&self) -> usize {
        self.produced
    }

    /// Text held back at the end (a partial stop string that never completed).
    pub fn flush(&mut self) -> String {
        self.stops.flush()
    }

    /// Ends the sequence early (`max_tokens` semantics: `length`).
    pub fn cut(&mut self) {
        self.finish.get_or_insert(FinishReason::Length);
    }

    /// Picks the token after `logits`. `room` says whether the cache can take
    /// one more position; when the picked token ends the sequence (end of
    /// generation, stop string, `max_tokens`, no room) [`Self::finish_reason`]
    /// is set, else the caller runs the token and calls this again.
    pub fn pick(&mut self, logits: &[f32], room: bool) -> Result<Option<GeneratedToken>, GenerateError> {
        if self.finish.is_some() {
            return Ok(None);
        }
        let id = self.sampler.sample(logits, &self.history);
        // The log-softmax over the vocabulary only when it is asked for: at
        // a batch of decoding rows it costs as much as the attention.
        let (logprob, top) = match self.opts.top_logprobs {
            Some(k) => {
                let lp = log_softmax(logits);
                (lp.get(id as usize).copied(), top_logprobs(&lp, k))
            }
            None => (None, Vec::new()),
        };
        self.produced += 1;
        self.history.push(id);
        if self.opts.stop_at_eos && self.tokenizer.is_end_of_generation(id) {
            self.finish = Some(FinishReason::Stop);
            let text = self.stops.flush();
            return Ok(Some(GeneratedToken { id, text, logprob, top }));
        }
        let piece = self.stream.push(id)?;
        let (text, stopped) = self.stops.push(&piece);
        if stopped {
            self.finish = Some(FinishReason::Stop);
        } else if self.produced >= self.opts.max_tokens || !room {
            self.finish = Some(FinishReason::Length);
        }
        Ok(Some(GeneratedToken { id, text, logprob, top }))
    }
}

/// Tokens being generated; ends at `max_tokens`, an end-of-generation token,
/// a stop string or the end of the context.
pub struct Generation<'a> {
    decoder: &'a mut dyn Decoder,
    cached_tokens: &'a mut Vec<u32>,
    picker: TokenPicker<'a>,
    logits: Vec<f32>,
}

impl Generation<'_> {
    /// Why generation ended (`None` while it goes on).
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.picker.finish_reason()
    }

    /// Text held back at the end (a partial stop string that never completed).
    pub fn flush(&mut self) -> String {
        self.picker.flush()
    }

    fn step(&mut self) -> Result<Option<GeneratedToken>, GenerateError> {
        let room = self.decoder.cached() < self.decoder.context();
        let Some(tok) = self.picker.pick(&self.logits, room)? else {
            return Ok(None);
        };
        if self.picker.finish_reason().is_none() {
            self.logits = self.decoder.forward(&[tok.id], Logits::Last)?;
            self.cached_tokens.push(tok.id);
        }
        Ok(Some(tok))
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<GeneratedToken, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(t) => t.map(Ok),
            Err(e) => {
                self.picker.finish.get_or_insert(FinishReason::Stop);
                Some(Err(e))
            }
        }
    }
}
