//! Chat templates: the Jinja source a model ships (`tokenizer.chat_template`
//! in GGUF, `chat_template` in a Hugging Face `tokenizer_config.json`)
//! rendered with minijinja the way `transformers`' `apply_chat_template`
//! renders it: blocks trimmed (`trim_blocks`, `lstrip_blocks`), Python's
//! string methods available, `raise_exception(msg)` an error, and the
//! variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`
//! (and `tools`, `documents` as none).

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Value};

use crate::error::GenerateError;
use crate::model::gguf::GgufFile;

/// The template's name inside its environment.
const NAME: &str = "chat";

fn err(message: impl Into<String>) -> GenerateError {
    GenerateError::Tokenizer(message.into())
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or any role the template knows).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A parsed chat template with the model's BOS and EOS texts.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: Option<String>,
    eos: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The template of a GGUF file (`tokenizer.chat_template`), with BOS and
    /// EOS spelled as the vocabulary spells `tokenizer.ggml.bos_token_id` and
    /// `eos_token_id`; `None` when the file has no template.
    pub fn from_gguf(file: &GgufFile) -> Result<Option<Self>, GenerateError> {
        let key = "tokenizer.chat_template";
        let Some(value) = file.metadata(key) else {
            return Ok(None);
        };
        let source = value.as_str().ok_or_else(|| err(format!("`{key}` is not a string")))?;
        let tokens = file.get_array("tokenizer.ggml.tokens");
        let token = |key: &str| -> Option<String> {
            let id = usize::try_from(file.get_u64(key)?).ok()?;
            Some(tokens?.get(id)?.as_str()?.to_string())
        };
        let bos = token("tokenizer.ggml.bos_token_id");
        let eos = token("tokenizer.ggml.eos_token_id");
        Self::new(source, bos, eos).map(Some)
    }

    /// The template in a Hugging Face `tokenizer_config.json`
    /// (`chat_template`, a string or the list of named templates, of which
    /// `default` is taken), with its `bos_token` and `eos_token`; `None`
    /// when it has no template.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>, GenerateError> {
        let text = std::fs::read_to_string(path).map_err(|source| GenerateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let source = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_string)
                .ok_or_else(|| err(format!("{}: no `default` chat template", path.display())))?,
            Some(_) => return Err(err(format!("{}: `chat_template` is not a string", path.display()))),
        };
        let token = |field: &str| {
            let v = config.get(field)?;
            v.as_str().or_else(|| v.get("content")?.as_str()).map(str::to_string)
        };
        Self::new(&source, token("bos_token"), token("eos_token")).map(Some)
    }

    /// Parses a template; a syntax error is a [`GenerateError::Tokenizer`]
    /// with minijinja's message.
    pub fn new(source: &str, bos: Option<String>, eos: Option<String>) -> Result<Self, GenerateError> {
        let mut env = Environment::new();
        // Keep what a render error needs to name the expression (minijinja
        // records it only in debug builds unless asked).
        env.set_debug(true);
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| err(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| err(format!("chat template: {e:#}")))?;
        Ok(Self { env, bos, eos })
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends
    /// with the opening of the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, GenerateError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from(BTreeMap::from([
                    ("role".to_string(), Value::from(m.role.as_str())),
                    ("content".to_string(), Value::from(m.content.as_str())),
                ]))
            })
            .collect();
        let ctx = Value::from(BTreeMap::from([
            ("messages".to_string(), Value::from(messages)),
            ("add_generation_prompt".to_string(), Value::from(add_generation_prompt)),
            (
                "bos_token".to_string(),
                Value::from(self.bos.clone().unwrap_or_default()),
            ),
            (
                "eos_token".to_string(),
                Value::from(self.eos.clone().unwrap_or_default()),
            ),
            // transformers passes these as None when a caller gives none.
            ("tools".to_string(), Value::from(())),
            ("documents".to_string(), Value::from(())),
        ]));
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| err(format!("chat template: {e}")))?;
        template.render(ctx).map_err(|e| err(render_error(&e)))
    }
}

/// A render failure as one line: minijinja's kind and detail (which names
/// an undefined variable or attribute, with the `debug` feature) and the line.
fn render_error(e: &minijinja::Error) -> String {
    format!("chat template: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> ChatTemplate {
        let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}\
                      {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        ChatTemplate::new(source, None, Some("<|im_end|>".into())).expect("template parses")
    }

    #[test]
    fn renders_messages_in_order() {
        let text = chatml()
            .render(
                &[ChatMessage::new("user", " hi "), ChatMessage::new("assistant", "yo")],
                true,
            )
            .expect("renders");
        assert_eq!(
            text,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}\
             {{ messages[0].content.strip().upper() }}{{ eos_token }}",
            None,
            Some("</s>".into()),
        )
        .expect("template parses");
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  ok ")], false).expect("renders"),
            "OK</s>"
        );
        let e = t.render(&[ChatMessage::new("system", "x")], false).expect_err("raises");
        assert!(e.to_string().contains("first must be user"), "{e}");
    }

    #[test]
    fn render_error_names_the_expression() {
        let t = ChatTemplate::new("{% for m in messages %}\n{{ m.meta.lang }}\n{% endfor %}", None, None)
            .expect("template parses");
        let e = t
            .render(&[ChatMessage::new("user", "hi")], false)
            .expect_err("undefined attribute");
        let m = e.to_string();
        assert!(m.contains("`m.meta` is undefined") && m.contains("chat:2"), "{m}");
    }

    #[test]
    fn tools_are_none() {
        let t = ChatTemplate::new("{% if tools is not none %}tools{% else %}plain{% endif %}", None, None)
            .expect("template parses");
        assert_eq!(t.render(&[], false).expect("renders"), "plain");
    }

    #[test]
    fn syntax_error_is_typed() {
        match ChatTemplate::new("{% for m in messages %}", None, None) {
            Err(GenerateError::Tokenizer(m)) => assert!(m.contains("chat template"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
