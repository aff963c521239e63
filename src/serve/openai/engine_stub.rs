//! Stand-in for `crate::serve::llm` until the engine lands (removed then).
#![allow(dead_code, missing_docs)]

use std::sync::Arc;

use crate::error::GenerateError;
use crate::generate::chat::ChatMessage;
use crate::generate::sample::{SamplingOptions, TokenLogprob};
use crate::generate::tokenizer::Tokenizer;
use crate::generate::FinishReason;
use crate::serve::error::ServeError;
use crate::serve::Repository;

pub struct LlmRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingOptions,
    pub stop: Vec<String>,
    pub stop_at_eos: bool,
    pub logprobs: Option<usize>,
    pub prompt_logprobs: Option<usize>,
}

pub enum LlmEvent {
    Prompt(Vec<PositionLogprobs>),
    Token(TokenOut),
    Done(Finished),
    Error(ServeError),
}

pub struct PositionLogprobs {
    pub id: u32,
    pub logprob: Option<f32>,
    pub top: Vec<TokenLogprob>,
}

pub struct TokenOut {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
    pub top: Vec<TokenLogprob>,
}

pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub text_tail: String,
}

pub struct LlmEngine {
    tokenizer: Tokenizer,
}

impl LlmEngine {
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn chat_prompt(&self, _messages: &[ChatMessage]) -> Result<String, GenerateError> {
        Err(GenerateError::Tokenizer("stub".into()))
    }
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        self.tokenizer.encode(text, true)
    }
    pub fn context(&self) -> usize {
        0
    }
    pub fn created(&self) -> u64 {
        0
    }
    pub fn submit(&self, _req: LlmRequest) -> Result<LlmStream, ServeError> {
        Err(ServeError::Unavailable("stub".into()))
    }
}

pub struct LlmStream;

impl LlmStream {
    pub async fn recv(&mut self) -> Option<LlmEvent> {
        None
    }
}

pub trait RepoLlm {
    fn llm(&self, name: &str, version: Option<&str>) -> Result<Arc<LlmEngine>, ServeError>;
    fn llm_names(&self) -> Vec<String>;
}

impl RepoLlm for Repository {
    fn llm(&self, name: &str, _version: Option<&str>) -> Result<Arc<LlmEngine>, ServeError> {
        Err(ServeError::NotFound(format!("no model `{name}`")))
    }
    fn llm_names(&self) -> Vec<String> {
        Vec::new()
    }
}
