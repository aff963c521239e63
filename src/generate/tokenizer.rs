//! The tokenizer of a decoder: built from a GGUF file's `tokenizer.ggml.*`
//! metadata, or read from a Hugging Face `tokenizer.json`, on the
//! `tokenizers` crate.
//!
//! A GGUF `gpt2` vocabulary (byte-level BPE) becomes a BPE model over the
//! file's tokens and merges. The text is cut into words by the regular
//! expressions llama.cpp applies for the file's `tokenizer.ggml.pre` (each
//! one splitting the pieces of the one before, matches kept as pieces of
//! their own), the words' bytes are spelled in GPT-2's byte alphabet, and
//! the merges join them. Control tokens (`token_type` 3) and user-defined
//! ones (4) are matched in the text before any of that, so `<|im_start|>`
//! is one token.
//!
//! A GGUF `llama` vocabulary (SentencePiece BPE with scores) becomes a BPE
//! model whose merges are recovered from the scores (every split of a token
//! into two tokens, ranked by the whole token's score, as `transformers`
//! does for these files), with bytes outside the vocabulary as `<0xNN>`
//! tokens, spaces spelled `▁` and one prepended to each stretch of text
//! (`tokenizer.ggml.add_space_prefix`, default on), as llama.cpp does.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::GenerateError;
use crate::model::gguf::GgufFile;

/// GPT-2's word pattern (contractions, letters, digits, other symbols,
/// whitespace).
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pattern: case-insensitive contractions, numbers of up to three
/// digits, newlines kept with the symbols before them.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's pattern: Llama 3's with single digits.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o's pattern (also Llama 4): words split at case changes.
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken pattern.
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Every digit a piece of its own.
const DIGIT_SPLIT: &str = r"\p{N}";

/// The pre-tokenizer of each `tokenizer.ggml.pre` value: its names, its
/// regular expressions in order, and whether whole words found in the
/// vocabulary skip the merges.
const PRE_TOKENIZERS: &[(&[&str], &[&str], bool)] = &[
    (
        &["gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion", "granite-docling"],
        &[GPT2_SPLIT],
        false,
    ),
    (
        &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
        ],
        &[DIGIT_SPLIT, GPT2_SPLIT],
        false,
    ),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "dbrx",
            "smaug-bpe",
            "chatglm-bpe",
        ],
        &[LLAMA3_SPLIT],
        true,
    ),
    (
        &["qwen2", "stablelm2", "deepseek-r1-qwen", "megrez", "hunyuan"],
        &[QWEN2_SPLIT],
        false,
    ),
    (&["gpt-4o", "llama4", "minimax-m2"], &[GPT4O_SPLIT], false),
    (&["tekken"], &[TEKKEN_SPLIT], false),
    (
        &["default"],
        &[r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", "[0-9][0-9][0-9]"],
        false,
    ),
];

/// Token texts that end a turn or the text, as llama.cpp recognises them
/// among a vocabulary's control tokens.
const END_OF_GENERATION: &[&str] = &[
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|return|>",
    "<|call|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
];

/// `tokenizer.ggml.token_type` values.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn err(message: impl Into<String>) -> GenerateError {
    GenerateError::Tokenizer(message.into())
}

/// A decoder's tokenizer: text to token ids and back, with the special ids
/// the generation loop needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    /// The inner tokenizer's own post-processor puts BOS first.
    post_adds_bos: bool,
    end_of_generation: HashSet<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// The vocabulary arrays of a GGUF file, checked.
struct GgufVocab {
    tokens: Vec<String>,
    token_type: Vec<i64>,
}

