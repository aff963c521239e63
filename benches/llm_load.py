"""Load test for an OpenAI-compatible server (wginfer serve, llama-server):
S concurrent streaming clients, each sending R chat completions one after
another (greedy, temperature 0), at several S. Prints aggregate generation
tokens/s, time to first token (p50/p99), errors, and how many streamed texts
differ from the same prompt's text alone (batch invariance).

    python benches/llm_load.py --url http://127.0.0.1:8000 --model smollm2 \
        --streams 1,8,32 --requests 2 --max-tokens 64 [--label wginfer] [--json out.json]

Needs httpx (the openai package brings it). Token counts come from the
final usage chunk (`stream_options.include_usage`) when the server sends
one, else from the number of content chunks.
"""

import argparse
import asyncio
import json
import statistics
import time

import httpx

TOPICS = [
    "the sea", "a mountain", "coffee", "a library", "winter", "the moon", "a train", "bread",
    "a garden", "rain", "a lighthouse", "chess", "a violin", "the desert", "a bridge", "autumn",
    "a river", "honey", "a market", "snow", "a clock", "the forest", "a kite", "tea",
    "a castle", "thunder", "a bicycle", "the stars", "a map", "salt", "a museum", "spring",
]


def prompts(n):
    return [f"Write two sentences about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


async def one(client, url, model, prompt, max_tokens):
    """One streamed chat completion: (text, tokens, ttft_s, error)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft, text, chunks, usage = None, [], 0, None
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return None, 0, None, f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if msg.get("usage"):
                    usage = msg["usage"].get("completion_tokens")
                for c in msg.get("choices", []):
                    piece = (c.get("delta") or {}).get("content") or ""
                    if piece:
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        text.append(piece)
                        chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        return None, 0, None, repr(e)
    return "".join(text), usage if usage is not None else chunks, ttft, None


async def level(url, model, streams, requests, max_tokens, ps):
    """S workers × R requests; returns the per-request results and the wall time."""
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def worker(i):
            out = []
            for j in range(requests):
                p = ps[(i * requests + j) % len(ps)]
                out.append((p, *(await one(client, url, model, p, max_tokens))))
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(worker(i) for i in range(streams)))
        wall = time.perf_counter() - t0
    return [r for w in results for r in w], wall


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", required=True)
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--label", default="server")
    ap.add_argument("--json")
    a = ap.parse_args()
    levels = [int(s) for s in a.streams.split(",")]
    ps = prompts(max(levels) * a.requests)
    # Each distinct prompt alone first: the texts every level is checked against.
    alone = {}
    for p in ps:
        text, _, _, err = await one(httpx.AsyncClient(timeout=600.0), a.url, a.model, p, a.max_tokens)
        if err:
            raise SystemExit(f"the baseline request failed: {err}")
        alone[p] = text
    rows = []
    base = None
    print(f"| server | streams | requests | errors | texts ≠ alone | tokens | tokens/s | ×1 stream | TTFT p50 ms | TTFT p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in levels:
        res, wall = await level(a.url, a.model, s, a.requests, a.max_tokens, ps)
        errors = [r for r in res if r[4]]
        ok = [r for r in res if not r[4]]
        differ = sum(1 for p, text, *_ in ok if text != alone[p])
        tokens = sum(r[2] for r in ok)
        rate = tokens / wall
        base = base or rate
        ttfts = [r[3] * 1e3 for r in ok if r[3] is not None]
        row = {
            "server": a.label, "streams": s, "requests": len(res), "errors": len(errors),
            "differ": differ, "tokens": tokens, "tokens_per_s": rate, "vs_one": rate / base,
            "ttft_p50_ms": pct(ttfts, 0.5), "ttft_p99_ms": pct(ttfts, 0.99),
        }
        rows.append(row)
        print(f"| {a.label} | {s} | {len(res)} | {len(errors)} | {differ} | {tokens} | {rate:.1f} | "
              f"{rate / base:.2f} | {row['ttft_p50_ms']:.0f} | {row['ttft_p99_ms']:.0f} |", flush=True)
        for e in errors[:3]:
            print(f"  error: {e[4]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    asyncio.run(main())
