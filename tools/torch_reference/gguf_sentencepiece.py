#!/usr/bin/env python3
"""SentencePiece tokenizers in GGUF metadata (`tokenizer.ggml.model = "llama"`), and the token ids
transformers gives for a few texts, for tests/gguf_tokenizer.rs.

llama.cpp stores a SentencePiece vocabulary as its pieces (spaces spelled U+2581), their scores,
their types (normal, unknown, control, user-defined, byte `<0xNN>`) and no merges. transformers
rebuilds a byte-fallback BPE from it (merges recovered from the pieces, ranked by score) and picks
Llama's pre-tokenizer (Metaspace) or, for Gemma architectures, Gemma's (spaces replaced, merges
ranked by the pieces' order in the file, pieces made of spaces respelled). These files exercise
both: a vocabulary of bytes, letters and pieces learned from a few sentences, scores that do not
follow the file order (so the two rankings differ), a control token, a user-defined token, a
piece of two spaces, and the add-BOS / add-space-prefix flags.

Writes tests/fixtures/gguf/sp_{llama,gemma3}.gguf (metadata only, no tensors) and
tests/fixtures/gguf/sp_reference.json.
Usage: tools/torch_reference/.venv/bin/python tools/torch_reference/gguf_sentencepiece.py
"""
import json
import os
import tempfile
from collections import Counter

import gguf
from transformers import AutoTokenizer

OUT = os.path.join("tests", "fixtures", "gguf")
SP = "\u2581"
CORPUS = (
    "the film is great and the story is good . a dull film with a bad script . "
    "the acting is great , the plot is thin . the best film of the year ."
)
TEXTS = [
    "the film is great",
    "A dull film, with a bad script!",
    "  the   plot  ",
    "naïve café 日本",
    "<|tool|> and <think>the</think> plot",
    "",
]
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6


def learn_pieces(n_merges):
    """Pieces a BPE learns on the corpus, words prefixed with the space mark."""
    words = Counter(SP + w for w in CORPUS.split())
    seqs = {w: list(w) for w in words}
    pieces = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        pieces.append(a + b)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return pieces


def vocabulary():
    tokens = ["<unk>", "<s>", "</s>"]
    types = [UNKNOWN, CONTROL, CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    letters = sorted(set(CORPUS.replace(" ", "")) | {SP})
    tokens += letters
    types += [NORMAL] * len(letters)
    pieces = learn_pieces(40)
    tokens += pieces
    types += [NORMAL] * len(pieces)
    tokens += ["  ", "<|tool|>", "<think>", "</think>"]
    types += [NORMAL, CONTROL, USER_DEFINED, USER_DEFINED]
    # Scores: the learned pieces best-first but with neighbours swapped, so a ranking by score and
    # one by file position disagree; letters and bytes below them.
    scores = []
    for i, t in enumerate(tokens):
        if types[i] == NORMAL and len(t) > 1:
            rank = pieces.index(t) if t in pieces else 0
            scores.append(-float(rank ^ 1))
        elif types[i] == NORMAL:
            scores.append(-100.0 - i)
        else:
            scores.append(0.0)
    return tokens, types, scores


def write(arch, path, tokens, types, scores):
    w = gguf.GGUFWriter(path, arch=arch)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(arch != "gemma3")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    tokens, types, scores = vocabulary()
    ref = {}
    for arch in ("llama", "gemma3"):
        path = os.path.join(OUT, f"sp_{arch}.gguf")
        write(arch, path, tokens, types, scores)
        tok = AutoTokenizer.from_pretrained(OUT, gguf_file=f"sp_{arch}.gguf")
        ref[arch] = [
            {"text": t, "ids": tok(t)["input_ids"], "decoded": tok.decode(tok(t)["input_ids"])}
            for t in TEXTS
        ]
    with open(os.path.join(OUT, "sp_reference.json"), "w") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
    print("wrote", len(tokens), "tokens;", {a: [r["ids"] for r in v[:2]] for a, v in ref.items()})


if __name__ == "__main__":
    main()
