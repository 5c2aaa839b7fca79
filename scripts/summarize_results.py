#!/usr/bin/env python3
"""Summarises the runs of scripts/results.sh (results/table/) as the Markdown tables of
docs/results.md: final accuracy per method, mean +- std over seeds. With --plot DIR it also draws
DIR/accuracy_clients_<K>.svg (mean test accuracy against round, +- std over seeds, per method)
with gnuplot. Standard library only.

    python3 scripts/summarize_results.py [results/table] [--plot docs/img] [--runs-csv FILE]
    python3 scripts/summarize_results.py --check [docs/results.md [docs/robustness_runs.csv [docs/runs/iid]]]
    python3 scripts/summarize_results.py --write [same]   rewrite those tables from the runs

--check regenerates each table of the page between <!-- BEGIN NAME --> and <!-- END NAME -->
(blocks() lists them: the learning-rate, clients and ranks tables from the committed run folders
of docs/runs/iid, the robustness grid and its learning rates from docs/robustness_runs.csv) and
fails if a line differs or a block is missing; ctest runs it (docs.results_tables), and
tests/docs_edits.py shows it catches a number edited by hand.

The robustness grid (results/table/robustness/<cell>/<method>/<method>.csv, cell =
k<K>_<split>_st<steps>[_fh]_s<seed>) gives one table row per regime: each method's final test
accuracy (mean ± std over the seeds whose run is complete), RoLoRA's paired per-seed margins and
FedIT's median aggregation error; with --plot, DIR/robust_accuracy_<regime>.svg and
DIR/robust_aggerr_k<K>.svg (FedIT's aggregation error against round, a line per split).
"""
import csv
import pathlib
import re
import statistics
import subprocess
import sys
from collections import defaultdict

from doc_blocks import check_blocks, write_blocks

METHODS = ["fedit", "ffa", "rolora"]
TITLES = {"fedit": "FedIT", "ffa": "FFA-LoRA", "rolora": "RoLoRA", "head": "head only",
          "flexlora": "FlexLoRA", "fedsa": "FedSA-LoRA"}
CELL = re.compile(r"k(\d+)_(iid|dir[0-9.]+)_st(\d+)(_fh)?_s(\d+)$")


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


def finals(root, experiment, pattern):
    """(key, method) -> seed -> final test accuracy of the finished runs root/<experiment>/<run>,
    the run folder's name matching `pattern` with the key and the seed as its two groups."""
    acc = defaultdict(dict)
    for csv_path in sorted((root / experiment).glob("*/*.csv")):
        match = re.match(pattern, csv_path.parent.name)
        if match and (csv_path.parent / "done").exists():  # finished runs only
            row = final_row(csv_path)
            acc[(int(match.group(1)), row["method"])][int(match.group(2))] = float(row["eval_accuracy"])
    return acc


CLIENTS, RANKS = r"k(\d+)_s(\d+)$", r"r(\d+)_s(\d+)$"  # the run folders of the two experiments


def table(root, experiment, key_name, pattern):
    """The Markdown lines of the clients or ranks table (docs/results.md): each method's final test
    accuracy (%), mean ± std over the finished runs root/<experiment>/<key><K>_s<seed>."""
    acc = finals(root, experiment, pattern)
    if not acc:
        return []
    lines = [f"| {key_name} | " + " | ".join(TITLES[m] for m in METHODS) + " |",
             "|---" * (len(METHODS) + 1) + "|"]
    for key in sorted({k for k, _ in acc}):
        lines.append(f"| {key} | " + " | ".join(cell(list(acc[(key, m)].values())) for m in METHODS) + " |")
    return lines


def margins_table(root):
    """RoLoRA's paired per-seed margins over FedIT and FFA-LoRA (final test accuracy, points; seed
    order 0, 1, 2) for each clients and ranks cell of root (docs/runs/iid)."""
    lines = ["| | RoLoRA - FedIT | RoLoRA - FFA-LoRA |", "|---|---|---|"]
    for experiment, pattern, title in (("clients", CLIENTS, "{} clients"), ("ranks", RANKS, "r {} (3 clients)")):
        acc = finals(root, experiment, pattern)
        for key in sorted({k for k, _ in acc}):
            if experiment == "ranks" and key == 2:
                continue  # the 3-client row of the clients table: the same runs
            rolora = acc[(key, "rolora")]
            diff = lambda other: " ".join(f"{100 * (rolora[s] - acc[(key, other)][s]):+.1f}"
                                          for s in sorted(rolora) if s in acc[(key, other)])
            name = title.format(key) + (" (= r 2)" if experiment == "clients" and key == 3 else "")
            lines.append(f"| {name} | {diff('fedit')} | {diff('ffa')} |")
    return lines if len(lines) > 2 else []


