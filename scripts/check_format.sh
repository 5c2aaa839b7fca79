#!/usr/bin/env bash
# Checks that every C++ source in the tree is formatted with the repository's .clang-format.
# `bash scripts/check_format.sh --fix` formats them in place instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mapfile -t files < <(git ls-files '*.hpp' '*.cpp' '*.cu' '*.h')
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
if ! clang-format --dry-run -Werror "${files[@]}"; then
  echo "check_format.sh: the files above are not clang-formatted; run: bash scripts/check_format.sh --fix" >&2
  exit 1
fi
echo "check_format.sh: ${#files[@]} files clang-formatted"
