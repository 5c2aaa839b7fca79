#!/usr/bin/env python3
"""The paper's protocol (scripts/results.sh paper-tune / paper / params, docs/results.md): the
tuning rule, and the tables from the runs under docs/runs/paper/. Standard library only.

    python3 scripts/summarize_paper.py --tune-next DIR   the tuning runs still wanted ("method lr")
    python3 scripts/summarize_paper.py --picks DIR       each method's rate ("method lr"); fails
                                                         while a method's tuning is unfinished
    python3 scripts/summarize_paper.py --tune DIR        the tuning table
    python3 scripts/summarize_paper.py --personal [DIR]  the personal-evaluation table
                                                         (DIR: docs/runs/personal)
    python3 scripts/summarize_paper.py --tables [RUNS [IMG_DIR]]  every table (RUNS:
                                                         docs/runs), and the paper grid's plots
    python3 scripts/summarize_paper.py --check [PAGE [RUNS]]     fails if a paper:NAME block
                                                         of PAGE (docs/results.md) differs
                                                         from its runs (RUNS: docs/runs)
    python3 scripts/summarize_paper.py --write [PAGE [RUNS]]     rewrites those blocks from
                                                         the runs (then update the prose)

Tuning rule: seed 0, validation split, each method's final validation accuracy after the tuning
rounds (FedSA-LoRA: its final personal accuracy on the validation split, since its server model
is the frozen probe with B = 0 whatever the rate). The rates come from LADDER; first the three of FIRST, then the two ladder neighbours of
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

from doc_blocks import check_blocks, write_blocks

LADDER = ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "5"]
FIRST = ["0.05", "0.2", "1"]
TUNED = ["head", "fedit", "ffa", "rolora", "fedsa"]
# FedSA-LoRA's server model keeps B = 0, and with the head frozen it is the probe whatever the
# rate: its rate is tuned on what it trains, each client's own model (personal accuracy).
TUNING_METRIC = {"fedsa": "personal_accuracy"}
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


LATE = 5  # evaluations: rounds 60-100 of the paper grid's 100 (every 10th evaluated)
LATE_TITLE = "mean of rounds 60-100"  # the tables' name for late()


def late(rows, field="eval_accuracy"):
    """The mean of the last LATE evaluations: with 10 of 50 clients sampled a round the accuracy
    swings by several points between evaluations, and one round's value is a noisy summary."""
    return statistics.mean(float(r[field]) for r in evaluated(rows, field)[-LATE:])


def tuning(root):
    """method -> rate -> final validation accuracy (-inf: failed) of the finished runs."""
    tried = defaultdict(dict)
    for method in TUNED:
        for run in sorted((root / method).glob("lr*")):
            rows = rows_of(run)
            if rows is not None:
                tried[method][run.name[2:]] = final(rows, TUNING_METRIC.get(method, "eval_accuracy"))
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
    """The validation accuracy (%) of each tried rate and the pick, per method."""
    tried = tuning(root)
    lines = ["| method | " + " | ".join(f"lr {r}" for r in LADDER) + " | pick |",
             "|---" * (len(LADDER) + 2) + "|"]
    for method in TUNED:
        acc = tried[method]
        best, wanted = pick(acc)
        cells = ["-" if r not in acc else "failed" if acc[r] == float("-inf") else
                 f"{100 * acc[r]:.1f}" for r in LADDER]
        note = "pending" if wanted else best + (" (ladder end)" if best in (LADDER[0], LADDER[-1]) else "")
        lines.append(f"| {TITLES[method]} | " + " | ".join(cells) + f" | {note} |")
    return lines


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


SPLITS = ["iid", "dir0.3", "dir0.1"]
GLOBAL = ["head", "fedit", "ffa", "rolora", "fedsa"]


def split_title(split):
    return "IID" if split == "iid" else f"Dir {split[3:]}"


def table_runs(root):
    """split -> method -> seed -> rows of the finished runs of docs/runs/paper/table."""
    runs = defaultdict(lambda: defaultdict(dict))
    for run in sorted(root.glob("*_s*/*")):
        split, seed = run.parent.name.rsplit("_s", 1)
        rows = rows_of(run)
        if rows:
            runs[split][run.name][int(seed)] = rows
    return runs


def paired(rolora, seeds, statistic=final):
    """RoLoRA's margin over a method per seed, seed order, in points: "+0.2 -6.4 -0.1" ("" when no
    seed has both)."""
    return " ".join(f"{100 * (statistic(rolora[k]) - statistic(seeds[k])):+.1f}"
                    for k in sorted(seeds) if k in rolora)


