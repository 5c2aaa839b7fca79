#!/usr/bin/env python3
"""Summarises the runs of scripts/dp_results.sh (docs/runs/privacy/) for docs/privacy.md.
A run that stopped on a non-finite upload (the noise drove the model to NaN) shows as NaN and
ranks below every completed run.
Standard library only.

    python3 scripts/summarize_dp.py --picks [DIR]   one line per (epsilon, method): the learning
                                                    rate and clip norm with the best final
                                                    validation accuracy ("eps method lr clip")
    python3 scripts/summarize_dp.py --extend [DIR]  the tuning runs still needed: the ladder's next
                                                    value beyond a pick on a side of its row or
                                                    column ("eps method lr clip")
    python3 scripts/summarize_dp.py --check [DIR [PAGE]]  fails unless docs/privacy.md's theory
                                                    and accuracy tables are the ones the
                                                    committed runs give
    python3 scripts/summarize_dp.py [DIR]           the Markdown tables: the tuning grid, the
                                                    picks, the final test accuracy (mean ± std
                                                    over seeds), and the theory example's loss
                                                    excess against the noise multiplier

A run counts once its folder has the `done` marker. The final accuracy is the last evaluated
row of the run's CSV (round 20). The pick is the highest final validation accuracy; ties go to
the first in grid order (rates ascending, then clip norms ascending). A pick on a side of the
grid gets the next value of the ladder beyond it (--extend, which scripts/dp_results.sh runs
until nothing is left); a pick at the end of a ladder is marked as on its edge.
"""
import csv
import pathlib
import re
import statistics
import sys


from doc_blocks import check_blocks
METHODS = ["fedit", "ffa", "rolora", "head"]
TITLES = {"fedit": "FedIT", "ffa": "FFA-LoRA", "rolora": "RoLoRA", "head": "head only"}
TUNE = re.compile(r"lr([0-9.e-]+)(?:-C([0-9.e-]+))?$")


def epsilons(root):
    """The epsilons of the runs under root (tune/eps*, final/eps*), ascending, infinity last."""
    found = {d.name[3:] for part in ("tune", "final") for d in (root / part).glob("eps*")}
    return sorted(found, key=lambda e: float(e))


def last_evaluated(path):
    rows = [r for r in csv.DictReader(open(path)) if float(r["eval_accuracy"]) >= 0]
    return rows[-1]


def failed_round(run_dir):
    """The round a failed run stopped in (the noise drove a client's factors to NaN and the
    server refused the upload), or None when the run completed."""
    if (run_dir / "exit").read_text().strip() == "0":
        return None
    m = re.search(r"error: .*round (\d+)", (run_dir / "log.txt").read_text())
    return int(m.group(1)) if m else -1


def tune_runs(root, eps, method):
    """[(lr, clip, accuracy)] in grid order, finished runs only."""
    runs = []
    for d in (root / "tune" / f"eps{eps}" / method).glob("*"):
        m = TUNE.match(d.name)
        if m and (d / "done").exists():
            stopped = failed_round(d)  # a failed run ranks below every completed one
            acc = -1.0 if stopped is not None else \
                float(last_evaluated(d / f"{method}.csv")["eval_accuracy"])
            runs.append((float(m.group(1)), float(m.group(2) or "inf"), acc, m.group(1),
                         m.group(2) or "inf"))
    return sorted(runs)


# The ladders a tuning grid is extended along until its pick is inside (scripts/dp_results.sh).
LR_LADDER = ["1e-5", "2e-5", "5e-5", "1e-4", "2e-4", "5e-4", "1e-3", "2e-3", "5e-3", "1e-2", "2e-2", "5e-2", "1e-1"]
CLIP_LADDER = ["0.01", "0.03", "0.1", "0.3", "1", "3"]


def pick(runs):
    """The best (lr, clip) by validation accuracy, first in grid order on ties, and the runs it
    still needs: for each axis on which the pick is the smallest or largest value tried at the
    pick's other coordinate, the next value of the ladder beyond it (none past a ladder's end).
    A pick with nothing left to try on a side it sits on is marked as on the grid's edge. An axis
    with one value tried in the whole cell is fixed by the grid's design and not extended (the
    DP-SGD grids' clip norm)."""
    best = max(runs, key=lambda r: (r[2], -runs.index(r)))
    tried = {(r[3], r[4]) for r in runs}
    wanted, edge = [], False
    for axis, ladder in ((0, LR_LADDER), (1, CLIP_LADDER)):
        here = best[3 + axis]
        if here == "inf" or here not in ladder or len({r[3 + axis] for r in runs}) == 1:
            continue
        row = sorted({float(r[3 + axis]) for r in runs if r[4 - axis] == best[4 - axis]})
        i = ladder.index(here)
        for side, j in ((row[0], i - 1), (row[-1], i + 1)):
            if float(here) != side:
                continue
            if 0 <= j < len(ladder):
                point = (ladder[j], best[4]) if axis == 0 else (best[3], ladder[j])
                if point not in tried:
                    wanted.append(point)
            else:
                edge = True
    return best, edge, wanted


def extend(root):
    """One line "eps method lr clip" per run the tuning grid still needs (pick()'s `wanted`)."""
    for eps in epsilons(root):
        for method in METHODS:
            runs = tune_runs(root, eps, method)
            if runs:
                for lr, clip in pick(runs)[2]:
                    print(eps, method, lr, clip)


