#!/usr/bin/env python3
"""Shows that a docs check catches a number edited by hand (issue 24).

    python3 tests/docs_edits.py PAGE CHECK_COMMAND...

CHECK_COMMAND is one of scripts/summarize_*.py --check with the literal argument {page} where the
page's path goes. The check must pass on PAGE as it is; then each Markdown table of PAGE in turn
gets one digit of its first data row changed (the row's last digit, d -> d + 1 mod 10) in a copy,
and the check runs on the copy. Every table the check reports as recomputed ("ok NAME: ...")
must make it fail when edited, and no more tables than it reports: a check that said "ok" without
comparing, or compared a table it does not name, fails this test.
"""
import pathlib
import re
import subprocess
import sys
import tempfile


def tables(lines):
    """(index of the first data row) of each Markdown table: a header, a |---| rule, rows."""
    found = []
    for i in range(len(lines) - 2):
        if lines[i].startswith("|") and re.match(r"^\|[ :|-]+\|$", lines[i + 1].strip()) \
                and lines[i + 2].startswith("|") and re.search(r"\d", lines[i + 2]):
            found.append(i + 2)
    return found


def run(command, page):
    args = [str(page) if a == "{page}" else a for a in command]
    done = subprocess.run(args, capture_output=True, text=True)
    return done.returncode, done.stdout


def main(page, command):
    rc, out = run(command, page)
    if rc != 0:
        sys.exit(f"the check fails on {page} as it is:\n{out}")
    checked = len(re.findall(r"^ok ", out, re.M))
    lines = page.read_text().split("\n")
    found = tables(lines)
    caught = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / page.name
        for row in found:
            line = lines[row]
            at = max(m.start() for m in re.finditer(r"\d", line))
            edited = line[:at] + str((int(line[at]) + 1) % 10) + line[at + 1:]
            copy.write_text("\n".join(lines[:row] + [edited] + lines[row + 1:]))
            if run(command, copy)[0] != 0:
                caught.append(row + 1)
    print(f"{page}: {checked} tables recomputed by the check; an edit of {len(caught)} of the page's "
          f"{len(found)} tables made it fail (lines {', '.join(map(str, caught))})")
    if checked == 0 or len(caught) != checked:
        sys.exit("FAIL: every recomputed table must catch an edit, and only those")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(pathlib.Path(sys.argv[1]), sys.argv[2:])
