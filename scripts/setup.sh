#!/usr/bin/env bash
# Install rolora's build dependencies (Debian/Ubuntu). Idempotent: does nothing when all
# packages are already installed.
set -euo pipefail

PACKAGES=(
  build-essential cmake ccache clang-format
  libeigen3-dev doctest-dev libxtensor-dev xtl-dev nlohmann-json3-dev libcli11-dev
  libbenchmark-dev gnuplot-nox
  libthrust-dev  # Thrust headers for the Thrust backend's OpenMP flavour (ROLORA_ENABLE_THRUST_OMP)
  clang libclang-rt-14-dev  # libFuzzer + ASan/UBSan runtimes for the fuzz targets (tests/fuzz, scripts/fuzz.sh)
  fortunes fortunes-min  # plain-text pretraining corpus (/usr/share/games/fortunes), see docs/data.md
  dataset-fashion-mnist zlib1g-dev  # apps/mnist_toy: gzipped IDX in /usr/share/datasets/fashion-mnist
  libopenmpi-dev openmpi-bin  # the MPI transport (rolora::mpi) and its mpirun tests (label mpi)
  libgrpc++-dev pkg-config openssl  # the gRPC transport (rolora::grpc, found by pkg-config) and scripts/make_certs.sh
  libsodium-dev  # secure aggregation's cryptography (rolora::secagg, found by pkg-config): X25519, BLAKE2b, ChaCha20
  libsentencepiece-dev sentencepiece  # SentencePiece tokenizer.model directories (rolora::sentencepiece); spm_train for its test
  libdnnl-dev  # oneDNN: the fp32 GEMM provider of the Eigen backend (ROLORA_ENABLE_ONEDNN=AUTO)
)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "setup.sh: not a Debian-based system; install these yourself: ${PACKAGES[*]}" >&2
  exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

# Node and npm for the tokenizer tests' reference library (tests/tokenizers, npm ci; the tests
# skip without). Checked by command, not by package: a Node from elsewhere (NodeSource's nodejs
# bundles npm and conflicts with Debian's npm package) serves as well.
if ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
  PACKAGES+=(nodejs npm)
fi

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup.sh: all dependencies present"
  exit 0
fi

echo "setup.sh: installing missing packages: ${missing[*]}"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "setup.sh: not root and sudo is unavailable; cannot install: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends "${PACKAGES[@]}"
