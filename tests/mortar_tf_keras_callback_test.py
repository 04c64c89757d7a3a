"""MortarCallback in model.fit; run under Keras 3 and, via scripts/test.sh, tf_keras."""

import glob
import os
import re
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras_zoo
import mortar_tf
from mortar_tf.keras import MortarCallback
from mortar_tf.keras import MorphWrapper
from mortar_tf.keras import morph_model
from mortar_tf.keras import strip_morphing
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

layers = keras.layers
SUFFIX = ".keras" if IS_KERAS3 else ".h5"


def u32(a):
  return np.asarray(a, np.float32).view(np.uint32)


def _model():
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((6, 6, 1)), layers.Conv2D(3, 3, name="conv"),
                            layers.Flatten(name="flat"), layers.Dense(2, name="fc")])
  model.compile(optimizer="sgd", loss="mse")
  return model


def _data():
  rng = np.random.default_rng(0)
  return (rng.standard_normal((16, 6, 6, 1)).astype(np.float32),
          rng.standard_normal((16, 2)).astype(np.float32))


def _fit(model, callbacks, epochs=2):
  x, y = _data()
  return model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0,
                   callbacks=callbacks)


@pytest.fixture(autouse=True)
def _deterministic():
  tf.config.experimental.enable_op_determinism()


def test_saves_morphed_copies_and_leaves_training_untouched(tmp_path):
  pattern = str(tmp_path / ("m-{epoch}" + SUFFIX))
  model = _model()
  history = _fit(model, [MortarCallback(pattern, "fewest_ones", precision=0.1)])
  plain = _model()
  _fit(plain, [])
  for a, b in zip(model.get_weights(), plain.get_weights()):
    np.testing.assert_array_equal(u32(a), u32(b))  # the callback changed nothing
  assert sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "m-*"))) == [
      "m-1" + SUFFIX, "m-2" + SUFFIX]
  saved = keras.models.load_model(str(tmp_path / ("m-2" + SUFFIX)), compile=False)
  for name in ("conv", "fc"):
    kernel = model.get_layer(name).weights[0].numpy()
    np.testing.assert_array_equal(u32(saved.get_layer(name).weights[0].numpy()),
                                  u32(mortar_tf.morph(kernel, "fewest_ones", 0.1,
                                                      backend="numpy")))
    np.testing.assert_array_equal(u32(saved.get_layer(name).weights[1].numpy()),
                                  u32(model.get_layer(name).weights[1].numpy()))
  for key in ("mortar_ratio_significand", "mortar_ratio_word", "mortar_ratio_aligned"):
    assert len(history.history[key]) == 2 and history.history[key][-1] > 1.0
  kernels = [model.get_layer(n).weights[0].numpy() for n in ("conv", "fc")]
  morphed = [mortar_tf.morph(k, "fewest_ones", 0.1, backend="numpy") for k in kernels]
  axes = [(0, 1, 2), (0,)]  # conv [kh, kw, cin, cout] and dense [in, out]: reduce all but out
  for domain in ("word", "significand", "aligned"):  # the ratios logged, from numpy's counts
    before = sum(mortar_tf.count_ones(k, domain, reduction_axes=a, backend="numpy")
                 for k, a in zip(kernels, axes))
    after = sum(mortar_tf.count_ones(k, domain, reduction_axes=a, backend="numpy")
                for k, a in zip(morphed, axes))
    assert history.history[f"mortar_ratio_{domain}"][-1] == pytest.approx(before / after), domain


def test_wrapped_model_saves_the_stripped_model(tmp_path):
  model = morph_model(_model(), "paper", precision=0.2)
  model.compile(optimizer="sgd", loss="mse")
  path = str(tmp_path / ("w" + SUFFIX))
  _fit(model, [MortarCallback(path, "round", keep_bits=1)], epochs=1)
  saved = keras.models.load_model(path, compile=False)
  assert [type(l).__name__ for l in saved.layers] == ["Conv2D", "Flatten", "Dense"]
  master = model.get_layer("morph_conv").layer.weights[0].numpy()
  # the wrappers' method (paper), applied once: not the callback's round
  np.testing.assert_array_equal(u32(saved.get_layer("conv").weights[0].numpy()),
                                u32(mortar_tf.morph(master, "paper", 0.2, backend="numpy")))


