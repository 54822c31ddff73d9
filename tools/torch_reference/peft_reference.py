#!/usr/bin/env python3
"""A PEFT LoRA adapter for the tiny Llama fixture (tests/fixtures/llama), saved by peft itself,
and the logits peft computes with it: the reference of tests/peft_export.rs, which checks that
flexp's PEFT export writes the same files (names, shapes, values, config) and that flexp's
forward with these adapters gives peft's logits.

Writes tests/fixtures/peft/llama/{adapter_config.json, adapter_model.safetensors, logits.json}.
Usage: tools/torch_reference/.venv/bin/python tools/torch_reference/peft_reference.py
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

OUT = os.path.join("tests", "fixtures", "peft", "llama")


def main():
    torch.manual_seed(11)
    model = LlamaForCausalLM.from_pretrained(os.path.join("tests", "fixtures", "llama"),
                                             dtype=torch.float32)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=[1],
        layers_pattern="layers",
        init_lora_weights=False,  # random A and B: a nonzero update to compare
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, cfg)
    peft_model.eval()
    os.makedirs(OUT, exist_ok=True)
    peft_model.save_pretrained(OUT)
    seqs = [[3, 17, 42, 99, 5, 64, 11], [7, 8, 9, 119]]
    out = {"sequences": seqs, "logits": []}
    with torch.no_grad():
        for s in seqs:
            out["logits"].append(peft_model(torch.tensor([s])).logits[0].reshape(-1).tolist())
    with open(os.path.join(OUT, "logits.json"), "w") as f:
        json.dump(out, f)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
