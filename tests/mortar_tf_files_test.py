"""The path rule every tool applies before any work (files.check_apart).

Each case builds a real directory layout and names one output and one input
the way a user might (plainly, through `..`, a symlink, a hard link); the
expected verdict comes from the layout itself: does writing the output
touch a byte the tool reads?
"""

import os

import pytest

from mortar_tf import files
from mortar_tf import table

FILE, FOLDER, TREE = files.FILE, files.FOLDER, files.TREE


@pytest.fixture
def layout(tmp_path, monkeypatch):
  """in/ (a SavedModel-like directory), data.npz, out/, a symlink to in/,
  a symlink to data.npz, a hard link to data.npz."""
  (tmp_path / "in" / "variables").mkdir(parents=True)
  (tmp_path / "in" / "saved_model.pb").write_bytes(b"pb")
  (tmp_path / "data.npz").write_bytes(b"npz")
  (tmp_path / "out").mkdir()
  os.symlink(tmp_path / "in", tmp_path / "in_link")
  os.symlink(tmp_path / "data.npz", tmp_path / "data_link.npz")
  os.link(tmp_path / "data.npz", tmp_path / "data_hard.npz")
  monkeypatch.chdir(tmp_path)  # undone after the test
  return tmp_path


INPUTS = [("--input", "in"), ("--data", "data.npz")]

# (output path, kind, the input it damages or None)
CASES = [
    ("in/saved_model.pb", FILE, "--input"),           # the defect that destroyed a model
    ("in/report.json", FILE, "--input"),               # a new file inside the input
    ("in/variables/x", FILE, "--input"),
    ("in", TREE, "--input"),                           # the input itself
    ("in/sub", TREE, "--input"),
    ("in/plots", FOLDER, "--input"),
    ("out/../in/saved_model.pb", FILE, "--input"),     # through ..
    ("./in/./variables/../x.json", FILE, "--input"),
    ("in_link/x.json", FILE, "--input"),               # through a symlinked directory
    ("in_link", TREE, "--input"),
    ("data.npz", FILE, "--data"),
    ("out/../data.npz", FILE, "--data"),
    ("data_link.npz", FILE, "--data"),                 # a symlink to the input
    ("data_hard.npz", FILE, "--data"),                 # a hard link to the input
    (".", TREE, "--input"),                            # written whole, it holds the inputs
    ("out", FOLDER, None),                             # beside the inputs: fine
    ("out/report.json", FILE, None),
    ("in.json", FILE, None),                           # a name that starts like an input
    ("in_morphed", TREE, None),
    ("data.npz.json", FILE, None),
    (".", FOLDER, None),                               # named files into the inputs' parent
]


@pytest.mark.parametrize("output,kind,damaged", CASES)
def test_an_output_never_touches_an_input(layout, output, kind, damaged):
  outputs = [("--out", output, kind)]
  if damaged is None:
    files.check_apart(outputs, INPUTS)
    return
  with pytest.raises(files.OutputError) as error:
    files.check_apart(outputs, INPUTS)
  message = str(error.value)
  assert "\n" not in message
  assert f"--out {output!r}" in message
  assert f"{damaged} {dict(INPUTS)[damaged]!r}" in message


def test_outputs_never_overwrite_each_other(layout):
  with pytest.raises(files.OutputError, match="'r.json' and --json 'out/../r.json' are the "
                     "same path"):
    files.check_apart([("--csv", "r.json", FILE), ("--json", "out/../r.json", FILE)])
  with pytest.raises(files.OutputError, match="--report 'out/m/saved_model.pb' lies inside "
                     "--output 'out/m', which is written whole"):
    files.check_apart([("--output", "out/m", TREE), ("--report", "out/m/saved_model.pb", FILE)])
  with pytest.raises(files.OutputError, match="lies inside --output"):  # either order
    files.check_apart([("--report", "out/m/r.json", FILE), ("--output", "out/m", TREE)])
  with pytest.raises(files.OutputError, match="same path"):
    files.check_apart([("--plots_dir", "out", FOLDER), ("--json", "out", FILE)])
  # Named files in one folder, or two tools' folders that coincide: fine.
  files.check_apart([("--plots_dir", "out", FOLDER), ("--csv", "out/layers.csv", FILE),
                     ("--figures_dir", "out", FOLDER)])
  files.check_apart([("--output", "out/m", TREE), ("--report", "out/m.json", FILE)])


def test_a_tilde_is_a_name_as_the_writers_take_it(layout):
  """The tools write "~/m/x" into a directory named "~" (the shell expands ~,
  not they): the rule must see that "./~/m" and "~/m" are one place."""
  (layout / "~" / "m").mkdir(parents=True)
  with pytest.raises(files.OutputError, match="lies inside the input"):
    files.check_apart([("--report", "./~/m/saved_model.pb", FILE)], [("--input", "~/m")])


def test_unset_paths_and_inputs_that_do_not_exist_yet(layout):
  files.check_apart([("--report", None, FILE), ("--csv", "", FILE)], [("--config", None)])
  with pytest.raises(files.OutputError, match="is the input"):
    files.check_apart([("--out", "new/x", FILE)], [("--in", "new/./x")])


@pytest.mark.parametrize("text,limit", [
    ("the input is too small for the kernel", 20),
    ("Computed output size would be negative: -1 [input_size: 3, effective_filter_size: 5]", 50),
    ("x" * 400, 300),
    ("word " * 100, 300),
    ("short", 300),
])
def test_shortened_messages_end_at_a_word_boundary(text, limit):
  out = table.shorten(text, limit)
  assert len(out) <= limit
  if out == text:
    return
  assert out.endswith(" ...")
  kept = out[:-4]
  assert text.startswith(kept)
  # Cut where a word ends, unless the first word alone is longer than the limit.
  assert text[len(kept)].isspace() or " " not in text[:limit]
