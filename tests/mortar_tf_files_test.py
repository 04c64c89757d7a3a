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


# --------------------------------------------------------------------------
# move_into_place: the path names the old whole or the new whole, always.


def _tree(root, label: str, files_: int = 3):
  os.makedirs(root / "variables")
  for i in range(files_):
    (root / "variables" / f"part-{i}").write_text(f"{label} {i}\n" * 1000)
  (root / "saved_model.pb").write_text(label)


def _contents(path) -> str:
  if os.path.isdir(path):
    return "".join(sorted(
        f"{os.path.relpath(os.path.join(d, f), path)}={open(os.path.join(d, f)).read()}"
        for d, _, names in os.walk(path) for f in names))
  with open(path) as f:
    return f.read()


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_move_into_place_replaces_whole_and_leaves_nothing_behind(tmp_path, kind):
  old, new, path = tmp_path / "old", tmp_path / "new", tmp_path / "model"
  make = _tree if kind == "directory" else (lambda p, label: p.write_text(label * 1000))
  make(old, "old")
  make(new, "new")
  expected = _contents(new)
  os.rename(old, path)
  new_inode = os.stat(new).st_ino
  files.move_into_place(str(new), str(path))
  assert _contents(path) == expected
  assert os.stat(path).st_ino == new_inode  # renamed, not copied
  assert sorted(os.listdir(tmp_path)) == ["model"]  # the old one is removed
  make(new, "newer")  # and where nothing is at the path
  expected = _contents(new)
  files.move_into_place(str(new), str(tmp_path / "fresh"))
  assert _contents(tmp_path / "fresh") == expected
  assert sorted(os.listdir(tmp_path)) == ["fresh", "model"]


def test_move_into_place_refuses_a_file_for_a_directory_and_back(tmp_path):
  (tmp_path / "file").write_text("f")
  _tree(tmp_path / "dir", "d")
  for tmp, path in (("file", "dir"), ("dir", "file")):
    with pytest.raises(OSError, match="cannot replace"):
      files.move_into_place(str(tmp_path / tmp), str(tmp_path / path))
  assert _contents(tmp_path / "file") == "f"
  assert "saved_model.pb=d" in _contents(tmp_path / "dir")


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_reader_never_finds_the_path_missing_or_mixed(tmp_path, kind):
  """A second thread reads the path while it is replaced 40 times: every read
  is one whole version, and the path never goes missing (where the system
  can exchange two names, as Linux can on this file system)."""
  import threading  # pylint: disable=import-outside-toplevel
  assert files._exchange(str(tmp_path), str(tmp_path))  # this test needs the exchange
  path = tmp_path / "model"
  make = _tree if kind == "directory" else (lambda p, label: p.write_text(label * 20000))
  make(path, "v0")
  versions = {}
  for i in range(40):
    make(tmp_path / f"v{i + 1}", f"v{i + 1}")
    versions[_contents(tmp_path / f"v{i + 1}")] = i + 1
  versions[_contents(path)] = 0
  seen, problems, done = [], [], threading.Event()

  def read():
    while not done.is_set():
      try:
        text = _contents(path)
      except OSError as e:
        problems.append(repr(e))
        continue
      if text in versions:
        seen.append(versions[text])
      elif not os.path.isdir(path) or text:  # a directory read across an exchange may
        problems.append(text[:40])          # list one tree and open files of the other

  reader = threading.Thread(target=read)
  reader.start()
  try:
    for i in range(40):
      files.move_into_place(str(tmp_path / f"v{i + 1}"), str(path))
  finally:
    done.set()
    reader.join()
  assert _contents(path) == next(t for t, v in versions.items() if v == 40)
  missing = [p for p in problems if "FileNotFoundError" in p]
  assert not missing, missing[:3]
  if kind == "file":
    assert not problems, problems[:3]
  assert seen and seen == sorted(seen)


def test_a_write_removes_the_temp_a_killed_writer_left_beside_its_path(tmp_path, killed_writer):
  """A writer killed between creating its temp and renaming it leaves the temp
  (nothing runs at a SIGKILL); the next write of that path removes the temps
  of dead processes of this machine, and keeps a live process's, another
  machine's, another path's and any other name."""
  path = tmp_path / "report.json"
  dead = killed_writer(
      "import sys, time\n"
      "from mortar_tf import files\n"
      "with files.replaced(sys.argv[1]) as tmp:\n"
      "  open(tmp, 'w').write('{\"partial')\n"
      "  print(tmp, flush=True)\n"
      "  time.sleep(600)\n", str(path))
  assert dead.startswith("report.json.mortar-") and dead in os.listdir(tmp_path)
  tag = files.temp_tag()
  host = tag[:tag.rindex("-") + 1]
  kept = [f"report.json.{host}{os.getppid()}-live.tmp", "report.json.mortar-other_host-1-x.tmp",
          f"other.json.{host}999999999-x.tmp", "report.json.bak"]
  for name in kept:
    (tmp_path / name).write_text("keep")
  files.write_json(str(path), {"a": 1})
  assert sorted(os.listdir(tmp_path)) == sorted(kept + ["report.json"])
