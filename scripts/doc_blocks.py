"""The published tables of docs/*.md between <!-- BEGIN NAME --> and <!-- END NAME --> markers,
compared with the lines their runs regenerate: the shared --check of scripts/summarize_*.py."""


def block(text, name):
    """The lines of the page's block NAME, or None when the page has no such block."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    if begin not in text:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0].strip().splitlines()


def check_blocks(page, tables):
    """Compares each block of `page` with `tables` (name -> a function giving its lines), printing
    `ok NAME` or `FAIL NAME` with the differing lines; a block missing from the page fails.
    Returns the number of failures."""
    text = page.read_text()
    failures = 0
    for name, lines_of in tables.items():
        have = block(text, name)
        if have is None:
            print(f"FAIL {name}: {page} has no <!-- BEGIN {name} --> block")
            failures += 1
            continue
        want = lines_of()
        if have == want:
            print(f"ok {name}: {len(want) - 2} rows recomputed")
            continue
        failures += 1
        print(f"FAIL {name}: the page's table differs from the one its runs give")
        for h, w in zip(have + [""] * len(want), want + [""] * len(have)):
            if h != w:
                print(f"  page:     {h}\n  computed: {w}")
    return failures


def write_blocks(page, tables):
    """Rewrites each block of `page` that `tables` names with the lines its runs give (the prose
    around them is the author's to update); returns the names rewritten."""
    text = page.read_text()
    written = []
    for name, lines_of in tables.items():
        begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
        if begin in text:
            head, rest = text.split(begin, 1)
            text = head + begin + "\n" + "\n".join(lines_of()) + "\n" + end + rest.split(end, 1)[1]
            written.append(name)
    page.write_text(text)
    return written
