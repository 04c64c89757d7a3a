"""The results job (`mortar-results`, mortar_tf.explore.evaluation/results_page).

The smoke run: a small CNN trained here on real MNIST digits (a Keras file,
scored by accuracy on labels) and its SavedModel export (scored by agreement),
with a tiny grid. Its numbers are checked against independent computations:
SPEC's plain-loop morph and a bit count of our own, BitX's column bracket
against SPEC's BitX loop, the page's BitX hardware figure against the
estimator run with a stripes engine of that width.
"""

import gzip
import io
import json
import os
import pickle
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import installed_tool
import tf_modules
import spec_reference
from mortar_tf import estimator
from mortar_tf import keras as mortar_keras
from mortar_tf.estimator import engines as engines_lib
from mortar_tf.explore import evaluation
from mortar_tf.explore import results_page

MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, ".cache", "data",
                     "mnist.pkl.gz")
GRID = ["--precisions=0.01,0.1", "--search_precisions=0.05,0.3", "--max_evaluations=4"]


def _run(*args):
  return installed_tool.run("mortar-results", *args)


def _cnn():
  keras.utils.set_random_seed(1)
  return keras.Sequential([
      keras.Input((28, 28, 1)),
      keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
      keras.layers.MaxPooling2D(3),
      keras.layers.Flatten(),
      keras.layers.Dense(24, activation="relu", name="fc1"),
      keras.layers.Dense(10, name="fc2")])


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  """Trains the CNN, writes the list, runs the tool once; returns its paths."""
  d = tmp_path_factory.mktemp("results")
  with gzip.open(MNIST) as f:
    (x_train, y_train), _, (x_test, y_test) = pickle.load(f, encoding="latin1")
  model = _cnn()
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x_train[:3000].reshape(-1, 28, 28, 1), y_train[:3000].astype(np.int64), epochs=1,
            batch_size=64, verbose=0)
  model.save(d / "cnn.keras")
  model.export(str(d / "cnn_saved"), verbose=False)
  np.savez(d / "test.npz", x=x_test[:400].reshape(-1, 28, 28, 1).astype(np.float32),
           y=y_test[:400].astype(np.int64))
  models = [{"name": "cnn", "model": "cnn.keras", "data": "test.npz", "metric": "accuracy",
             "budget": 0.02, "title": "MNIST CNN", "weights": "trained in the test",
             "data_source": "400 MNIST test digits"},
            {"name": "cnn_saved", "model": "cnn_saved", "data": "test.npz",
             "metric": "agreement", "budget": 0.02, "title": "its SavedModel"}]
  (d / "models.json").write_text(json.dumps({"title": "Smoke run", "intro": "Trained in the test.",
                                             "models": models}))
  args = [f"--models={d / 'models.json'}", f"--work_dir={d / 'work'}",
          f"--page={d / 'docs' / 'results.md'}", *GRID]
  result = _run(*args)
  assert result.returncode == 0, result.stderr
  return {"dir": d, "args": args, "stderr": result.stderr, "model": model,
          "x": x_test[:400].reshape(-1, 28, 28, 1).astype(np.float32),
          "y": y_test[:400].astype(np.int64)}


def _record(job, name):
  return json.loads((job["dir"] / "work" / f"{name}.json").read_text())


def _word_ones(w):
  return int(np.unpackbits(np.ascontiguousarray(w, np.float32).view(np.uint8)).sum())


