#!/usr/bin/env bash
# The main job: federated LoRA fine-tuning of the small pretrained transformer on SpamAssassin,
# FedIT vs FFA-LoRA vs RoLoRA (20 clients, rank 2). Installs what it needs, fetches the corpus,
# pretrains the base model on first use, writes results/finetune/ (CSVs, accuracy.svg, PEFT
# adapters). Extra arguments go to the program, e.g.  scripts/run_finetune.sh --clients 50
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
bash scripts/fetch_data.sh
cmake --preset default
cmake --build --preset default --target federated_finetune -j "$(nproc 2>/dev/null || echo 2)"
build/apps/federated_finetune --out results/finetune "$@"
