"""The estimator against SPEC 5's engine example and independent loops.

Group counts, N_pos and MACs are derived here from the Keras layers' shapes
(textbook formulas); per-group lane ones and Bitlet column costs come from
spec_reference's plain loops over lanes, columns and windows.
"""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf import estimator
from mortar_tf.estimator import Engine
from mortar_tf.estimator import estimation as estimate_lib
from mortar_tf.estimator import plots

import spec_reference as ref

G, WIDTH, WINDOW, PES = 8, 10, 3, 3
BATCH = 2


def _engines(num_pes=PES, **extra):
  return [Engine(name, name, group_size=G, width=WIDTH, window=WINDOW, num_pes=num_pes, **extra)
          for name in estimator.MODELS]


def _export_dense(path, kernel):
  """A bias-free Dense over 4 inputs with `kernel` (4 x units), exported."""
  kernel = np.float32(kernel)
  inputs = keras.Input((4,))
  outputs = keras.layers.Dense(kernel.shape[1], use_bias=False, name="fc")(inputs)
  model = keras.Model(inputs, outputs)
  model.get_layer("fc").set_weights([kernel])
  model.export(str(path), verbose=False)


def _spec5_engines():
  """Every model at SPEC 5's geometry: G=4, width 4, window 2."""
  return [Engine(m, m, group_size=4, width=4, window=2) for m in estimator.MODELS]


def test_spec_engine_example():
  group = np.float32([1.5, 1, 0.75, 0]).reshape(4, 1)  # one group along axis 0
  n_groups, lane_sum, bitlet_sum, columns = estimate_lib.group_figures(group, (0,), 4, 4, 2)
  assert (n_groups, lane_sum, bitlet_sum) == (1, 2, 3)
  assert columns == (2, 2, 1, 0)  # windows 1100, 1000, 0110, 0000
  cycles = {m: Engine(m, m, group_size=4, width=4, window=2).group_cycles(1, lane_sum, bitlet_sum)
            for m in estimator.MODELS}
  # SPEC 5: pragmatic 2, mortar 2, bitlet 3, stripes 4, fp32 1.
  assert cycles == {"fp32": 1, "stripes": 4, "pragmatic": 2, "bitlet": 3, "mortar": 2}


def test_spec_engine_example_through_a_saved_model(tmp_path):
  _export_dense(tmp_path / "m", [[1.5], [1], [0.75], [0]])
  engines = _spec5_engines()
  result = estimator.estimate(str(tmp_path / "m"), input_shape=(1, 4), engines=engines,
                              precision=1e-9)  # P this small changes no weight
  (layer,) = result.layers
  spec5 = {"fp32": 1, "stripes": 4, "pragmatic": 2, "bitlet": 3, "mortar": 2}
  assert layer.cycles == {m: {"original": c, "morphed": c} for m, c in spec5.items()}
  assert layer.macs == 4 and layer.n_pos == 1
  # Nothing changed: stripes 4 / mortar 2 = 2x, and morphing alone buys 1x.
  assert result.headline() == {"over_stripes": 2.0, "over_unmorphed": 1.0}


def test_engines_take_the_kernels_largest_group_and_not_one_more(tmp_path):
  # SPEC 5's group padded to G = 16384 lanes (the C++ kernels' largest), width
  # 4, window 2. By hand: the lanes 1100, 1000, 0110, 0000 and 16380 zeros;
  # a lane holds at most 2 ones (pragmatic, mortar 2); Bitlet's 8192 windows
  # of 2 lanes: column 0 has 2 ones and 8191 empty windows (all but lanes
  # 0-1), column 1 2 + 8190, column 2 1 + 8191, column 3 0 + 8192: 8193.
  _export_dense(tmp_path / "m", [[1.5], [1], [0.75], [0]])
  engines = [Engine(m, m, group_size=16384, width=4, window=2) for m in estimator.MODELS]
  result = estimator.estimate(str(tmp_path / "m"), input_shape=(1, 4), engines=engines,
                              precision=1e-9)
  (layer,) = result.layers
  expected = {"fp32": 1, "stripes": 4, "pragmatic": 2, "bitlet": 8193, "mortar": 2}
  assert layer.cycles == {m: {"original": c, "morphed": c} for m, c in expected.items()}
  with pytest.raises(ValueError, match=r"group_size \(lanes\) must be 1..16384, got 16385"):
    Engine("mortar", "mortar", group_size=16385)
  with pytest.raises(ValueError, match=r"group_size \(lanes\) must be 1..16384, got 16385"):
    estimator.estimate(str(tmp_path / "m"), input_shape=(1, 4), group_size=16385)