def test_page_and_figures_are_written(job):
  docs = job["dir"] / "docs"
  page = (docs / "results.md").read_text()
  assert page.startswith("# Smoke run\n")  # the list's title
  for heading in ("Summary", "Design space", "BitX at Mortar's sparsity",
                  "Per-layer search against the best global P", "Speedups (modelled, SPEC 4)",
                  "Time"):
    assert f"## {heading}" in page
  for png in ("bit_density.png", "columns.png", "pareto.png"):
    assert (docs / "results" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"](results/{png})" in page
  assert "ETA" in job["stderr"] and "[1/2 cnn]" in job["stderr"]
  assert "## Models and data\n\nTrained in the test.\n" in page
  assert not [p for p in docs.rglob("*") if ".tmp" in p.name]


def test_design_space_matches_spec_loops_and_an_own_bit_count(job):
  """paper P=0.1: accuracy of the model with every kernel morphed by SPEC's
  loop, and the word-domain ratio by unpackbits, against the record and the page."""
  record = _record(job, "cnn")
  point = next(p for p in record["design_space"]["paper"] if p["settings"]["precision"] == 0.1)
  model = keras.models.clone_model(job["model"])
  model.set_weights(job["model"].get_weights())
  before = after = 0
  for layer in model.layers:
    if not layer.weights:
      continue
    kernel, bias = layer.get_weights()
    morphed = np.vectorize(lambda v: spec_reference.paper(np.float32(v), 0.1),
                           otypes=[np.float32])(kernel)
    before, after = before + _word_ones(kernel), after + _word_ones(morphed)
    layer.set_weights([morphed, bias])
  accuracy = float(np.mean(np.argmax(model.predict(job["x"], verbose=0), -1) == job["y"]))
  assert point["metric"] == accuracy
  assert point["ratio"]["word"] == pytest.approx(before / after, rel=1e-12)
  page = (job["dir"] / "docs" / "results.md").read_text()
  assert f"| 0.1 | {100 * accuracy:.2f}%" in page
  assert f"{before / after:.2f}x" in page


def test_a_saved_model_gets_the_same_bits_as_its_keras_source(job):
  keras_record, saved_record = _record(job, "cnn"), _record(job, "cnn_saved")
  assert saved_record["metric"]["original"] == 1.0  # agreement with itself
  for method in ("paper", "fewest_ones"):
    for a, b in zip(keras_record["design_space"][method], saved_record["design_space"][method]):
      assert a["ratio"] == b["ratio"] and a["speedup"] == b["speedup"]
  for key in ("original", "paper", "fewest_ones"):  # the searches score other metrics
    assert keras_record["columns"][key] == saved_record["columns"][key]


def test_the_search_row_says_what_the_search_found(job):
  page = (job["dir"] / "docs" / "results.md").read_text()
  search = page[page.index("## Per-layer search"):page.index("## Speedups")]
  for name in ("cnn", "cnn_saved"):
    found = _record(job, name)["search"]
    kind = ("nothing within budget" if not found["precisions"] else
            "global P" if found["chose_global"] else "per kernel")
    assert f"| **{name}** | " in search
    row = next(line for line in search.splitlines() if line.startswith(f"| **{name}** |"))
    assert row.split(" | ")[2] == kind


def test_bitx_columns_bracket_mortars_sparsity(job):
  record = _record(job, "cnn")
  target = record["bitx"]["target"]["aligned"]
  low, high = record["bitx"]["points"]
  assert high["settings"]["columns"] == low["settings"]["columns"] + 1
  assert low["ratio"]["aligned"] >= target > high["ratio"]["aligned"]


def test_bitx_bracket_is_the_ratio_of_spec_bitx():
  rng = np.random.default_rng(5)
  w = (rng.standard_normal((3, 3, 4, 5)) * 2.0 ** rng.integers(-6, 2, (3, 3, 4, 5))).astype(
      np.float32)
  w[0, 0, 0, :2] = 0.0
  axes, group = (0, 1, 2), 8
  columns = spec_reference.aligned_column_ones(w, axes, group, 24)
  total = sum(columns)
  ratios = {c: total / sum(spec_reference.aligned_column_ones(
      spec_reference.bitx(w, axes, group, c), axes, group, 24)) for c in range(1, 25)}
  for target in (1.0, 1.5, 3.0, 4.7, 9.0, 1e9):
    low, high = evaluation.bitx_bracket(columns, target)
    if ratios[1] >= target:
      assert ratios[low] >= target
    else:
      assert low == 1
    if high is not None:
      assert ratios[high] < target
    else:
      assert low == 24


def test_bitx_hardware_cycles_are_a_stripes_engine_of_that_width(tmp_path):
  model = _cnn()
  model.export(str(tmp_path / "m"), verbose=False)
  result = estimator.estimate(str(tmp_path / "m"), method="paper", precision=0.1)
  record = {"estimates": {"paper": evaluation._estimate_record(result)}}  # pylint: disable=protected-access
  for columns in (1, 5, 6, 24):
    narrow = estimator.estimate(str(tmp_path / "m"), method="paper", precision=0.1,
                                engines=[engines_lib.Engine("bitx", "stripes", width=columns)])
    assert results_page.bitx_cycles(record, columns) == narrow.total_cycles()["bitx"]["original"]


def test_second_run_keeps_records_and_redo_measures_again(job):
  work = job["dir"] / "work"
  before = {n: (work / f"{n}.json").read_bytes() for n in ("cnn", "cnn_saved")}
  again = _run(*job["args"])
  assert again.returncode == 0, again.stderr
  assert "cnn: kept its record" in again.stderr and "ETA" not in again.stderr
  assert {n: (work / f"{n}.json").read_bytes() for n in before} == before
  redo = _run(*job["args"], "--redo=cnn_saved")
  assert redo.returncode == 0, redo.stderr
  assert "[1/1 cnn_saved]" in redo.stderr
  assert (work / "cnn.json").read_bytes() == before["cnn"]
  assert (work / "cnn_saved.json").read_bytes() != before["cnn_saved"]  # its times differ


def test_other_settings_measure_again_and_the_page_names_what_is_missing(job, tmp_path):
  page = tmp_path / "page.md"
  page.write_text("the full page")
  shutil.copytree(job["dir"] / "work", tmp_path / "work")
  args = [job["args"][0], f"--work_dir={tmp_path / 'work'}", f"--page={page}",
          "--precisions=0.05,0.1", "--search_precisions=0.05,0.3", "--max_evaluations=4",
          "--nosearch", "--only=cnn"]
  refused = _run(*args)  # the page would lack cnn_saved: refused before any work
  assert refused.returncode == 1
  assert "the page would lack cnn_saved" in refused.stderr and "ETA" not in refused.stderr
  assert page.read_text() == "the full page"
  result = _run(*args, "--partial")
  assert result.returncode == 0, result.stderr
  assert "cnn: its record was made with other settings" in result.stderr
  text = page.read_text()
  assert "| 0.05 |" in text and "cnn_saved: no current record yet" in text
  assert "## Per-layer search" in text


def test_a_model_that_fails_is_listed_and_the_others_are_kept(job, tmp_path):
  np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 5), np.float32), y=np.zeros(4, np.int64))
  models = [{"name": "cnn", "model": str(job["dir"] / "cnn.keras"),
             "data": str(job["dir"] / "test.npz"), "metric": "accuracy", "budget": 0.02},
            {"name": "broken", "model": str(job["dir"] / "cnn.keras"),
             "data": str(tmp_path / "wrong.npz"), "metric": "accuracy", "budget": 0.02}]
  (tmp_path / "models.json").write_text(json.dumps(models))
  page = tmp_path / "page.md"
  result = _run(f"--models={tmp_path / 'models.json'}", f"--work_dir={tmp_path / 'work'}",
                f"--page={page}", *GRID)
  assert result.returncode == 1
  assert "broken: failed:" in result.stderr
  assert "**Not evaluated:** broken:" in page.read_text()
  assert page.read_text().startswith("# Mortar evaluation of 1 model\n")  # a list without title
  assert (tmp_path / "work" / "cnn.json").exists()
  assert not (tmp_path / "work" / "broken.json").exists()