def lr_table(rows):
    """The Markdown lines of a learning-rate table from method -> [(lr, accuracy, loss)] (final
    validation accuracy and loss of a run per rate): each method's pick in bold, the best accuracy
    with ties broken by the lower loss."""
    lines = ["| method | lr | val accuracy (%) | val loss |", "| --- | ---: | ---: | ---: |"]
    for m in [m for m in METHODS + ["head"] if m in rows]:
        best = max(rows[m], key=lambda r: (r[1], -r[2]))
        for lr, acc, loss in sorted(rows[m]):
            b = "**" if (lr, acc, loss) == best else ""
            rate = f"{lr:.0e}".replace("e-0", "e-")
            lines.append(f"| {TITLES[m]} | {b}{rate}{b} | {b}{100 * acc:.1f}{b} | {loss:.3f} |")
    return lines


def tune_table(root):
    """The learning-rate table of the first sections: the finished root/tune/<method>_lr<rate>
    runs (3 IID clients, seed 0, validation split)."""
    rows = defaultdict(list)  # method -> [(lr, accuracy, loss)]
    for csv_path in sorted((root / "tune").glob("*/*.csv")):
        if (csv_path.parent / "done").exists():
            row = final_row(csv_path)
            rows[row["method"]].append((float(row["lr"]), float(row["eval_accuracy"]), float(row["eval_loss"])))
    return lr_table(rows) if rows else []


def robust_tune_table(runs_csv):
    """The robustness grid's learning-rate table from the validation rows of
    docs/robustness_runs.csv (robust_csv's output)."""
    last = {}  # (method, lr) -> the run's last evaluated row
    for r in csv.DictReader(open(runs_csv)):
        if r["experiment"] == "validation" and float(r["eval_accuracy"]) >= 0:
            last[(r["method"], float(r["lr"]))] = r
    rows = defaultdict(list)
    for (m, lr), r in last.items():
        rows[m].append((lr, float(r["eval_accuracy"]), float(r["eval_loss"])))
    return lr_table(rows) if rows else []


def blocks(runs_csv, iid_root):
    """The tables of docs/results.md this script checks: the block name (<!-- BEGIN NAME --> ...
    <!-- END NAME --> on the page) -> a function giving its lines. The first sections' tables come
    from run folders of scripts/results.sh (committed: docs/runs/iid), the robustness grid's from
    its committed CSV."""
    return {"tune": lambda: tune_table(iid_root),
            "clients": lambda: table(iid_root, "clients", "clients", CLIENTS),
            "ranks": lambda: table(iid_root, "ranks", "rank", RANKS),
            "margins": lambda: margins_table(iid_root),
            "robustness-tune": lambda: robust_tune_table(runs_csv),
            "robustness": lambda: robustness_table(runs_from_csv(runs_csv))}


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


def tuning_regime(csv_path):
    """(clients, split) of a robustness-tune run, read from its log ("" when the log is gone)."""
    log_path = csv_path.parent / "log.txt"
    log = log_path.read_text() if log_path.exists() else ""
    match = re.search(r"over (\d+) clients \((\w+)(?:, alpha ([0-9.]+))?", log)
    if not match:
        return "", ""
    return match.group(1), "iid" if match.group(2) == "iid" else f"dir{match.group(3)}"


def robust_tuning(root):
    rows = []
    for csv_path in sorted((root / "robustness-tune").glob("*/*.csv")):
        r = list(csv.DictReader(open(csv_path)))
        if r:
            last = final_row(csv_path)
            k, split = tuning_regime(csv_path)
            rows.append((k, split, last["method"], float(last["lr"]), int(r[-1]["round"]),
                         float(last["eval_accuracy"]), float(last["eval_loss"])))
    if rows:
        print("\nrobustness-tune: final validation accuracy (%) / loss, seed 0\n")
        print("| clients | split | method | lr | rounds | val accuracy | val loss |\n|---|---|---|---|---|---|---|")
        for k, split, m, lr, n, acc, loss in sorted(rows):
            print(f"| {k} | {split_title(split) if split else '-'} | {TITLES.get(m, m)} | {lr:g} | {n} | {100 * acc:.1f} | {loss:.3f} |")


