"""Perplexity of a decoder in wginfer scored exactly as llama.cpp's
`llama-perplexity` scores it, so the two programs can be compared on one
GGUF file: the text's tokens (wginfer's tokenizer, no BOS) cut into chunks
of N tokens, each run from a fresh cache with its first token replaced by
BOS only when the file says `tokenizer.ggml.add_bos_token`, and the tokens
at positions N/2 + 1 .. N - 1 of each chunk scored (N/2 - 1 per chunk).

  python ppl_llama_protocol.py --wginfer target/release/wginfer \
      --model M.gguf --text FILE [--chunk 512] [--chunks 4] [--bos]

Uses `wginfer generate --prompt-ids ... --max-tokens 0 --echo --json`
(teacher forcing), one call per chunk. Needs only the standard library.
"""
import argparse
import json
import math
import subprocess


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout[out.stdout.index("{"):])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wginfer", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--bos", type=int, default=None, help="BOS id to put first in each chunk (add_bos_token files)")
    a = ap.parse_args()
    n = a.chunk * a.chunks
    text = open(a.text, encoding="utf-8").read()
    # Enough text for n tokens (about 4 characters a token), well inside the context.
    prefix = text[: max(8 * n, 1)]
    ids = run([a.wginfer, "generate", a.model, "--prompt", prefix, "--max-tokens", "0", "--json",
               "--context", str(max(4096, 3 * n))])["prompt_tokens"]
    if len(ids) < n:
        raise SystemExit(f"{len(ids)} tokens, fewer than {a.chunks} chunks of {a.chunk}")
    nll, count = 0.0, 0
    first = a.chunk // 2
    for c in range(a.chunks):
        chunk = ids[c * a.chunk:(c + 1) * a.chunk]
        if a.bos is not None:
            chunk[0] = a.bos
        out = run([a.wginfer, "generate", a.model, "--prompt-ids", ",".join(map(str, chunk)),
                   "--max-tokens", "0", "--echo", "--json", "--context", str(a.chunk)])
        lps = [p["logprob"] for p in out["logprobs"]]  # lps[i]: token i + 1
        for lp in lps[first:a.chunk - 1]:
            nll -= lp
            count += 1
        print(f"[{c + 1}] {math.exp(nll / count):.4f}", flush=True)
    print(f"perplexity {math.exp(nll / count):.4f} over {a.chunks} chunks of {a.chunk} ({count} scored, llama.cpp's protocol)")


if __name__ == "__main__":
    main()