@pytest.mark.parametrize("change,message", [
    ({"metric": "top5"}, "unknown metric 'top5'"),
    ({"budget": -1}, "budget must be a number >= 0"),
    ({"budget": True}, "budget must be a number >= 0"),
    ({"model": "nowhere.keras"}, "no such model file or directory"),
    ({"data": "nowhere.npz"}, "no such data file"),
    ({"name": "a b"}, "must be letters, digits"),
    ({"colour": "red"}, "unknown fields ['colour']"),
    ({"metric": None, "budget": None}, "missing fields ['budget', 'metric']"),
    ({"budget": None, "psnr_floor": 40}, "psnr_floor is for the psnr metric, not 'accuracy'"),
    ({"metric": "psnr", "psnr_floor": 40}, "give budget or psnr_floor, not both"),
    ({"metric": "psnr", "budget": None, "psnr_floor": 301},
     "psnr_floor must be a number of dB from 0 to 300, got 301"),
    ({"metric": "psnr", "budget": None, "psnr_floor": "40"},
     "psnr_floor must be a number of dB from 0 to 300, got '40'"),
])
def test_a_bad_model_list_is_one_clear_error(job, tmp_path, change, message):
  entry = {"name": "cnn", "model": str(job["dir"] / "cnn.keras"),
           "data": str(job["dir"] / "test.npz"), "metric": "accuracy", "budget": 0.02}
  entry.update(change)
  entry = {k: v for k, v in entry.items() if v is not None}
  (tmp_path / "models.json").write_text(json.dumps([entry]))
  with pytest.raises(ValueError, match=None) as raised:
    evaluation.load_entries(str(tmp_path / "models.json"))
  assert message in str(raised.value)


