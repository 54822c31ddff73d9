"""The Flower app in examples/flower: Flower drives the rounds, flexp computes. On Flower's
simulation engine (4 SuperNodes) and as a real deployment (a SuperLink and two SuperNode
processes started here on 127.0.0.1), Flower messages every node each round before flexp runs
it, and the run folder it leaves equals `flexp-run train` / `flexp.train` on the same
configuration.
Every process is bounded in time and stopped by its PID (its process group)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flexp
from conftest import ROOT, minilm, run_cli, same

APP = ROOT / "examples/flower"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_run(tmp: Path, data: Path, clients: int) -> Path:
    splits = ", ".join(str(1 + k % 4) for k in range(clients))
    text = f"""model = "{minilm()}"
partition = "iid"
clients = {clients}
rounds = 2
local_steps = 2
batch_size = 4
seq_len = 16
split = [{splits}]
eval_every = 1
seed = 5
test_fraction = 0.25
[data]
path = "{data}"
text_column = "review"
label_column = "label"
[lora]
rank = 2
[eval]
global_max = 7
"""
    path = tmp / "run.toml"
    path.write_text(text)
    return path


def flower_home(tmp: Path, deployment_port: int) -> dict:
    """A Flower config with the app's two SuperLink connections (examples/flower/superlinks.toml)."""
    home = tmp / "flwr-home"
    home.mkdir()
    conns = (APP / "superlinks.toml").read_text().replace("127.0.0.1:9091", f"127.0.0.1:{deployment_port}")
    (home / "config.toml").write_text('[superlink]\ndefault = "local-simulation"\n\n' + conns)
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        FLWR_DISABLE_UPDATE_CHECK="1",
    )
    return env


def flwr_run(env: dict, connection: str, run: Path, out: Path) -> str:
    p = subprocess.run(
        [str(BIN / "flwr"), "run", str(APP), connection, "--stream",
         "--run-config", f"config='{run}' out='{out}'"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    log = p.stdout + p.stderr
    assert p.returncode == 0 and (out / "report.json").is_file(), log
    return log


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=30)


def kill_local_superlink(home: str) -> None:
    """`flwr run` starts the simulation's SuperLink detached; find it by its log file."""
    marker = f"{home}/local-superlink/superlink.log".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmd:
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def node_clients() -> list:
    """PIDs of the nodes' flexp client processes (`python -m flexp_flower.node`)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if b"flexp_flower.node" in cmd and state != "Z":
            pids.append(int(pid))
    return pids


def check_rounds(out: Path, rounds: int, clients: int) -> None:
    """Flower drove every round: each node replied, then flexp ran the round with every client;
    and every node's flexp client exits once the run is over."""
    lines = [json.loads(l) for l in open(out / "flower_rounds.jsonl")]
    assert [l["round"] for l in lines] == list(range(1, rounds + 1)), lines
    for l in lines:
        assert l["nodes_replied"] == clients, l
        assert l["clients_running"] == list(range(clients)), l
        assert l["completed"] == list(range(clients)), l
    t0 = time.monotonic()
    while node_clients() and time.monotonic() - t0 < 30:
        time.sleep(0.2)
    left = node_clients()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"node clients still running after the run: {left}"


def test_flower_simulation_equals_train(tmp_path, reviews):
    run = write_run(tmp_path, reviews, 4)
    env = flower_home(tmp_path, free_port())
    try:
        flwr_run(env, "local-simulation", run, tmp_path / "out")
    finally:
        kill_local_superlink(env["FLWR_HOME"])
    # What the issue asks: the report equals `flexp-run train` on the same run.toml.
    run_cli("train", "--config", str(run), "--set", f"out=\"{tmp_path / 'sim'}\"")
    sim = json.load(open(tmp_path / "sim/report.json"))
    same(sim, json.load(open(tmp_path / "out/report.json")))
    assert (tmp_path / "out/report.md").is_file() and (tmp_path / "out/acc_vs_round.svg").is_file()
    check_rounds(tmp_path / "out", 2, 4)


def test_flower_deployment_with_superlink_and_supernodes(tmp_path, reviews):
    run = write_run(tmp_path, reviews, 2)
    port = free_port()
    env = flower_home(tmp_path, port)
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
             "--database", str(tmp_path / "state.db")],
            env=env, stdout=open(tmp_path / "superlink.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        ))
        for k in range(2):
            procs.append(subprocess.Popen(
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                 "--port", str(free_port())],
                env=env, stdout=open(tmp_path / f"supernode-{k}.log", "w"), stderr=subprocess.STDOUT,
                start_new_session=True,
            ))
        _wait_for_port(port, 60)
        flwr_run(env, "local-deployment", run, tmp_path / "out")
    finally:
        for p in procs:
            kill_group(p)
    sim = flexp.train(dict(_toml(run), out=str(tmp_path / "sim")))
    report = json.load(open(tmp_path / "out/report.json"))
    same(sim, report)
    assert [c["rounds_completed"] for c in report["clients"]] == [2, 2]
    check_rounds(tmp_path / "out", 2, 2)


def _wait_for_port(port: int, limit: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"the SuperLink did not listen on {port} within {limit} s")


def _toml(path: Path) -> dict:
    import tomllib

    with open(path, "rb") as f:
        return tomllib.load(f)
