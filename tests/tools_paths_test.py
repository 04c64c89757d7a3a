"""Every path an installed command writes stays apart from every path it reads.

The rule (mortar_tf.files.check_apart): an output is never equal to, inside,
or (through `..`, a symlink or a hard link) the same file as an input; the
command refuses before any work with one line naming both flags, exits 1 and
leaves every input byte for byte as it was. The table below classifies every
string flag of every tool, so a path flag added later without a place in the
rule fails here.
"""

import hashlib
import json
import os
import re

import keras
import numpy as np
import pytest

import installed_tool

FILE, FOLDER, TREE = "file", "folder", "tree"

# tool: (module, {output flag: kind}, [input flags], [string flags that are not paths])
TOOLS = {
    "mortar-morph": ("morph_saved_model", {"output": TREE, "report": FILE, "archive": FILE},
                     ["input", "verify_inputs", "precision_map", "calibration"],
                     ["signature", "input_shape"]),
    "mortar-estimate": ("estimate", {"csv": FILE, "json": FILE, "plots_dir": FOLDER},
                        ["saved_model", "config", "precision_map"],
                        ["input_shape", "signature", "baseline"]),
    "mortar-analyze": ("analyze_weights", {"json": FILE}, ["model"], []),
    "mortar-sweep": ("sweep", {"out_dir": FOLDER}, ["model", "data"],
                     ["signature", "output", "x_key", "y_key"]),
    "mortar-results": ("results", {"page": FILE, "figures_dir": FOLDER, "work_dir": FOLDER,
                                   "readme": FILE},
                       ["models"], []),
}


