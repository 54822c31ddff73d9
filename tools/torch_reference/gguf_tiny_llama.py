#!/usr/bin/env python3
"""A tiny Llama-family GGUF file with a tokenizer in its metadata, and transformers' outputs for it
(tests/gguf_model.rs, tests/run.rs).

The model (2 blocks, hidden 256, 4 query / 2 key-value heads of 64, MLP 512, vocabulary 300, tied
head) stores its projections in eight different GGML types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
Q3_K, Q4_K, Q5_K, Q6_K, F16, BF16 and F32 across the two blocks), as seeded random blocks written
with llama.cpp's row order for the query and key heads. transformers reads the file (weights
dequantized by the `gguf` package, q/k rows put back in its own order) and its float32 logits are
the reference: an implementation independent of flexp's loader, decoder and permutation.

The tokenizer is a byte-level BPE over GPT-2's byte alphabet: the 256 byte tokens, 42 merges
learned from a few sentences of movie-review text, and `<|endoftext|>` / `<|pad|>` as control
tokens.

With `--arch qwen2` it writes a Qwen2 file instead: the same blocks without llama.cpp's q/k row
reordering (its Qwen2 converter keeps Hugging Face's order), plus f32 biases on the q, k and v
projections, and the `qwen2` pre-tokenizer split. With `--arch qwen3`, a Qwen3 file: no biases,
the same order as Qwen2, f32 RMSNorm scales for each query and key head (`attn_q_norm`,
`attn_k_norm`), and heads of 128 (Qwen3's size), so the query projection is 512 wide. With
`--arch gemma3`, a Gemma 3 file: heads of 256, query/key norms, post-attention and post-MLP
norms (`post_attention_norm`, `post_ffw_norm`) stored as llama.cpp stores Gemma's (1 + w),
GeGLU, and a sliding window of 4 on both (local) blocks.

Writes tests/fixtures/gguf/tiny_<arch>.gguf and tests/fixtures/gguf/tiny_<arch>_reference.json.
Usage: tools/torch_reference/.venv/bin/python tools/torch_reference/gguf_tiny_llama.py [--arch llama|qwen2|qwen3|gemma3]
"""
import argparse
import json
import os
import tempfile
from collections import Counter

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as T
from transformers import AutoModelForCausalLM, AutoTokenizer

OUT = os.path.join("tests", "fixtures", "gguf")
HIDDEN, FF, HEADS, KV, LAYERS, CTX = 256, 512, 4, 2, 2, 128
HEAD_DIM = HIDDEN // HEADS
CORPUS = (
    "a thoughtful and moving film . the acting is great and the story is good . "
    "a dull , lifeless film with a bad script . the plot is thin and the acting is bad . "
    "the best film of the year . the worst film of the year . "
)
N_MERGES = 42

# Per block: the type of q, k, v, o, gate, up, down.
TYPES = [
    [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K],
    [T.Q8_0, T.Q5_K, T.F32, T.F16, T.BF16, T.Q6_K, T.Q4_K],
]
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
# A scale per type that gives weights of roughly 0.05 (codes have different ranges).
SCALE = {T.Q4_0: 0.01, T.Q4_1: 0.01, T.Q5_0: 0.005, T.Q5_1: 0.005, T.Q8_0: 0.0005,
         T.Q2_K: 0.01, T.Q3_K: 0.004, T.Q4_K: 0.004, T.Q5_K: 0.002, T.Q6_K: 0.001}


def byte_alphabet():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def learn_bpe(alpha):
    words = [" " + w if i else w for i, w in enumerate(CORPUS.split(" ")) if w]
    seqs = Counter(tuple(alpha[b] for b in w.encode()) for w in words)
    merges = []
    for _ in range(N_MERGES):
        pairs = Counter()
        for s, c in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += c
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        new = Counter()
        for s, c in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new[tuple(out)] += c
        seqs = new
    return merges


def random_blocks(rng, ty, rows, cols):
    if ty == T.F32:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    if ty == T.F16:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16)
    if ty == T.BF16:
        v = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        return gguf.quants.quantize(v, T.BF16)
    block, nbytes = gguf.GGML_QUANT_SIZES[ty]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    for k, at in enumerate(F16_FIELDS[ty]):
        s = (np.abs(rng.standard_normal(n_blocks)) * SCALE[ty] + SCALE[ty] / 4).astype(np.float16)
        if k == 1:
            s = -s * 4  # the minimum of the "_1" and K types: centres the weights near zero
        raw[:, at:at + 2] = s.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block * nbytes)


