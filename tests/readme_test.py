"""The README's Python examples run and print what the README says."""

import doctest
import pathlib

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples():
  result = doctest.testfile(str(README), module_relative=False,
                            optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted >= 5
  assert result.failed == 0
