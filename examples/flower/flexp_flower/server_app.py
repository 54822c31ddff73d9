"""The ServerApp: Flower drives the rounds, flexp computes.

It starts flexp's server (the activation data plane, mutual TLS) gated, so that flexp runs a
round only when the ServerApp says so. Each round it messages every node with the round number,
the server's address and the node's flexp credentials; each ClientApp makes sure its node's
flexp client is running and replies. Then the ServerApp lets flexp run the round and records
what it did in `out/flower_rounds.jsonl`. At the end `out` holds flexp's usual run folder
(report.json, metrics.jsonl, report.md, plots).
"""

import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import flexp
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def _listen_address(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if port != "0":
        return listen
    with socket.socket() as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


def _nodes(grid: Grid, wanted: int, wait_s: float) -> list:
    deadline = time.monotonic() + wait_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= wanted:
            return nodes[:wanted]
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the flexp run needs {wanted} nodes, {len(nodes)} connected within {wait_s:.0f} s"
            )
        time.sleep(1.0)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    config = Path(str(rc["config"])).expanduser().resolve()
    out = Path(str(rc["out"])).expanduser().resolve()
    wait_s = float(rc.get("wait-for-nodes", 120))
    timeout = float(rc.get("timeout", 3600))

    work = Path(tempfile.mkdtemp(prefix="flexp-flower-"))
    flexp.partition(config, work / "parts")
    listen = _listen_address(str(rc.get("listen", "127.0.0.1:0")))
    server = flexp.Server(
        config, listen, work / "tls", out, join_timeout=wait_s, partition=work / "parts", gated=True
    )
    clients, rounds = server.clients, server.rounds
    flexp.certs(work / "tls", clients)
    nodes = _nodes(grid, clients, wait_s)
    server.start()

    tls = work / "tls"
    record = []
    for r in range(rounds):
        messages = []
        for k, node in enumerate(nodes):
            content = ConfigRecord(
                {
                    "round": r,
                    "address": listen,
                    "id": k,
                    "ca": (tls / "ca.pem").read_text(),
                    "cert": (tls / f"client-{k}.pem").read_text(),
                    "key": (tls / f"client-{k}.key").read_text(),
                    "data": str(work / "parts" / f"client-{k}.csv"),
                    "global-test": str(work / "parts" / "global_test.csv"),
                }
            )
            messages.append(
                Message(RecordDict({"flexp": content}), dst_node_id=node, message_type="train")
            )
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        ok = [m for m in replies if not m.has_error()]
        for m in replies:
            if m.has_error():
                print(f"round {r + 1}: node {m.metadata.src_node_id}: {m.error.reason}")
        # The round itself runs in flexp, between its server and the nodes' clients.
        done = server.next_round()
        done["nodes_replied"] = len(ok)
        done["clients_running"] = sorted(int(m.content["flexp"]["client"]) for m in ok)
        record.append(done)
        print(f"round {done['round']}/{rounds}: train loss {done['train_loss']}")
    report = server.wait()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "flower_rounds.jsonl", "w") as f:
        for line in record:
            f.write(json.dumps(line) + "\n")
    print(
        json.dumps(
            {
                "out": str(out),
                "rounds": report["rounds"],
                "personalized_acc_mean": report["summary"]["personalized_acc_mean"],
            }
        )
    )
