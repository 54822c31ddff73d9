#!/usr/bin/env python3
"""Reference outputs of a GGUF decoder from transformers (float32, the weights dequantized by the
`gguf` package), for tests/gguf_model.rs: token ids from the tokenizer transformers builds from
the file's metadata, the mean natural-log likelihood of each text (positions 1..n-1 predicted
from the previous position), and the 10 largest logits at the last position.

It also writes, beside OUT, `smollm2_generate.jsonl`: transformers' greedy continuation (up to
24 new tokens, stopping at the file's end-of-sequence token) of a few prompts, the reference of
`flexp-run generate`.

Usage (from the repository root, in the venv of tools/torch_reference/setup.sh):
  tools/torch_reference/.venv/bin/python tools/torch_reference/gguf_reference.py \
      models/SmolLM2-135M-Instruct.Q4_1.gguf tests/fixtures/gguf/smollm2_reference.jsonl
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A thoughtful, funny and moving film about growing up.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Numbers 12345 and 3.14159, symbols @#$%, and   extra   spaces.",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🙂.",
    "def add(a, b):\n    return a + b\n",
]


def main():
    path, out = sys.argv[1], sys.argv[2]
    folder, name = os.path.split(os.path.abspath(path))
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    with open(out, "w") as f:
        for text in TEXTS:
            ids = tok(text, add_special_tokens=True)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            ll = logp[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
            top = torch.topk(logits[-1], 10)
            f.write(json.dumps({
                "text": text,
                "tokens": ids,
                "mean_log_likelihood": ll.mean().item(),
                "top_k": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
                "decoded": tok.decode(ids),
            }, ensure_ascii=False) + "\n")
    prompts = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
        "The three primary colors are",
        "def fibonacci(n):",
    ]
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    with open(os.path.join(os.path.dirname(out), "smollm2_generate.jsonl"), "w") as f:
        for p in prompts:
            ids = tok(p, add_special_tokens=True)["input_ids"]
            with torch.no_grad():
                g = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                   eos_token_id=eos, pad_token_id=eos)
            new = g[0][len(ids):].tolist()
            f.write(json.dumps({"prompt": p, "prompt_tokens": ids, "tokens": new, "eos": eos,
                                "text": tok.decode(new)}, ensure_ascii=False) + "\n")
    if len(sys.argv) > 3:
        # The tokenizer transformers built from the metadata, for inspection only.
        with open(sys.argv[3], "w") as f:
            f.write(tok.backend_tokenizer.to_str(pretty=True))


if __name__ == "__main__":
    main()
