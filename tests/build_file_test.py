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


def test_every_tool_has_a_py_binary():
  text = (ROOT / "BUILD").read_text()
  tools = {str(p.relative_to(ROOT)) for p in (ROOT / "tools").glob("*.py")
           if p.name != "__init__.py"}
  assert tools <= _quoted_paths(text)


def _setup_list(name):
  tree = ast.parse((ROOT / "setup.py").read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
      return set(ast.literal_eval(node.value))
  raise AssertionError(f"setup.py defines no {name}")


def test_op_library_sources_are_exactly_what_setup_py_compiles():
  text = (ROOT / "BUILD").read_text()
  block = _block(text, "mortar_tf/ops/_mortar_ops.so")
  assert "linkshared = 1" in block
  listed = set(re.findall(r'"([\w/]+\.(?:cc|h))"', block))
  assert listed == _setup_list("OP_SOURCES") | _setup_list("OP_HEADERS")
  present = {str(p.relative_to(ROOT)) for p in (ROOT / "mortar_tf/ops/cc").rglob("*")
             if p.suffix in (".cc", ".h")}
  assert listed == present
  assert "-ffp-contract=off" in block  # the flag the bit-exact results rely on
  assert "-ffp-contract=off" in (ROOT / "setup.py").read_text()
