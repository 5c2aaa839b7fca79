#!/usr/bin/env python3
"""Tables of docs/results.md for apps/mnist_toy: final test accuracy per clients x rank x
method, mean +- std over the seeds found, and the paired per-seed margins of RoLoRA over FedIT
and FFA-LoRA. Reads <root>/k<clients>_s<seed>/runs.csv of finished runs (a `done` marker)."""
import csv
import glob
import os
import statistics
import sys
from collections import defaultdict

root = sys.argv[1] if len(sys.argv) > 1 else "results/mnist_toy"
final = defaultdict(dict)  # (clients, rank, method) -> {seed: accuracy}
for path in sorted(glob.glob(os.path.join(root, "k*_s*", "runs.csv"))):
    if not os.path.exists(os.path.join(os.path.dirname(path), "done")):
        continue
    last = {}
    lines = csv.reader(open(path))
    header = next(lines)
    for fields in lines:
        extra = len(fields) - len(header)  # runs before the split column was quoted
        fields = fields[:4] + [",".join(fields[4:5 + extra])] + fields[5 + extra:]
        row = dict(zip(header, fields))
        last[(int(row["clients"]), int(row["rank"]), row["method"])] = (int(row["seed"]), float(row["eval_accuracy"]))
    for key, (seed, acc) in last.items():
        final[key][seed] = acc


def cell(values):
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f} (1 seed)"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


names = {"fedit": "FedIT", "ffa": "FFA-LoRA", "rolora": "RoLoRA"}
for clients in sorted({k[0] for k in final}):
    seeds = sorted({s for k, v in final.items() if k[0] == clients for s in v})
    print(f"\n{clients} clients, seeds {' '.join(map(str, seeds))}: final test accuracy (%)\n")
    print("| rank | FedIT | FFA-LoRA | RoLoRA | RoLoRA - FedIT per seed | RoLoRA - FFA-LoRA per seed |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for rank in sorted({k[1] for k in final if k[0] == clients}):
        acc = {m: final.get((clients, rank, m), {}) for m in names}
        margins = []
        for other in ("fedit", "ffa"):
            common = sorted(set(acc["rolora"]) & set(acc[other]))
            margins.append(" ".join(f"{100 * (acc['rolora'][s] - acc[other][s]):+.1f}" for s in common))
        print(f"| {rank} | " + " | ".join(cell(acc[m].values()) if acc[m] else "-" for m in names) + " | "
              + " | ".join(margins) + " |")