def test_save_every_n_batches_savedmodel_and_tensorboard(tmp_path):
  pattern = str(tmp_path / "sm-{epoch}-{batch}")
  callback = MortarCallback(pattern, "paper", precision=0.1, save_freq=3, format="savedmodel",
                            log_dir=str(tmp_path / "logs"))
  _fit(_model(), [callback], epochs=2)  # 2 batches an epoch: batch 3 overall is epoch 2, batch 1
  saved = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "sm-*")))
  assert saved == ["sm-2-1"]
  assert os.path.isfile(tmp_path / "sm-2-1" / "saved_model.pb")
  events = glob.glob(str(tmp_path / "logs" / "train" / "events.out.tfevents.*"))
  assert events
  tags = {value.tag for path in events for event in tf.compat.v1.train.summary_iterator(path)
          for value in event.summary.value}
  assert {"mortar/conv/kernel/ratio_word", "mortar/fc/kernel/ratio_aligned",
          "mortar/conv/kernel/morphed", "mortar/total/ratio_aligned"} <= tags
  assert not glob.glob(str(tmp_path / ".mortar-*"))  # no staging left behind


@pytest.mark.parametrize("kwargs,match", [
    (dict(save_freq=0), "save_freq"), (dict(save_freq="batch"), "save_freq"),
    (dict(format="onnx"), "format"), (dict(precision=2.0), "precision"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MortarCallback("/tmp/x.keras", **kwargs)


def test_callback_folds_batchnorm_before_morphing(tmp_path):
  keras.utils.set_random_seed(1)
  model = keras.Sequential([keras.Input((6, 6, 1)), layers.Conv2D(3, 3, name="conv"),
                            layers.BatchNormalization(name="bn"), layers.Flatten(),
                            layers.Dense(2, name="fc")])
  model.compile(optimizer="sgd", loss="mse")
  path = str(tmp_path / ("f" + SUFFIX))
  _fit(model, [MortarCallback(path, "paper", precision=0.1, fold_batchnorm=True)], epochs=1)
  saved = keras.models.load_model(path, compile=False)
  assert type(saved.get_layer("bn")).__name__ == "Identity"
  gamma, beta, mean, var = (w.numpy().astype(np.float64) for w in model.get_layer("bn").weights)
  scale = gamma / np.sqrt(var + model.get_layer("bn").epsilon)
  folded = (model.get_layer("conv").weights[0].numpy() * scale).astype(np.float32)
  np.testing.assert_array_equal(u32(saved.get_layer("conv").weights[0].numpy()),
                                u32(mortar_tf.morph(folded, "paper", 0.1, backend="numpy")))


def test_a_per_layer_precision_map_morphs_only_its_layers(tmp_path):
  path = str(tmp_path / ("p" + SUFFIX))
  model = _model()
  _fit(model, [MortarCallback(path, "paper", precision={"conv": 0.3})], epochs=1)
  saved = keras.models.load_model(path, compile=False)
  conv = model.get_layer("conv").weights[0].numpy()
  np.testing.assert_array_equal(u32(saved.get_layer("conv").weights[0].numpy()),
                                u32(mortar_tf.morph(conv, "paper", 0.3, backend="numpy")))
  np.testing.assert_array_equal(u32(saved.get_layer("fc").weights[0].numpy()),
                                u32(model.get_layer("fc").weights[0].numpy()))
  with pytest.raises(ValueError, match="precision"):
    MortarCallback(path, "paper", precision={"conv": 2.0})


# --------------------------------------------------------------------------
# Found before training, not after an epoch


class _Batches(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.count = 0

  def on_train_batch_end(self, batch, logs=None):
    self.count += 1


def _fails_before_any_batch(model, callback, error, match):
  counter = _Batches()
  with pytest.raises(error, match=match):
    _fit(model, [counter, callback], epochs=1)
  assert counter.count == 0


def test_a_map_entry_matching_no_kernel_fails_before_training(tmp_path):
  _fails_before_any_batch(_model(), MortarCallback(str(tmp_path / ("m" + SUFFIX)), "paper",
                                                   precision={"conv": 0.1, "cnv": 0.2}),
                          ValueError, r"\['cnv'\] match no kernel")


def test_non_float32_kernels_fail_before_training(tmp_path):
  keras.mixed_precision.set_global_policy("bfloat16")
  try:
    model = keras.Sequential([keras.Input((4,)), layers.Dense(2, name="fc")])
  finally:
    keras.mixed_precision.set_global_policy("float32")
  model.compile(optimizer="sgd", loss="mse")
  counter = _Batches()
  with pytest.raises(TypeError, match="fc/kernel.*bfloat16"):
    model.fit(np.zeros((8, 4), np.float32), np.zeros((8, 2), np.float32), verbose=0,
              callbacks=[counter, MortarCallback(str(tmp_path / ("m" + SUFFIX)))])
  assert counter.count == 0


def test_a_file_in_the_way_fails_before_training(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  template = str(blocker / "run" / ("m-{epoch}" + SUFFIX))
  _fails_before_any_batch(
      _model(), MortarCallback(template), ValueError,
      re.escape(f"cannot save to {template!r}: cannot create the output directory "
                f"{str(blocker / 'run')!r}: {str(blocker)!r} is a file, not a directory"))
  assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("fmt,make,what", [
    ("keras", os.mkdir, "it is a directory, and format 'keras' writes a file"),
    ("savedmodel", lambda p: open(p, "w").close(),
     "it is a file, and format 'savedmodel' writes a directory")])
def test_a_save_path_taken_by_the_other_kind_fails_before_training(tmp_path, fmt, make, what):
  path = str(tmp_path / ("m" + (SUFFIX if fmt == "keras" else "")))
  make(path)
  _fails_before_any_batch(_model(), MortarCallback(path, format=fmt), ValueError,
                          re.escape(f"cannot save to {path!r}: {what}"))


# os.access says yes to root for both; creating a file fails (root included):
# /sys with "permission denied", /proc with "no such file" (nothing can be made there).
@pytest.mark.parametrize("directory,why", [("/sys", "permission denied"),
                                           ("/sys/kernel", "permission denied"),
                                           ("/proc", None)])
def test_a_directory_that_takes_no_file_fails_at_train_start(directory, why):
  template = os.path.join(directory, "m-{epoch}" + SUFFIX)
  match = re.escape(f"cannot save to {template!r}: cannot write in the output directory "
                    f"{directory!r}")
  if why:
    match += re.escape(f": {why}")
  _fails_before_any_batch(_model(), MortarCallback(template), ValueError, match)
  # a model built only by its first batch is checked at train start too
  keras.utils.set_random_seed(0)
  unbuilt = keras.Sequential([layers.Flatten(), layers.Dense(2, name="fc")])
  unbuilt.compile(optimizer="sgd", loss="mse")
  _fails_before_any_batch(unbuilt, MortarCallback(template), ValueError, match)
  assert not glob.glob(os.path.join(directory, ".mortar-*"))


def test_a_directory_that_cannot_be_made_there_fails_at_train_start():
  template = "/proc/mortar-out/m-{epoch}" + SUFFIX
  _fails_before_any_batch(_model(), MortarCallback(template), ValueError, re.escape(
      f"cannot save to {template!r}: cannot create the output directory '/proc/mortar-out'"))


@pytest.mark.parametrize("path,fmt,match", [
    ("m.onnx", "keras", "format 'keras' writes"),
    ("m-{epoch:02q}.keras", "keras", "bad file path pattern"),
    ("m-{epoch.keras", "keras", "bad file path pattern"),
    ("m-{epoch}.keras", "savedmodel", "format 'savedmodel' writes a directory"),
    ("m.h5", "savedmodel", "named like a Keras file"),
])
def test_bad_paths_are_refused_at_construction(path, fmt, match):
  with pytest.raises(ValueError, match=match):
    MortarCallback(path, format=fmt)


class Net(keras.Model):
  """A subclassed model (not cloneable)."""

  def __init__(self):
    super().__init__()
    self.conv = layers.Conv2D(3, 3)
    self.flat = layers.Flatten()
    self.fc = layers.Dense(2)

  def call(self, x):
    return self.fc(self.flat(self.conv(x)))


def test_subclassed_models_are_morphed_in_place_and_restored_bit_for_bit(tmp_path):
  keras.utils.set_random_seed(0)
  model = Net()
  model.compile(optimizer="adam", loss="mse")
  callback = MortarCallback(str(tmp_path / "sm-{batch}"), "fewest_ones", precision=0.2,
                            save_freq=1, format="savedmodel")
  _fit(model, [callback], epochs=2)
  keras.utils.set_random_seed(0)
  plain = Net()
  plain.compile(optimizer="adam", loss="mse")
  _fit(plain, [], epochs=2)
  for a, b in zip(model.get_weights(), plain.get_weights()):
    np.testing.assert_array_equal(u32(a), u32(b))  # saving 4 times changed nothing
  loaded = tf.saved_model.load(str(tmp_path / "sm-2"))  # epoch 2, batch 2: the last save
  saved = sorted(v.numpy().tobytes() for v in loaded.variables)
  want = sorted(mortar_tf.morph(v.numpy(), "fewest_ones", 0.2, backend="numpy").tobytes()
                if "kernel" in v.name else v.numpy().tobytes() for v in model.weights)
  assert saved == want


def test_a_wrapped_subclassed_model_is_a_clear_error_before_training(tmp_path):

  class Wrapped(keras.Model):

    def __init__(self):
      super().__init__()
      self.fc = MorphWrapper(layers.Dense(2), "paper", precision=0.1)

    def call(self, x):
      return self.fc(x)

  model = Wrapped()
  model(np.zeros((1, 6, 6, 1), np.float32))
  model.compile(optimizer="sgd", loss="mse")
  _fails_before_any_batch(model, MortarCallback(str(tmp_path / ("w" + SUFFIX))), ValueError,
                          "holds MorphWrappers.*subclassed models cannot be cloned")


def test_map_with_fold_batchnorm_folds_only_where_it_morphs(tmp_path):
  keras.utils.set_random_seed(2)
  model = keras.Sequential([keras.Input((6, 6, 1)), layers.Conv2D(3, 3, name="conv"),
                            layers.BatchNormalization(name="bn"), layers.Conv2D(2, 3, name="c2"),
                            layers.BatchNormalization(name="bn2"), layers.Flatten(),
                            layers.Dense(2, name="fc")])
  model.compile(optimizer="sgd", loss="mse")
  path = str(tmp_path / ("f" + SUFFIX))
  _fit(model, [MortarCallback(path, "paper", precision={"c2": 1e-6}, fold_batchnorm=True)],
       epochs=1)
  saved = keras.models.load_model(path, compile=False)
  kinds = {l.name: type(l).__name__ for l in saved.layers}
  assert kinds["bn"] == "BatchNormalization" and kinds["bn2"] == "Identity"
  x = _data()[0]
  np.testing.assert_allclose(np.asarray(saved(x)), np.asarray(model(x, training=False)),
                             rtol=1e-4, atol=1e-4)


def _scalars(directory):
  out = {}
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        out.setdefault(value.tag, []).append(event.step)
  return out


def test_tensorboard_scalars_line_up_with_keras_tensorboard(tmp_path):
  logs = str(tmp_path / "logs")
  model = _model()
  _fit(model, [MortarCallback(str(tmp_path / ("e" + SUFFIX)), log_dir=logs),
               keras.callbacks.TensorBoard(logs)], epochs=3)
  train = _scalars(os.path.join(logs, "train"))
  assert sorted(train["epoch_loss"]) == [0, 1, 2]
  assert sorted(train["mortar/total/ratio_word"]) == sorted(train["epoch_loss"])
  assert sorted(train["mortar/conv/kernel/ratio_aligned"]) == [0, 1, 2]
  # batch saves: the optimizer's iterations, Keras' batch step axis
  logs = str(tmp_path / "batch_logs")
  model = _model()
  _fit(model, [MortarCallback(str(tmp_path / ("b-{batch}" + SUFFIX)), save_freq=1,
                              log_dir=logs)], epochs=2)
  assert sorted(_scalars(os.path.join(logs, "train"))["mortar/total/ratio_word"]) == [1, 2, 3, 4]


def test_an_unknown_placeholder_is_named_at_the_first_save(tmp_path):
  model = _model()
  before = [w.copy() for w in model.get_weights()]
  with pytest.raises(ValueError, match=r"names 'epochs', which is neither epoch, batch nor a "
                                       r"logs key \(loss\)"):
    _fit(model, [MortarCallback(str(tmp_path / ("x-{epochs}" + SUFFIX)))], epochs=1)
  assert not glob.glob(str(tmp_path / "x-*"))
  assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


class Built(keras.Model):
  """A subclassed model whose build() takes no shape (as mtcnn's ONet)."""

  def __init__(self):
    super().__init__()
    self.fc = layers.Dense(2)

  def build(self, input_shape=None):
    self.fc.build((None, 4))
    self.built = True

  def call(self, x):
    return self.fc(x)


def test_a_subclassed_model_keras3_cannot_export_fails_before_training(tmp_path):
  model = Built()
  model.build()
  model.compile(optimizer="sgd", loss="mse")
  x, y = np.zeros((8, 4), np.float32), np.zeros((8, 2), np.float32)
  callback = MortarCallback(str(tmp_path / "sm-{epoch}"), format="savedmodel")
  counter = _Batches()
  if IS_KERAS3:
    with pytest.raises(ValueError, match="cannot export Built.*Call the model once"):
      model.fit(x, y, verbose=0, callbacks=[counter, callback])
    assert counter.count == 0
  else:  # tf.saved_model.save has no such limit
    model.fit(x, y, verbose=0, callbacks=[counter, callback])
    assert os.path.isfile(tmp_path / "sm-1" / "saved_model.pb")


# --------------------------------------------------------------------------
# Functional subclasses (keras-hub Backbones): the zoo's ConvBackbone


class _WarningsAtTrainStart(keras.callbacks.Callback):
  """Counts the warnings caught when training starts (placed after MortarCallback)."""

  def __init__(self, caught):
    super().__init__()
    self.caught, self.count = caught, None

  def on_train_begin(self, logs=None):
    self.count = len(self.caught)


def test_fold_batchnorm_on_a_functional_subclass_warns_at_train_start_and_saves_the_fold(
    tmp_path):
  model = keras_zoo.build("backbone")
  model.compile(optimizer="sgd", loss="mse")
  path = str(tmp_path / ("f-{epoch}" + SUFFIX))
  x, y = keras_zoo.inputs(model, 8), keras_zoo.targets(model, 8)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    start = _WarningsAtTrainStart(caught)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0,
              callbacks=[MortarCallback(path, "paper", precision=0.1, fold_batchnorm=True),
                         start])
  plain = [w for w in caught if "plain Functional model, not a ConvBackbone" in str(w.message)]
  assert len(plain) == 1 and start.count >= 1  # once, when training started (not per save)
  saved = keras.models.load_model(path.format(epoch=2), compile=False)
  for producer, bn in keras_zoo.BACKBONE_FOLDS:
    assert type(saved.get_layer(bn)).__name__ == "Identity"
    kernel, bias = keras_zoo.folded_by_hand(model, producer, bn)
    np.testing.assert_array_equal(u32(saved.get_layer(producer).kernel.numpy()),
                                  u32(mortar_tf.morph(kernel, "paper", 0.1, backend="numpy")))
    np.testing.assert_array_equal(u32(saved.get_layer(producer).bias.numpy()), u32(bias))


def test_a_wrapped_functional_subclass_is_saved_as_its_class(tmp_path):
  backbone = keras_zoo.build("backbone")
  wrapped = morph_model(backbone, "paper", precision=0.1)
  wrapped.compile(optimizer="sgd", loss="mse")
  path = str(tmp_path / "w.keras")  # tf_keras' .h5 names the class without its package
  x, y = keras_zoo.inputs(backbone, 8), keras_zoo.targets(backbone, 8)
  wrapped.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[MortarCallback(path)])
  saved = keras.models.load_model(path, compile=False)
  assert type(saved) is keras_zoo.ConvBackbone
  assert saved.get_config() == backbone.get_config()
  assert saved.token_embedding is saved.get_layer("token_embedding")
  want = strip_morphing(wrapped)
  for got, ref in zip(saved.weights, want.weights):
    np.testing.assert_array_equal(u32(got.numpy()), u32(ref.numpy()))
  np.testing.assert_array_equal(
      u32(saved.get_layer("mix").kernel.numpy()),
      u32(mortar_tf.morph(backbone.get_layer("mix").kernel.numpy(), "paper", 0.1,
                          backend="numpy")))


@pytest.mark.parametrize("filepath,fmt", [
    ("{log}/train", "savedmodel"),        # the saves would replace the event directory
    ("{log}", "savedmodel"),              # written whole, it would hold the events
    ("{log}/../logs/train", "savedmodel"),
    ("{log}/../{{epoch}}", "savedmodel"),  # epoch 2's save would be log_dir "2"
])
def test_a_save_path_on_the_tensorboard_events_is_refused_at_construction(tmp_path, filepath,
                                                                            fmt):
  log = tmp_path / ("2" if "epoch" in filepath else "logs")
  with pytest.raises(ValueError, match="log_dir's event directory"):
    MortarCallback(filepath.format(log=log), "paper", precision=0.1, format=fmt,
                   log_dir=str(log))
  # Beside the events, or a .keras file in log_dir: fine.
  MortarCallback(str(log / "m-{epoch}"), "paper", precision=0.1, format="savedmodel",
                 log_dir=str(log))
  MortarCallback(str(log / "train" / "m.keras"), "paper", precision=0.1, log_dir=str(log))


def test_a_savedmodel_save_never_replaces_a_directory_of_other_files(tmp_path):
  """A save replaces an earlier SavedModel at its path (as ModelCheckpoint
  replaces its files), never a directory holding anything else."""
  keep = tmp_path / "keep"
  keep.mkdir()
  (keep / "notes.txt").write_text("precious")
  model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
  model.compile("sgd", "mse")
  x, y = np.zeros((8, 8), np.float32), np.zeros((8, 4), np.float32)
  with pytest.raises(ValueError, match="is a directory that is not a SavedModel"):
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[MortarCallback(str(keep), "paper", precision=0.1, format="savedmodel")])
  assert sorted(os.listdir(keep)) == ["notes.txt"]
  out = tmp_path / "out"
  for _ in range(2):  # the second run replaces the first run's SavedModel
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[MortarCallback(str(out), "paper", precision=0.1, format="savedmodel")])
    assert (out / "saved_model.pb").is_file()


@pytest.mark.parametrize("log_dir", ["/sys/mortar-logs", "{file}"])
def test_an_unwritable_log_dir_fails_at_train_start(tmp_path, log_dir):
  (tmp_path / "file").write_text("x")
  keras.utils.set_random_seed(0)  # op determinism (autouse) wants a seed for the init
  model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
  model.compile("sgd", "mse")
  seen = []
  probe = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: seen.append(1))
  log_dir = log_dir.format(file=tmp_path / "file")
  with pytest.raises(ValueError, match="cannot write TensorBoard events") as info:
    model.fit(np.zeros((8, 8), np.float32), np.zeros((8, 4), np.float32), epochs=1, verbose=0,
              callbacks=[MortarCallback(str(tmp_path / "m.keras"), "paper", precision=0.1,
                                        log_dir=log_dir),
                         probe])
  assert not seen and not (tmp_path / "m.keras").exists()
  # one sentence: each path once, quoted once, and why
  head = os.path.dirname(log_dir)
  why = "permission denied" if log_dir.startswith("/sys") else "is not a directory"
  assert str(info.value) == (
      f"cannot write TensorBoard events: "
      + (f"cannot write in the directory {head!r}" if why == "permission denied"
         else f"the path {log_dir!r}")
      + f" that would hold the event directory {os.path.join(log_dir, 'train')!r}"
      + (f": {why}" if why == "permission denied" else f" {why}"))