impl GgufVocab {
    fn read(file: &GgufFile) -> Result<Self, GenerateError> {
        let key = "tokenizer.ggml.tokens";
        let tokens = string_array(file, key)?.ok_or_else(|| err(format!("`{key}` is missing")))?;
        if tokens.is_empty() {
            return Err(err(format!("`{key}` is empty")));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(err(format!(
                "`{key}` has {} entries, more than u32 ids can name",
                tokens.len()
            )));
        }
        let key = "tokenizer.ggml.token_type";
        let token_type = match file.get_array(key) {
            None if file.metadata(key).is_some() => return Err(err(format!("`{key}` is not an array"))),
            None => vec![1; tokens.len()],
            Some(values) => {
                let types = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64()
                            .ok_or_else(|| err(format!("`{key}` entry {i} is not an integer")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if types.len() != tokens.len() {
                    return Err(err(format!(
                        "`{key}` has {} entries for {} tokens",
                        types.len(),
                        tokens.len()
                    )));
                }
                types
            }
        };
        Ok(Self { tokens, token_type })
    }

    /// A token id from metadata, checked against the vocabulary.
    fn id(&self, file: &GgufFile, key: &str) -> Result<Option<u32>, GenerateError> {
        let Some(value) = file.metadata(key) else {
            return Ok(None);
        };
        // Some converters write -1 (as a signed or wrapped value) for "none".
        if value.as_i64() == Some(-1) || value.as_u64() == Some(u64::from(u32::MAX)) {
            return Ok(None);
        }
        let id = value
            .as_u64()
            .ok_or_else(|| err(format!("`{key}` is not a token id")))?;
        if id >= self.tokens.len() as u64 {
            return Err(err(format!(
                "`{key}` = {id} is outside the vocabulary of {}",
                self.tokens.len()
            )));
        }
        Ok(Some(id as u32))
    }
}

/// A metadata array of strings, `None` when the key is absent.
fn string_array(file: &GgufFile, key: &str) -> Result<Option<Vec<String>>, GenerateError> {
    if file.metadata(key).is_none() {
        return Ok(None);
    }
    let values = file
        .get_array(key)
        .ok_or_else(|| err(format!("`{key}` is not an array")))?;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| err(format!("`{key}` entry {i} is not a string")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The regular expressions and `ignore_merges` of a `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> Result<(&'static [&'static str], bool), GenerateError> {
    PRE_TOKENIZERS
        .iter()
        .find(|(names, _, _)| names.contains(&pre))
        .map(|&(_, regexes, ignore_merges)| (regexes, ignore_merges))
        .ok_or_else(|| {
            let known: Vec<&str> = PRE_TOKENIZERS.iter().flat_map(|(n, _, _)| n.iter().copied()).collect();
            err(format!(
                "`tokenizer.ggml.pre` = `{pre}` is not a known pre-tokenizer (known: {})",
                known.join(", ")
            ))
        })
}

/// Splits by each regex in turn, then spells bytes in GPT-2's alphabet.
fn byte_level_pre_tokenizer(regexes: &[&str]) -> Result<PreTokenizerWrapper, GenerateError> {
    let mut steps = Vec::with_capacity(regexes.len() + 1);
    for r in regexes {
        let split = Split::new(
            SplitPattern::Regex((*r).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| err(format!("pre-tokenizer pattern `{r}`: {e}")))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes in its `tokenizer.ggml.*`
    /// metadata: `tokenizer.ggml.model` = `gpt2` (byte-level BPE) or `llama`
    /// (SentencePiece BPE). Any other model, a missing or malformed array, an id
    /// outside the vocabulary or an unknown `tokenizer.ggml.pre` is a
    /// [`GenerateError::Tokenizer`] naming the key.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GenerateError> {
        let model = file
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| err("`tokenizer.ggml.model` is missing or not a string"))?;
        let vocab = GgufVocab::read(file)?;
        let mut inner = match model {
            "gpt2" => byte_level(file, &vocab)?,
            "llama" => sentencepiece(file, &vocab)?,
            _ => {
                return Err(err(format!(
                    "`tokenizer.ggml.model` = `{model}` is not supported (supported: gpt2, byte-level BPE; \
                     llama, SentencePiece BPE)"
                )))
            }
        };
        add_gguf_special_tokens(&mut inner, &vocab)?;

        let bos = vocab.id(file, "tokenizer.ggml.bos_token_id")?;
        let eos = vocab.id(file, "tokenizer.ggml.eos_token_id")?;
        let mut end_of_generation: HashSet<u32> = eos.into_iter().collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            end_of_generation.extend(vocab.id(file, key)?);
        }
        for (id, (text, &ty)) in vocab.tokens.iter().zip(&vocab.token_type).enumerate() {
            let special = ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED;
            if special && END_OF_GENERATION.contains(&text.as_str()) {
                end_of_generation.insert(id as u32);
            }
        }
        // llama.cpp puts BOS first in SentencePiece vocabularies that do not say.
        let add_bos = get_bool(file, "tokenizer.ggml.add_bos_token", model == "llama")?;
        Ok(Self {
            inner,
            vocab_size: vocab.tokens.len(),
            bos,
            eos,
            add_bos: add_bos && bos.is_some(),
            post_adds_bos: false,
            end_of_generation,
        })
    }

    /// Reads a Hugging Face `tokenizer.json`. BOS and EOS come from
    /// `tokenizer_config.json` beside it when present (`bos_token`,
    /// `eos_token`), the end-of-generation set also from
    /// `generation_config.json`'s `eos_token_id` and from the special added
    /// tokens llama.cpp treats as ends of a turn. `encode`'s `add_special`
    /// puts BOS first where `tokenizer_config.json`'s `add_bos_token` says
    /// so, and otherwise where the file's own post-processor does (as
    /// transformers' fast tokenizers do).
    pub fn from_file(path: &Path) -> Result<Self, GenerateError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let generation = read_json(&dir.join("generation_config.json"))?;
        let id_of = |field: &str| {
            let v = config.as_ref()?.get(field)?;
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let bos = id_of("bos_token");
        let eos = id_of("eos_token");
        let mut end_of_generation: HashSet<u32> = eos.into_iter().collect();
        if let Some(ids) = generation.as_ref().and_then(|g| g.get("eos_token_id")) {
            let ids = ids.as_array().map_or_else(|| vec![ids.clone()], Clone::clone);
            end_of_generation.extend(
                ids.iter()
                    .filter_map(|v| v.as_u64())
                    .filter_map(|v| u32::try_from(v).ok()),
            );
        }
        for (id, token) in inner.get_added_tokens_decoder() {
            if token.special && END_OF_GENERATION.contains(&token.content.as_str()) {
                end_of_generation.insert(id);
            }
        }
        let vocab_size = inner.get_vocab_size(true);
        let post_adds_bos = bos.is_some_and(|b| {
            inner
                .encode_fast("a", true)
                .is_ok_and(|e| e.get_ids().first() == Some(&b))
        });
        let add_bos = match config.as_ref().and_then(|c| c.get("add_bos_token")) {
            Some(v) => v.as_bool().ok_or_else(|| {
                err(format!(
                    "tokenizer_config.json: add_bos_token is {v}, not true or false"
                ))
            })?,
            None => post_adds_bos,
        };
        Ok(Self {
            inner,
            vocab_size,
            bos,
            eos,
            add_bos: add_bos && bos.is_some(),
            post_adds_bos,
            end_of_generation,
        })
    }

    /// The token ids of `text`. Special tokens written in the text (such as
    /// `<|im_start|>`) become their ids. With `add_special`, BOS is put
    /// first when the model asks for it (`tokenizer.ggml.add_bos_token`, or
    /// a `tokenizer.json`'s post-processor).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, GenerateError> {
        let encoding = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| err(format!("encoding: {e}")))?;
        let ids = encoding.get_ids();
        match self.bos {
            Some(bos) if add_special && self.add_bos && !self.post_adds_bos => {
                Ok(std::iter::once(bos).chain(ids.iter().copied()).collect())
            }
            Some(bos) if add_special && !self.add_bos && self.post_adds_bos && ids.first() == Some(&bos) => {
                Ok(ids[1..].to_vec())
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// The text of `ids`, special tokens included (bytes that do not form
    /// UTF-8 become U+FFFD). An id outside the vocabulary is
    /// [`GenerateError::TokenId`].
    pub fn decode(&self, ids: &[u32]) -> Result<String, GenerateError> {
        self.check_ids(ids)?;
        self.inner.decode(ids, false).map_err(|e| err(format!("decoding: {e}")))
    }

    /// The text of `ids` without special tokens (control tokens).
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String, GenerateError> {
        self.check_ids(ids)?;
        self.inner.decode(ids, true).map_err(|e| err(format!("decoding: {e}")))
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), GenerateError> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            Some(&id) => Err(GenerateError::TokenId {
                id,
                vocab: self.vocab_size,
            }),
            None => Ok(()),
        }
    }

    /// Entries of the vocabulary (the model's embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode(.., true)` puts BOS first.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether generation ends at `id`: EOS, end-of-turn (`eot`/`eom` ids)
    /// and control tokens such as `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// The end-of-generation ids, ascending.
    pub fn end_of_generation(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.end_of_generation.iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// A token as the vocabulary spells it (`Ġworld` for " world" in a
    /// byte-level vocabulary; `<|im_end|>` for a control token).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token spelled as in the vocabulary.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }
}

/// A bool from metadata, `default` when absent.
fn get_bool(file: &GgufFile, key: &str, default: bool) -> Result<bool, GenerateError> {
    match file.metadata(key) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| err(format!("`{key}` is not a bool"))),
    }
}

/// A GGUF `gpt2` vocabulary: byte-level BPE after the pre-tokenizer of
/// `tokenizer.ggml.pre`.
fn byte_level(file: &GgufFile, vocab: &GgufVocab) -> Result<tokenizers::Tokenizer, GenerateError> {
    let pre = match file.metadata("tokenizer.ggml.pre") {
        None => "default",
        Some(v) => v.as_str().ok_or_else(|| err("`tokenizer.ggml.pre` is not a string"))?,
    };
    let (regexes, ignore_merges) = pre_tokenizer(pre)?;
    let mut inner = tokenizers::Tokenizer::new(byte_level_bpe(file, vocab, ignore_merges)?);
    inner.with_pre_tokenizer(Some(byte_level_pre_tokenizer(regexes)?));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

/// `tokenizer.ggml.token_type` of ordinary tokens.
const TOKEN_TYPE_NORMAL: i64 = 1;

/// A GGUF `llama` vocabulary: SentencePiece BPE with merges recovered from
/// `tokenizer.ggml.scores`, byte fallback, `▁` for spaces.
fn sentencepiece(file: &GgufFile, vocab: &GgufVocab) -> Result<tokenizers::Tokenizer, GenerateError> {
    let key = "tokenizer.ggml.scores";
    let values = file
        .get_array(key)
        .ok_or_else(|| err(format!("`{key}` is missing or not an array")))?;
    let scores = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_f64()
                .ok_or_else(|| err(format!("`{key}` entry {i} is not a float")))
        })
        .collect::<Result<Vec<f64>, _>>()?;
    if scores.len() != vocab.tokens.len() {
        return Err(err(format!(
            "`{key}` has {} entries for {} tokens",
            scores.len(),
            vocab.tokens.len()
        )));
    }
    let map: Vocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(map, merges_from_scores(vocab, &scores))
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = vocab.id(file, "tokenizer.ggml.unknown_token_id")? {
        builder = builder.unk_token(vocab.tokens[unk as usize].clone());
    }
    let model = builder
        .build()
        .map_err(|e| err(format!("SentencePiece vocabulary: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(model);
    let add_space_prefix = get_bool(file, "tokenizer.ggml.add_space_prefix", true)?;
    let replace = |from: &str, to: &str| Replace::new(from, to).map_err(|e| err(format!("space escape: {e}")));
    let mut normalizers = vec![NormalizerWrapper::Replace(replace(" ", "\u{2581}")?)];
    if add_space_prefix {
        normalizers.insert(0, NormalizerWrapper::Prepend(Prepend::new("\u{2581}".into())));
    }
    inner
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| err(format!("SentencePiece normalizer: {e}")))?;
    inner.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(replace("\u{2581}", " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', usize::from(add_space_prefix), 0)),
    ])));
    Ok(inner)
}

/// Every split of an ordinary token into two ordinary tokens is a merge,
/// ranked by the whole token's score (highest first; then by the pieces'
/// ids).
fn merges_from_scores(vocab: &GgufVocab, scores: &[f64]) -> Vec<(String, String)> {
    let normal = |i: usize| vocab.token_type[i] == TOKEN_TYPE_NORMAL;
    let ids: std::collections::HashMap<&str, usize> = (0..vocab.tokens.len())
        .filter(|&i| normal(i))
        .map(|i| (vocab.tokens[i].as_str(), i))
        .collect();
    let mut ranked: Vec<(f64, usize, usize)> = Vec::new();
    for (i, token) in vocab.tokens.iter().enumerate().filter(|&(i, _)| normal(i)) {
        for (at, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(at);
            if let (Some(&a), Some(&b)) = (ids.get(l), ids.get(r)) {
                ranked.push((scores[i], a, b));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    ranked
        .into_iter()
        .map(|(_, a, b)| (vocab.tokens[a].clone(), vocab.tokens[b].clone()))
        .collect()
}

/// The BPE model over a GGUF vocabulary and its merges.
fn byte_level_bpe(file: &GgufFile, vocab: &GgufVocab, ignore_merges: bool) -> Result<BPE, GenerateError> {
    let key = "tokenizer.ggml.merges";
    let merges = string_array(file, key)?.ok_or_else(|| err(format!("`{key}` is missing")))?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    err(format!(
                        "`{key}` entry {i} (`{m}`) is not two tokens separated by a space"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let map: Vocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    BPE::builder()
        .vocab_and_merges(map, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| err(format!("`{key}`: {e}")))
}

/// Control tokens as special added tokens, user-defined ones as plain added
/// tokens: both are matched whole before pre-tokenization.
fn add_gguf_special_tokens(inner: &mut tokenizers::Tokenizer, vocab: &GgufVocab) -> Result<(), GenerateError> {
    let added = |ty: i64, special: bool| -> Vec<AddedToken> {
        vocab
            .tokens
            .iter()
            .zip(&vocab.token_type)
            .filter(|(t, &tt)| tt == ty && !t.is_empty())
            .map(|(t, _)| AddedToken::from(t.clone(), special).normalized(false))
            .collect()
    };
    inner
        .add_special_tokens(added(TOKEN_TYPE_CONTROL, true))
        .map_err(|e| err(format!("control tokens: {e}")))?;
    inner
        .add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))
        .map_err(|e| err(format!("user-defined tokens: {e}")))?;
    Ok(())
}

/// A JSON file's value, `None` when the file does not exist.
fn read_json(path: &Path) -> Result<Option<serde_json::Value>, GenerateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| err(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(GenerateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Turns generated ids into text as they arrive. Each [`push`](Self::push)
/// returns the text that the new token completes; bytes of a character
/// split across tokens are held back until the character is whole. The
/// pieces concatenate to [`Tokenizer::decode`] of all the ids.
///
/// Each step decodes the tokens since the last emitted text together with
/// the ones before them, so decoders that treat the start of a text
/// specially (a leading space) see the same context as a whole decode.
#[derive(Debug)]
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    /// The last emitted tokens (context) followed by the pending ones.
    ids: Vec<u32>,
    /// How many of `ids` are context, already emitted.
    read: usize,
}

impl<'a> TextStream<'a> {
    /// A stream with no tokens yet.
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self {
            tok,
            ids: Vec::new(),
            read: 0,
        }
    }

    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, GenerateError> {
        self.tok.check_ids(&[id])?;
        self.ids.push(id);
        let prefix = self.tok.decode(&self.ids[..self.read])?;
        let full = self.tok.decode(&self.ids)?;
        if full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => return Ok(String::new()),
        };
        if new.is_empty() {
            return Ok(new);
        }
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(new)
    }

    /// The text still held back (an unfinished character comes out as
    /// U+FFFD); the stream starts afresh.
    pub fn finish(&mut self) -> Result<String, GenerateError> {
        let prefix = self.tok.decode(&self.ids[..self.read])?;
        let full = self.tok.decode(&self.ids)?;
        self.ids.clear();
        self.read = 0;
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}
