"""flexp.Model against independent references: sentence-transformers' MiniLM embeddings and
transformers' float32 scores of SmolLM2 (fixtures in tests/fixtures), and the CLI."""

import json

import numpy as np
import pytest

import flexp
from conftest import ROOT, minilm, run_cli, smollm2


def test_embed_matches_sentence_transformers():
    refs = [json.loads(l) for l in open(ROOT / "tests/fixtures/minilm/reference.jsonl")]
    m = flexp.Model.load(minilm())
    got = m.embed([r["text"] for r in refs])
    want = np.array([r["embedding"] for r in refs], dtype=np.float32)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4


def test_embed_equals_the_cli(tmp_path):
    texts = ["Hello world", "split learning over the network", "a third, longer sentence about films"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    run_cli("embed", "--model", str(minilm()), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.jsonl"))
    cli = np.array([json.loads(l)["embedding"] for l in open(tmp_path / "out.jsonl")], dtype=np.float32)
    m = flexp.Model.load(minilm())
    assert np.array_equal(m.embed(texts), cli)
    raw = m.embed(texts, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), cli, atol=1e-6)
    assert m.embed([]).shape == (0, 384)


def test_score_matches_transformers_on_smollm2_q4_1():
    refs = [json.loads(l) for l in open(ROOT / "tests/fixtures/gguf/smollm2_reference.jsonl")]
    m = flexp.Model.load(smollm2())
    assert m.is_decoder
    got = m.score([r["text"] for r in refs], top_k=10)
    for r, g in zip(refs, got):
        assert g["tokens"] == r["tokens"]
        assert abs(g["mean_log_likelihood"] - r["mean_log_likelihood"]) < 2e-3
        mine = dict((i, l) for i, l in g["top_k"])
        for i, logit in r["top_k"]:
            if i in mine:
                assert abs(mine[i] - logit) < 2e-2


def test_generate_equals_the_cli():
    m = flexp.Model.load(smollm2())
    text = m.generate("The capital of France is", max_new_tokens=6)
    out = json.loads(run_cli("generate", "--model", str(smollm2()), "--prompt", "The capital of France is", "--max-new-tokens", "6").stdout)
    assert text == out["text"] and text


def test_the_wrong_kind_of_model_is_refused_by_name():
    with pytest.raises(flexp.ModelError, match="embed needs an encoder"):
        flexp.Model.load(smollm2()).embed(["x"])
    with pytest.raises(flexp.ModelError, match="score needs a decoder"):
        flexp.Model.load(minilm()).score(["x"])
