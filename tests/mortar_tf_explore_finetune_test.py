"""Label-free distillation of a precision map (explore.finetune).

The metric of what it returns is recomputed here from the returned model;
the original model must come out bit for bit as it went in.
"""

import json

import keras
import numpy as np
import pytest

import mortar_tf
from mortar_tf import explore
from mortar_tf.explore import finetune
from mortar_tf.explore import job

rng = np.random.default_rng(3)


def _regressor():
  inputs = keras.Input((10,))
  x = keras.layers.Dense(32, activation="tanh", name="hidden")(inputs)
  outputs = keras.layers.Dense(4, name="out")(x)
  model = keras.Model(inputs, outputs)
  model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5
                     for w in model.weights])
  return model


def _mse(model, x):
  reference = model.predict(x, verbose=0)
  return explore.Metric("mse", lambda m: float(np.mean((m.predict(x, verbose=0) - reference)
                                                       ** 2)), higher_is_better=False)


def test_distillation_recovers_what_a_coarse_map_costs_and_never_returns_worse():
  model = _regressor()
  before_weights = [w.copy() for w in model.get_weights()]
  tune_x = rng.standard_normal((512, 10)).astype(np.float32)
  score_x = rng.standard_normal((256, 10)).astype(np.float32)
  metric = _mse(model, score_x)
  result = finetune.finetune(model, {"hidden": 0.5, "out": 0.5}, tune_x, metric=metric,
                             method="fewest_ones", epochs=20, learning_rate=1e-3)
  # The plain morph, recomputed here with numpy.
  plain = keras.models.clone_model(model)
  plain.set_weights([mortar_tf.morph(w, "fewest_ones", 0.5, backend="numpy") if w.ndim == 2
                     else w for w in model.get_weights()])
  assert result.before == pytest.approx(metric(plain), rel=1e-5)
  assert result.improved and result.after < result.before  # distillation helped here
  assert metric(result.model) == pytest.approx(result.after, rel=1e-5)
  assert len(result.losses) == 20 and result.losses[-1] < result.losses[0]
  # The returned kernels are morphed values: morphing them again changes nothing.
  for layer in ("hidden", "out"):
    kernel = result.model.get_layer(layer).get_weights()[0]
    again = mortar_tf.morph(kernel, "fewest_ones", 0.5, backend="numpy")
    assert mortar_tf.count_ones(again) <= mortar_tf.count_ones(kernel)
  for a, b in zip(model.get_weights(), before_weights):
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_a_distillation_that_does_not_help_returns_the_plain_morph():
  model = _regressor()
  x = rng.standard_normal((64, 10)).astype(np.float32)
  metric = _mse(model, x)
  # A learning rate this large wrecks the masters: the plain morph comes back.
  result = finetune.finetune(model, 0.01, x, metric=metric, epochs=2, learning_rate=50.0)
  assert not result.improved
  assert metric(result.model) == pytest.approx(result.before, rel=1e-6)


def test_bad_input_is_named(tmp_path):
  model = _regressor()
  metric = _mse(model, np.zeros((4, 10), np.float32))
  with pytest.raises(ValueError, match="no inputs"):
    finetune.finetune(model, 0.1, np.zeros((0, 10), np.float32), metric=metric)
  with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
    finetune.finetune(model, 0.1, np.zeros((4, 10), np.float32), metric=metric, epochs=0)
  model.export(str(tmp_path / "sm"), verbose=False)
  with pytest.raises(ValueError, match="needs a Keras model"):
    finetune.finetune(explore.LoadedSavedModel(str(tmp_path / "sm")), 0.1,
                      np.zeros((4, 10), np.float32), metric=metric)


def test_the_job_searches_with_distillation_and_writes_the_distilled_model(tmp_path):
  model = _regressor()
  model.save(tmp_path / "m.keras")
  np.savez(tmp_path / "d.npz", x=rng.standard_normal((200, 10)).astype(np.float32))
  result = job.run_job(str(tmp_path / "m.keras"), str(tmp_path / "d.npz"), str(tmp_path / "out"),
                       metric="mse", grid={"fewest_ones": [0.1]}, budget=1e-3,
                       search_precisions=[0.01, 0.1, 0.5], finetune_epochs=3,
                       max_evaluations=8)
  assert "With label-free distillation" in result.summary
  assert "distilled" in result.sweep.points[-1].label()
  record = json.loads((tmp_path / "out" / "sweep.json").read_text())
  assert record["distilled_on"] == 100 and record["samples"] == 100
  written = (tmp_path / "out" / "finetuned.keras").exists()
  if "Distillation kept" in result.summary:
    tuned = keras.models.load_model(tmp_path / "out" / "finetuned.keras")
    assert tuned.predict(np.zeros((1, 10), np.float32), verbose=0).shape == (1, 4)
  else:  # the summary says why there is no distilled model, and there is none
    assert ("did not improve" in result.summary or "nothing to distil" in result.summary)
    assert not written
  assert explore.finetune.finetune is finetune.finetune  # reachable as the README says