def test_a_psnr_budget_can_be_given_as_its_floor(job, tmp_path):
  entry = {"name": "m", "model": str(job["dir"] / "cnn.keras"),
           "data": str(job["dir"] / "test.npz"), "metric": "psnr"}
  (tmp_path / "floor.json").write_text(json.dumps([dict(entry, psnr_floor=38.5)]))
  (tmp_path / "drop.json").write_text(json.dumps([dict(entry, budget=261.5)]))
  (floor,) = evaluation.load_entries(str(tmp_path / "floor.json"))
  (drop,) = evaluation.load_entries(str(tmp_path / "drop.json"))
  assert floor.budget == 261.5 == 300 - 38.5  # the drop from the 300 dB of identical outputs
  assert floor == drop  # the same entry: records made from either stay current


def test_the_page_goes_into_the_work_dir_by_default(job, tmp_path):
  """Without --page the page is WORK_DIR/results.md (figures beside it in
  results/), never docs/results.md of the current directory."""
  shutil.copytree(job["dir"] / "work", tmp_path / "work")
  result = installed_tool.run("mortar-results", job["args"][0], f"--work_dir={tmp_path / 'work'}",
                              "--page_only", *GRID, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "work" / "results.md").read_text().startswith("# Smoke run\n")
  for png in results_page.FIGURES:
    assert (tmp_path / "work" / "results" / png).is_file()
  assert not (tmp_path / "docs").exists()


def test_the_tool_refuses_bad_input_before_any_work(job, tmp_path):
  (tmp_path / "twice.json").write_text(json.dumps([
      {"name": "m", "model": str(job["dir"] / "cnn.keras"), "data": str(job["dir"] / "test.npz"),
       "metric": "accuracy", "budget": 0.01}] * 2))
  (tmp_path / "not.json").write_text("[{")
  (tmp_path / "psnr.json").write_text(json.dumps([
      {"name": "m", "model": str(job["dir"] / "cnn.keras"), "data": str(job["dir"] / "test.npz"),
       "metric": "psnr", "budget": 40}]))
  page = tmp_path / "page.md"
  for args, message in (
      ([f"--models={tmp_path / 'twice.json'}"], "model names used twice"),
      ([f"--models={tmp_path / 'not.json'}"], "is not JSON"),
      ([f"--models={tmp_path / 'missing.json'}"], "cannot read the model list"),
      ([f"--models={job['dir'] / 'models.json'}", "--reference=0.2"],
       "the reference P 0.2 must be one of the grid's"),
      ([f"--models={job['dir'] / 'models.json'}", "--only=nothing"],
       "--only names models not in the list: nothing"),
      ([f"--models={job['dir'] / 'models.json'}", "--redo=nothing"], "cannot redo nothing"),
      ([f"--models={tmp_path / 'psnr.json'}", "--page_only", "--partial"],
       "40 keeps PSNR >= 260 dB (for PSNR >= 40 dB write \"budget\": 260 or "
       "\"psnr_floor\": 40)"),
      ([f"--models={job['dir'] / 'models.json'}", "--page_only"],
       "the page would lack cnn, cnn_saved")):
    result = _run(*args, f"--page={page}", f"--work_dir={tmp_path / 'work'}")
    assert result.returncode == 1, args
    assert message in result.stderr, (args, result.stderr)
    assert not page.exists()