def robust_runs(root):
    """(K, split, steps) -> column -> seed -> rows of a complete run; column is the method, with
    a '+fh' suffix for --freeze-head. A run is complete when its CSV reaches `rounds` (the largest
    round seen in the grid)."""
    runs = defaultdict(lambda: defaultdict(dict))
    found = []
    for csv_path in sorted((root / "robustness").glob("*/*/*.csv")):
        match = CELL.match(csv_path.parent.parent.name)
        if not match:
            continue
        rows = list(csv.DictReader(open(csv_path)))
        if rows:
            found.append((match, csv_path.parent.name, rows))
    rounds = max((int(r[-1]["round"]) for _, _, r in found), default=0)
    for match, method, rows in found:
        if int(rows[-1]["round"]) != rounds:
            continue
        k, split, steps, fh, seed = match.groups()
        runs[(int(k), split, int(steps))][method + ("+fh" if fh else "")][int(seed)] = rows
    return runs, rounds


def final_accuracy(rows):
    return float([r for r in rows if float(r["eval_accuracy"]) >= 0][-1]["eval_accuracy"])


def split_title(split):
    return "IID" if split == "iid" else f"Dir {split[3:]}"


def robustness(root):
    runs, rounds = robust_runs(root)
    if runs:
        print(f"\nrobustness: final test accuracy (%) after {rounds} rounds, mean ± std over seeds\n")
        print("\n".join(robustness_table(runs)))


def robustness_table(runs):
    """The robustness grid's Markdown table (docs/results.md) from runs as robust_runs gives them."""
    lines = []
    columns = ["head", "fedit", "ffa", "rolora", "fedit+fh", "ffa+fh", "rolora+fh", "flexlora", "fedsa"]
    present = [c for c in columns if any(c in v for v in runs.values())]
    title = lambda c: TITLES[c.split("+")[0]] + (" (frozen head)" if c.endswith("+fh") else "")
    lines.append("| clients | split | local steps | " + " | ".join(title(c) for c in present) +
                 " | RoLoRA - FedIT per seed | RoLoRA - FFA-LoRA per seed | FedIT agg. error, median |")
    lines.append("|---" * (len(present) + 6) + "|")
    order = {"iid": 0}
    for key in sorted(runs, key=lambda k: (k[2], k[0], order.get(k[1], 1), -float(k[1][3:] or 0))):
        k, split, steps = key
        cells = runs[key]
        row = [str(k), split_title(split), str(steps)]
        row += [cell([final_accuracy(r) for _, r in sorted(cells[c].items())]) for c in present]
        for other in ("fedit", "ffa"):
            seeds = sorted(set(cells["rolora"]) & set(cells[other]))
            row.append(" ".join(f"{100 * (final_accuracy(cells['rolora'][s]) - final_accuracy(cells[other][s])):+.1f}"
                                for s in seeds) or "-")
        errors = [float(r["aggregation_error"]) for rows in cells["fedit"].values() for r in rows]
        row.append(f"{statistics.median(errors):.3f}" if errors else "-")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def runs_from_csv(path):
    """The robustness grid's test runs as robust_runs gives them, read back from the committed
    docs/robustness_runs.csv (robust_csv's output)."""
    grouped = defaultdict(list)
    for r in csv.DictReader(open(path)):
        if r["experiment"] != "test":
            continue
        key = (int(r["clients"]), r["split"], int(r["local_steps"]),
               r["method"] + ("+fh" if r["head"] == "frozen" else ""), int(r["seed"]))
        grouped[key].append(r)
    runs = defaultdict(lambda: defaultdict(dict))
    for (k, split, steps, column, seed), rows in grouped.items():
        runs[(k, split, steps)][column][seed] = rows
    return runs


def gnuplot(script):
    subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=True)