def test_spec_example_morphed_cells_and_baseline_cells(tmp_path):
  # [1.375, 1, 0.75, 0] at P = 0.3 (paper): 1.375 (1.011b) -> 1.5 (SPEC 5).
  # Aligned to the group's exponent, width 4: lanes 1.011, 1.000, 0.110, 0 hold
  # 3, 1, 2, 0 ones (pragmatic and mortar: 3); morphed 1.100: 2, 1, 2, 0 (2).
  # Bitlet's column costs come from spec_reference's loops.
  _export_dense(tmp_path / "m", [[1.375], [1], [0.75], [0]])
  engines = _spec5_engines()
  result = estimator.estimate(str(tmp_path / "m"), input_shape=(1, 4), engines=engines,
                              method="paper", precision=0.3)
  (layer,) = result.layers
  group = np.float32([1.375, 1, 0.75, 0]).reshape(4, 1)
  morphed = np.float32([1.5, 1, 0.75, 0]).reshape(4, 1)
  np.testing.assert_array_equal(mortar_tf.morph(group, "paper", precision=0.3), morphed)
  (orig_lane, orig_bitlet), = ref.engine_group_figures(group, (0,), 4, 4, 2)
  (new_lane, new_bitlet), = ref.engine_group_figures(morphed, (0,), 4, 4, 2)
  assert (orig_lane, new_lane) == (3, 2)
  expect = {"fp32": (1, 1), "stripes": (4, 4), "pragmatic": (orig_lane, new_lane),
            "bitlet": (orig_bitlet, new_bitlet), "mortar": (orig_lane, new_lane)}
  assert layer.cycles == {m: {"original": a, "morphed": b} for m, (a, b) in expect.items()}
  assert result.headline() == {"over_stripes": 4 / 2, "over_unmorphed": 3 / 2}
  # Any cell can be the baseline; the headlines do not move with it.
  other = estimator.estimate(str(tmp_path / "m"), input_shape=(1, 4), engines=engines,
                             method="paper", precision=0.3, baseline="bitlet:morphed")
  assert other.baseline == ("bitlet", "morphed")
  assert other.speedup()["pragmatic"]["original"] == new_bitlet / orig_lane
  assert other.headline() == result.headline()
  with pytest.raises(ValueError, match="'original' or 'morphed'"):
    estimator.estimate(str(tmp_path / "m"), engines=engines, baseline="bitlet:both")
  with pytest.raises(ValueError, match="not one of the engines"):
    estimator.estimate(str(tmp_path / "m"), engines=engines, baseline="eyeriss")


def test_an_all_zero_group_costs_one_cycle_on_pragmatic_and_mortar(tmp_path):
  _export_dense(tmp_path / "m", [[0, 1.5], [0, 1], [0, 0.75], [0, 0]])
  engines = _spec5_engines()
  (layer,) = estimator.estimate(str(tmp_path / "m"), input_shape=(1, 4), engines=engines).layers
  # Column 0 is all zeros: 1 cycle (the floor) on both; column 1 is SPEC 5's group.
  for weights in ("original", "morphed"):
    assert layer.cycles["pragmatic"][weights] == 1 + 2
    assert layer.cycles["mortar"][weights] == 1 + 2


