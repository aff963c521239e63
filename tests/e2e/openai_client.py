"""Drives a running `wginfer serve` with the real `openai` Python client.

    python tests/e2e/openai_client.py BASE_URL MODEL CHAT_ANSWER COMPLETION [EMBEDDING_MODEL]

BASE_URL is http://host:port/v1. MODEL is a generative model whose greedy
answer to the chat case of models/smollm2/prompts.json is CHAT_ANSWER, and
whose greedy 12-token continuation of "The capital of France is" is
COMPLETION (the test computes both with the library's Generator). Checks:
model listing, chat and completions (streamed and not), stop strings,
logprobs, errors as the client's exception types, and (with
EMBEDDING_MODEL) embeddings with the client's default base64 encoding
against encoding_format="float". Exits non-zero on the first failure.
"""

import math
import sys
import time
import urllib.request

import numpy as np
import openai

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QUESTION = "What is the capital of France? Answer in one short sentence."
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def wait_ready(base):
    root = base.rsplit("/v1", 1)[0]
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(root + "/v2/health/ready", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready in 120 s")


def chat(client, model, answer):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=32)
    check(r.choices[0].message.content == answer, f"chat: {r.choices[0].message.content!r} != {answer!r}")
    check(r.choices[0].finish_reason == "stop", "chat finish_reason")
    check(r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, "chat usage")
    print(f"  chat: {r.choices[0].message.content!r}, usage {r.usage.prompt_tokens}+{r.usage.completion_tokens}")

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    check("".join(parts) == answer, f"streamed chat: {''.join(parts)!r}")
    check(finish == "stop", "streamed finish_reason")
    check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, "streamed usage")
    print(f"  streamed chat: {len(parts)} chunks join to the same text")

    s = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=32, stop=["Paris"])
    check(s.choices[0].message.content == answer.split("Paris")[0], "stop string")

    lp = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=32, logprobs=True, top_logprobs=3
    )
    content = lp.choices[0].logprobs.content
    check(len(content) == r.usage.completion_tokens, "one logprob per token")
    for t in content:
        check(t.logprob <= 0 and len(t.top_logprobs) == 3, "logprob entries")
        check(t.top_logprobs[0].token == t.token, "greedy picks the top token")
    total = math.exp(sum(t.logprob for t in content))
    print(f"  chat logprobs: {len(content)} tokens, sequence probability {total:.3g}")


def completions(client, model, completion):
    prompt = "The capital of France is"
    r = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=12)
    check(r.choices[0].text == completion, f"completion: {r.choices[0].text!r} != {completion!r}")
    stream = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=12, stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    check(text == completion, f"streamed completion: {text!r}")
    e = client.completions.create(model=model, prompt=prompt, echo=True, logprobs=2, max_tokens=0)
    lp = e.choices[0].logprobs
    check(e.choices[0].text == prompt, "echo text")
    check(lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:]), "prompt logprobs")
    check(len(lp.tokens) == e.usage.prompt_tokens, "a logprob per prompt token")
    print(f"  completions: {completion!r}, streamed too; echo scored {len(lp.tokens)} prompt tokens")


def errors(client, model):
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        check(False, "unknown model accepted")
    except openai.NotFoundError as e:
        check(e.status_code == 404 and e.body["param"] == "model", f"404 body {e.body}")
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=2)
        check(False, "n=2 accepted")
    except openai.BadRequestError as e:
        check(e.body["param"] == "n", f"400 body {e.body}")
    try:
        client.completions.create(model=model, prompt="x", max_tokens=10**6)
        check(False, "max_tokens past the context accepted")
    except openai.BadRequestError as e:
        check(e.body["param"] == "max_tokens", f"400 body {e.body}")
    print("  errors: NotFoundError and BadRequestError with param")


def embeddings(client, model):
    texts = ["The cat sits on the mat.", "A dog runs in the park."]
    default = client.embeddings.create(model=model, input=texts)  # the client sends base64
    floats = client.embeddings.create(model=model, input=texts, encoding_format="float")
    for a, b in zip(default.data, floats.data):
        check(np.array_equal(np.asarray(a.embedding, np.float32), np.asarray(b.embedding, np.float32)), "base64 == float")
    check(len(default.data[0].embedding) == 384, "MiniLM width")
    print(f"  embeddings: base64 (the client's default) equals float, {len(default.data)} x 384")


def main():
    base, model, answer, completion = sys.argv[1:5]
    embedder = sys.argv[5] if len(sys.argv) > 5 else ""
    wait_ready(base)
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
    ids = [m.id for m in client.models.list()]
    check(model in ids, f"{model} not in /v1/models: {ids}")
    if embedder:
        check(embedder in ids, f"{embedder} not in /v1/models: {ids}")
    check(client.models.retrieve(model).owned_by == "wginfer", "model retrieve")
    print(f"  models: {ids}")
    chat(client, model, answer)
    completions(client, model, completion)
    errors(client, model)
    if embedder:
        embeddings(client, embedder)
    print(f"openai {openai.__version__}: {checks} checks passed")


if __name__ == "__main__":
    main()