def picks(root):
    for eps in epsilons(root):
        for method in METHODS:
            runs = tune_runs(root, eps, method)
            if runs:
                best = pick(runs)[0]
                print(eps, method, best[3], best[4])


def tables(root):
    print("Tuning (seed 0, validation accuracy after 20 rounds, %): lr x C; the pick in bold\n")
    for eps in epsilons(root):
        for method in METHODS:
            runs = tune_runs(root, eps, method)
            if not runs:
                continue
            best, edge, wanted = pick(runs)
            cells = ", ".join(("**%s/%s: %s**" if r is best else "%s/%s: %s") %
                              (r[3], r[4], "NaN" if r[2] < 0 else "%.1f" % (100 * r[2]))
                              for r in runs)
            note = " (on the ladder's edge)" if edge else " (extension pending)" if wanted else ""
            print(f"- epsilon {eps}, {TITLES[method]}: {cells}{note}")
    print("\n" + "\n".join(accuracy_table(root)))


def accuracy_table(root, label="epsilon"):
    """Final test accuracy (%) per epsilon and method, mean ± std over the finished seeds."""
    lines = [f"| {label} | " + " | ".join(TITLES[m] for m in METHODS) + " |",
             "|---|" + "---|" * len(METHODS)]
    for eps in epsilons(root):
        row = []
        for method in METHODS:
            accs, failed = [], 0
            for d in sorted((root / "final" / f"eps{eps}" / method).glob("seed*")):
                if not (d / "done").exists():
                    continue
                if failed_round(d) is not None:
                    failed += 1
                else:
                    accs.append(float(last_evaluated(d / f"{method}.csv")["eval_accuracy"]))
            if not accs:
                row.append(f"NaN ({failed} seeds)" if failed else "-")
                continue
            text = f"{100 * statistics.mean(accs):.1f}"
            if len(accs) > 1:
                text += f" ± {100 * statistics.stdev(accs):.1f}"
            if len(accs) < 3:
                text += f" ({len(accs)} seeds)"
            if failed:
                text += f", NaN in {failed}"
            row.append(text)
        lines.append(f"| {'∞' if eps == 'inf' else eps} | " + " | ".join(row) + " |")
    return lines


def theory(root):  # -> (Markdown lines, seed count); ([], 0) without runs
    """Final loss (iteration 50) per method and noise multiplier, mean over the seeds; the excess
    over the same seed's z = 0 run; and how much the excess grows when z doubles (4 for noise
    that enters the product linearly: variance z^2)."""
    final = {}  # (method, z, seed) -> final loss
    for path in sorted((root / "theory").glob("z*_s*.csv")):
        z, seed = re.match(r"z([0-9.]+)_s(\d+)\.csv$", path.name).groups()
        for row in csv.DictReader(open(path)):
            final[(row["method"], float(z), int(seed))] = float(row["loss"])
    if not final:
        return [], 0
    zs = sorted({k[1] for k in final})
    seeds = sorted({k[2] for k in final})
    names = {"fedit": "FedIT", "ffa": "FFA-LoRA", "rolora": "RoLoRA"}
    lines = ["| z | " + " | ".join(names.values()) + " |", "|---|" + "---|" * len(names)]
    previous = {}
    for z in zs:
        if z == 0:
            continue
        cells = []
        for m in names:
            excess = statistics.mean(final[(m, z, s)] - final[(m, 0.0, s)] for s in seeds)
            growth = f" (x{excess / previous[m]:.2f})" if m in previous and z == 2 * \
                previous.get(m + "_z", -1) else ""
            if excess > 1e3:  # the run diverged
                growth = " (diverged)"
            cells.append(f"{excess:.3g}{growth}")
            previous[m], previous[m + "_z"] = excess, z
        lines.append(f"| {z:g} | " + " | ".join(cells) + " |")
    return lines, len(seeds)


def sample_grids(root):
    """[(clients, folder)] of the DP-SGD grids under root/sample/clients<N>, N ascending."""
    grids = [(int(d.name[7:]), d) for d in (root / "sample").glob("clients*")]
    return sorted(grids)


def check(root, page):
    """0 when the theory table and the accuracy tables (client level, and DP-SGD per client
    count) in the <!-- BEGIN dp:NAME --> blocks of `page` are the ones the committed runs give,
    line by line."""
    tables = {"dp:theory": lambda: theory(root)[0], "dp:accuracy": lambda: accuracy_table(root)}
    for n, grid in sample_grids(root):
        tables[f"dp:sgd-{n}"] = lambda g=grid, n=n: accuracy_table(g, f"epsilon (DP-SGD, {n} clients)")
    return check_blocks(page, tables)


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    root = pathlib.Path(args[0] if args else "docs/runs/privacy")
    if "--picks" in argv:
        picks(root)
    elif "--extend" in argv:
        extend(root)
    elif "--check" in argv:  # --check [DIR [PAGE]]
        sys.exit(1 if check(root, pathlib.Path(args[1] if len(args) > 1 else
                                               "docs/privacy.md")) else 0)
    else:
        tables(root)
        lines, seeds = theory(root)
        if lines:
            print(f"\nTheory example: final loss excess over z = 0 (mean of {seeds} seeds), and "
                  "its growth per doubling of z\n")
            print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
