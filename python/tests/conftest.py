"""Shared fixtures of the Python tests: the repository's paths, the CLI binary, small data."""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli() -> Path:
    """The flexp-run binary the README's test command builds (or FLEXP_RUN)."""
    env = os.environ.get("FLEXP_RUN")
    candidates = [Path(env)] if env else []
    candidates += [ROOT / "target/debug/flexp-run", ROOT / "target/release/flexp-run"]
    for c in candidates:
        if c.is_file():
            return c
    pytest.fail("no flexp-run binary: run `cargo build` first or set FLEXP_RUN", pytrace=False)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([str(cli()), "--quiet", *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"flexp-run {' '.join(args)}:\n{p.stderr}"
    return p


def minilm() -> Path:
    m = ROOT / "models/all-MiniLM-L6-v2"
    if not (m / "model.safetensors").is_file():
        pytest.fail("run `bash tools/fetch_minilm.sh` first", pytrace=False)
    return m


def smollm2() -> Path:
    m = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    if not m.is_file():
        pytest.fail("run `bash tools/fetch_smollm2.sh` first", pytrace=False)
    return m


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    """48 short labelled reviews in a CSV file."""
    words = {"pos": ["great", "wonderful", "brilliant", "moving"], "neg": ["awful", "boring", "terrible", "dull"]}
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "label"])
        for i in range(48):
            label = "pos" if i % 2 == 0 else "neg"
            ws = words[label]
            w.writerow([f"a {ws[i % 4]} film, truly {ws[(i // 2) % 4]}", label])
    return path


def small_config(data: Path, out: Path, **extra) -> dict:
    """A run that takes seconds: MiniLM, 3 clients, a few rounds."""
    cfg = {
        "model": str(minilm()),
        "data": {"path": str(data), "text_column": "review", "label_column": "label"},
        "partition": "iid",
        "clients": 3,
        "rounds": 3,
        "local_steps": 2,
        "batch_size": 4,
        "seq_len": 16,
        "lora": {"rank": 2},
        "split": [1, 2, 4],
        "eval_every": 1,
        "seed": 5,
        "test_fraction": 0.25,
        "eval": {"global_max": 7},
        "out": str(out),
    }
    cfg.update(extra)
    return cfg


def to_sets(cfg: dict, prefix: str = "") -> list:
    """The dict as `--set key=value` arguments of the CLI (TOML values)."""
    out = []
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += to_sets(v, key + ".")
        else:
            out += ["--set", f"{key}={json.dumps(v)}"]
    return out


def same(want, got, at="report"):
    """Every field of want is in got with the same value (numbers to 1e-6 relative), but the
    measured wall time and the run folder's path."""
    if isinstance(want, dict):
        for k, v in want.items():
            if k in ("wall_seconds", "out"):
                continue
            assert k in got, f"{at}: no `{k}`"
            same(v, got[k], f"{at}.{k}")
    elif isinstance(want, list):
        assert len(want) == len(got), f"{at}: lengths {len(want)} vs {len(got)}"
        for i, (a, b) in enumerate(zip(want, got)):
            same(a, b, f"{at}[{i}]")
    elif isinstance(want, float) or isinstance(got, float):
        assert abs(want - got) <= 1e-6 * max(abs(want), 1.0), f"{at}: {want} vs {got}"
    else:
        assert want == got, f"{at}: {want!r} vs {got!r}"
