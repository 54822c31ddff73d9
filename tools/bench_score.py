#!/usr/bin/env python3
"""transformers' side of the `score` benchmark (docs/performance.md): the same texts, the same GGUF
file (weights dequantized to float32 by the `gguf` package), the same work as `flexp-run score`:
one forward per batch of texts packed up to 1,024 tokens (transformers pads a batch, so texts of
one batch are of similar length: they are sorted by length first), the log-softmax of every
position and the top 10 at the last. Prints tokens per second over `--reps` timed passes after a
warm-up pass, with the thread count it ran on.

Usage: tools/torch_reference/.venv/bin/python tools/bench_score.py MODEL.gguf TEXTS.jsonl [--threads 2] [--reps 3]
"""
import argparse
import json
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("texts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    folder, name = os.path.split(os.path.abspath(a.model))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    texts = [json.loads(l)["text"] for l in open(a.texts) if l.strip()]
    ids = sorted((tok(t)["input_ids"] for t in texts), key=len)
    batches, cur = [], []
    for s in ids:
        if cur and sum(map(len, cur)) + len(s) > 1024:
            batches.append(cur)
            cur = []
        cur.append(s)
    batches.append(cur)
    tokens = sum(map(len, ids))

    def one_pass():
        with torch.no_grad():
            for b in batches:
                n = max(map(len, b))
                x = torch.full((len(b), n), tok.pad_token_id or 0)
                mask = torch.zeros((len(b), n), dtype=torch.long)
                for i, s in enumerate(b):
                    x[i, : len(s)] = torch.tensor(s)
                    mask[i, : len(s)] = 1
                logits = model(x, attention_mask=mask).logits
                torch.log_softmax(logits, dim=-1)
                torch.topk(logits[:, -1], 10)

    one_pass()
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - t0)
    rates = [tokens / t for t in times]
    print(json.dumps({"implementation": "transformers f32", "threads": a.threads, "texts": len(texts),
                      "tokens": tokens, "tokens_per_s_median": statistics.median(rates),
                      "min": min(rates), "max": max(rates)}))


if __name__ == "__main__":
    main()
