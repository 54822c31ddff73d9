#!/usr/bin/env python3
"""Per-client reading of a finished sweep (docs/results_notes.md): for each partition,

1. the example-weighted personalized accuracy of each algorithm (all clients' test examples
   pooled, so a client with one test example counts once, not as a tenth of the mean), mean over
   seeds with a 95% t interval;
2. FlexP-SFL minus each personalized baseline, per client, grouped by the client's split (how
   many blocks it trains on the device), mean and standard error over clients x seeds.

Only the runs' report.json files are read (test-split figures, as reported; nothing here is
tuned on them). Standard library only.

usage: python3 tools/results_by_client.py SWEEP_OUT   (prints markdown)
"""
import json
import os
import statistics as st
import sys

# Student t 0.975 quantiles for small n - 1.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def load(root, part, algo, seed):
    p = os.path.join(root, f"partition-{part}", f"{algo}-s{seed}", "report.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def pooled(report):
    n = sum(c["test_examples"] for c in report["clients"])
    hits = sum(c["personalized_acc"] * c["test_examples"] for c in report["clients"]
               if c["personalized_acc"] is not None)
    return 100.0 * hits / n


def ci(values):
    m = st.mean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, T975.get(len(values) - 1, 1.96) * st.stdev(values) / len(values) ** 0.5


def main():
    root = sys.argv[1]
    parts = sorted(d[len("partition-"):] for d in os.listdir(root) if d.startswith("partition-"))
    algos = ["flexp-sfl", "fedbip", "local", "ditto", "pfedme", "fedavg", "sfl-v2"]
    for part in parts:
        print(f"### {part}\n")
        print("| algorithm | seeds | example-weighted personalized accuracy |")
        print("|---|---:|---:|")
        for a in algos:
            vals = [pooled(r) for s in range(5) if (r := load(root, part, a, s))]
            if vals:
                m, h = ci(vals)
                print(f"| {a} | {len(vals)} | {m:.1f} ± {h:.1f} |")
        print()
        print("| FlexP-SFL minus | clients with split 1 | clients with split 5 | all clients |")
        print("|---|---:|---:|---:|")
        for other in ["local", "fedbip", "ditto", "pfedme"]:
            groups = {}
            for s in range(5):
                a, b = load(root, part, "flexp-sfl", s), load(root, part, other, s)
                if not a or not b:
                    continue
                for ca, cb in zip(a["clients"], b["clients"]):
                    if ca["personalized_acc"] is None or cb["personalized_acc"] is None:
                        continue
                    d = 100.0 * (ca["personalized_acc"] - cb["personalized_acc"])
                    groups.setdefault(ca["split"], []).append(d)
                    groups.setdefault("all", []).append(d)
            if not groups:
                continue
            cells = []
            for k in [1, 5, "all"]:
                v = groups.get(k, [])
                if len(v) > 1:
                    cells.append(f"{st.mean(v):+.1f} (se {st.stdev(v) / len(v) ** 0.5:.1f}, n {len(v)})")
                else:
                    cells.append("–")
            print(f"| {other} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
