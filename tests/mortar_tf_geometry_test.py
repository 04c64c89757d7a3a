"""One default geometry of the aligned domain everywhere (G = 64, width 24, the
Bitlet-PE RTL's: SPEC 4), and every output with an aligned figure names it.

The defaults are found by inspecting the installed package (every function,
class and method of every module, in a fresh process under Keras 3 and under
tf_keras) and the absl flags of every installed command, so a new entry
point with a group_size is held to the same default without being listed.
"""

import importlib.metadata
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mortar_tf
from mortar_tf import bits
from mortar_tf import explore
from mortar_tf import morphing
from mortar_tf import precision_map
from mortar_tf.estimator import engines
from mortar_tf.keras import MorphWrapper
from mortar_tf.keras.compat import keras

import installed_tool
import keras_zoo
import spec_reference as ref

# SPEC 4: the Bitlet-PE RTL's defaults, 64 lanes and 24 columns (independent of the code).
G, WIDTH = 64, 24

# Every callable of the package with a group_size parameter, its defaults for
# group_size and width as JSON ("required" where it has none).
SCAN = textwrap.dedent("""
    import importlib, importlib.util, inspect, json, pkgutil
    import mortar_tf

    def default(p):
      if p is None or p.default is inspect.Parameter.empty:
        return "required"
      return p.default

    found, failed = {}, {}

    def visit(qualname, obj):
      try:
        parameters = inspect.signature(obj).parameters
      except (TypeError, ValueError):
        return
      if "group_size" in parameters:
        found[qualname] = [default(parameters["group_size"]), default(parameters.get("width"))]

    for info in pkgutil.walk_packages(mortar_tf.__path__, "mortar_tf."):
      origin = importlib.util.find_spec(info.name).origin or ""
      if not origin.endswith(".py") or info.name.startswith("mortar_tf.tools."):
        continue  # compiled kernels; the tools' flags are read apart (absl's registry is global)
      try:
        module = importlib.import_module(info.name)
      except Exception as e:  # e.g. mortar_tf.keras.tfmot under Keras 3
        failed[info.name] = str(e)
        continue
      for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
          continue
        if inspect.isfunction(obj):
          visit(f"{module.__name__}.{name}", obj)
        elif inspect.isclass(obj):
          visit(f"{module.__name__}.{name}", obj)
          for attribute, member in vars(obj).items():
            function = getattr(member, "__func__", member)
            if inspect.isfunction(function):
              visit(f"{module.__name__}.{name}.{attribute}", function)
    print(json.dumps({"found": found, "failed": failed}))
""")

# The tool's absl flags named group_size or width, with their defaults.
FLAG_SCAN = textwrap.dedent("""
    import importlib, json, sys
    from absl import flags
    importlib.import_module(sys.argv[1])
    print(json.dumps({f.name: f.default for f in flags.FLAGS.flags_by_module_dict()[sys.argv[1]]
                      if f.name in ("group_size", "width")}))
""")

