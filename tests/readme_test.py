"""The README's Python examples run and print what the README says."""

import doctest
import pathlib

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples():
  result = doctest.testfile(str(README), module_relative=False,
                            optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted >= 5
  assert result.failed == 0


def test_the_results_summary_is_the_pages_own():
  """The README's summary of the results is the "Summary" section of
  docs/results.md, word for word (scripts/results.sh copies it)."""
  from mortar_tf.explore import results_page  # pylint: disable=import-outside-toplevel
  readme = README.read_text(encoding="utf-8")
  page = (README.parent / "docs" / "results.md").read_text(encoding="utf-8")
  summary = results_page.summary_of(page)
  assert len(summary) >= 5
  assert results_page.with_summary(readme, summary) == readme
