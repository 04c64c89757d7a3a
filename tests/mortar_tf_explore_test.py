"""Sweeps and the per-layer P search against direct morph + evaluate.

The references apply morphed kernels with set_weights on the model and call
the metric directly; ones are popcounts by numpy's unpackbits.
"""

import json
import math

import keras
import numpy as np
import pytest

import mortar_tf
from mortar_tf import explore
from mortar_tf.explore import job

import keras_zoo

rng = np.random.default_rng(11)
X = rng.standard_normal((64, 16)).astype(np.float32)


def _two_branch_model():
  """out = loud(x) + quiet(x): loud's weights are 10^4 times quiet's, so its
  morphing error dominates the output and only small P fit a tight budget."""
  inputs = keras.Input((16,))
  loud = keras.layers.Dense(8, use_bias=False, name="loud")(inputs)
  quiet = keras.layers.Dense(8, use_bias=False, name="quiet")(inputs)
  model = keras.Model(inputs, keras.layers.Add()([loud, quiet]))
  model.get_layer("loud").set_weights([(rng.standard_normal((16, 8)) * 100).astype(np.float32)])
  model.get_layer("quiet").set_weights([(rng.standard_normal((16, 8)) * 0.01).astype(np.float32)])
  return model


def _mse_metric(model):
  reference = model.predict(X, verbose=0)

  def mse(m):
    return float(np.mean((m.predict(X, verbose=0) - reference) ** 2))

  return explore.Metric("mse", mse, higher_is_better=False)


def _kernels(model):
  return {name: model.get_layer(name).get_weights()[0] for name in ("loud", "quiet")}


def _with(model, morphed):
  """Sets kernels, returns a function that restores them."""
  saved = {name: model.get_layer(name).get_weights()[0] for name in morphed}
  for name, value in morphed.items():
    model.get_layer(name).set_weights([value])
  return lambda: [model.get_layer(n).set_weights([v]) for n, v in saved.items()]


def _popcount(a):
  return int(np.unpackbits(np.ascontiguousarray(a).view(np.uint8)).sum())


def test_sweep_rows_equal_direct_morph_and_evaluate():
  model = _two_branch_model()
  metric = _mse_metric(model)
  originals = _kernels(model)
  grid = {"paper": [0.05, 0.3], "round": [3], "bitx": [6]}
  result = explore.sweep(model, metric, grid, estimate_speedup=False)
  assert [p.label() for p in result.points] == [
      "paper P=0.05", "paper P=0.3", "round keep_bits=3", "bitx columns=6"]
  for point in result.points:
    spec = mortar_tf.MorphSpec.create(point.method, **point.settings)
    kwargs = dict(spec.settings())
    if spec.method == "bitx":
      kwargs["reduction_axes"] = (0,)
    morphed = {n: mortar_tf.morph(w, spec.method, backend="numpy", **kwargs)
               for n, w in originals.items()}
    restore = _with(model, morphed)
    try:
      direct = metric(model)
    finally:
      restore()
    assert point.metric == pytest.approx(direct, rel=1e-6)
    word = sum(_popcount(w) for w in originals.values()) / sum(
        _popcount(w) for w in morphed.values())
    assert point.ratio["word"] == pytest.approx(word)
  # The kernels are back, bit for bit.
  for name, value in _kernels(model).items():
    np.testing.assert_array_equal(value.view(np.uint32), originals[name].view(np.uint32))


