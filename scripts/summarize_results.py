#!/usr/bin/env python3
"""Summarises the runs of scripts/results.sh (results/table/) as the Markdown tables of
docs/results.md: final accuracy per method, mean +- std over seeds. With --plot DIR it also draws
DIR/accuracy_clients_<K>.svg (mean test accuracy against round, +- std over seeds, per method)
with gnuplot. Standard library only.

    python3 scripts/summarize_results.py [results/table] [--plot docs/img]
"""
import csv
import pathlib
import re
import statistics
import subprocess
import sys
from collections import defaultdict

METHODS = ["fedit", "ffa", "rolora"]
TITLES = {"fedit": "FedIT", "ffa": "FFA-LoRA", "rolora": "RoLoRA"}


def final_row(path):
    rows = [r for r in csv.DictReader(open(path)) if float(r["eval_accuracy"]) >= 0]
    return rows[-1]


def cell(values):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f} (1 seed)"
    seeds = "" if len(values) >= 3 else f" ({len(values)} seeds)"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}{seeds}"


def table(root, experiment, key_name, pattern):
    runs = defaultdict(lambda: defaultdict(list))  # key -> method -> accuracies
    for csv_path in sorted((root / experiment).glob("*/*.csv")):
        match = re.match(pattern, csv_path.parent.name)
        if match and (csv_path.parent / "done").exists():  # finished runs only
            row = final_row(csv_path)
            runs[int(match.group(1))][row["method"]].append(float(row["eval_accuracy"]))
    if not runs:
        return
    print(f"\n{experiment}: final test accuracy (%), mean ± std over seeds\n")
    print(f"| {key_name} | " + " | ".join(TITLES[m] for m in METHODS) + " |")
    print("|---" * (len(METHODS) + 1) + "|")
    for key in sorted(runs):
        print(f"| {key} | " + " | ".join(cell(runs[key][m]) for m in METHODS) + " |")


def tuning(root):
    rows = []
    for csv_path in sorted((root / "tune").glob("*/*.csv")):
        row = final_row(csv_path)
        rows.append((row["method"], float(row["lr"]), float(row["eval_accuracy"]), float(row["eval_loss"])))
    if rows:
        print("\ntune: final validation accuracy (%) / loss, seed 0\n")
        print("| method | lr | val accuracy | val loss |\n|---|---|---|---|")
        for m, lr, acc, loss in sorted(rows):
            print(f"| {m} | {lr:g} | {100 * acc:.1f} | {loss:.4f} |")


def curves(root, clients):
    """method -> [(round, mean accuracy, std)] over the seeds of results/table/clients/k<K>_s*."""
    per_round = defaultdict(lambda: defaultdict(list))  # method -> round -> accuracies
    for csv_path in sorted((root / "clients").glob(f"k{clients}_s*/*.csv")):
        if not (csv_path.parent / "done").exists():
            continue
        for r in csv.DictReader(open(csv_path)):
            if float(r["eval_accuracy"]) >= 0:
                per_round[r["method"]][int(r["round"])].append(float(r["eval_accuracy"]))
    return {m: [(k, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                for k, v in sorted(rounds.items())] for m, rounds in per_round.items()}


def plot(root, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    for match in sorted({re.match(r"k(\d+)_s\d+", p.name).group(1) for p in (root / "clients").glob("k*_s*")}, key=int):
        lines = curves(root, match)
        methods = [m for m in METHODS if m in lines]
        seeds = len(list((root / "clients").glob(f"k{match}_s*/done")))
        svg = out_dir / f"accuracy_clients_{match}.svg"
        script = [
            "set terminal svg size 800,500 enhanced font 'Sans,12'",
            f"set output '{svg}'",
            f"set title 'SpamAssassin, {match} clients (IID), rank 2: mean and std over {seeds} seeds' noenhanced",
            "set xlabel 'round'", "set ylabel 'test accuracy (%)'",
            "set grid", "set key bottom right box opaque", "set xrange [0:*]",
            "plot " + ", ".join(f"'-' using 1:2:3 with yerrorlines title '{TITLES[m]}'" for m in methods),
        ]
        for m in methods:
            script += [f"{k} {100 * a:.3f} {100 * d:.3f}" for k, a, d in lines[m]] + ["e"]
        subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=True)
        print(f"wrote {svg}", file=sys.stderr)


if __name__ == "__main__":
    args = sys.argv[1:]
    plot_dir = None
    if "--plot" in args:
        i = args.index("--plot")
        plot_dir = pathlib.Path(args[i + 1])
        del args[i:i + 2]
    root = pathlib.Path(args[0] if args else "results/table")
    tuning(root)
    table(root, "clients", "clients", r"k(\d+)_s\d+")
    table(root, "ranks", "rank", r"r(\d+)_s\d+")
    if plot_dir:
        plot(root, plot_dir)
