#!/usr/bin/env python3
"""Summarises the runs of scripts/results.sh (results/table/) as the Markdown tables of
docs/results.md: final accuracy per method, mean +- std over seeds. Standard library only."""
import csv
import pathlib
import re
import statistics
import sys
from collections import defaultdict


def final_row(path):
    rows = [r for r in csv.DictReader(open(path)) if float(r["eval_accuracy"]) >= 0]
    return rows[-1]


def cell(values):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f} (1 seed)"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(root, experiment, key_name, pattern):
    runs = defaultdict(lambda: defaultdict(list))  # key -> method -> accuracies
    for csv_path in sorted((root / experiment).glob("*/*.csv")):
        match = re.match(pattern, csv_path.parent.name)
        if match:
            row = final_row(csv_path)
            runs[int(match.group(1))][row["method"]].append(float(row["eval_accuracy"]))
    if not runs:
        return
    methods = ["fedit", "ffa", "rolora"]
    print(f"\n{experiment}: final test accuracy (%), mean ± std over seeds\n")
    print(f"| {key_name} | " + " | ".join(methods) + " |")
    print("|---" * (len(methods) + 1) + "|")
    for key in sorted(runs):
        print(f"| {key} | " + " | ".join(cell(runs[key][m]) for m in methods) + " |")


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


if __name__ == "__main__":
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "results/table")
    tuning(root)
    table(root, "clients", "clients", r"k(\d+)_s\d+")
    table(root, "ranks", "rank", r"r(\d+)_s\d+")