def at_upload(rows, budget):
    """The test accuracy of the last evaluated round whose cumulative upload is within the budget,
    up to 1%: methods that upload the same factors a round differ by a few hundred bytes of message
    framing over 100 rounds (FFA-LoRA against RoLoRA), which must not cost them their last round."""
    within = [r for r in evaluated(rows) if int(r["total_bytes_up"]) <= 1.01 * budget]
    return float(within[-1]["eval_accuracy"]) if within else None


def paper_table(root):
    """One row per (split, method): the three budgets. Rounds: the test accuracy after the last
    round; client compute (local steps x rounds) is the same budget, every method running the same
    20 steps a round. Upload: each method's accuracy at RoLoRA's total upload (the last evaluated
    round within it). Personal: the mean over clients of each client's model on its own share."""
    runs = table_runs(root)
    lines = ["| split | method | rounds | test accuracy, same rounds and client compute | "
             "test accuracy at RoLoRA's upload | MB up (all clients) | personal accuracy | "
             "RoLoRA - method per seed |", "|---" * 8 + "|"]
    for split in SPLITS:
        cells = runs.get(split, {})
        rolora = cells.get("rolora", {})
        budget = max((int(r[-1]["total_bytes_up"]) for r in rolora.values()), default=None)
        for method in GLOBAL:
            seeds = cells.get(method, {})
            if not seeds:
                continue
            rows = list(seeds.values())
            rounds = {int(r[-1]["round"]) for r in rows}
            same_upload = [at_upload(r, budget) for r in rows] if budget else []
            margins = paired(rolora, seeds) if method != "rolora" else ""
            lines.append(
                f"| {split_title(split)} | {TITLES[method]} | {'/'.join(map(str, sorted(rounds)))} | "
                f"{cell([final(r) for r in rows])} | "
                f"{cell([a for a in same_upload if a is not None]) if budget else '-'} | "
                f"{statistics.mean(int(r[-1]['total_bytes_up']) for r in rows) / 1e6:.1f} | "
                f"{cell([final(r, 'personal_accuracy') for r in rows])} | {margins or '-'} |")
    return lines


def params_table(root):
    """Rank x adapted layers at 50 clients, Dirichlet 0.3 (docs/runs/paper/params, and the paper
    grid's rank-4 top-half runs): each method's final test accuracy (the same rounds and client
    compute), FedIT's at RoLoRA's upload, the uploads, RoLoRA's paired per-seed margins (over FedIT
    also on the mean of the last LATE evaluations); the head-only control in the last row."""
    runs = defaultdict(lambda: defaultdict(dict))  # (rank, layers) -> method -> seed -> rows
    for run in sorted(root.glob("params/r*_*/s*/*")):
        rank, layers = run.parent.parent.name[1:].split("_", 1)
        rows = rows_of(run)
        if rows:
            runs[(int(rank), layers)][run.name][int(run.parent.name[1:])] = rows
    for run in sorted(root.glob("table/dir0.3_s*/*")):
        rows = rows_of(run)
        if rows and run.name in ("fedit", "ffa", "rolora", "head"):
            key = (4, "top") if run.name != "head" else (0, "head")
            runs[key][run.name][int(run.parent.name.rsplit("_s", 1)[1])] = rows
    order = {"all": 0, "top": 1, "last": 2}
    names = {"all": "all", "top": "top half", "last": "last"}
    lines = ["| rank | adapted layers | FedIT | FFA-LoRA | RoLoRA | FedIT at RoLoRA's upload | "
             f"MB up, FedIT / RoLoRA | RoLoRA - FedIT per seed | RoLoRA - FedIT per seed, {LATE_TITLE} | "
             "RoLoRA - FFA-LoRA per seed |", "|---" * 10 + "|"]
    for key in sorted((k for k in runs if k[1] != "head"), key=lambda k: (k[0], order[k[1]])):
        seeds = runs[key]
        rolora = seeds.get("rolora", {})
        budget = max((int(r[-1]["total_bytes_up"]) for r in rolora.values()), default=None)
        accuracy = lambda m: cell([final(r) for _, r in sorted(seeds.get(m, {}).items())])
        upload = lambda m: (f"{statistics.mean(int(r[-1]['total_bytes_up']) for r in seeds[m].values()) / 1e6:.1f}"
                            if seeds.get(m) else "-")
        margins = lambda other, statistic=final: paired(rolora, seeds.get(other, {}), statistic) or "-"
        same_upload = [at_upload(r, budget) for r in seeds.get("fedit", {}).values()] if budget else []
        lines.append(f"| {key[0]} | {names[key[1]]} | {accuracy('fedit')} | {accuracy('ffa')} | "
                     f"{accuracy('rolora')} | {cell([a for a in same_upload if a is not None])} | "
                     f"{upload('fedit')} / {upload('rolora')} | {margins('fedit')} | {margins('fedit', late)} | "
                     f"{margins('ffa')} |")
    if (0, "head") in runs:
        head = runs[(0, "head")]["head"]
        lines.append(f"| - | head only (control) | {cell([final(r) for _, r in sorted(head.items())])} | | | | | | | |")
    return lines


