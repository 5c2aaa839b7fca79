#!/usr/bin/env python3
"""The paper's protocol (scripts/results.sh paper-tune / paper / params, docs/results.md): the
tuning rule, and the tables from the runs under docs/runs/paper/. Standard library only.

    python3 scripts/summarize_paper.py --tune-next DIR   the tuning runs still wanted ("method lr")
    python3 scripts/summarize_paper.py --picks DIR       each method's rate ("method lr"); fails
                                                         while a method's tuning is unfinished
    python3 scripts/summarize_paper.py --tune DIR        the tuning table
    python3 scripts/summarize_paper.py --personal [DIR]  the personal-evaluation table
                                                         (DIR: docs/runs/personal)
    python3 scripts/summarize_paper.py --check [PAGE [RUNS]]     fails if a paper:NAME block
                                                         of PAGE (docs/results.md) differs
                                                         from its runs (RUNS: docs/runs)

Tuning rule: seed 0, validation split, each method's final validation accuracy after the tuning
rounds. The rates come from LADDER; first the three of FIRST, then the two ladder neighbours of
the best rate until both have been tried, so that the pick is never at the edge of what was tried
(a pick at the ladder's own end is marked). Ties go to the smaller rate. A run that failed (the
model diverged and the server refused a non-finite update) counts as the worst.
"""
import csv
import pathlib
import statistics
import subprocess
import sys
from collections import defaultdict

LADDER = ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "5"]
FIRST = ["0.05", "0.2", "1"]
TUNED = ["head", "fedit", "ffa", "rolora", "fedsa"]
TITLES = {"head": "head only", "fedit": "FedIT", "ffa": "FFA-LoRA", "rolora": "RoLoRA",
          "fedsa": "FedSA-LoRA"}


def rows_of(run):
    """The CSV rows of a finished run folder (None while unfinished; [] when it failed)."""
    if not (run / "done").exists():
        return None
    if (run / "exit").exists() and (run / "exit").read_text().strip() != "0":
        return []
    return list(csv.DictReader(open(next(run.glob("*.csv")))))


def evaluated(rows, field="eval_accuracy"):
    return [r for r in rows if r.get(field, "") not in ("", "-1")]


def final(rows, field="eval_accuracy"):
    return float(evaluated(rows, field)[-1][field]) if rows else float("-inf")


def tuning(root):
    """method -> rate -> final validation accuracy (-inf: failed) of the finished runs."""
    tried = defaultdict(dict)
    for method in TUNED:
        for run in sorted((root / method).glob("lr*")):
            rows = rows_of(run)
            if rows is not None:
                tried[method][run.name[2:]] = final(rows)
    return tried


def pick(accuracies):
    """(rate, wanted): the best rate tried (ties: the smaller), and the rates still to try."""
    missing = [r for r in FIRST if r not in accuracies]
    if missing:
        return None, missing
    best = max(sorted(accuracies, key=float), key=lambda r: accuracies[r])
    i = LADDER.index(best)
    neighbours = [LADDER[j] for j in (i - 1, i + 1) if 0 <= j < len(LADDER)]
    return best, [r for r in neighbours if r not in accuracies]


def tune_next(root):
    tried = tuning(root)
    for method in TUNED:
        for rate in pick(tried[method])[1]:
            print(method, rate)


def picks(root):
    tried = tuning(root)
    unsettled = [m for m in TUNED if pick(tried[m])[1]]
    if unsettled:
        sys.exit(f"summarize_paper.py: tuning unfinished for {', '.join(unsettled)} "
                 f"(run scripts/results.sh paper-tune)")
    for method in TUNED:
        print(method, pick(tried[method])[0])


def tune_table(root):
    tried = tuning(root)
    print("| method | " + " | ".join(f"lr {r}" for r in LADDER) + " | pick |")
    print("|---" * (len(LADDER) + 2) + "|")
    for method in TUNED:
        acc = tried[method]
        best, wanted = pick(acc)
        cells = ["-" if r not in acc else "failed" if acc[r] == float("-inf") else
                 f"{100 * acc[r]:.1f}" for r in LADDER]
        note = "pending" if wanted else best + (" (ladder end)" if best in (LADDER[0], LADDER[-1]) else "")
        print(f"| {TITLES[method]} | " + " | ".join(cells) + f" | {note} |")


def cell(values):
    """mean ± std over seeds, in percent ("-" without runs; the seed count when not 3)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f} (1 seed)"
    seeds = "" if len(values) == 3 else f" ({len(values)} seeds)"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}{seeds}"


def personal_table(root):
    """docs/runs/personal/s<seed>/<method>: the global model's final test accuracy and the mean
    over clients of each client's model on its own test share, per method."""
    lines = ["| method | test accuracy (global model) | personal accuracy (each client's model, "
             "its own share) |", "|---|---|---|"]
    for method in TUNED:
        runs = [rows_of(run) for run in sorted(root.glob(f"s*/{method}"))]
        runs = [r for r in runs if r]
        lines.append(f"| {TITLES[method]} | {cell([final(r) for r in runs])} | "
                     f"{cell([final(r, 'personal_accuracy') for r in runs])} |")
    return lines


BLOCKS = {"personal": (personal_table, "personal")}  # marker -> (table, runs folder)


def check(page, runs):
    """Regenerates each <!-- BEGIN paper:NAME --> block of `page` from its runs; the number of
    blocks that differ."""
    text = page.read_text()
    failures = 0
    for name, (table, folder) in BLOCKS.items():
        begin, end = f"<!-- BEGIN paper:{name} -->", f"<!-- END paper:{name} -->"
        if begin not in text:
            print(f"FAIL {name}: {page} has no {begin} block")
            failures += 1
            continue
        have = text.split(begin, 1)[1].split(end, 1)[0].strip().splitlines()
        want = table(runs / folder)
        if have != want:
            failures += 1
            print(f"FAIL {name}: the page's table differs from {runs / folder}")
            for h, w in zip(have + [""] * len(want), want + [""] * len(have)):
                if h != w:
                    print(f"  page:     {h}\n  computed: {w}")
        else:
            print(f"ok {name}: {len(want) - 2} rows recomputed from {runs / folder}")
    return failures


if __name__ == "__main__":
    args = sys.argv[1:]
    commands = {"--tune-next": tune_next, "--picks": picks, "--tune": tune_table}
    if args and args[0] in commands:
        commands[args[0]](pathlib.Path(args[1] if len(args) > 1 else "docs/runs/paper/tune"))
    elif args and args[0] == "--check":
        page = pathlib.Path(args[1] if len(args) > 1 else "docs/results.md")
        sys.exit(1 if check(page, pathlib.Path(args[2] if len(args) > 2 else "docs/runs")) else 0)
    elif args and args[0] == "--personal":
        print("\n".join(personal_table(pathlib.Path(args[1] if len(args) > 1 else "docs/runs/personal"))))
    else:
        sys.exit(__doc__)