def test_search_meets_the_budget_and_beats_every_global_p():
  model = _two_branch_model()
  metric = _mse_metric(model)
  originals = _kernels(model)
  # The budget: 1.5x the error of morphing only `loud` at P=0.01, measured here.
  restore = _with(model, {"loud": mortar_tf.morph(originals["loud"], "paper", 0.01)})
  budget = 1.5 * metric(model)
  restore()
  precisions = [0.01, 0.05, 0.2, 0.5]
  found = explore.search_precisions(model, metric, budget, precisions=precisions,
                                    method="paper")
  # Re-evaluate the map by hand.
  morphed = {n: mortar_tf.morph(originals[n], "paper", p) for n, p in found.precisions.items()}
  restore = _with(model, morphed)
  drop = metric(model)
  restore()
  assert drop <= budget
  assert found.point.drop == pytest.approx(drop)

  def aligned_gain(p_of):
    total = 0
    for n, w in originals.items():
      if n in p_of:
        before = mortar_tf.count_ones(w, "aligned", reduction_axes=(0,))
        after = mortar_tf.count_ones(mortar_tf.morph(w, "paper", p_of[n]), "aligned",
                                     reduction_axes=(0,))
        total += before - after
    return total

  feasible = []
  for p in precisions:  # every global P, measured directly
    restore = _with(model, {n: mortar_tf.morph(w, "paper", p) for n, w in originals.items()})
    if metric(model) <= budget:
      feasible.append(p)
    restore()
  assert feasible == [0.01]
  assert found.best_global.settings == {"precision": 0.01}
  assert not found.chose_global
  assert aligned_gain(found.precisions) > aligned_gain({n: 0.01 for n in originals})
  assert found.precisions["quiet"] > found.precisions.get("loud", 0)
  # morph_model accepts the map as it is.
  from mortar_tf.keras import morph_model  # pylint: disable=import-outside-toplevel
  wrapped = morph_model(model, "paper", precision=dict(found.precisions))
  np.testing.assert_allclose(wrapped.predict(X, verbose=0), morphed_predict(model, morphed),
                             rtol=1e-5, atol=1e-4)


def morphed_predict(model, morphed):
  restore = _with(model, morphed)
  try:
    return model.predict(X, verbose=0)
  finally:
    restore()


def test_search_never_returns_less_than_the_best_global_p():
  model = _two_branch_model()
  metric = _mse_metric(model)
  found = explore.search_precisions(model, metric, budget=math.inf, precisions=[0.1, 0.5])
  # Anything fits: the best is P=0.5 everywhere, and a global answer says so.
  assert found.chose_global and dict(found.precisions) == {"*": 0.5}
  assert found.point.label() == "fewest_ones P=0.5"
  assert "global P" in found.summary()
  assert found.point.ratio["aligned"] == pytest.approx(found.best_global.ratio["aligned"])


@pytest.mark.parametrize("call,message", [
    (lambda m, f: explore.sweep(m, f, {}), "grid is empty"),
    (lambda m, f: explore.sweep(m, f, {"paper": []}), "grid for 'paper' is empty"),
    (lambda m, f: explore.sweep(m, f, {"nope": [1]}), "unknown method 'nope'"),
    (lambda m, f: explore.search_precisions(m, f, -0.1), "budget must be a number >= 0"),
    (lambda m, f: explore.search_precisions(m, f, 0.1, method="round"), "method must be"),
    (lambda m, f: explore.sweep(m, explore.Metric("nan", lambda _: float("nan")),
                                {"paper": [0.1]}, estimate_speedup=False), "returned NaN"),
])
def test_bad_inputs(call, message):
  model = _two_branch_model()
  with pytest.raises(ValueError, match=message):
    call(model, _mse_metric(model))


def _classifier(tmp_path):
  inputs = keras.Input((4, 4, 1))
  x = keras.layers.Conv2D(3, 3, name="conv")(inputs)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(3, name="fc")(x)
  model = keras.Model(inputs, outputs)
  model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
  path = tmp_path / "m.keras"
  model.save(path)
  x = rng.standard_normal((200, 4, 4, 1)).astype(np.float32)
  y = np.argmax(model.predict(x, verbose=0), -1)
  np.savez(tmp_path / "d.npz", images=x, labels=y)
  return path, tmp_path / "d.npz"


def test_job_writes_files_and_plots(tmp_path):
  model, data = _classifier(tmp_path)
  result = job.run_job(str(model), str(data), str(tmp_path / "out"), x_key="images",
                       y_key="labels", grid={"paper": [0.1], "round": [5]}, budget=0.05,
                       search_precisions=[0.05, 0.3])
  names = {p.split("/")[-1] for p in result.files}
  assert {"sweep.csv", "sweep.json", "summary.md", "pareto.png", "bit_density.png",
          "columns.png"} <= names
  for path in result.files:
    if path.endswith(".png"):
      with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  data_json = json.loads((tmp_path / "out" / "sweep.json").read_text())
  assert data_json["sweep"]["original_metric"] == 1.0  # labels are the model's own answers
  assert "Search (fewest_ones, budget 0.05" in result.summary


def test_job_names_missing_arrays(tmp_path):
  model, data = _classifier(tmp_path)
  with pytest.raises(ValueError, match=r"has no array \['x', 'y'\]"):
    job.run_job(str(model), str(data), str(tmp_path / "out"))


