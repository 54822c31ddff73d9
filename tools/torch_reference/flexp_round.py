#!/usr/bin/env python3
"""One FlexP-SFL training round, the PyTorch + transformers + peft way.

The reference that `flexp-run bench` is compared with (tools/compare_torch.sh). It times the
same round that src/run/bench.rs times, written the way split federated learning code is
usually written: a frozen HF BertModel, LoRA adapters from peft, the client-side segment's
output detached at the cut (`h = client_out.detach().requires_grad_()`), the server-side
segment's backward, then `client_out.backward(h.grad)`, torch.optim.AdamW on both sides.

Prints exactly one JSON line on stdout; everything else goes to stderr. See README.md.
"""

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext

# Nothing but the JSON line may reach stdout: libraries that print go to stderr instead.
_STDOUT = sys.stdout
sys.stdout = sys.stderr

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from transformers import AutoConfig, AutoModel  # noqa: E402

LR = 1e-3
CLASSES = 2
TOKEN_LO = 1000  # random token ids are uniform in [1000, vocab)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time one FlexP-SFL round (PyTorch + transformers + peft reference)."
    )
    p.add_argument("--model", required=True, help="HF BERT checkpoint folder (config.json + weights)")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--batch", type=int, required=True, help="sequences per client per local step")
    p.add_argument("--seq", type=int, required=True, help="tokens per sequence")
    p.add_argument("--steps", type=int, required=True, help="local steps in the timed round")
    p.add_argument("--rank", type=int, required=True, help="LoRA rank (alpha = 2*rank)")
    p.add_argument("--split", required=True, help="cut layers S1[,S2,...], cycled over the clients")
    p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="bf16: torch.autocast('cpu', dtype=torch.bfloat16) around forward passes")
    p.add_argument("--variant", choices=["sequential", "batched"], default="sequential")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="torch device: cpu (default) or cuda (tools/gpu_check.sh times the GPU)")
    a = p.parse_args(argv)
    try:
        a.split = [int(s) for s in a.split.split(",") if s.strip() != ""]
    except ValueError:
        p.error(f"--split: expected comma-separated integers, got {a.split!r}")
    for name in ("clients", "batch", "seq", "steps", "rank", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not a.split:
        p.error("--split needs at least one cut")
    return a, p


class Round:
    """The model, the adapters, the optimizers and the data of one round."""

    def __init__(self, a):
        self.a = a
        cfg = AutoConfig.from_pretrained(a.model)
        if cfg.model_type != "bert":
            raise SystemExit(f"flexp_round.py: expected a BERT checkpoint, got model_type={cfg.model_type!r}")
        # Train mode like real fine-tuning code, but dropout 0 everywhere (flexp has no dropout).
        base = AutoModel.from_pretrained(
            a.model,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            dtype=torch.float32,
        )
        L = base.config.num_hidden_layers
        self.L = L
        for s in a.split:
            if not 1 <= s <= L - 1:
                raise SystemExit(
                    f"flexp_round.py: cut {s} is outside 1..{L - 1} (the model has {L} blocks)")
        if a.seq > base.config.max_position_embeddings:
            raise SystemExit(f"flexp_round.py: --seq {a.seq} exceeds the model's "
                             f"{base.config.max_position_embeddings} positions")
        self.vocab = base.config.vocab_size
        if self.vocab <= TOKEN_LO:
            raise SystemExit(f"flexp_round.py: vocabulary {self.vocab} too small for ids in [1000, vocab)")
        self.hidden = base.config.hidden_size
        self.cuts = [a.split[k % len(a.split)] for k in range(a.clients)]
        min_cut = min(self.cuts)

        def lora(layers):
            return LoraConfig(
                r=a.rank,
                lora_alpha=2 * a.rank,
                lora_dropout=0.0,
                target_modules=["query", "value"],
                layers_to_transform=list(layers),
                layers_pattern="layer",
                bias="none",
            )

        # One frozen base, several named peft adapters on it:
        #   "server":   the global adapter set, on blocks min_cut..L (the union of the server sides);
        #   "client_k": client k's personal adapters, on blocks 0..cut_k.
        # A block runs exactly one adapter at a time (see route()).
        self.peft = get_peft_model(base, lora(range(min_cut, L)), adapter_name="server")
        for k, c in enumerate(self.cuts):
            self.peft.add_adapter(f"client_{k}", lora(range(c)))
        self.peft.train()
        self.bert = self.peft.base_model.model  # the BertModel, its q/v now peft lora.Linear
        self.blocks = self.bert.encoder.layer
        self.block_lora = [[m for m in blk.modules() if isinstance(m, LoraLayer)] for blk in self.blocks]
        self.routed = [None] * L

        def params(name, blocks):
            ps = []
            for i in blocks:
                for m in self.block_lora[i]:
                    if name in m.lora_A:
                        ps += [m.lora_A[name].weight, m.lora_B[name].weight]
            return ps

        self.device = torch.device(a.device)
        self.peft.to(self.device)
        self.head = torch.nn.Linear(self.hidden, CLASSES).to(self.device)
        self.client_params = [params(f"client_{k}", range(c)) for k, c in enumerate(self.cuts)]
        self.server_params = params("server", range(min_cut, L)) + list(self.head.parameters())
        for ps in self.client_params + [self.server_params]:
            for p_ in ps:
                p_.requires_grad_(True)
        frozen = sum(p_.numel() for p_ in self.bert.parameters() if not p_.requires_grad)
        self.client_opt = [torch.optim.AdamW(ps, lr=LR, weight_decay=0.0) for ps in self.client_params]
        self.server_opt = torch.optim.AdamW(self.server_params, lr=LR, weight_decay=0.0)
        log(f"[flexp_round] {L} blocks, hidden {self.hidden}, vocab {self.vocab}, attn "
            f"{self.bert.config._attn_implementation}, frozen base params {frozen}, "
            f"client adapter params {[sum(p_.numel() for p_ in ps) for ps in self.client_params[:len(a.split)]]}"
            f" (per cut {a.split}), server params {sum(p_.numel() for p_ in self.server_params)}")

        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16))
            if a.precision == "bf16" else nullcontext
        )
        # Data for the warm-up step and the timed steps, drawn before any timing.
        g = torch.Generator().manual_seed(a.seed + 1)
        self.data = [
            [
                (
                    torch.randint(TOKEN_LO, self.vocab, (a.batch, a.seq), generator=g).to(self.device),
                    torch.randint(0, CLASSES, (a.batch,), generator=g).to(self.device),
                )
                for _k in range(a.clients)
            ]
            for _s in range(1 + a.steps)
        ]

    # ---- adapter routing ------------------------------------------------------------------
    def route(self, assign):
        """assign[i] = the adapter block i runs ("client_k" or "server").

        peft's per-layer set_adapter() also sets requires_grad=False on the adapters it
        deactivates, and autograd silently drops gradients of a leaf whose requires_grad was
        cleared after the graph was built (the batched variant builds every client's graph
        before any client backward), so every LoRA parameter of a re-routed layer gets
        requires_grad back: all adapters here are trained.
        """
        for i, name in enumerate(assign):
            if self.routed[i] == name:
                continue
            for m in self.block_lora[i]:
                m.set_adapter(name)
                for d in (m.lora_A, m.lora_B):
                    for sub in d.values():
                        sub.weight.requires_grad_(True)
            self.routed[i] = name

    def route_client(self, k):
        """Blocks 0..cut_k run client k's adapters, blocks cut_k..L the server's."""
        c = self.cuts[k]
        self.route([f"client_{k}" if i < c else "server" for i in range(self.L)])

    # ---- the two segments -----------------------------------------------------------------
    def client_forward(self, k, ids):
        """Embeddings + blocks 0..cut_k (client k's adapters): the smashed activations."""
        h = self.bert.embeddings(input_ids=ids)
        for i in range(self.cuts[k]):
            h = self.blocks[i](h)  # every token valid: no attention mask
        return h

    def server_forward(self, h, cut):
        """Blocks cut..L (global adapters), mean pooling, head: logits."""
        for i in range(cut, self.L):
            h = self.blocks[i](h)
        return self.head(h.mean(dim=1))

    # ---- one local step of every client, then the server's step -----------------------------
    def step_sequential(self, batch):
        for k, (ids, y) in enumerate(batch):
            self.route_client(k)
            with self.autocast():
                client_out = self.client_forward(k, ids)
            # --- the cut: activations go to the server ---
            h = client_out.detach().requires_grad_()
            with self.autocast():
                logits = self.server_forward(h, self.cuts[k])
                loss = F.cross_entropy(logits.float(), y)
            loss.backward()  # server adapter + head grads accumulate (sum over clients)
            # --- the cut: the gradient goes back to the client ---
            client_out.backward(h.grad)
            self.client_opt[k].step()
            self.client_opt[k].zero_grad(set_to_none=True)
        self.server_step()

    def step_batched(self, batch):
        # Client-side segments one after another (each client its own adapters).
        outs, cuts_h = [], []
        for k, (ids, _y) in enumerate(batch):
            self.route_client(k)
            with self.autocast():
                client_out = self.client_forward(k, ids)
            outs.append(client_out)
            cuts_h.append(client_out.detach().requires_grad_())
        # Server side: one batched forward/backward per distinct cut over all its clients.
        groups = {}
        for k, c in enumerate(self.cuts):
            groups.setdefault(c, []).append(k)
        for c in sorted(groups):
            ks = groups[c]
            self.route(["server" if i >= c else self.routed[i] for i in range(self.L)])
            h = torch.cat([cuts_h[k] for k in ks])
            y = torch.cat([batch[k][1] for k in ks])
            with self.autocast():
                logits = self.server_forward(h, c)
                # sum over the group's clients of each client's mean CE: the clients get the
                # same cut gradients as in the sequential variant, the server the same sum
                loss = F.cross_entropy(logits.float(), y, reduction="sum") / self.a.batch
            loss.backward()
        # Gradients back to the clients, one after another.
        for k in range(len(batch)):
            outs[k].backward(cuts_h[k].grad)
            self.client_opt[k].step()
            self.client_opt[k].zero_grad(set_to_none=True)
        self.server_step()

    def server_step(self):
        # sync mode: one AdamW step on the mean over clients of the server gradients
        n = float(self.a.clients)
        for p_ in self.server_params:
            if p_.grad is not None:
                p_.grad.div_(n)
        self.server_opt.step()
        self.server_opt.zero_grad(set_to_none=True)

    def step(self, s):
        if self.a.variant == "batched":
            self.step_batched(self.data[s])
        else:
            self.step_sequential(self.data[s])


