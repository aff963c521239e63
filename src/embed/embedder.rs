//! [`Embedder`]: a Hugging Face tokenizer in front of a sentence-embedding
//! model on a [`Session`].

use std::path::{Path, PathBuf};

use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::{Embeddings, TokenBatch};
use crate::error::{Error, ModelError, RunError};
use crate::model::bert::{ATTENTION_MASK, INPUT_IDS, OUTPUT, POSITION_IDS, TOKEN_TYPE_IDS};
use crate::model::Model;
use crate::session::{Device, Session};
use crate::tensor::Tensor;

/// A tokenizer and a sentence-embedding model on one device.
#[derive(Debug)]
pub struct Embedder {
    session: Session,
    tokenizer: Tokenizer,
    max_tokens: usize,
    batch_size: usize,
    output: String,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Model(ModelError::Tokenizer(e.to_string()))
}

impl Embedder {
    /// Loads a model directory (with `tokenizer.json`) or a model file (with
    /// `tokenizer.json` beside it) for `device`.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self, Error> {
        Self::load_with_tokenizer(path, None, device)
    }

    /// [`Embedder::load`] with the tokenizer from `tokenizer`: a
    /// `tokenizer.json` file or a directory holding one (and, optionally,
    /// `sentence_bert_config.json`).
    pub fn load_with_tokenizer(
        path: impl AsRef<Path>,
        tokenizer: Option<&Path>,
        device: Device,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let model = Model::load(path)?;
        let tok_path = match tokenizer {
            Some(t) if t.is_dir() => t.join("tokenizer.json"),
            Some(t) => t.to_path_buf(),
            None if path.is_dir() => path.join("tokenizer.json"),
            None => path.parent().unwrap_or(Path::new(".")).join("tokenizer.json"),
        };
        Self::new(&model, &tok_path, device)
    }

    /// An embedder over a loaded model and the tokenizer file `tokenizer_json`.
    pub fn new(model: &Model, tokenizer_json: &Path, device: Device) -> Result<Self, Error> {
        if !tokenizer_json.is_file() {
            return Err(Error::Model(ModelError::Tokenizer(format!(
                "`{}` does not exist: a model file needs the model directory's tokenizer.json beside it, or --tokenizer MODEL_DIR",
                tokenizer_json.display()
            ))));
        }
        let tokenizer = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| tok_err(format!("cannot load `{}`: {e}", tokenizer_json.display())))?;
        let dir = tokenizer_json
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let max_tokens = max_tokens(&dir, &tokenizer, model);
        Self::from_parts(model, tokenizer, max_tokens, device)
    }

    /// An embedder from parts: the tokenizer is set to truncate at
    /// `max_tokens` and not to pad (batches pad to their longest text).
    pub fn from_parts(
        model: &Model,
        mut tokenizer: Tokenizer,
        max_tokens: usize,
        device: Device,
    ) -> Result<Self, Error> {
        let g = model.graph();
        for needed in [INPUT_IDS, ATTENTION_MASK] {
            if !g.inputs().iter().any(|i| i.name == needed) {
                return Err(Error::Run(RunError::MissingInput {
                    name: needed.to_string(),
                    expected: g
                        .inputs()
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }));
            }
        }
        let output = g
            .outputs()
            .iter()
            .find(|o| o.name == OUTPUT)
            .or_else(|| g.outputs().first())
            .map(|o| o.name.clone())
            .ok_or_else(|| {
                Error::Model(ModelError::BadGraph {
                    detail: "the model has no outputs".into(),
                })
            })?;
        tokenizer.with_padding(None::<PaddingParams>);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(tok_err)?;
        Ok(Self {
            session: Session::new(model, device)?,
            tokenizer,
            max_tokens,
            batch_size: 32,
            output,
        })
    }

    /// Texts per model run (default 32); longer lists run in chunks.
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// The session (its backend, graph).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The truncation length in tokens.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenizes texts into one padded batch.
    pub fn tokenize(&self, texts: &[&str]) -> Result<TokenBatch, Error> {
        let encs = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(tok_err)?;
        let ids: Vec<&[u32]> = encs.iter().map(|e| e.get_ids()).collect();
        pad_batch(&ids)
    }

    /// Runs the model on a tokenized batch: `[batch, dim]` vectors.
    pub fn embed_tokens(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>, Error> {
        let shape = batch.input_ids.shape().to_vec();
        let (rows, seq) = (shape.first().copied().unwrap_or(0), shape.get(1).copied().unwrap_or(0));
        if rows == 0 {
            return Ok(Vec::new());
        }
        let mut inputs = vec![
            (INPUT_IDS.to_string(), batch.input_ids.clone()),
            (ATTENTION_MASK.to_string(), batch.attention_mask.clone()),
        ];
        for i in self.session.graph().inputs() {
            if i.name == POSITION_IDS {
                let shape = if i.ty.rank() == 2 { vec![1, seq] } else { vec![seq] };
                inputs.push((i.name.clone(), Tensor::from_vec(shape, (0..seq as i64).collect())?));
            } else if i.name == TOKEN_TYPE_IDS {
                inputs.push((
                    i.name.clone(),
                    Tensor::from_vec(vec![rows, seq], vec![0i64; rows * seq])?,
                ));
            }
        }
        let mut out = self.session.run(inputs)?;
        let t = out.remove(&self.output).ok_or_else(|| {
            Error::Run(RunError::UnknownOutput {
                name: self.output.clone(),
                expected: String::new(),
            })
        })?;
        let dim = t.numel() / rows;
        let v = t.to_f32_vec();
        Ok(v.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
    }

    /// Embeds texts, in batches of the batch size. Texts are grouped by
    /// token count (longest first) so that a batch pads little; the vectors
    /// come back in the order of `texts`.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings, Error> {
        let encs = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(tok_err)?;
        let token_counts: Vec<usize> = encs.iter().map(|e| e.get_ids().len()).collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(token_counts[i]));
        let mut vectors = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.batch_size) {
            let ids: Vec<&[u32]> = chunk.iter().map(|&i| encs[i].get_ids()).collect();
            let batch = pad_batch(&ids)?;
            for (&i, v) in chunk.iter().zip(self.embed_tokens(&batch)?) {
                vectors[i] = v;
            }
        }
        Ok(Embeddings { vectors, token_counts })
    }
}