def late_table(root):
    """One row per (split, method): the test and personal accuracy averaged over the last LATE
    evaluations, and RoLoRA's paired per-seed margin on that average."""
    runs = table_runs(root)
    lines = [f"| split | method | test accuracy, {LATE_TITLE} | personal accuracy, {LATE_TITLE} | "
             "RoLoRA - method per seed |", "|---" * 5 + "|"]
    for split in SPLITS:
        cells = runs.get(split, {})
        rolora = cells.get("rolora", {})
        for method in GLOBAL:
            seeds = cells.get(method, {})
            if not seeds:
                continue
            margins = paired(rolora, seeds, late) if method != "rolora" else ""
            lines.append(f"| {split_title(split)} | {TITLES[method]} | "
                         f"{cell([late(r) for _, r in sorted(seeds.items())])} | "
                         f"{cell([late(r, 'personal_accuracy') for _, r in sorted(seeds.items())])} | "
                         f"{margins or '-'} |")
    return lines


def plots(root, out_dir):
    """IMG/paper_<split>.svg: mean test accuracy against round, and against MB uploaded."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, cells in table_runs(root).items():
        for x, field, scale, label in (("round", "round", 1, "round"),
                                       ("upload", "total_bytes_up", 1e-6, "MB uploaded (all clients)")):
            svg = out_dir / f"paper_{split}_{x}.svg"
            methods = [m for m in GLOBAL if m in cells]
            script = ["set terminal svg size 800,500 enhanced font 'Sans,12'", f"set output '{svg}'",
                      f"set title 'the paper protocol, 50 clients, {split_title(split)}: mean over seeds' noenhanced",
                      f"set xlabel '{label}'", "set ylabel 'test accuracy (%)'", "set grid",
                      "set key bottom right box opaque",
                      "plot " + ", ".join(f"'-' using 1:2 with linespoints title '{TITLES[m]}'" for m in methods)]
            for m in methods:
                per_round = defaultdict(list)
                for rows in cells[m].values():
                    for r in evaluated(rows):
                        per_round[int(r["round"])].append((float(r[field]) * scale, float(r["eval_accuracy"])))
                for k in sorted(per_round):
                    xs, ys = zip(*per_round[k])
                    script.append(f"{statistics.mean(xs):.6g} {100 * statistics.mean(ys):.3f}")
                script.append("e")
            subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=True)
            print(f"wrote {svg}", file=sys.stderr)


BLOCKS = {"tune": (tune_table, "paper/tune"),  # marker -> (table, runs folder)
          "personal": (personal_table, "personal"),
          "paper": (paper_table, "paper/table"),
          "late": (late_table, "paper/table"),
          "params": (params_table, "paper")}


def tables(runs):
    """Block name on the page -> the function giving its lines from the runs under `runs`."""
    return {f"paper:{name}": lambda t=table, f=folder: t(runs / f) for name, (table, folder) in BLOCKS.items()}


if __name__ == "__main__":
    args = sys.argv[1:]
    commands = {"--tune-next": tune_next, "--picks": picks,
                "--tune": lambda root: print("\n".join(tune_table(root)))}
    if args and args[0] in commands:
        commands[args[0]](pathlib.Path(args[1] if len(args) > 1 else "docs/runs/paper/tune"))
    elif args and args[0] in ("--check", "--write"):
        page = pathlib.Path(args[1] if len(args) > 1 else "docs/results.md")
        runs = pathlib.Path(args[2] if len(args) > 2 else "docs/runs")
        if args[0] == "--write":
            print("rewrote", *write_blocks(page, tables(runs)))
        else:
            sys.exit(1 if check_blocks(page, tables(runs)) else 0)
    elif args and args[0] == "--tables":  # --tables [RUNS [IMG_DIR]]
        runs = pathlib.Path(args[1] if len(args) > 1 else "docs/runs")
        for name, (table, folder) in BLOCKS.items():
            print(f"\n{name}:\n" + "\n".join(table(runs / folder)))
        if len(args) > 2:
            plots(runs / "paper/table", pathlib.Path(args[2]))
    elif args and args[0] == "--personal":
        print("\n".join(personal_table(pathlib.Path(args[1] if len(args) > 1 else "docs/runs/personal"))))
    else:
        sys.exit(__doc__)
