"""Writes tokenizer_cases.json: token ids of varied texts and chat renders for
SmolLM2-135M-Instruct.Q4_1.gguf, from Hugging Face `transformers`' own GGUF
tokenizer conversion (`PreTrainedTokenizerFast.from_pretrained(dir, gguf_file=name)`, the class
`AutoTokenizer` resolves to)
and its `apply_chat_template`. The tokenizer test (tests/tokenizer_gguf.rs)
compares wginfer's GGUF tokenizer and chat template with these.

When the `llama_cpp` package (llama-cpp-python) can be imported, every text is
also tokenized by llama.cpp itself and the script stops if the two references
disagree on any case.

transformers reads GGUF tensors through torch, which the tokenizer does not
need; without torch installed, a stand-in module is registered so that the
metadata reader imports (no tensor is read).

Run: python make_tokenizer_cases.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
Venv: pip install transformers==5.25.0 tokenizers==0.23.3 gguf==0.19.0 numpy jinja2
"""
import importlib.util
import json
import os
import sys
import types

TEXTS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "a\t\tb\tc",
    "line one\nline two\n\nline four\n",
    "\n\n\n",
    "   \n  \n\t\n",
    "1",
    "42",
    "12345678901234567890",
    "3.14159265358979",
    "1,000,000 and 2026-12-05 at 10:09:11",
    "Version 0.23.3 costs $19.99 (or 20%)",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tlet x: Vec<u32> = vec![1, 2, 3];\n\tprintln!(\"{x:?}\");\n}\n",
    "<html><body class=\"main\">&nbp;</body></html>",
    "I'm sure they'll say it's fine, won't they? We've done what we'd planned.",
    "IT'S ALL CAPS AND I'LL SHOUT",
    "Café, naïve, façade, Zürich, São Paulo, Ångström",
    "日本語のテキストです。東京は大きい。",
    "中文文本测试，你好世界！",
    "한국어 텍스트",
    "Привет, мир! Ελληνικά κείμενα.",
    "مرحبا بالعالم",
    "Emoji: 😀🎉👍🏽 and 👨‍👩‍👧‍👦 family, flags 🇫🇷",
    "math: ∑ x² ≤ ∞, α→β",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more<|im_start|>",
    "<|im_start|><|im_start|>",
    "<repo_name>wginfer<file_sep>src/main.rs",
    "<|im_start",
    "a" * 300,
    "The quick brown fox jumps over the lazy dog. " * 8,
]

CONVERSATIONS = [
    ([{"role": "user", "content": "Hi there!"}], True),
    ([{"role": "user", "content": "Hi there!"}], False),
    (
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a prime number."},
        ],
        True,
    ),
    (
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?\nExplain briefly."},
        ],
        True,
    ),
    (
        [
            {"role": "user", "content": "  spaces  and\nnewlines\n"},
            {"role": "assistant", "content": "Ok."},
        ],
        False,
    ),
]


def import_transformers():
    """transformers, with a stand-in `torch` when torch is not installed."""
    import transformers

    if importlib.util.find_spec("torch") is None:

        class _Torch(types.ModuleType):
            def __getattr__(self, name):
                return type(name, (), {})

        sys.modules["torch"] = _Torch("torch")
    return transformers


def llama_cpp_ids(path, texts):
    """llama.cpp's ids for the texts (special tokens parsed, no BOS), or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    import llama_cpp

    model = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    return [model.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]


def main(path):
    transformers = import_transformers()
    directory, name = os.path.split(os.path.abspath(path))
    # AutoTokenizer would also build the model's config, which needs torch for
    # a `llama` file; the tokenizer class it ends at is this one.
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(directory, gguf_file=name)
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False)} for t in TEXTS]
    for case in cases:
        if tok.decode(case["ids"]) != case["text"]:
            print(f"note: transformers does not round-trip {case['text']!r}", file=sys.stderr)

    other = llama_cpp_ids(path, TEXTS)
    if other is None:
        print("llama_cpp not importable: no cross-check with llama.cpp", file=sys.stderr)
    else:
        bad = [c["text"] for c, ids in zip(cases, other) if c["ids"] != ids]
        if bad:
            sys.exit(f"transformers and llama.cpp disagree on {bad!r}")
        print(f"llama.cpp agrees on all {len(cases)} texts", file=sys.stderr)

    chats = [
        {
            "messages": messages,
            "add_generation_prompt": gen,
            "text": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen),
        }
        for messages, gen in CONVERSATIONS
    ]
    out = {
        "file": name,
        "reference": f"transformers {transformers.__version__} PreTrainedTokenizerFast(gguf_file=...)",
        "cross_check": None if other is None else "llama.cpp via llama_cpp (tokenize, special=True)",
        "vocab_size": len(tok),
        "cases": cases,
        "chat": chats,
    }
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "tokenizer_cases.json"), "w") as f:
        f.write(dump(out))


def dump(out):
    """JSON with one case or conversation a line."""
    lines = ["{"]
    for key, value in out.items():
        if isinstance(value, list):
            items = ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ],")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    lines[-1] = lines[-1].rstrip(",")
    return "\n".join(lines) + "\n}\n"


if __name__ == "__main__":
    main(sys.argv[1])