def _save_once(callback, model):
  callback.set_model(model)
  callback.on_train_begin()
  callback.on_epoch_end(0, {})
  callback.on_train_end()


@pytest.mark.parametrize("name", ["transformer", "bilstm", "gru", "shared", "nested", "multi_io",
                                  "subclassed"])
def test_the_substituting_writer_and_the_in_place_route_write_the_same_weights(tmp_path, name):
  """Keras 3's writer takes the morphed values in the kernels' place (nothing
  is assigned to the model); the route that assigns and restores is what
  every other case takes. Both files load with the same bits, every variable
  of the model stays as it was, and on Keras 3 the substituting route is
  the one that ran (on standard layers it takes every kernel)."""
  model = keras_zoo.build(name)
  before = [u32(w.numpy()).copy() for w in model.weights]
  files = {}
  for route in ("substitute", "assign"):
    callback = MortarCallback(str(tmp_path / (route + ".keras")), "fewest_ones", precision=0.05,
                              embeddings=True)
    if route == "assign":
      callback.set_model(model)
      callback._check()  # pylint: disable=protected-access
      callback._substitutes = False  # pylint: disable=protected-access
      callback.on_epoch_end(0, {})
    else:
      _save_once(callback, model)
      assert callback._substitutes is IS_KERAS3  # pylint: disable=protected-access
    files[route] = keras.models.load_model(str(tmp_path / (route + ".keras")), compile=False,
                                           custom_objects=keras_zoo.custom_objects(name))
  for w, b in zip(model.weights, before):
    np.testing.assert_array_equal(u32(w.numpy()), b)
  a, b = files["substitute"].weights, files["assign"].weights
  assert len(a) == len(b) == len(model.weights)
  morphed = 0
  for x, y, w in zip(a, b, model.weights):
    np.testing.assert_array_equal(u32(x.numpy()), u32(y.numpy()))
    morphed += not np.array_equal(u32(x.numpy()), u32(w.numpy()))
  assert morphed > 0