def _string_flags(module: str) -> set:
  import mortar_tf.tools  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(mortar_tf.tools.__file__), f"{module}.py")
  with open(path, encoding="utf-8") as f:
    return set(re.findall(r'DEFINE_string\(\s*"(\w+)"', f.read()))


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_string_flag_is_classified(tool):
  module, outputs, inputs, others = TOOLS[tool]
  assert _string_flags(module) == set(outputs) | set(inputs) | set(others)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Real inputs for every tool: a SavedModel, a .keras file, data, a map, an
  engine config and a results list naming the model and the data."""
  d = tmp_path_factory.mktemp("inputs")
  keras.utils.set_random_seed(3)
  model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="fc"),
                            keras.layers.Dense(3, name="out")])
  model.save(d / "model.keras")
  model.export(str(d / "saved"), verbose=False)
  rng = np.random.default_rng(0)
  np.savez(d / "data.npz", x=rng.standard_normal((16, 6)).astype(np.float32),
           y=rng.integers(0, 3, 16))
  np.savez(d / "calib.npz", x=rng.standard_normal((16, 6)).astype(np.float32))
  (d / "map.json").write_text(json.dumps({"fc": 0.05, "out": 0.1}))
  (d / "engines.json").write_text(json.dumps([{"name": "mortar", "model": "mortar"}]))
  (d / "models.json").write_text(json.dumps([{
      "name": "m", "model": "model.keras", "data": "data.npz", "metric": "accuracy",
      "budget": 0.1}]))
  return d


def _digest(path) -> str:
  """A hash of every file's name and bytes under `path` (or of one file)."""
  h = hashlib.sha256()
  paths = [path] if os.path.isfile(path) else sorted(
      os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
  for p in paths:
    h.update(os.path.relpath(p, path).encode())
    with open(p, "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def _base(tool, d, out):
  """Arguments that make the tool run for real, writing under `out`."""
  return {
      "mortar-morph": {"input": d / "saved", "output": out / "morphed",
                       "precision_map": d / "map.json", "verify": None,
                       "verify_inputs": d / "data.npz", "report": out / "r.json",
                       "compensate": None, "calibration": d / "calib.npz"},
      "mortar-estimate": {"saved_model": d / "saved", "config": d / "engines.json",
                          "precision_map": d / "map.json", "csv": out / "l.csv",
                          "json": out / "e.json", "plots_dir": out / "plots"},
      "mortar-analyze": {"model": d / "model.keras", "json": out / "a.json"},
      "mortar-sweep": {"model": d / "model.keras", "data": d / "data.npz",
                       "out_dir": out / "sweep", "methods": "paper", "precisions": "0.1",
                       "search": "false"},
      "mortar-results": {"models": d / "models.json", "page": out / "page.md",
                         "figures_dir": out / "fig", "work_dir": out / "work",
                         "precisions": "0.1", "search": "false", "bitx": "false"},
  }[tool]


def _aliases(d, target):
  """Three spellings of a path that lands on (or inside) the input `target`:
  plain, through `..`, through a symlink to its directory."""
  link = d / "link"
  if not link.exists():
    os.symlink(d, link)
  rel = os.path.relpath(target, d)
  inside = target.is_dir()
  return [(target / "x" if inside else target),
          (d / "saved" / os.pardir / rel / ("x" if inside else "")),
          (link / rel / ("x" if inside else ""))]


# The inputs each tool reads, as (label in the error, the file in `inputs`):
# its input flags, and for mortar-results the model and data its list names.
READS = {
    "mortar-morph": [("--input", "saved"), ("--verify_inputs", "data.npz"),
                     ("--precision_map", "map.json"), ("--calibration", "calib.npz")],
    "mortar-estimate": [("--saved_model", "saved"), ("--config", "engines.json"),
                        ("--precision_map", "map.json")],
    "mortar-analyze": [("--model", "model.keras")],
    "mortar-sweep": [("--model", "model.keras"), ("--data", "data.npz")],
    "mortar-results": [("--models", "models.json"), ("--models entry m's model", "model.keras"),
                       ("--models entry m's data", "data.npz")],
}

# Each output flag of each tool against one input, rotating through the
# inputs and the three spellings, so that every flag and every input is hit.
CASES = []
for _tool, (_, _outputs, _, _) in sorted(TOOLS.items()):
  _n = max(len(_outputs), len(READS[_tool]))
  for _i in range(_n):
    CASES.append((_tool, list(_outputs)[_i % len(_outputs)], READS[_tool][_i % len(READS[_tool])],
                  _i % 3))


def test_every_input_flag_is_read_in_a_case():
  for tool, (_, _, flags_in, _) in TOOLS.items():
    assert {f"--{f}" for f in flags_in} <= {label for label, _ in READS[tool]}


@pytest.mark.parametrize("tool,out_flag,read,spelling", CASES)
def test_an_output_aliasing_an_input_is_refused_before_any_work(inputs, tmp_path, tool,
                                                                  out_flag, read, spelling):
  label, name = read
  args = _base(tool, inputs, tmp_path)
  path = _aliases(inputs, inputs / name)[spelling]
  args[out_flag] = path
  before = {p: _digest(str(inputs / p)) for p in os.listdir(inputs) if p != "link"}
  argv = [f"--{k}" if v is None else f"--{k}={v}" for k, v in args.items()]
  result = installed_tool.run(tool, *argv)
  errors = [line for line in result.stderr.splitlines() if "error:" in line]
  assert result.returncode == 1, (argv, result.stdout, result.stderr)
  assert len(errors) == 1, result.stderr
  assert f"--{out_flag}" in errors[0] and label in errors[0], errors[0]
  assert before == {p: _digest(str(inputs / p)) for p in before}
  assert not os.listdir(tmp_path), os.listdir(tmp_path)  # nothing written, nothing made


def test_a_results_output_inside_a_listed_savedmodel_is_refused(inputs, tmp_path):
  listed = tmp_path / "list"
  listed.mkdir()
  (listed / "models.json").write_text(json.dumps([{
      "name": "saved", "model": str(inputs / "saved"), "data": str(inputs / "data.npz"),
      "metric": "agreement", "budget": 0.1}]))
  before = _digest(str(inputs / "saved"))
  result = installed_tool.run("mortar-results", f"--models={listed / 'models.json'}",
                              f"--work_dir={inputs / 'saved' / 'variables'}",
                              f"--page={tmp_path / 'p.md'}", "--precisions=0.1",
                              "--search=false", "--bitx=false")
  assert result.returncode == 1
  assert "--work_dir" in result.stderr and "--models entry saved's model" in result.stderr, result.stderr
  assert _digest(str(inputs / "saved")) == before
  assert sorted(os.listdir(tmp_path)) == ["list"]


def test_mortar_morphs_lock_file_is_an_output_too(inputs, tmp_path):
  """mortar-morph holds ".<output>.mortar-lock" beside --output while it runs."""
  lock = tmp_path / ".o.mortar-lock"
  lock.write_text('{"fc": 0.1}')
  result = installed_tool.run("mortar-morph", f"--input={inputs / 'saved'}",
                              f"--output={tmp_path / 'o'}", f"--precision_map={lock}")
  assert result.returncode == 1
  assert "--output's lock file" in result.stderr and "--precision_map" in result.stderr
  assert lock.read_text() == '{"fc": 0.1}'
  assert sorted(os.listdir(tmp_path)) == [".o.mortar-lock"]