# None means "not given": these resolve it as the entry says (checked below).
RESOLVED_LATER = {
    "mortar_tf.backends._ops": "no group: the op library without the group check",
    "mortar_tf.backends.morph": "MorphSpec.create",
    "mortar_tf.morphing.MorphSpec": "a method other than bitx has no group",
    "mortar_tf.morphing.MorphSpec.__init__": "a method other than bitx has no group",
    "mortar_tf.morphing.MorphSpec.create": "bits.DEFAULT_GROUP_SIZE, bits.DEFAULT_WIDTH",
    "mortar_tf.morphing.as_spec": "MorphSpec",
    "mortar_tf.precision_map.check_morphing": "MorphSpec",
    "mortar_tf.keras.apply.morph_model": "MorphSpec.create",
    "mortar_tf.keras.calibration.compensate_model": "precision_map.check_morphing",
    "mortar_tf.keras.wrapper.MorphWrapper": "MorphSpec.create",
    "mortar_tf.keras.wrapper.MorphWrapper.__init__": "MorphSpec.create",
    "mortar_tf.keras.callbacks.MortarCallback": "MorphSpec.create",
    "mortar_tf.keras.callbacks.MortarCallback.__init__": "MorphSpec.create",
    "mortar_tf.keras.tfmot.MorphQuantizer": "MorphSpec.create",
    "mortar_tf.keras.tfmot.MorphQuantizer.__init__": "MorphSpec.create",
    "mortar_tf.keras.tfmot.MorphQuantizeConfig": "MorphSpec.create",
    "mortar_tf.keras.tfmot.MorphQuantizeConfig.__init__": "MorphSpec.create",
    "mortar_tf.keras.tfmot.MorphScheme": "MorphSpec.create",
    "mortar_tf.keras.tfmot.MorphScheme.__init__": "MorphSpec.create",
    "mortar_tf.savedmodel.converter.convert": "bits.DEFAULT_GROUP_SIZE, bits.DEFAULT_WIDTH",
    "mortar_tf.estimator.estimation.estimate": "each engine keeps its own",
    "mortar_tf.estimator.engines.with_geometry": "each engine keeps its own",
}
FLAGS_RESOLVED_LATER = {"mortar_tf.tools.estimate": "each engine keeps its own"}


