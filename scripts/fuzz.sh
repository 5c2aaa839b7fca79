#!/usr/bin/env bash
# Fuzz rolora's readers for as long as asked, one target after the other:
#   scripts/fuzz.sh [SECONDS per target, default 600] [TARGET ...]   (default: every tests/fuzz/fuzz_*.cpp)
# Builds the targets with clang++ (ASan + UBSan + libFuzzer) in build-fuzz/ ($ROLORA_FUZZ_DIR),
# seeds them with corpora written by rolora's own writers, and keeps the corpus each run grows
# (build-fuzz/corpus/<target>) for the next. A crash stops the script and leaves its input under
# build-fuzz/artifacts/. $FUZZ_CXX picks the compiler. See docs/io.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-600}"
[ "$#" -gt 0 ] && shift
fuzz_dir="${ROLORA_FUZZ_DIR:-$PWD/build-fuzz}"
cxx="${FUZZ_CXX:-$(command -v clang++ || command -v clang++-14 || true)}"
if [ -z "$cxx" ]; then
  echo "fuzz.sh: no clang++ found (Debian: apt install clang libclang-rt-14-dev)" >&2
  exit 1
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  for src in tests/fuzz/fuzz_*.cpp; do
    name="$(basename "$src" .cpp)"
    targets+=("${name#fuzz_}")
  done
fi

cmake -D ACTION=build -D SOURCE_DIR="$PWD" -D FUZZ_DIR="$fuzz_dir" -D CXX="$cxx" -P tests/fuzz/fuzz.cmake
for target in "${targets[@]}"; do
  cmake -D ACTION=run -D SOURCE_DIR="$PWD" -D FUZZ_DIR="$fuzz_dir" -D TARGET="$target" -D SECONDS="$seconds" \
    -P tests/fuzz/fuzz.cmake
done