def robust_plots(root, out_dir):
    runs, rounds = robust_runs(root)
    out_dir.mkdir(parents=True, exist_ok=True)

    def mean_curve(per_seed, field):
        per_round = defaultdict(list)
        for rows in per_seed.values():
            for r in rows:
                if float(r[field]) >= 0:
                    per_round[int(r["round"])].append(float(r[field]))
        return [(k, statistics.mean(v)) for k, v in sorted(per_round.items())]

    for (k, split, steps), cells in sorted(runs.items()):
        methods = [c for c in ["head", "fedit", "ffa", "rolora", "flexlora", "fedsa", "fedit+fh", "ffa+fh", "rolora+fh"] if c in cells]
        seeds = max(len(v) for v in cells.values())
        svg = out_dir / f"robust_accuracy_k{k}_{split}_st{steps}.svg"
        names = [TITLES[c.split("+")[0]] + (" (frozen head)" if c.endswith("+fh") else "") for c in methods]
        script = [
            "set terminal svg size 800,500 enhanced font 'Sans,12'", f"set output '{svg}'",
            f"set title 'SpamAssassin, {k} clients, {split_title(split)}, {steps} local steps, rank 2: mean over {seeds} seeds' noenhanced",
            "set xlabel 'round'", "set ylabel 'test accuracy (%)'", "set grid",
            "set key bottom right box opaque", "set xrange [0:*]",
            "plot " + ", ".join(f"'-' using 1:2 with linespoints {'dashtype 2 ' if c.endswith('+fh') else ''}title '{n}'"
                                for c, n in zip(methods, names)),
        ]
        for c in methods:
            script += [f"{x} {100 * y:.3f}" for x, y in mean_curve(cells[c], "eval_accuracy")] + ["e"]
        gnuplot(script)
        print(f"wrote {svg}", file=sys.stderr)
    for k in sorted({key[0] for key in runs}):
        keys = [key for key in sorted(runs) if key[0] == k and "fedit" in runs[key]]
        svg = out_dir / f"robust_aggerr_k{k}.svg"
        script = [
            "set terminal svg size 800,500 enhanced font 'Sans,12'", f"set output '{svg}'",
            f"set title 'FedIT aggregation error per round, {k} clients, rank 2 (mean over seeds)' noenhanced",
            "set xlabel 'round'", "set ylabel '||sum_i w_i s B_i A_i - s B A||_F' noenhanced",
            "set logscale y", "set grid", "set key top left box opaque", "set xrange [0:*]",
            "plot " + ", ".join(f"'-' using 1:2 with linespoints title '{split_title(s)}, {st} steps'" for _, s, st in keys),
        ]
        for key in keys:
            script += [f"{x} {y:.6g}" for x, y in mean_curve(runs[key]["fedit"], "aggregation_error")] + ["e"]
        gnuplot(script)
        print(f"wrote {svg}", file=sys.stderr)


def robust_csv(root, out):
    """Every round of every complete robustness and tuning run, one CSV (docs/robustness_runs.csv)."""
    runs, rounds = robust_runs(root)
    fields = ["experiment", "clients", "split", "local_steps", "head", "method", "seed", "lr", "round",
              "train_loss", "eval_loss", "eval_accuracy", "aggregation_error"]
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for (k, split, steps), cells in sorted(runs.items()):
            for column, per_seed in sorted(cells.items()):
                method, frozen = column.split("+")[0], column.endswith("+fh")
                for seed, rows in sorted(per_seed.items()):
                    for r in rows:
                        w.writerow(["test", k, split, steps, "frozen" if frozen else "trains", method, seed,
                                    r["lr"], r["round"], r["train_loss"], r["eval_loss"], r["eval_accuracy"],
                                    r["aggregation_error"]])
        for csv_path in sorted((root / "robustness-tune").glob("*/*.csv")):
            k, split = tuning_regime(csv_path)
            for r in csv.DictReader(open(csv_path)):
                w.writerow(["validation", k, split, 4, "trains", r["method"], 0, r["lr"], r["round"],
                            r["train_loss"], r["eval_loss"], r["eval_accuracy"], r["aggregation_error"]])
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--check" in args or "--write" in args:  # [PAGE [RUNS_CSV [IID_RUNS]]]
        rest = [a for a in args if not a.startswith("--")] + [None] * 3
        page = pathlib.Path(rest[0] or "docs/results.md")
        tables = blocks(pathlib.Path(rest[1] or "docs/robustness_runs.csv"), pathlib.Path(rest[2] or "docs/runs/iid"))
        if "--write" in args:
            print("rewrote", *write_blocks(page, tables))
            sys.exit(0)
        sys.exit(1 if check_blocks(page, tables) else 0)
    plot_dir = None
    if "--plot" in args:
        i = args.index("--plot")
        plot_dir = pathlib.Path(args[i + 1])
        del args[i:i + 2]
    runs_csv = None
    if "--runs-csv" in args:
        i = args.index("--runs-csv")
        runs_csv = pathlib.Path(args[i + 1])
        del args[i:i + 2]
    root = pathlib.Path(args[0] if args else "results/table")
    for name, lines in (("tune", tune_table(root)),
                        ("clients", table(root, "clients", "clients", CLIENTS)),
                        ("ranks", table(root, "ranks", "rank", RANKS))):
        if lines:
            print(f"\n{name}: final accuracy (%), mean ± std over seeds\n" + "\n".join(lines))
    robust_tuning(root)
    robustness(root)
    if runs_csv:
        robust_csv(root, runs_csv)
    if plot_dir:
        if (root / "clients").exists():
            plot(root, plot_dir)
        if (root / "robustness").exists():
            robust_plots(root, plot_dir)