def llama_cpp_order(rows_array, heads):
    """llama.cpp's converter order of a q/k weight's rows: within each head, half s index i -> 2i+s.

    Applied to rows of blocks, which is exact for any type (rows are whole blocks)."""
    r = rows_array.shape[0]
    return rows_array.reshape(heads, 2, r // heads // 2, -1).swapaxes(1, 2).reshape(rows_array.shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="llama", choices=["llama", "qwen2", "qwen3", "gemma3"])
    arch = ap.parse_args().arch
    rng = np.random.default_rng({"llama": 7, "qwen2": 8, "qwen3": 9, "gemma3": 10}[arch])
    # transformers reads no head size from a qwen3 file and takes Qwen3's default of 128: the
    # query projection is then twice the hidden size wide. For gemma3 it reads the head size but
    # not query_pre_attn_scalar (default 256), which llama.cpp takes to be the head size: 256.
    head_dim = {"qwen3": 128, "gemma3": 256}.get(arch, HEAD_DIM)
    q_dim = HEADS * head_dim
    alpha = byte_alphabet()
    merges = learn_bpe(alpha)
    if arch == "qwen2":
        # Merges across a punctuation-letter boundary: Qwen2's split keeps ",the" together (a
        # letter run may start with one non-letter), GPT-2's splits "," from "the", so only the
        # right split produces the token ",the".
        merges += [(",", "th"), (",th", "e")]
    tokens = [alpha[b] for b in range(256)] + [a + b for a, b in merges] + ["<|endoftext|>", "<|pad|>"]
    assert len(set(tokens)) == len(tokens)
    vocab = len(tokens)
    stem = f"tiny_{arch}"
    path = os.path.join(OUT, stem + ".gguf")
    w = gguf.GGUFWriter(path, arch=arch)
    w.add_block_count(LAYERS)
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(1e6 if arch == "gemma3" else 10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default" if arch == "llama" else "qwen2")
    if arch in ("qwen3", "gemma3"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == "gemma3":
        # Both blocks are local (every sixth is global): a window of 4 keys on sequences of up
        # to 13 tokens.
        w.add_sliding_window(4)
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 2) + [3, 3])
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(vocab - 2)
    w.add_eos_token_id(vocab - 2)
    w.add_pad_token_id(vocab - 1)
    w.add_add_bos_token(False)
    emb = (rng.standard_normal((vocab, HIDDEN)) * 0.5).astype(np.float32)
    w.add_tensor("token_embd.weight", gguf.quants.quantize(emb, T.Q8_0), raw_dtype=T.Q8_0)
    names = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    shapes = [(q_dim, HIDDEN), (KV * head_dim, HIDDEN), (KV * head_dim, HIDDEN), (HIDDEN, q_dim),
              (FF, HIDDEN), (FF, HIDDEN), (HIDDEN, FF)]
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight",
                     (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight",
                     (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        if arch in ("qwen3", "gemma3"):
            for name in ("attn_q_norm", "attn_k_norm"):
                w.add_tensor(f"blk.{i}.{name}.weight",
                             (1 + 0.3 * rng.standard_normal(head_dim)).astype(np.float32))
        if arch == "gemma3":
            # llama.cpp stores Gemma's norm scales as the factor 1 + w (transformers subtracts 1
            # when it reads them), as these are: values near 1.
            for name in ("post_attention_norm", "post_ffw_norm"):
                w.add_tensor(f"blk.{i}.{name}.weight",
                             (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        for name, (rows, cols), ty in zip(names, shapes, TYPES[i]):
            data = random_blocks(rng, ty, rows, cols)
            if arch == "llama" and name in ("attn_q", "attn_k"):
                data = llama_cpp_order(data, HEADS if name == "attn_q" else KV)
            if arch == "qwen2" and name in ("attn_q", "attn_k", "attn_v"):
                w.add_tensor(f"blk.{i}.{name}.bias",
                             (0.5 * rng.standard_normal(rows)).astype(np.float32))
            kwargs = {} if ty in (T.F32, T.F16) else {"raw_dtype": ty}
            w.add_tensor(f"blk.{i}.{name}.weight", data, **kwargs)
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    model = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=stem + ".gguf", dtype=torch.float32)
    model.eval()
    seqs = [[int(x) for x in rng.integers(0, vocab, size=n)] for n in (9, 4, 13)]
    out = {"sequences": seqs, "logits": [], "types": [[t.name for t in b] for b in TYPES]}
    with torch.no_grad():
        for s in seqs:
            out["logits"].append(model(torch.tensor([s])).logits[0].reshape(-1).tolist())
    tok = AutoTokenizer.from_pretrained(OUT, gguf_file=stem + ".gguf")
    texts = ["the acting is great", "A dull film, with a bad script!<|endoftext|>", "  the   plot  ",
             "a film,the plot"]
    out["texts"] = [{"text": t, "ids": tok(t)["input_ids"]} for t in texts]
    with open(os.path.join(OUT, stem + "_reference.json"), "w") as f:
        json.dump(out, f)
    print("wrote", path, os.path.getsize(path), "bytes; vocab", vocab)


if __name__ == "__main__":
    main()