/// One batch of token ids, right-padded with 0 to the longest.
fn pad_batch(rows: &[&[u32]]) -> Result<TokenBatch, Error> {
    let counts: Vec<usize> = rows.iter().map(|r| r.len()).collect();
    let seq = counts.iter().copied().max().unwrap_or(0);
    let mut ids = vec![0i64; rows.len() * seq];
    let mut mask = vec![0i64; rows.len() * seq];
    for (row, r) in rows.iter().enumerate() {
        for (j, &id) in r.iter().enumerate() {
            ids[row * seq + j] = i64::from(id);
            mask[row * seq + j] = 1;
        }
    }
    Ok(TokenBatch {
        input_ids: Tensor::from_vec(vec![rows.len(), seq], ids)?,
        attention_mask: Tensor::from_vec(vec![rows.len(), seq], mask)?,
        token_counts: counts,
    })
}

/// The truncation length: `sentence_bert_config.json`'s `max_seq_length`,
/// else the tokenizer's truncation, else 512; at most the position table.
fn max_tokens(dir: &Path, tokenizer: &Tokenizer, model: &Model) -> usize {
    let from_st = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("max_seq_length")?.as_u64())
        .map(|n| n as usize);
    let wanted = from_st
        .or_else(|| tokenizer.get_truncation().map(|t| t.max_length))
        .unwrap_or(512);
    let g = model.graph();
    let table = g
        .nodes()
        .iter()
        .find(|n| n.op.op_type() == "Gather" && n.inputs.get(1).is_some_and(|i| i == POSITION_IDS))
        .and_then(|n| model.param(n.inputs.first()?))
        .and_then(|t| t.shape().first().copied());
    table.map_or(wanted, |rows| wanted.min(rows)).max(2)
}