def _weights(shape, seed):
  """Values over several binades, with zeros and a subnormal: alignment matters."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal(shape) * np.exp2(rng.integers(-6, 3, shape))
  flat = w.reshape(-1)
  flat[::7] = 0.0
  flat[3] = 1e-39
  return w.astype(np.float32)


# name, layer factory, input shape (no batch), stored reduction axes (SPEC 3)
LAYERS = [
    ("dense", lambda: keras.layers.Dense(3, name="layer"), (20,), (0,)),
    ("conv2d", lambda: keras.layers.Conv2D(2, 3, name="layer"), (6, 6, 4), (0, 1, 2)),
    ("depthwise", lambda: keras.layers.DepthwiseConv2D(3, name="layer"), (6, 6, 3), (0, 1)),
    ("conv2d_transpose", lambda: keras.layers.Conv2DTranspose(2, 3, strides=2, name="layer"),
     (4, 4, 3), (3,)),
]


def _textbook_macs(kind, kernel_shape, in_shape, out_shape):
  if kind == "dense":
    return BATCH * in_shape[0] * out_shape[-1]
  kh, kw = kernel_shape[:2]
  if kind == "conv2d":
    return BATCH * out_shape[0] * out_shape[1] * kh * kw * kernel_shape[2] * kernel_shape[3]
  if kind == "depthwise":
    return BATCH * out_shape[0] * out_shape[1] * kh * kw * kernel_shape[2] * kernel_shape[3]
  # transposed: every input pixel meets every weight
  return BATCH * in_shape[0] * in_shape[1] * kh * kw * kernel_shape[2] * kernel_shape[3]


@pytest.fixture(scope="module", params=LAYERS, ids=[p[0] for p in LAYERS])
def layer_case(request, tmp_path_factory):
  kind, make, in_shape, axes = request.param
  inputs = keras.Input(in_shape)
  layer = make()
  outputs = layer(inputs)
  model = keras.Model(inputs, outputs)
  kernel = _weights(layer.get_weights()[0].shape, seed=len(kind))
  layer.set_weights([kernel] + layer.get_weights()[1:])
  path = tmp_path_factory.mktemp(kind) / "m"
  model.export(str(path), verbose=False)
  out_shape = tuple(int(d) for d in outputs.shape[1:])
  return kind, str(path), kernel, in_shape, out_shape, axes


def test_cycles_groups_and_macs_match_independent_loops(layer_case):
  kind, path, kernel, in_shape, out_shape, axes = layer_case
  result = estimator.estimate(path, input_shape=(BATCH,) + in_shape, engines=_engines(),
                              method="fewest_ones", precision=0.2)
  (layer,) = result.layers
  assert layer.reduction_axes == axes
  # Groups and positions from the Keras shapes.
  r = int(np.prod([kernel.shape[a] for a in axes]))
  n_out = kernel.size // r
  n_groups = n_out * math.ceil(r / G)
  if kind == "conv2d_transpose":
    n_pos = BATCH * in_shape[0] * in_shape[1]
  else:
    n_pos = BATCH * int(np.prod(out_shape)) // n_out
  assert layer.n_pos == n_pos
  assert all(n == n_groups for n in layer.n_groups.values())
  assert layer.macs == _textbook_macs(kind, kernel.shape, in_shape, out_shape)
  # Per-group figures by loops, on the original and on the morphed weights.
  original = ref.engine_group_figures(kernel, axes, G, WIDTH, WINDOW)
  morphed_kernel = mortar_tf.morph(kernel, "fewest_ones", precision=0.2, backend="numpy")
  morphed = ref.engine_group_figures(morphed_kernel, axes, G, WIDTH, WINDOW)
  assert len(original) == n_groups

  def cycles(total):
    return -(-n_pos * total // PES)

  for weights, groups in (("original", original), ("morphed", morphed)):
    assert layer.cycles["fp32"][weights] == cycles(n_groups)
    assert layer.cycles["stripes"][weights] == cycles(WIDTH * n_groups)
    lanes = cycles(sum(max(lane, 1) for lane, _ in groups))
    assert layer.cycles["pragmatic"][weights] == lanes
    assert layer.cycles["mortar"][weights] == lanes  # the pragmatic rule (SPEC 4 v3)
    assert layer.cycles["bitlet"][weights] == cycles(sum(b for _, b in groups))
  assert layer.cycles["mortar"]["morphed"] < layer.cycles["mortar"]["original"]
  for name in estimator.MODELS:
    assert list(layer.columns[name]["original"]) == ref.aligned_column_ones(kernel, axes, G,
                                                                           WIDTH)
    assert list(layer.columns[name]["morphed"]) == ref.aligned_column_ones(morphed_kernel, axes,
                                                                          G, WIDTH)
  head = result.headline()
  assert head["over_stripes"] == cycles(WIDTH * n_groups) / layer.cycles["mortar"]["morphed"]
  assert head["over_unmorphed"] == (layer.cycles["mortar"]["original"] /
                                    layer.cycles["mortar"]["morphed"])


def test_fp32_and_stripes_formulas_with_one_pe(layer_case):
  kind, path, kernel, in_shape, _, axes = layer_case
  result = estimator.estimate(path, input_shape=(BATCH,) + in_shape, engines=_engines(1))
  (layer,) = result.layers
  r = int(np.prod([kernel.shape[a] for a in axes]))
  fp32 = layer.n_pos * (kernel.size // r) * math.ceil(r / G)
  assert layer.cycles["fp32"] == {"original": fp32, "morphed": fp32}
  assert layer.cycles["stripes"] == {"original": WIDTH * fp32, "morphed": WIDTH * fp32}


def test_speedups_iso_area_time_and_energy(layer_case):
  _, path, _, in_shape, _, _ = layer_case
  engines = [Engine("bitlet", "bitlet", area_mm2=0.05, frequency_hz=1e9),
             Engine("mortar", "mortar", power_w=0.06858, area_mm2=0.031, frequency_hz=1e9),
             Engine("fp32", "fp32")]
  result = estimator.estimate(path, input_shape=(BATCH,) + in_shape, engines=engines)
  assert result.baseline == ("bitlet", "original")  # no stripes: the first engine
  total = result.total_cycles()
  speed = result.speedup()
  for w in ("original", "morphed"):
    assert speed["mortar"][w] == total["bitlet"]["original"] / total["mortar"][w]
    assert result.iso_area_speedup()["mortar"][w] == pytest.approx(speed["mortar"][w] * 0.05 /
                                                                   0.031)
    assert result.iso_area_speedup()["fp32"][w] is None  # no area: unknown, not invented
    assert result.seconds()["mortar"][w] == total["mortar"][w] / 1e9
    assert result.joules()["mortar"][w] == pytest.approx(0.06858 * total["mortar"][w] / 1e9)
    assert result.joules()["bitlet"][w] is None and result.seconds()["fp32"][w] is None
  # No stripes engine: that headline is unknown, not computed against another.
  assert result.headline()["over_stripes"] is None
  assert result.headline()["over_unmorphed"] == total["mortar"]["original"] / total["mortar"]["morphed"]
  assert "unknown (no engine of that model)" in result.table()


def test_reports_csv_json_plots(layer_case, tmp_path):
  _, path, _, in_shape, _, _ = layer_case
  result = estimator.estimate(path, input_shape=(BATCH,) + in_shape)
  result.write_csv(str(tmp_path / "l.csv"))
  header = (tmp_path / "l.csv").read_text().splitlines()[0].split(",")
  assert header[:3] == ["LayerID", "Layer name", "Op"] and "MACs" in header
  assert "Total Cycles mortar original" in header and "Total Cycles mortar morphed" in header
  assert "Speedup mortar over stripes" in header
  result.write_json(str(tmp_path / "e.json"))
  data = json.loads((tmp_path / "e.json").read_text())
  assert data["total"]["cycles"] == result.total_cycles()
  assert data["headline"] == result.headline()
  assert data["baseline"] == {"engine": "stripes", "weights": "original"}
  for png in plots.write_plots(result, str(tmp_path / "plots")):
    with open(png, "rb") as f:
      head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n"
  assert "total" in result.table()


def test_plots_show_engines_with_the_same_cycles_as_one_bar(layer_case):
  """SPEC 4: `mortar` counts cycles by the pragmatic rule, so at one geometry
  the two engines' bars are duplicates: one bar, labelled with both names.
  With more PEs they differ and keep a bar each."""
  _, path, _, in_shape, _, _ = layer_case
  result = estimator.estimate(path, input_shape=(BATCH,) + in_shape)
  groups = plots._engine_groups(result)  # pylint: disable=protected-access
  assert ["pragmatic", "mortar"] in groups
  assert sorted(n for g in groups for n in g) == sorted(e.name for e in result.engines)
  for a in result.engines:  # a shared bar exactly where every layer's cycles are equal
    for b in result.engines:
      same = all(l.cycles[a.name] == l.cycles[b.name] for l in result.mapped)
      together = any(a.name in g and b.name in g for g in groups)
      assert same == together, (a.name, b.name)
  labels = [label for label, _, _ in plots._engine_series(result, lambda *_: 1)]  # pylint: disable=protected-access
  assert "pragmatic = mortar original" in labels and "pragmatic = mortar morphed" in labels
  assert not any(label.startswith("mortar ") for label in labels)
  wide = estimator.estimate(path, input_shape=(BATCH,) + in_shape, engines=[
      Engine("stripes", "stripes"),
      Engine("pragmatic", "pragmatic", num_pes=4),
      Engine("mortar", "mortar")])
  assert plots._engine_groups(wide) == [["stripes"], ["pragmatic"], ["mortar"]]  # pylint: disable=protected-access


def test_the_plots_totals_show_iso_area_only_where_it_differs(layer_case):
  _, path, _, in_shape, _, _ = layer_case
  result = estimator.estimate(path, input_shape=(BATCH,) + in_shape)
  head = result.headline()
  text = plots._totals_text(result)  # pylint: disable=protected-access
  # Over mortar unmorphed the areas are the same engine's: iso-area is the plain figure.
  assert f"over mortar (original): {head['over_unmorphed']:.2f}x" in text
  assert "iso-area" not in text
  sized = estimator.estimate(path, input_shape=(BATCH,) + in_shape, engines=[
      Engine("stripes", "stripes", area_mm2=0.05),
      Engine("mortar", "mortar", area_mm2=0.031)])
  plain = sized.headline()["over_stripes"]
  assert (f"over stripes (original): {plain:.2f}x, iso-area {plain * 0.05 / 0.031:.2f}x"
          in plots._totals_text(sized))  # pylint: disable=protected-access


class _Unsupported(tf.Module):

  def __init__(self):
    super().__init__()
    self.w = tf.Variable(tf.ones([4, 3]), name="w")

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
  def __call__(self, x):
    gram = tf.matmul(x, x, transpose_b=True)  # no weight
    sliced = tf.matmul(x, self.w[:, :2])  # weight made by StridedSlice
    return tf.matmul(x, self.w), gram, sliced


def test_layers_it_cannot_map_are_listed_with_the_reason_and_the_coverage(tmp_path):
  module = _Unsupported()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  result = estimator.estimate(str(tmp_path / "m"), input_shape=(2, 4))
  assert len(result.layers) == 3
  assert len(result.mapped) == 1 and result.mapped[0].weight == "w"
  gram, sliced = sorted(result.unmapped, key=lambda layer: layer.weight_op)
  # x x^T multiplies two activations: not a weight op; x w[:, :2] reads a weight
  # the reader cannot trace (a StridedSlice): a weight op the estimate misses.
  assert not gram.weight_op and gram.unmapped == "multiplies two activations (no stored weight)"
  assert sliced.weight_op and "StridedSlice" in sliced.unmapped
  # By hand, x is [2, 4]: x w has 2x3 outputs of 4 MACs each (24), x w[:, :2]
  # 2x2 outputs of 4 (16); x x^T (2x2x4) is not counted.
  coverage = result.coverage()
  assert (coverage.estimated_macs, coverage.macs) == (24, 40)
  assert (coverage.estimated_ops, coverage.ops, coverage.activation_ops) == (1, 2, 1)
  assert coverage.basis == "MACs" and coverage.fraction == 24 / 40 and not coverage.complete
  assert coverage.weights is None  # the sliced weight is not a stored tensor
  assert (gram.shape_macs, sliced.shape_macs) == (16, 16)
  text = result.table()
  assert "Coverage: 60.0% of the weight MACs (24 of 40; 1 of 2 weight ops estimated)" in text
  assert f"Not estimated: #{sliced.index} " in text
  assert f"Not a weight op (not counted): #{gram.index} " in text


@pytest.mark.parametrize("kwargs,message", [
    (dict(group_size=0), "group_size .* must be 1..16384"),
    (dict(group_size=16385), r"group_size \(lanes\) must be 1..16384, got 16385"),
    (dict(power_w=-1.0), "power_w must be >= 0"),
    (dict(width=65), "width must be 1..64"),
    (dict(num_pes=0), "num_pes must be >= 1"),
    (dict(frequency_hz=0.0), "frequency_hz must be > 0"),
    (dict(area_mm2=float("nan")), "area_mm2 must be a finite number"),
    (dict(model="tpu"), "unknown model 'tpu'"),
])
def test_bad_engine_config(kwargs, message):
  args = dict(name="e", model="bitlet")
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    Engine(**args)


def test_engine_configs_from_json(tmp_path):
  good = tmp_path / "good.json"
  good.write_text(json.dumps({"engines": [
      {"name": "mine", "model": "mortar", "group_size": 32, "power_w": 0.05,
       "sources": {"power_w": "my synthesis run"}}]}))
  (engine,) = estimator.load_engines(str(good))
  assert engine.group_size == 32 and engine.source("power_w") == "my synthesis run"
  assert Engine.from_dict(engine.to_dict()) == engine
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps([{"name": "x", "model": "bitlet", "lanes": 4}]))
  with pytest.raises(ValueError, match=r"unknown keys \['lanes'\]"):
    estimator.load_engines(str(bad))
  bad.write_text("[{")
  with pytest.raises(ValueError, match="not valid JSON"):
    estimator.load_engines(str(bad))
  bad.write_text(json.dumps([{"name": "x", "model": "bitlet"}, {"name": "x", "model": "fp32"}]))
  with pytest.raises(ValueError, match="repeated"):
    estimator.load_engines(str(bad))


def test_defaults_carry_their_sources():
  engines = {e.name: e for e in estimator.default_engines()}
  assert set(engines) == set(estimator.MODELS)
  mortar = engines["mortar"]
  assert (mortar.power_w, mortar.area_mm2) == (0.06858, 0.031)
  assert "Mortar paper" in mortar.source("area_mm2")
  assert engines["bitlet"].area_mm2 is None and engines["bitlet"].frequency_hz is None
  assert "Bitlet-PE" in engines["bitlet"].source("group_size")
  assert (engines["bitlet"].group_size, engines["bitlet"].width,
          engines["bitlet"].window) == (64, 24, 8)


def test_macs_of_conv3d_and_einsum_dense(tmp_path):
  inputs = keras.Input((5, 5, 5, 2))
  x = keras.layers.Conv3D(3, 2, name="c3")(inputs)  # -> (4, 4, 4, 3)
  x = keras.layers.Reshape((64, 3))(x)
  outputs = keras.layers.EinsumDense("abc,cd->abd", output_shape=(64, 4), name="ed")(x)
  model = keras.Model(inputs, outputs)
  model.export(str(tmp_path / "m"), verbose=False)
  result = estimator.estimate(str(tmp_path / "m"), input_shape=(BATCH, 5, 5, 5, 2))
  by_weight = {layer.weight: layer for layer in result.mapped}
  # Textbook: outputs x kernel volume x input channels (conv); rows x in x out (dense).
  assert by_weight["c3/kernel"].macs == BATCH * 4 * 4 * 4 * 3 * (2 * 2 * 2 * 2)
  assert by_weight["ed/kernel"].macs == BATCH * 64 * 3 * 4


def test_bitx_prunes_with_the_geometry_of_each_engine(layer_case):
  # Two engines with different G and width: each one's morphed cell is bitx
  # at its own geometry, recomputed here by spec_reference's loops.
  kind, path, kernel, in_shape, _, axes = layer_case
  engines = [Engine("narrow", "mortar", group_size=4, width=12, window=2),
             Engine("wide", "pragmatic", group_size=16, width=20, window=4)]
  result = estimator.estimate(path, input_shape=(BATCH,) + in_shape, engines=engines,
                              method="bitx", columns=6)
  (layer,) = result.layers
  for engine in engines:
    pruned = mortar_tf.morph(kernel, "bitx", columns=6, group_size=engine.group_size,
                             width=engine.width, reduction_axes=axes, backend="numpy")
    groups = ref.engine_group_figures(pruned, axes, engine.group_size, engine.width,
                                      engine.window)
    expect = -(-layer.n_pos * sum(max(lane, 1) for lane, _ in groups) // engine.num_pes)
    assert layer.cycles[engine.name]["morphed"] == expect, (kind, engine.name)
    assert list(layer.columns[engine.name]["morphed"]) == ref.aligned_column_ones(
        pruned, axes, engine.group_size, engine.width)
