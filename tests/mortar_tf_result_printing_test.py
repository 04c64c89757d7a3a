"""print() of a result object shows its human summary or table; repr() is
short (the class and a few key fields, never arrays) however big the model."""

import numpy as np
import pytest

import mortar_tf
from mortar_tf import analyze
from mortar_tf import estimator
from mortar_tf import explore
from mortar_tf import savedmodel
from mortar_tf.keras import find_kernels
from mortar_tf.keras.compat import keras

import keras_zoo

LAYERS = 40  # a deep model: a repr listing every layer or kernel would be long
REPR_LIMIT = 300


def _deep_model():
  keras.utils.set_random_seed(4)
  model = keras.Sequential([keras.Input((16,))] +
                           [keras.layers.Dense(16, name=f"d{i}") for i in range(LAYERS)])
  rng = np.random.default_rng(4)
  model.set_weights([(rng.standard_normal(w.shape) * 0.25).astype(np.float32)
                     for w in model.weights])
  return model


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
  d = tmp_path_factory.mktemp("deep")
  model = _deep_model()
  model.save(d / "m.keras")
  model.export(str(d / "sm"), verbose=False)
  return d, model


def _check(obj, text, capsys):
  """print(obj) shows `text`; repr(obj) is short, names the class, holds no array."""
  print(obj)
  assert capsys.readouterr().out == text + "\n"
  assert str(obj) == text
  short = repr(obj)
  assert short.startswith(type(obj).__name__ + "(") and len(short) < REPR_LIMIT, short
  assert "array(" not in short and "[[" not in short and "\n" not in short, short


def test_sparsity_report(capsys):
  rng = np.random.default_rng(0)
  weights = {f"layer{i}/kernel": rng.standard_normal((64, 32)).astype(np.float32)
             for i in range(300)}
  report = mortar_tf.sparsity_report(weights, "paper", precision=0.1)
  _check(report, report.format_table(), capsys)
  assert "layer299/kernel" in str(report)


def test_kernel_plan_of_a_real_network(capsys):
  model = keras_zoo.BUILDERS["mobilenet_v2"]()
  plan = find_kernels(model)
  assert len(plan.kernels) > 50
  _check(plan, plan.summary(), capsys)
  kernel = plan.kernels[0]
  assert repr(kernel) == f"Kernel({kernel.name!r}, shape=(3, 3, 3, 32), layout='conv')"


def test_analysis(deep, capsys):
  d, _ = deep
  result = analyze.analyze(str(d / "m.keras"), analyze.parse_settings(["paper"]))
  _check(result, analyze.format_analysis(result), capsys)
  assert repr(result.model).startswith("ModelWeights(") and len(repr(result.model)) < REPR_LIMIT


def test_estimate_and_its_coverage(deep, capsys):
  d, _ = deep
  result = estimator.estimate(str(d / "sm"), input_shape=(1, 16))
  assert len(result.layers) == LAYERS
  _check(result, result.table(), capsys)
  _check(result.coverage(), result.coverage().summary(), capsys)
  layer = result.layers[0]
  assert repr(layer).startswith("LayerEstimate(#0 ") and len(repr(layer)) < REPR_LIMIT


def test_conversion_report_and_verification(deep, tmp_path, capsys):
  d, _ = deep
  # 40 layers compound the per-weight error: a loose tolerance (printing is the point)
  report = savedmodel.convert(str(d / "sm"), str(tmp_path / "out"), "paper", 0.1, verify=True,
                              input_shape=(2, 16), verify_max_rel=10.0)
  assert len([v for v in report.morphed if not v.twin_of]) == LAYERS
  _check(report, report.summary(), capsys)
  _check(report.verification, "\n".join(report.verification.lines()), capsys)
  graph = savedmodel.read_graph(str(d / "sm"), input_shape=(1, 16))
  assert len(graph.ops) == LAYERS
  assert repr(graph).startswith("SavedModelGraph(") and len(repr(graph)) < REPR_LIMIT


def test_sweep_and_search_results(deep, capsys):
  _, model = deep
  x = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)
  swept = explore.sweep(model, lambda m: 0.0, {"paper": [0.05, 0.1], "round": [7]},
                        estimate_speedup=False)
  _check(swept, swept.table(), capsys)
  point = swept.points[0]
  assert repr(point).startswith("SweepPoint('paper P=0.05'") and len(repr(point)) < REPR_LIMIT
  found = explore.search_precisions(model, lambda m: 0.0, 0.0, precisions=[0.1, 0.5],
                                    estimate_speedup=False, calibration=x, max_evaluations=6)
  assert len(found.sensitivity) == LAYERS
  _check(found, found.summary(), capsys)


def test_compensation_results(deep, capsys):
  _, model = deep
  from mortar_tf.keras import compensate_model  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(2).standard_normal((64, 16)).astype(np.float32)
  _, done = compensate_model(model, "fewest_ones", 0.1, calibration=x)
  _check(done, done.summary(), capsys)
  result = next(iter(done.results.values()))
  assert repr(result).startswith("Result(shape=(16, 16)") and len(repr(result)) < REPR_LIMIT