def test_progress_eta_counts_the_models_still_to_do():
  stream = io.StringIO()
  progress = evaluation.Progress(["a", "b", "c"], previous={"c": 100.0}, stream=stream,
                                 interval=0.0)
  progress.begin("a", 10)
  progress.model_start -= 20.0  # 20 s into model a, half of it done
  progress.step(5, "design space: paper P=0.1")
  line = stream.getvalue().strip()
  # a: 20 s more; b: no earlier time, so a's projection (40 s); c: its last time (100 s).
  assert line.startswith("[1/3 a] design space: paper P=0.1 | 20s on this model")
  assert line.endswith("ETA 20s model, 2m40s all")


def test_the_readme_block_gets_the_pages_summary(job, tmp_path):
  """--readme fills the marked block with the page's summary bullets and
  leaves every other line of the file as it was; a file without the block is
  refused before any work."""
  readme = tmp_path / "README.md"
  readme.write_text("# Title\n\nBefore.\n\n<!-- results-summary: begin -->\nold line\n"
                    "<!-- results-summary: end -->\n\nAfter.\n")
  page = tmp_path / "page.md"
  result = _run(*job["args"][:2], f"--page={page}", "--page_only", *GRID, f"--readme={readme}")
  assert result.returncode == 0, result.stderr
  text = page.read_text()
  start = text.index("## Summary")
  bullets = [l for l in text[start:text.index("\n## ", start + 1)].splitlines()[1:] if l]
  assert bullets and all(l.startswith("- **") for l in bullets)
  assert readme.read_text() == ("# Title\n\nBefore.\n\n<!-- results-summary: begin -->\n" +
                                "\n".join(bullets) + "\n<!-- results-summary: end -->\n\n"
                                "After.\n")
  plain = tmp_path / "plain.md"
  plain.write_text("no block\n")
  refused = _run(*job["args"][:2], f"--page={tmp_path / 'p2.md'}", "--page_only", *GRID,
                 f"--readme={plain}")
  assert refused.returncode == 1 and "no <!-- results-summary: begin -->" in refused.stderr
  assert plain.read_text() == "no block\n" and not (tmp_path / "p2.md").exists()


# os.access says yes to root for /sys and /proc; only a file created there says no.
@pytest.mark.parametrize("flag,message", [
    ("--page=/sys/page.md", "cannot write in the page's directory '/sys': permission denied"),
    ("--figures_dir=/proc/mortar-figures",
     "cannot write in the directory '/proc' that would hold the figures directory "
     "'/proc/mortar-figures'"),
])
def test_an_output_directory_that_takes_no_file_is_refused_before_any_work(tmp_path, flag,
                                                                           message):
  _cnn().save(tmp_path / "cnn.keras")
  np.savez(tmp_path / "test.npz", x=np.zeros((4, 28, 28, 1), np.float32),
           y=np.zeros(4, np.int64))
  (tmp_path / "models.json").write_text(json.dumps([
      {"name": "cnn", "model": str(tmp_path / "cnn.keras"), "data": str(tmp_path / "test.npz"),
       "metric": "accuracy", "budget": 0.02}]))
  args = [f"--models={tmp_path / 'models.json'}", f"--work_dir={tmp_path / 'work'}", *GRID]
  if not flag.startswith("--page="):
    args.append(f"--page={tmp_path / 'page.md'}")
  result = _run(*args, flag)
  assert result.returncode == 1
  assert message in result.stderr, result.stderr
  assert not (tmp_path / "work").exists() and not (tmp_path / "page.md").exists()


