"""The ClientApp: runs one flexp client (its blocks, its personal adapters, its rows) against
the flexp server the ServerApp started, and replies with what it did."""

import tempfile
from pathlib import Path

import flexp
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    c = msg.content["flexp"]
    k = int(c["id"])
    # The credentials the ServerApp issued to this node, in the folder layout flexp reads.
    tls = Path(tempfile.mkdtemp(prefix=f"flexp-client-{k}-"))
    (tls / "ca.pem").write_text(str(c["ca"]))
    (tls / f"client-{k}.pem").write_text(str(c["cert"]))
    (tls / f"client-{k}.key").write_text(str(c["key"]))
    # A node may hold its rows itself (node config `flexp-data`); else the ServerApp's file.
    data = context.node_config.get("flexp-data", c["data"])
    client = flexp.Client(str(c["address"]), tls, k, str(data), global_test=str(c["global-test"]))
    client.run()
    return Message(RecordDict({"flexp": MetricRecord({"client": k, "finished": 1})}), reply_to=msg)
