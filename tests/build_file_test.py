"""Keeps BUILD honest: its sources are exactly the files of the tree it names.

Bazel cannot run here (CI builds with setup.py), so this test reads BUILD as
text and compares its lists with the repository.
"""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _quoted_paths(text):
  return set(re.findall(r'"([\w/]+\.py)"', text))


def _block(text, name):
  match = re.search(r'name = "%s",(.*?)\n\)' % re.escape(name), text, re.S)
  assert match, f"BUILD has no target {name!r}"
  return match.group(1)


def test_library_lists_every_package_module():
  text = (ROOT / "BUILD").read_text()
  listed = _quoted_paths(_block(text, "mortar_tf"))
  present = {str(p.relative_to(ROOT)) for p in (ROOT / "mortar_tf").rglob("*.py")}
  assert listed == present


def test_every_test_file_has_a_py_test():
  text = (ROOT / "BUILD").read_text()
  tests = re.search(r"for test in \[(.*?)\]\]", text, re.S)
  assert tests, "BUILD has no py_test list"
  listed = _quoted_paths(tests.group(1))
  present = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("*_test.py")}
  assert listed == present


def test_every_tool_has_a_launcher_in_tools_and_a_py_binary_for_it():
  """tools/<name>.py for each mortar_tf/tools program, a py_binary whose main it
  is, and the installed command (setup.py) running the very module it starts:
  one definition of each tool's flags."""
  text = (ROOT / "BUILD").read_text()
  tools = re.search(r"for tool in \[(.*?)\]\]", text, re.S)
  assert tools, "BUILD has no py_binary list of tools"
  listed = set(re.findall(r'"([\w/]+\.py)"', tools.group(1)))
  launchers = {str(p.relative_to(ROOT)) for p in (ROOT / "tools").glob("*.py")}
  assert listed == launchers
  programs = {p.stem for p in (ROOT / "mortar_tf/tools").glob("*.py")
              if p.name not in ("__init__.py", "flag_parsing.py")}
  entry_points = dict(re.findall(r'"(mortar-\w+) = mortar_tf\.tools\.(\w+):run"',
                                 (ROOT / "setup.py").read_text()))
  assert set(entry_points.values()) == programs
  started = {}
  for launcher in launchers:
    source = (ROOT / launcher).read_text()
    (module,) = set(re.findall(r"^from mortar_tf\.tools import (\w+)", source, re.M))
    assert re.search(rf"^  {module}\.run\(\)$", source, re.M), launcher
    assert "DEFINE_" not in source, f"{launcher} defines flags of its own"
    started[pathlib.Path(launcher).stem.replace("_", "-")] = module
  assert started == entry_points


def test_every_benchmark_has_a_py_binary():
  text = (ROOT / "BUILD").read_text()
  present = {str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("bench_*.py")}
  assert present <= _quoted_paths(text)


def _setup_list(name):
  tree = ast.parse((ROOT / "setup.py").read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
      return set(ast.literal_eval(node.value))
  raise AssertionError(f"setup.py defines no {name}")


def _binary_files(text, name):
  block = _block(text, name)
  assert "linkshared = 1" in block
  return set(re.findall(r'"([\w/]+\.(?:cc|h))"', block))


def test_both_libraries_compile_exactly_what_setup_py_compiles():
  text = (ROOT / "BUILD").read_text()
  headers = _setup_list("KERNEL_HEADERS")
  ops_files = _binary_files(text, "mortar_tf/ops/_mortar_ops.so")
  native_files = _binary_files(text, "mortar_tf/_native.so")
  assert ops_files == _setup_list("OP_SOURCES") | headers
  assert native_files == _setup_list("NATIVE_SOURCES") | headers
  present = {str(p.relative_to(ROOT)) for folder in ("mortar_tf/ops/cc", "mortar_tf/cc")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".cc", ".h")}
  assert ops_files | native_files == present
  # the native library must not need TensorFlow: no TF header or dependency
  assert "tensorflow" not in _block(text, "mortar_tf/_native.so")
  for source in _setup_list("NATIVE_SOURCES") | headers:
    assert '#include "tensorflow' not in (ROOT / source).read_text(), source
  assert "-ffp-contract=off" in text  # the flag the bit-exact results rely on
  assert "-ffp-contract=off" in (ROOT / "setup.py").read_text()
