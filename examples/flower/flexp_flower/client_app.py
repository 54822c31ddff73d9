"""The ClientApp: each round, makes sure this node's flexp client is running and replies.

A flexp client keeps one session with flexp's server for the whole run (its adapters and
optimizer state live there), while Flower may run each message's ClientApp in a fresh process.
So the first message starts the node's flexp client as a process of its own
(`python -m flexp_flower.node`), and later rounds check that it is alive (and start it again if
it died: it reconnects and rejoins).
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    # A finished child that nobody waited for is a zombie: not alive.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return state != "Z"
    except OSError:
        return True


@app.train()
def train(msg: Message, context: Context) -> Message:
    c = msg.content["flexp"]
    k = int(c["id"])
    home = Path(tempfile.gettempdir()) / f"flexp-flower-{msg.metadata.run_id}-node-{k}"
    home.mkdir(parents=True, exist_ok=True)
    pid_file = home / "client.pid"
    started = 0
    if not _alive(pid_file):
        tls = home / "tls"
        tls.mkdir(exist_ok=True)
        (tls / "ca.pem").write_text(str(c["ca"]))
        (tls / f"client-{k}.pem").write_text(str(c["cert"]))
        (tls / f"client-{k}.key").write_text(str(c["key"]))
        os.chmod(tls / f"client-{k}.key", 0o600)
        # A node may hold its rows itself (node config `flexp-data`); else the ServerApp's file.
        data = str(context.node_config.get("flexp-data", c["data"]))
        log = open(home / "client.log", "a")
        p = subprocess.Popen(
            [sys.executable, "-m", "flexp_flower.node", str(c["address"]), str(tls), str(k), data,
             str(c["global-test"])],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        )
        pid_file.write_text(str(p.pid))
        started = 1
    record = MetricRecord({"client": k, "round": int(c["round"]), "started": started})
    return Message(RecordDict({"flexp": record}), reply_to=msg)
