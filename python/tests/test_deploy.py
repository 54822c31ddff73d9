"""A deployment driven from Python: flexp.Server and three flexp.Client objects on 127.0.0.1,
each in its own thread, train exactly as flexp.train does on the same configuration."""

import json
import os
import signal
import socket
import threading
import time

import pytest

import flexp
from conftest import run_cli, same, small_config, to_sets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_and_clients_train_as_the_simulation(tmp_path, reviews):
    sim = flexp.train(small_config(reviews, tmp_path / "sim", align="proj"))
    cfg = small_config(reviews, tmp_path / "run", align="proj")
    run_cli("certs", "--clients", "3", "--out", str(tmp_path / "tls"))
    run_cli("partition", *to_sets(cfg), "--out", str(tmp_path / "parts"))
    addr = f"127.0.0.1:{free_port()}"
    server = flexp.Server(cfg, addr, tmp_path / "tls", tmp_path / "run", join_timeout=60)
    server.start()
    clients = [
        flexp.Client(
            addr,
            tmp_path / "tls",
            k,
            tmp_path / f"parts/client-{k}.csv",
            global_test=tmp_path / "parts/global_test.csv",
            timeout=60,
        )
        for k in range(3)
    ]
    for c in clients:
        c.start()
    report = server.wait()
    for k, c in enumerate(clients):
        assert c.wait() == {"client": k, "finished": True}
    same(sim, report)
    assert [c["rounds_completed"] for c in report["clients"]] == [3, 3, 3]
    sim_lines = [json.loads(l) for l in open(tmp_path / "sim/metrics.jsonl")]
    run_lines = [json.loads(l) for l in open(tmp_path / "run/metrics.jsonl")]
    same(sim_lines, run_lines, "metrics")


def test_a_client_with_no_server_fails_by_name(tmp_path):
    run_cli("certs", "--clients", "1", "--out", str(tmp_path / "tls"))
    (tmp_path / "c.csv").write_text("review,label,flexp_split\nx,pos,train\n")
    c = flexp.Client(f"127.0.0.1:{free_port()}", tmp_path / "tls", 0, tmp_path / "c.csv", timeout=1)
    try:
        c.run()
    except flexp.NetworkError as e:
        assert isinstance(e, ConnectionError) and "connecting to 127.0.0.1" in str(e)
    else:
        raise AssertionError("no error without a server")


def test_certs_and_partition_equal_the_cli(tmp_path, reviews):
    cfg = small_config(reviews, tmp_path / "run")
    flexp.partition(cfg, tmp_path / "py")
    run_cli("partition", *to_sets(cfg), "--out", str(tmp_path / "cli"))
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "py").iterdir())
    assert "client-2.csv" in names and "global_test.csv" in names
    for n in names:
        assert (tmp_path / "py" / n).read_bytes() == (tmp_path / "cli" / n).read_bytes(), n
    flexp.certs(tmp_path / "tls", 2)
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [
        "ca.pem", "client-0.key", "client-0.pem", "client-1.key", "client-1.pem", "server.key", "server.pem"
    ]


def test_ctrl_c_reaches_python_while_a_client_waits(tmp_path):
    run_cli("certs", "--clients", "1", "--out", str(tmp_path / "tls"))
    (tmp_path / "c.csv").write_text("review,label,flexp_split\nx,pos,train\n")
    # No server: the client retries the connection for up to 30 s.
    c = flexp.Client(f"127.0.0.1:{free_port()}", tmp_path / "tls", 0, tmp_path / "c.csv", timeout=30)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    try:
        c.run()
    except KeyboardInterrupt:
        assert time.monotonic() - t0 < 5
    else:
        raise AssertionError("Ctrl-C did not reach Python")


def test_a_gated_server_runs_each_round_when_asked(tmp_path, reviews):
    cfg = small_config(reviews, tmp_path / "run", align="proj")
    sim = flexp.train(dict(cfg, out=str(tmp_path / "sim")))
    flexp.certs(tmp_path / "tls", 3)
    flexp.partition(cfg, tmp_path / "parts")
    addr = f"127.0.0.1:{free_port()}"
    server = flexp.Server(cfg, addr, tmp_path / "tls", tmp_path / "run", join_timeout=60,
                          partition=tmp_path / "parts", gated=True)
    assert (server.rounds, server.clients) == (3, 3)
    server.start()
    clients = [
        flexp.Client(addr, tmp_path / "tls", k, tmp_path / f"parts/client-{k}.csv",
                     global_test=tmp_path / "parts/global_test.csv", timeout=60)
        for k in range(3)
    ]
    for c in clients:
        c.start()
    sim_lines = [json.loads(l) for l in open(tmp_path / "sim/metrics.jsonl")]
    for r in range(3):
        # Nothing runs until asked: no metrics line for this round yet.
        m = tmp_path / "run/metrics.jsonl"
        assert (len(m.read_text().splitlines()) if m.exists() else 0) == r
        done = server.next_round()
        assert done["round"] == r + 1 and done["completed"] == [0, 1, 2]
        same(sim_lines[r], done["metrics"], f"round {r + 1}")
    report = server.wait()
    for c in clients:
        c.wait()
    same(sim, report)
    with pytest.raises(flexp.InputError, match="gated=True"):
        flexp.Server(cfg, addr, tmp_path / "tls", tmp_path / "x").next_round()
    # Without `out`, the configuration's: the same folder, which now holds a run.
    with pytest.raises(flexp.InputError, match="already holds a run"):
        flexp.Server(cfg, addr, tmp_path / "tls").run()