@keras.saving.register_keras_serializable(package="mortar_test")
class _CopyWriter(layers.Dense):
  """A Dense that writes numpy copies of its variables (as layers written for
  older Keras do), not the variables: no writer can tell its kernel there."""

  def save_own_variables(self, store):
    store["0"] = np.array(self.kernel.numpy())
    store["1"] = np.array(self.bias.numpy())

  def load_own_variables(self, store):
    self.kernel.assign(store["0"])
    self.bias.assign(store["1"])


def test_a_layer_that_writes_a_copy_of_its_kernel_falls_back_to_the_in_place_route(tmp_path):
  """The substituting writer misses a kernel a layer writes as a copy; that
  save is then made by assigning and restoring (nothing half-morphed is
  ever in place at the path), and later saves of the model go that way."""
  keras.utils.set_random_seed(3)
  model = keras.Sequential([keras.Input((5,)), layers.Dense(4, name="plain"),
                            _CopyWriter(3, name="copy")])
  before = [u32(w.numpy()).copy() for w in model.weights]
  path = str(tmp_path / "m.keras")
  callback = MortarCallback(path, "paper", precision=0.1)
  _save_once(callback, model)
  assert [k.name for k in callback.plan.kernels] == ["plain/kernel", "copy/kernel"]
  assert callback._substitutes is False  # pylint: disable=protected-access
  saved = keras.models.load_model(path, compile=False)
  for name in ("plain", "copy"):
    np.testing.assert_array_equal(
        u32(saved.get_layer(name).weights[0].numpy()),
        u32(mortar_tf.morph(model.get_layer(name).weights[0].numpy(), "paper", 0.1,
                            backend="numpy")))
  for w, b in zip(model.weights, before):
    np.testing.assert_array_equal(u32(w.numpy()), b)