def test_a_saved_model_sweeps_like_the_keras_model_it_was_exported_from(tmp_path):
  model = _two_branch_model()
  model.export(str(tmp_path / "sm"), verbose=False)
  loaded = explore.LoadedSavedModel(str(tmp_path / "sm"))
  assert sorted(k.layer for k in explore.models.model_kernels(loaded)) == ["loud", "quiet"]
  grid = {"fewest_ones": [0.1], "round": [5]}
  before = loaded.predict(X)
  from_keras = explore.sweep(model, _mse_metric(model), grid)
  from_saved = explore.sweep(loaded, _mse_metric(loaded), grid)
  for a, b in zip(from_keras.points, from_saved.points):
    assert a.label() == b.label()
    assert b.metric == pytest.approx(a.metric, rel=1e-5)
    assert b.ratio == a.ratio
    assert b.speedup == pytest.approx(a.speedup)
  # The loaded model's kernels are back afterwards: it computes what it did
  # before, bit for bit (the Keras model's own graph may round differently).
  np.testing.assert_array_equal(loaded.predict(X).view(np.uint32), before.view(np.uint32))
  np.testing.assert_allclose(before, model.predict(X, verbose=0), rtol=1e-5, atol=1e-4)


def test_a_fully_convolutional_saved_model_is_estimated_at_the_datas_shape(tmp_path):
  # Free H and W (MTCNN's PNet, HED): the job estimates at one sample of the
  # data's own shape, and its figure is the estimator's at that shape.
  keras_zoo.fully_convolutional().export(str(tmp_path / "sm"), verbose=False)
  x = rng.standard_normal((6, 20, 24, 3)).astype(np.float32)
  np.savez(tmp_path / "d.npz", x=x)
  result = job.run_job(str(tmp_path / "sm"), str(tmp_path / "d.npz"), str(tmp_path / "out"),
                       metric="mse", grid={"paper": [0.1]}, search=False)
  point = result.sweep.points[-1]
  direct = mortar_tf.estimator.estimate(str(tmp_path / "sm"), input_shape=(1, 20, 24, 3),
                                        method="paper", precision=0.1)
  assert not direct.unmapped
  assert point.speedup == pytest.approx(direct.headline()["over_stripes"])
  assert point.speedup_unmorphed == pytest.approx(direct.headline()["over_unmorphed"])
  assert point.speedup_unmorphed != pytest.approx(1.0)


# The main job's crowded corner (MNIST sweep): round keep_bits=4 beside paper
# P=0.05 once printed "40.05"; round 10 and bitx 12 sit side by side.
CROWDED = [(2.887, 0.9780, "0.01"), (4.045, 0.9782, "0.05"), (4.842, 0.9772, "0.1"),
           (3.308, 0.9781, "0.01"), (4.926, 0.9794, "0.05"), (6.166, 0.9795, "0.1"),
           (3.955, 0.9785, "4"), (2.620, 0.9780, "7"), (1.945, 0.9779, "10"),
           (3.410, 0.9782, "8"), (2.128, 0.9779, "12"), (1.0, 0.9779, "original")]


def test_point_labels_overlap_no_other_label_and_no_point():
  from mortar_tf.estimator.plots import pyplot  # pylint: disable=import-outside-toplevel
  from mortar_tf.explore import plots  # pylint: disable=import-outside-toplevel
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 5))
  try:
    ax.scatter([x for x, _, _ in CROWDED], [y for _, y, _ in CROWDED], s=36)
    ax.set_xscale("log")
    annotations = plots.place_labels(ax, CROWDED)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in annotations]
    frame = ax.get_window_extent(renderer)
    radius = 3.0 * fig.dpi / 72  # the markers: s=36 is 6 points across
    for i, (box, (x, y, text)) in enumerate(zip(boxes, CROWDED)):
      assert annotations[i].get_text() == text and annotations[i].xy == (x, y)
      for other in boxes[i + 1:]:
        assert not box.overlaps(other), (text, box, other)
      for px, py in (ax.transData.transform((x2, y2)) for x2, y2, _ in CROWDED):
        assert not (box.x0 < px + radius and box.x1 > px - radius and
                    box.y0 < py + radius and box.y1 > py - radius), (text, px, py)
      assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= box.y1 <= frame.y1
  finally:
    plt.close(fig)
