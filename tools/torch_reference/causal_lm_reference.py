#!/usr/bin/env python3
"""Reference of the causal-LM task for tests/causal_lm.rs, from transformers (float32, the GGUF
weights dequantized by the `gguf` package).

Each case is a prompt and a response. Its tokens are laid out as causal-LM fine-tuning scripts
commonly do it: the prompt as an input (the tokenizer's own special tokens), the response
tokenised on its own without special tokens, then the tokenizer's end-of-sequence token; the
labels are -100 over the prompt and the token ids over the response and EOS (transformers'
convention: the model shifts them itself). Written per case: the ids, the labels, transformers'
loss with those labels (the mean cross-entropy over the response tokens), and whether greedy
decoding reproduces the response (the most likely next token at every response position is the
response's).

Beside OUT it writes `smollm2_chat.jsonl`: the file's chat template rendered by transformers'
`apply_chat_template` (a user turn with the generation prompt, and a system + user
conversation), and a chat-formatted example's ids (the rendered prompt tokenised without added
special tokens, then the response and EOS).

Usage (from the repository root, in the venv of tools/torch_reference/setup.sh):
  tools/torch_reference/.venv/bin/python tools/torch_reference/causal_lm_reference.py \
      models/SmolLM2-135M-Instruct.Q4_1.gguf tests/fixtures/gguf/smollm2_causal_lm.jsonl
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CASES = [
    ("Review: A thoughtful, funny and moving film.\nVerdict (fresh or rotten):", " fresh"),
    ("Review: Dull, overlong and badly acted.\nVerdict (fresh or rotten):", " rotten"),
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("The three primary colors are", " red, yellow and blue."),
    ("", "A whole text, learned from its first token to its end."),
]

# Prompts whose response is the model's own greedy answer (decoded, then tokenised again as any
# response is), so that exact match is true for some cases.
GREEDY_PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n",
]


def main():
    path, out = sys.argv[1], sys.argv[2]
    folder, name = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    write_chat(tok, model, os.path.join(os.path.dirname(out), "smollm2_chat.jsonl"))
    eos = tok.eos_token_id
    cases = list(CASES)
    for prompt in GREEDY_PROMPTS:
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            g = model.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False,
                               eos_token_id=eos, pad_token_id=eos)
        new = [t for t in g[0, len(p):].tolist() if t != eos]
        cases.append((prompt, tok.decode(new)))
    with open(out, "w") as f:
        for prompt, response in cases:
            p = tok(prompt, add_special_tokens=True)["input_ids"]
            r = tok(response, add_special_tokens=False)["input_ids"] + [eos]
            ids = p + r
            labels = [-100] * len(p) + r
            with torch.no_grad():
                o = model(torch.tensor([ids]), labels=torch.tensor([labels]))
            pred = o.logits[0].argmax(-1)
            # Logits at position t predict token t + 1.
            exact = all(int(pred[t - 1]) == ids[t] for t in range(len(p), len(ids)) if t > 0)
            f.write(json.dumps({
                "prompt": prompt,
                "response": response,
                "ids": ids,
                "labels": labels,
                "eos": eos,
                "loss": o.loss.item(),
                "exact_match": exact,
            }, ensure_ascii=False) + "\n")


def write_chat(tok, model, out):
    eos = tok.eos_token_id
    conversations = [
        [{"role": "user", "content": "Review: A dull film.\nVerdict (fresh or rotten):"}],
        [{"role": "system", "content": "You judge films."},
         {"role": "user", "content": "Is it good?"}],
    ]
    with open(out, "w") as f:
        for messages in conversations:
            rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
            # Greedy continuation of the rendered prompt (up to 24 tokens, stopping at EOS): the
            # reference of `flexp-run generate --chat`.
            with torch.no_grad():
                g = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                   eos_token_id=eos, pad_token_id=eos)
            greedy = g[0, len(ids):].tolist()
            response = " rotten"
            ids += tok(response, add_special_tokens=False)["input_ids"] + [eos]
            f.write(json.dumps({"messages": messages, "rendered": rendered, "response": response,
                                "ids": ids, "greedy": greedy}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