def test_records_and_the_page_state_what_the_estimates_cover(job):
  # By hand, one 28x28 digit: conv 26x26x6 outputs x 3x3 taps, fc1 (8x8x6 after
  # the 3x3 pooling) x 24, fc2 24 x 10.
  macs = 26 * 26 * 6 * 9 + 8 * 8 * 6 * 24 + 24 * 10
  for name in ("cnn", "cnn_saved"):
    for method in ("paper", "fewest_ones"):
      coverage = _record(job, name)["estimates"][method]["coverage"]
      assert coverage["complete"] and (coverage["estimated_macs"], coverage["macs"]) == (
          macs, macs) == (45960, 45960)
  page = (job["dir"] / "docs" / "results.md").read_text()
  header = next(line for line in page.splitlines()
                if line.startswith("| model |") and "nothing morphed" in line)
  assert header.rstrip(" |").endswith("coverage (weight MACs estimated)")
  rows = [line for line in page.splitlines() if line.startswith("| **cnn")]
  assert rows and all(line.rstrip(" |").endswith("100%") for line in rows[-2:])
  assert "cover only part" not in page and "warning" not in job["stderr"]


def test_a_partly_estimated_model_is_flagged_on_the_page_and_stderr(tmp_path):
  module = tf_modules.SlicedWeight()
  tf.saved_model.save(module, str(tmp_path / "sliced"), signatures=module.__call__)
  np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((64, 6)).astype(
      np.float32))
  (tmp_path / "models.json").write_text(json.dumps([
      {"name": "sliced", "model": str(tmp_path / "sliced"), "data": str(tmp_path / "x.npz"),
       "metric": "mse", "budget": 1.0}]))
  page = tmp_path / "page.md"
  result = _run(f"--models={tmp_path / 'models.json'}", f"--work_dir={tmp_path / 'work'}",
                f"--page={page}", "--precisions=0.1", "--nosearch", "--nobitx")
  assert result.returncode == 0, result.stderr
  # By hand, one sample: x w and x v[:, :3] each multiply 6 x 3; only x w is estimated.
  (warning,) = [line for line in result.stderr.splitlines() if "warning" in line]
  assert warning.startswith("mortar-results: warning: sliced: its estimated speedups cover "
                            "50.0% of the weight MACs (18 of 36; 1 of 2 weight ops estimated)")
  assert "StridedSlice" in warning
  text = page.read_text()
  assert "**50.0% of the weight MACs**" in text
  assert "The estimates of sliced (50.0% of the weight MACs) cover only part of the model" in text


def test_the_compensation_section_is_what_either_route_gives_on_the_samples_apart(job, tmp_path):
  """The first min(256, 400 // 4) = 100 samples calibrate, the other 300
  score (150 searched + 150 held out). The Keras record's compensated row is
  compensate_model's copy scored on those 300; the SavedModel record's is
  the converter's compensated SavedModel, its agreement with the original on
  them; both records' plain rows are the plain morph's."""
  from mortar_tf import savedmodel  # pylint: disable=import-outside-toplevel
  from mortar_tf.keras import compensate_model  # pylint: disable=import-outside-toplevel
  x, y = job["x"], job["y"]
  calibration, scored, labels = x[:100], x[100:], y[100:]
  records = {name: _record(job, name)["compensation"] for name in ("cnn", "cnn_saved")}
  for section in records.values():
    assert (section["calibration_samples"], section["scored_samples"],
            section["search_samples"], section["held_out_samples"]) == (100, 300, 150, 150)
    for key in ("search", "search_plain"):
      assert section[key]["held_out"]["samples"] == 150
    assert section["search"]["compensation"]["samples"] == 100

  def row(section, p, compensated):
    return next(q for q in section["sweep"]["points"] if q["method"] == "fewest_ones"
                and q["settings"]["precision"] == p
                and bool(q["settings"].get("compensated")) == compensated)

  copy, _ = compensate_model(job["model"], "fewest_ones", 0.1, calibration=calibration)
  accuracy = float(np.mean(np.argmax(copy.predict(scored, verbose=0), -1) == labels))
  assert row(records["cnn"], 0.1, True)["metric"] == accuracy
  plain = mortar_keras.strip_morphing(mortar_keras.morph_model(job["model"], "fewest_ones", 0.1))
  accuracy = float(np.mean(np.argmax(plain.predict(scored, verbose=0), -1) == labels))
  assert row(records["cnn"], 0.1, False)["metric"] == accuracy

  src = job["dir"] / "cnn_saved"
  dst = tmp_path / "compensated"
  savedmodel.convert(str(src), str(dst), "fewest_ones", 0.1, compensate=calibration)
  fn = tf.saved_model.load(str(dst)).signatures["serving_default"]
  original = np.argmax(job["model"].predict(scored, verbose=0), -1)
  morphed = np.argmax(next(iter(fn(tf.constant(scored)).values())).numpy(), -1)
  assert row(records["cnn_saved"], 0.1, True)["metric"] == pytest.approx(
      float(np.mean(morphed == original)), abs=1e-12)