def main(argv=None):
    a, _ = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(a.seed)
    r = Round(a)
    log(f"[flexp_round] torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"variant {a.variant}, precision {a.precision}, clients {a.clients}, cuts {a.split}, "
        f"batch {a.batch}, seq {a.seq}, steps {a.steps}, rank {a.rank}")
    # On a GPU the host runs ahead of the kernels: wait for them around the timed steps.
    sync = torch.cuda.synchronize if r.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    r.step(0)  # untimed warm-up: every client, one local step
    sync()
    log(f"[flexp_round] warm-up step {time.perf_counter() - t0:.2f}s")
    t0 = time.perf_counter()
    for s in range(a.steps):
        r.step(1 + s)
    sync()
    seconds = time.perf_counter() - t0
    tokens = a.clients * a.steps * a.batch * a.seq
    out = {
        "clients": a.clients,
        "batch": a.batch,
        "seq": a.seq,
        "steps": a.steps,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "impl": f"torch-{a.variant}",
        "precision": a.precision,
        "threads": a.threads,
        "device": a.device,
    }
    log(f"[flexp_round] {tokens} tokens in {seconds:.3f}s: {tokens / seconds:.1f} tokens/s")
    _STDOUT.write(json.dumps(out) + "\n")
    _STDOUT.flush()


if __name__ == "__main__":
    main()