def test_a_kernel_that_fails_to_morph_fails_the_save_whole_and_nothing_waits(tmp_path,
                                                                             monkeypatch):
  """The kernels are morphed on a thread beside the writer; an error there
  (here: injected into the second kernel's morph) is the save's error, raised
  from on_epoch_end, with no file at the path, the model as it was, and no
  thread left behind; the next save works."""
  import threading  # pylint: disable=import-outside-toplevel
  from mortar_tf import backends  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(4)
  model = keras.Sequential([keras.Input((6,)), layers.Dense(5, name="a"),
                            layers.Dense(4, name="b"), layers.Dense(3, name="c")])
  before = [u32(w.numpy()).copy() for w in model.weights]
  real, calls = backends.morph, []

  def morph(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise RuntimeError("injected failure")
    return real(*args, **kwargs)

  monkeypatch.setattr(backends, "morph", morph)
  path = tmp_path / ("m" + SUFFIX)
  callback = MortarCallback(str(path), "fewest_ones", precision=0.01)
  callback.set_model(model)
  callback.on_train_begin()
  outcome = []

  def save():
    try:
      callback.on_epoch_end(0, {})
      outcome.append("saved")
    except RuntimeError as e:
      outcome.append(str(e))

  saver = threading.Thread(target=save, daemon=True)
  saver.start()
  saver.join(timeout=120)
  assert not saver.is_alive(), "the save hangs"
  assert outcome == ["injected failure"]
  assert os.listdir(tmp_path) == []  # no file, no staging directory
  assert not [t for t in threading.enumerate() if t.name.startswith("MortarCallback")]
  for w, b in zip(model.weights, before):
    np.testing.assert_array_equal(u32(w.numpy()), b)
  monkeypatch.setattr(backends, "morph", real)
  callback.on_epoch_end(1, {})
  saved = keras.models.load_model(str(path), compile=False)
  for name in "abc":
    np.testing.assert_array_equal(
        u32(saved.get_layer(name).weights[0].numpy()),
        u32(mortar_tf.morph(model.get_layer(name).weights[0].numpy(), "fewest_ones", 0.01,
                            backend="numpy")))


def test_a_save_removes_what_a_killed_save_left_and_nothing_else(tmp_path, killed_writer):
  """A save killed mid-write leaves its staging directory (nothing runs at a
  SIGKILL); the next save into that directory removes those of dead processes
  of this machine, and keeps a live process's, another machine's and any other
  name."""
  from mortar_tf import files  # pylint: disable=import-outside-toplevel
  # a process that makes its staging directory the way write_model does, then is killed
  dead = killed_writer(
      "import os, sys, tempfile, time\n"
      "from mortar_tf import files\n"
      "d = tempfile.mkdtemp(prefix=f'.{files.temp_tag()}-', dir=sys.argv[1])\n"
      "open(os.path.join(d, 'm.keras'), 'wb').write(b'partial')\n"
      "print(d, flush=True)\n"
      "time.sleep(600)\n", str(tmp_path))
  assert dead in os.listdir(tmp_path)
  tag = files.temp_tag()
  live = f".{tag[:tag.rindex('-') + 1]}{os.getppid()}-live"
  kept = [live, ".mortar-other_machine-1-x", ".mortar-abc", "notes.txt"]
  for name in kept[:-1]:
    (tmp_path / name).mkdir()
  (tmp_path / "notes.txt").write_text("mine")
  _save_once(MortarCallback(str(tmp_path / ("m" + SUFFIX)), "paper", precision=0.1), _model())
  assert sorted(os.listdir(tmp_path)) == sorted(kept + ["m" + SUFFIX])
  assert dead not in os.listdir(tmp_path)