def test_the_compensation_table_says_what_its_records_hold(job):
  page = (job["dir"] / "docs" / "results.md").read_text()
  table = page[page.index("## Error-compensated morphing"):page.index("## Speedups")]
  for name in ("cnn", "cnn_saved"):
    record = _record(job, name)
    section = record["compensation"]
    line = next(l for l in table.splitlines() if l.startswith(f"| **{name}** |"))
    cells = line.split(" | ")
    assert cells[1] == "100 / 150 + 150"
    for cell, compensated in ((cells[3], False), (cells[4], True)):
      inside = [q for q in section["sweep"]["points"] if q["method"] == "fewest_ones"
                and bool(q["settings"].get("compensated")) == compensated
                and q["drop"] <= record["metric"]["budget"] + 1e-12]
      if inside:  # the largest P of the grid within the budget, worked out here
        assert cell.startswith(f"P={max(q['settings']['precision'] for q in inside):g}: ")
      else:
        assert cell == "none of the grid"
  assert "Error-compensated morphing** (beyond the paper" in page


def test_the_formats_section_scores_each_format_and_is_added_to_older_records(job, tmp_path):
  """The run's formats rows against the record's own search, and a record
  made before the section (its formats removed) gets that section alone:
  every other part stays as it was."""
  record = _record(job, "cnn")
  rows = {r["name"]: r for r in record["formats"]["rows"]}
  assert list(rows) == ["float32", "searched", "global", "float16", "int8"]
  assert rows["float32"]["metric"] == record["metric"]["original"]
  assert rows["searched"]["metric"] == record["search"]["point"]["metric"]
  kernels = [np.asarray(w) for w in job["model"].get_weights() if w.ndim > 1]
  assert rows["float32"]["raw_bytes"] == 4 * sum(k.size for k in kernels)
  assert "## Smaller downloads: morphing beside float16 and int8 (measured)" in (
      job["dir"] / "docs" / "results.md").read_text()
  shutil.copytree(job["dir"] / "work", tmp_path / "work")
  old = json.loads(json.dumps(record))
  del old["formats"], old["seconds"]["formats"]
  old["settings"].pop("formats")
  (tmp_path / "work" / "cnn.json").write_text(json.dumps(old))
  args = [job["args"][0], f"--work_dir={tmp_path / 'work'}", f"--page={tmp_path / 'page.md'}",
          *GRID]
  result = _run(*args)
  assert result.returncode == 0, result.stderr
  assert "cnn: kept its record and measures what it lacks (formats)" in result.stderr
  assert "cnn_saved: kept its record" in result.stderr
  new = json.loads((tmp_path / "work" / "cnn.json").read_text())
  changed = {"formats", "seconds", "settings", "machine"}
  assert {k: v for k, v in new.items() if k not in changed} == {
      k: v for k, v in old.items() if k not in changed}
  assert new["formats"]["rows"] == record["formats"]["rows"]  # measured again, the same
  assert new["settings"]["formats"] is True
  assert "## Smaller downloads" in (tmp_path / "page.md").read_text()
