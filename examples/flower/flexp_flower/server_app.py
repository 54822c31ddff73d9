"""The ServerApp: starts flexp's server (the data plane), tells each node its flexp client id,
the server's address and its credentials, waits for the run and leaves flexp's run folder in
`out` (report.json, report.md, plots)."""

import json
import socket
import tempfile
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
    clients = len(flexp.plan(config)["splits"])
    nodes = _nodes(grid, clients, float(rc.get("wait-for-nodes", 120)))

    work = Path(tempfile.mkdtemp(prefix="flexp-flower-"))
    flexp.certs(work / "tls", clients)
    flexp.partition(config, work / "parts")
    listen = _listen_address(str(rc.get("listen", "127.0.0.1:0")))
    server = flexp.Server(
        config,
        listen,
        work / "tls",
        out,
        join_timeout=float(rc.get("wait-for-nodes", 120)),
        partition=work / "parts",
    )
    server.start()

    tls = work / "tls"
    messages = []
    for k, node in enumerate(nodes):
        record = ConfigRecord(
            {
                "address": listen,
                "id": k,
                "ca": (tls / "ca.pem").read_text(),
                "cert": (tls / f"client-{k}.pem").read_text(),
                "key": (tls / f"client-{k}.key").read_text(),
                "data": str(work / "parts" / f"client-{k}.csv"),
                "global-test": str(work / "parts" / "global_test.csv"),
            }
        )
        messages.append(Message(RecordDict({"flexp": record}), dst_node_id=node, message_type="train"))
    replies = list(grid.send_and_receive(messages, timeout=float(rc.get("timeout", 3600))))
    report = server.wait()
    failed = [m for m in replies if m.has_error()]
    for m in failed:
        print(f"node {m.metadata.src_node_id}: {m.error.reason}")
    print(
        json.dumps(
            {
                "out": str(out),
                "rounds": report["rounds"],
                "personalized_acc_mean": report["summary"]["personalized_acc_mean"],
                "clients_replied": len(replies) - len(failed),
            }
        )
    )
