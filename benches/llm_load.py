"""Load test for an OpenAI-compatible server (wginfer serve, llama-server):
S concurrent streaming clients, each sending R chat completions one after
another (greedy, temperature 0), at several S. Prints aggregate generation
tokens/s, time to first token (p50/p99), errors, and how many streamed texts
differ from the same prompt's text alone (batch invariance).

    python benches/llm_load.py --url http://127.0.0.1:8000 --model smollm2 \
        --streams 1,8,32 --requests 2 --max-tokens 64 [--label wginfer] [--json out.json] [--fresh]

By default each distinct prompt first runs alone, and the levels reuse the
same prompts: a server with a prefix cache (wginfer, llama-server) finds
every timed prompt cached. With --fresh every timed request has a prompt no
earlier request had (they still share the chat template's system text and
the first words), and the alone runs come last.

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


FORMS = [
    "Write two sentences about {}.",
    "Describe {} in one sentence.",
    "Give three facts about {}.",
    "What does {} remind you of?",
]


def prompts(n, forms=1):
    """n prompts: each topic in the first form, then (forms > 1) the next."""
    return [FORMS[i // len(TOPICS) % forms].format(TOPICS[i % len(TOPICS)]) for i in range(n)]


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
    """S workers × R requests over the prompts `ps`; returns the per-request
    results and the wall time."""
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
    ap.add_argument("--fresh", action="store_true", help="a new prompt for every timed request; alone runs last")
    a = ap.parse_args()
    levels = [int(s) for s in a.streams.split(",")]
    if a.fresh:
        every = prompts(sum(levels) * a.requests, len(FORMS))
        starts = [sum(levels[:i]) * a.requests for i in range(len(levels))]
        sets = [every[st:st + s * a.requests] for st, s in zip(starts, levels)]
    else:
        every = prompts(max(levels) * a.requests)
        sets = [every] * len(levels)

    async def run_alone():
        # Each distinct prompt alone: the texts every level is checked against.
        alone = {}
        async with httpx.AsyncClient(timeout=600.0) as client:
            for p in dict.fromkeys(every):
                text, _, _, err = await one(client, a.url, a.model, p, a.max_tokens)
                if err:
                    raise SystemExit(f"the baseline request failed: {err}")
                alone[p] = text
        return alone

    alone = None if a.fresh else await run_alone()
    done = []
    for s, ps in zip(levels, sets):
        done.append((s, *(await level(a.url, a.model, s, a.requests, a.max_tokens, ps))))
    if a.fresh:
        alone = await run_alone()
    rows = []
    base = None
    print(f"| server | streams | requests | errors | texts ≠ alone | tokens | tokens/s | ×1 stream | TTFT p50 ms | TTFT p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s, res, wall in done:
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
