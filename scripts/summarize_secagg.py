#!/usr/bin/env python3
"""Summarises the runs of scripts/secagg_results.sh (docs/runs/secagg/) for docs/privacy.md:
the final test accuracy of the main job with and without secure aggregation's fixed-point
encoding (mean ± std over the seeds), the coordinates the encoding's range clipped, and the
upload per client and round. Standard library only.

    python3 scripts/summarize_secagg.py [DIR]                   the Markdown tables
    python3 scripts/summarize_secagg.py --check [DIR [PAGE]]    fails unless docs/privacy.md's
                                                                tables are the ones the runs give
A run counts once its folder has the `done` marker and exit status 0. The accuracy is the last
evaluated row of the run's CSV (round 20); the upload is total_bytes_up of round 20 divided by
20 rounds and 20 clients; the clipped count is the sum of the progress lines' "secagg clipped N".
"""
import csv
import pathlib
import re
import statistics
import sys

from doc_blocks import check_blocks

METHODS = ["fedit", "ffa", "rolora", "head"]
TITLES = {"fedit": "FedIT", "ffa": "FFA-LoRA", "rolora": "RoLoRA", "head": "head only"}
CONFIGS = [("plain", "plain (no encoding)"), ("bits24", "R 16, 24 bits"),
           ("bits12", "R 16, 12 bits"), ("bits8", "R 16, 8 bits")]


def runs(root, config, method):
    """[(accuracy, upload bytes per client and round, clipped coordinates)] over the seeds."""
    out = []
    for d in sorted((root / config / method).glob("seed*")):
        if not (d / "done").exists() or (d / "exit").read_text().strip() != "0":
            continue
        rows = list(csv.DictReader(open(d / f"{method}.csv")))
        evaluated = [r for r in rows if float(r["eval_accuracy"]) >= 0]
        clipped = sum(int(n) for n in re.findall(r"secagg clipped (\d+)",
                                                  (d / "log.txt").read_text()))
        up = int(rows[-1]["total_bytes_up"]) / (len(rows) * 20)
        out.append((float(evaluated[-1]["eval_accuracy"]), up, clipped))
    return out


def accuracy_table(root):
    lines = ["| encoding | " + " | ".join(TITLES[m] for m in METHODS) + " | clipped |",
             "|---|" + "---|" * (len(METHODS) + 1)]
    for config, title in CONFIGS:
        cells, clipped, any_run = [], 0, False
        for m in METHODS:
            r = runs(root, config, m)
            if not r:
                cells.append("-")
                continue
            any_run = True
            accs = [100 * a for a, _, _ in r]
            text = f"{statistics.mean(accs):.1f}"
            if len(accs) > 1:
                text += f" ± {statistics.stdev(accs):.1f}"
            if len(accs) < 3:
                text += f" ({len(accs)} seeds)"
            cells.append(text)
            clipped += sum(c for _, _, c in r)
        if any_run:
            lines.append(f"| {title} | " + " | ".join(cells) +
                         f" | {'-' if config == 'plain' else clipped} |")
    return lines


def bytes_table(root):
    lines = ["| method | plain upload (bytes per client per round) | masked upload | ratio |",
             "|---|---|---|---|"]
    for m in METHODS:
        plain, masked = runs(root, "plain", m), runs(root, "bits24", m)
        if plain and masked:
            p, s = plain[0][1], masked[0][1]
            lines.append(f"| {TITLES[m]} | {p:,.0f} | {s:,.0f} | {s / p:.2f} |")
    return lines


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    root = pathlib.Path(args[0] if args else "docs/runs/secagg")
    tables = {"secagg:quantization": lambda: accuracy_table(root), "secagg:upload": lambda: bytes_table(root)}
    if "--check" in argv:
        page = pathlib.Path(args[1] if len(args) > 1 else "docs/privacy.md")
        sys.exit(1 if check_blocks(page, tables) else 0)
    for lines_of in tables.values():
        print("\n".join(lines_of()) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
