"""flexp.train and flexp.plan against the CLI on the same configuration, progress callbacks,
Ctrl-C, and bad input raised as the right exceptions."""

import json
import os
import signal
import threading

import pytest

import flexp
from conftest import minilm, run_cli, same, small_config, to_sets


def test_train_dict_equals_the_cli(tmp_path, reviews):
    cfg = small_config(reviews, tmp_path / "py")
    seen = []
    report = flexp.train(cfg, progress=seen.append)
    cli_cfg = dict(cfg, out=str(tmp_path / "cli"))
    run_cli("train", *to_sets(cli_cfg))
    cli = json.load(open(tmp_path / "cli/report.json"))
    same(cli, report)
    assert report == json.load(open(tmp_path / "py/report.json"))
    assert [e["round"] for e in seen] == [1, 2, 3]
    assert all(e["rounds"] == 3 and e["train_loss"] > 0 for e in seen)
    assert seen[-1]["metrics"]["personalized_acc_mean"] == report["summary"]["personalized_acc_mean"]


def test_train_takes_a_toml_path(tmp_path, reviews):
    cfg = small_config(reviews, tmp_path / "run", rounds=1)
    lines = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            continue
        lines.append(f"{k} = {json.dumps(v)}")
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {json.dumps(vv)}" for kk, vv in v.items()]
    (tmp_path / "run.toml").write_text("\n".join(lines) + "\n")
    report = flexp.train(tmp_path / "run.toml")
    assert report["rounds"] == 1 and len(report["clients"]) == 3


def test_plan_equals_the_cli(tmp_path, reviews):
    cfg = small_config(reviews, tmp_path / "run")
    p = flexp.plan(cfg)
    table = run_cli("plan", *to_sets(cfg)).stdout
    assert p["splits"] == [1, 2, 4]
    lines = [l.split() for l in table.splitlines()]
    for row in p["rows"]:
        # The CLI's table row of this client: index, profile, split, memory MiB, latency ms.
        mine = [l for l in lines if l and l[0] == str(row["client"])]
        assert mine and mine[0][1:4] == [row["profile"], str(row["split"]), f"{row['memory_bytes'] / 2**20:.1f}"], (mine, row)


def test_ctrl_c_stops_after_the_round_and_the_run_resumes(tmp_path, reviews):
    full = flexp.train(small_config(reviews, tmp_path / "full", rounds=4))
    cfg = small_config(reviews, tmp_path / "cut", rounds=4)
    fired = threading.Event()

    def ctrl_c(event):
        # A real SIGINT, delivered while the engine computes with the GIL released.
        if event["round"] == 1 and not fired.is_set():
            fired.set()
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt) as info:
        flexp.train(cfg, progress=ctrl_c)
    cause = info.value.__cause__
    assert isinstance(cause, flexp.Interrupted) and "interrupted after round" in str(cause)
    meta = json.load(open(tmp_path / "cut/checkpoint/meta.json"))
    assert 1 <= meta["round"] < 4
    assert not (tmp_path / "cut/report.json").exists()
    resumed = flexp.train(tmp_path / "cut", resume=True)
    same(full, resumed)


def test_an_exception_in_the_callback_stops_the_run(tmp_path, reviews):
    def boom(event):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        flexp.train(small_config(reviews, tmp_path / "run"), progress=boom)
    assert json.load(open(tmp_path / "run/checkpoint/meta.json"))["round"] == 1


def test_bad_input_raises_the_right_exceptions(tmp_path, reviews):
    with pytest.raises(TypeError, match=r"config\.rounds: a NoneType has no TOML form"):
        flexp.train(small_config(reviews, tmp_path / "a", rounds=None))
    with pytest.raises(flexp.ConfigTypeError, match="expected a dict or a path"):
        flexp.train(42)
    with pytest.raises(ValueError, match="rounds"):
        flexp.train(small_config(reviews, tmp_path / "b", rounds="three"))
    with pytest.raises(flexp.InputError, match="no_such_key"):
        flexp.train(small_config(reviews, tmp_path / "c", no_such_key=1))
    with pytest.raises(OSError, match="missing.csv") as info:
        cfg = small_config(reviews, tmp_path / "d")
        cfg["data"]["path"] = str(tmp_path / "missing.csv")
        flexp.train(cfg)
    assert isinstance(info.value, flexp.FlexpError)
    with pytest.raises(OSError, match="nowhere.toml"):
        flexp.train(tmp_path / "nowhere.toml")
    with pytest.raises(flexp.FileError, match="config.json"):
        flexp.Model.load(tmp_path)
    (tmp_path / "e").mkdir()
    with pytest.raises(OSError, match="config.toml"):
        flexp.train(tmp_path / "e", resume=True)