def _scan(legacy: bool) -> dict:
  env = dict(installed_tool.ENV, TF_USE_LEGACY_KERAS="1" if legacy else "0")
  result = subprocess.run([sys.executable, "-c", SCAN], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_one_default_is_the_engines():
  assert (bits.DEFAULT_GROUP_SIZE, bits.DEFAULT_WIDTH) == (G, WIDTH)
  assert (engines.DEFAULT_GROUP_SIZE, engines.DEFAULT_WIDTH) == (G, WIDTH)
  assert {(e.group_size, e.width) for e in engines.default_engines()} == {(G, WIDTH)}
  spec = morphing.MorphSpec.create("bitx", columns=5)
  assert (spec.group_size, spec.width) == (G, WIDTH)
  for spec in (morphing.as_spec("bitx", columns=5),
               precision_map.check_morphing("bitx", None, columns=5)):
    assert (spec.group_size, spec.width) == (G, WIDTH)


def test_every_group_size_parameter_defaults_to_the_one_default():
  keras3, legacy = _scan(legacy=False), _scan(legacy=True)
  found = {**keras3["found"], **legacy["found"]}
  never = sorted(set(keras3["failed"]) & set(legacy["failed"]))
  assert not never, {name: keras3["failed"][name] for name in never}
  assert "mortar_tf.backends.count_ones" in found and "mortar_tf.keras.tfmot.MorphScheme" in found
  wrong, unreviewed = [], []
  for name, (group_size, width) in sorted(found.items()):
    if group_size == "required":
      continue
    if group_size is None:
      if name not in RESOLVED_LATER:
        unreviewed.append(name)
      continue
    if (group_size, width) != (G, WIDTH) and not (group_size == G and width == "required"):
      wrong.append((name, group_size, width))
  assert not wrong, f"defaults other than G={G}, width {WIDTH}: {wrong}"
  assert not unreviewed, (f"group_size=None defaults nobody checked how they resolve: "
                          f"{unreviewed}")
  assert set(RESOLVED_LATER) <= set(found), sorted(set(RESOLVED_LATER) - set(found))


def test_every_installed_commands_group_size_flag_defaults_to_the_one_default():
  scripts = [e for e in importlib.metadata.distribution("mortar_tf").entry_points
             if e.group == "console_scripts"]
  assert {e.name for e in scripts} >= {"mortar-analyze", "mortar-morph", "mortar-estimate"}
  seen = {}
  for entry in scripts:
    module = entry.value.split(":")[0]
    result = subprocess.run([sys.executable, "-c", FLAG_SCAN, module], capture_output=True,
                            text=True, env=installed_tool.ENV, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    seen[entry.name] = flags = json.loads(result.stdout.strip().splitlines()[-1])
    if module in FLAGS_RESOLVED_LATER:
      assert flags == {"group_size": None, "width": None}, (entry.name, flags)
    elif flags:
      assert flags == {"group_size": G, "width": WIDTH}, (entry.name, flags)
  assert seen["mortar-analyze"] and seen["mortar-morph"], seen


def _bitx_sensitive_weights():
  """A dense kernel whose bitx result differs between G = 16 and G = 64: one
  large weight per 64 lanes sets the exponent of the whole 64-lane group."""
  rng = np.random.default_rng(3)
  w = rng.uniform(1.0, 2.0, (128, 3)).astype(np.float32)
  w[::64] = 1024.0
  return w


def test_none_resolves_to_the_one_default():
  w = _bitx_sensitive_weights()
  at_g = ref.bitx(w, (0,), G, 8)
  assert not np.array_equal(at_g.view(np.uint32), ref.bitx(w, (0,), 16, 8).view(np.uint32))
  for backend in ("numpy", "native"):
    got = mortar_tf.morph(w, "bitx", columns=8, backend=backend)
    np.testing.assert_array_equal(got.view(np.uint32), at_g.view(np.uint32))
  layer = keras.layers.Dense(3)
  layer.build((None, 128))
  wrapper = MorphWrapper(layer, method="bitx", columns=8)
  assert (wrapper.spec.group_size, wrapper.spec.width) == (G, WIDTH)
  assert mortar_tf.count_ones(w, "aligned") == sum(ref.aligned_column_ones(w, (0,), G, WIDTH))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  d = tmp_path_factory.mktemp("geometry")
  inputs = keras.Input((128,))
  outputs = keras.layers.Dense(3, use_bias=False, name="fc")(inputs)
  model = keras.Model(inputs, outputs)
  model.get_layer("fc").set_weights([_bitx_sensitive_weights()])
  model.export(str(d / "m"), verbose=False)
  return d / "m"


def test_mortar_morph_bitx_and_its_report_use_and_name_the_default(exported, tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  report = tmp_path / "r.json"
  result = installed_tool.run("mortar-morph", f"--input={exported}", f"--output={tmp_path / 'o'}",
                              "--method=bitx", "--columns=8", f"--report={report}")
  assert result.returncode == 0, result.stderr
  reader = tf.train.load_checkpoint(str(tmp_path / "o" / "variables" / "variables"))
  kernels = [k for k, shape in reader.get_variable_to_shape_map().items() if shape == [128, 3]]
  assert kernels  # the kernel (and the twin copy Keras 3 exports keep)
  expected = ref.bitx(_bitx_sensitive_weights(), (0,), G, 8)
  for key in kernels:
    np.testing.assert_array_equal(reader.get_tensor(key).view(np.uint32),
                                  expected.view(np.uint32))
  for data in (json.loads(report.read_text()),
               json.loads((tmp_path / "o" / "assets.extra" / "mortar.json").read_text())):
    assert (data["group_size"], data["width"]) == (G, WIDTH)
  assert f"aligned x (G={G}, width {WIDTH})" in result.stdout


def test_the_library_resolves_none_to_the_default(exported, tmp_path):
  from mortar_tf import estimator, savedmodel  # pylint: disable=import-outside-toplevel
  report = savedmodel.convert(str(exported), str(tmp_path / "o"), "bitx", columns=8)
  assert (report.group_size, report.width) == (G, WIDTH)
  (variable,) = [v for v in report.morphed if not v.twin_of]
  expected = ref.bitx(_bitx_sensitive_weights(), (0,), G, 8)
  assert variable.ones_after["aligned"] == sum(ref.aligned_column_ones(expected, (0,), G, WIDTH))
  assert f"aligned x (G={G}, width {WIDTH})" in report.summary()
  result = estimator.estimate(str(exported), method="bitx", columns=8)
  assert {e.geometry[:2] for e in result.engines} == {(G, WIDTH)}


def _fer_kernels():
  """FER's kernels by Keras' own names, with their reduction axes by SPEC 3
  (conv and pointwise: all but the last axis; depthwise: the spatial axes)."""
  model = keras_zoo.fer()
  out = []
  for layer in model.layers:
    for w in layer.weights:
      if keras_zoo.is_kernel(w):
        value = np.asarray(w.numpy())
        axes = ((0, 1) if keras_zoo.short_name(w) == "depthwise_kernel"
                else tuple(range(value.ndim - 1)))
        out.append((value, axes))
  return model, out


def _aligned_totals(kernels, spec, group_size):
  before = after = 0
  for value, axes in kernels:
    morphed = morphing.morph_numpy(value, spec)
    before += bits.count_ones(value, "aligned", reduction_axes=axes, group_size=group_size,
                              width=WIDTH)
    after += bits.count_ones(morphed, "aligned", reduction_axes=axes, group_size=group_size,
                             width=WIDTH)
  return before, after


def test_mortar_analyze_on_fer_gives_the_sweeps_aligned_ratio(tmp_path):
  out = tmp_path / "fer.json"
  result = installed_tool.run("mortar-analyze", f"--model={keras_zoo.FER_PATH}",
                              "--methods=paper", "--precisions=0.1", "--per_layer=false",
                              f"--json={out}")
  assert result.returncode == 0, result.stderr
  data = json.loads(out.read_text())
  assert (data["group_size"], data["width"]) == (G, WIDTH)
  (paper,) = data["reports"]
  model, kernels = _fer_kernels()
  assert len(kernels) == len(paper["tensors"]) == 23
  # The numpy reference at G = 64 given explicitly, on kernels found independently.
  before, after = _aligned_totals(kernels, morphing.MorphSpec.create("paper", 0.1), G)
  assert (paper["total"]["ones_before"]["aligned"],
          paper["total"]["ones_after"]["aligned"]) == (before, after)
  # The sweep engine, at its own defaults, measures the same ratio.
  swept = explore.sweep(model, lambda m: 0.0, {"paper": [0.1]}, estimate_speedup=False)
  assert (swept.group_size, swept.width) == (G, WIDTH)
  assert swept.points[0].ratio["aligned"] == before / after == paper["total"]["ratio"]["aligned"]
  # G = 16 would have given another figure (the one the two defaults disagreed on).
  before16, after16 = _aligned_totals(kernels, morphing.MorphSpec.create("paper", 0.1), 16)
  assert f"{before16 / after16:.3f}" != f"{before / after:.3f}"
  # What it prints names the geometry next to the figure.
  assert f"aligned domain G={G}, width {WIDTH}" in result.stdout
  header, _, row = result.stdout.split("Sweep:")[1].strip().splitlines()[1:4]
  assert f"aligned x (G={G}, width {WIDTH})" in header
  assert f"{before / after:.3f}x" in row.split()


def test_sweep_and_search_results_name_their_geometry():
  model = keras.Sequential([keras.Input((128,)), keras.layers.Dense(3, name="fc")])
  model.get_layer("fc").set_weights([_bitx_sensitive_weights(), np.zeros(3, np.float32)])
  swept = explore.sweep(model, lambda m: 0.0, {"paper": [0.1]}, estimate_speedup=False,
                        group_size=16, width=20)
  assert "aligned x (G=16, width 20)" in swept.table().splitlines()[0]
  found = explore.search_precisions(model, lambda m: 0.0, 0.0, precisions=[0.1],
                                    estimate_speedup=False, max_evaluations=4)
  assert f"aligned at G={G}, width {WIDTH}" in found.summary().splitlines()[0]
  assert (found.to_dict()["group_size"], found.to_dict()["width"]) == (G, WIDTH)
  w = model.get_layer("fc").kernel.numpy()
  morphed = mortar_tf.morph(w, "fewest_ones", 0.1, backend="numpy")
  expected = (sum(ref.aligned_column_ones(w, (0,), G, WIDTH)) /
              sum(ref.aligned_column_ones(morphed, (0,), G, WIDTH)))
  assert found.point.ratio["aligned"] == pytest.approx(expected, rel=1e-12)
