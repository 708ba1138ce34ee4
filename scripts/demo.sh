#!/usr/bin/env bash
# The main job, from a fresh machine: install hyper_opt and the example's dependencies into .venv,
# then run the torch example search (20 trials, 2 local workers, pruning) on the embedded storage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
cd examples/torch
../../.venv/bin/python ../../optimize.py hyperparameters.yml model_config.yml --replace "$@"
