#!/usr/bin/env python3
"""The tables of docs/results.md's Fashion-MNIST toy (apps/mnist_toy), from the runs of
`scripts/results.sh toy` (committed: docs/runs/toy/<run>/runs.csv, a `done` marker per finished
run). Standard library only.

    python3 scripts/summarize_toy.py [docs/runs/toy]            print the tables and the figures
    python3 scripts/summarize_toy.py --check [DIR [PAGE]]       fail unless each table of PAGE
                                                                (docs/results.md) recomputes
    python3 scripts/summarize_toy.py --write [DIR [PAGE]]       rewrite those tables from the runs

The tables: the learning rates (validation accuracy after 30 rounds; tune_lr<rate>, and
FFA-LoRA's extension tune_ffa_lr<rate>), final test accuracy per rank at 10 and 50 clients
(k<K>_s<seed>: mean ± sample std over seeds, the best mean of a row in bold, RoLoRA's paired
per-seed margins) and the two-classes-per-client skew (skew_classes2_k50_s<seed>, with the mean
over evaluations). --check compares each with the page's <!-- BEGIN toy:NAME --> block line by
line (ctest docs.toy_tables); the prose's other numbers are printed by the plain command.
"""
import csv
import pathlib
import statistics
import sys
from collections import defaultdict

from doc_blocks import check_blocks, write_blocks

METHODS = ["fedit", "ffa", "rolora"]
TITLES = {"fedit": "FedIT", "ffa": "FFA-LoRA", "rolora": "RoLoRA"}


def runs(root, pattern):
    """(rank, method) -> {seed: evaluated rows} of the finished runs root/<pattern>/runs.csv."""
    found = defaultdict(dict)
    for path in sorted(root.glob(f"{pattern}/runs.csv")):
        if not (path.parent / "done").exists():
            continue
        per_run = defaultdict(list)
        for r in csv.DictReader(open(path)):
            if float(r["eval_accuracy"]) >= 0:
                per_run[(int(r["rank"]), r["method"], int(r["seed"]))].append(r)
        for (rank, method, seed), rows in per_run.items():
            found[(rank, method)][seed] = rows
    return found


def final(rows):
    return 100 * float(rows[-1]["eval_accuracy"])


def rate(lr):  # 0.001 -> 1e-3, 1.0 -> 1
    mantissa, exponent = f"{lr:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}" if int(exponent) else mantissa


def mean_std(values):
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 \
        else f"{values[0]:.1f} (1 seed)"


def tune_table(root):
    """Rows method, columns rate: final validation accuracy (%), each method's best in bold."""
    acc = defaultdict(dict)  # method -> lr -> accuracy
    for path in sorted(root.glob("tune_*lr*")):
        for (_, method), seeds in runs(root, path.name).items():
            for rows in seeds.values():
                acc[method][float(rows[-1]["lr"])] = final(rows)
    if not acc:
        return []
    lrs = sorted({lr for v in acc.values() for lr in v})
    lines = ["| lr | " + " | ".join(rate(lr) for lr in lrs) + " |", "| --- |" + " ---: |" * len(lrs)]
    for m in METHODS:
        best = max(acc[m].values())
        lines.append(f"| {TITLES[m]} | " + " | ".join(
            (f"**{acc[m][lr]:.1f}**" if acc[m][lr] == best else f"{acc[m][lr]:.1f}") if lr in acc[m] else "-"
            for lr in lrs) + " |")
    return lines


def margins(seeds, other):
    common = sorted(set(seeds["rolora"]) & set(seeds[other]))
    return " ".join(f"{final(seeds['rolora'][s]) - final(seeds[other][s]):+.1f}" for s in common)


def rank_table(root, pattern, bold=True, over_rounds=False):
    """Rows rank: each method's final test accuracy over the seeds of root/<pattern>, RoLoRA's
    per-seed margins over FedIT and FFA-LoRA; bold: the best mean of a row in bold; over_rounds:
    a column with each method's test accuracy averaged over its evaluations, then over seeds."""
    found = runs(root, pattern)
    if not found:
        return []
    header = "| rank | FedIT | FFA-LoRA | RoLoRA | RoLoRA - FedIT per seed | RoLoRA - FFA-LoRA per seed |"
    if over_rounds:
        header += " mean over rounds, FedIT / FFA / RoLoRA |"
    lines = [header, "|" + " ---: |" * (header.count("|") - 1)]
    for rank in sorted({k[0] for k in found}):
        seeds = {m: found[(rank, m)] for m in METHODS}
        means = {m: statistics.mean(final(r) for r in seeds[m].values()) for m in METHODS}
        cells = [mean_std([final(r) for _, r in sorted(seeds[m].items())]) for m in METHODS]
        if bold:
            top = max(means.values())
            cells = [f"**{c}**" if means[m] == top else c for m, c in zip(METHODS, cells)]
        cells += [margins(seeds, "fedit"), margins(seeds, "ffa")]
        if over_rounds:
            cells.append(" / ".join(f"{statistics.mean(statistics.mean(100 * float(r['eval_accuracy']) for r in rows) for rows in seeds[m].values()):.1f}"
                                    for m in METHODS))
        lines.append(f"| {rank} | " + " | ".join(cells) + " |")
    return lines


BLOCKS = {"toy:tune": tune_table,
          "toy:k10": lambda root: rank_table(root, "k10_s*"),
          "toy:k50": lambda root: rank_table(root, "k50_s*"),
          "toy:classes2": lambda root: rank_table(root, "skew_classes2_k50_s*", bold=False, over_rounds=True)}


def fedit_errors(root, pattern):
    """rank -> FedIT's aggregation error in every round of the finished runs root/<pattern>."""
    errors = defaultdict(list)
    for path in sorted(root.glob(f"{pattern}/runs.csv")):
        if (path.parent / "done").exists():
            for r in csv.DictReader(open(path)):
                if r["method"] == "fedit":
                    errors[int(r["rank"])].append(float(r["aggregation_error"]))
    return errors


def figures(root):
    """The numbers the page quotes in prose: FedIT's aggregation error per round, the long run,
    the rank-4 rates and the two skews."""
    for pattern in ("k10_s*", "k50_s*", "k50_s0", "skew_dir0.1_k50_s0", "skew_classes2_k50_s0"):
        for rank, e in sorted(fedit_errors(root, pattern).items()):
            print(f"{pattern} r {rank}: FedIT aggregation error {min(e):.2f}..{max(e):.2f} "
                  f"(median {statistics.median(e):.2f})")
    for name in ("long_r4_k10_s0", "diag_r4_lr1e-2", "diag_r4_lr3e-2", "skew_dir0.1_k50_s0", "skew_classes2_k50_s0"):
        for (rank, method), seeds in sorted(runs(root, name).items()):
            rows = seeds[0]
            curve = " ".join(f"{100 * float(r['eval_accuracy']):.1f}" for r in rows)
            print(f"{name} r {rank} {method}: final {final(rows):.1f} (evaluations: {curve})")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = pathlib.Path(args[0] if args else "docs/runs/toy")
    tables = {name: lambda t=table: t(root) for name, table in BLOCKS.items()}
    page = pathlib.Path(args[1] if len(args) > 1 else "docs/results.md")
    if "--check" in sys.argv:
        sys.exit(1 if check_blocks(page, tables) else 0)
    if "--write" in sys.argv:
        print("rewrote", *write_blocks(page, tables))
        sys.exit(0)
    for name, table in BLOCKS.items():
        print(f"\n{name}:\n" + "\n".join(table(root)))
    print()
    figures(root)
