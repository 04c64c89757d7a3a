"""Publishes a main-job run in the docs: copies out/main's sweep.json and
pareto.png to docs/main/ and writes the headline table, rendered from that
sweep.json by the code (mortar_tf.explore.job.headline), into README.md
between its main-headline markers. tests/docs_test.py checks that the README's
table is what the code renders from docs/main/sweep.json.

Usage: bash scripts/main.sh && .venv/bin/python scripts/publish_main.py
"""

import json
import pathlib
import shutil
import sys

from mortar_tf.explore import job

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- main-headline: begin -->", "<!-- main-headline: end -->"


def with_headline(readme: str, table: str) -> str:
  """`readme` with `table` between the markers (each on its own line)."""
  start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
  return readme[:start] + "\n" + table + "\n" + readme[end:]


def main(out_dir="out/main"):
  out, docs = ROOT / out_dir, ROOT / "docs" / "main"
  record = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
  table = job.headline(record)  # raises before anything is copied if the run has no search
  docs.mkdir(exist_ok=True)
  for name in ("sweep.json", "pareto.png"):
    shutil.copyfile(out / name, docs / name)
  readme = ROOT / "README.md"
  readme.write_text(with_headline(readme.read_text(encoding="utf-8"), table), encoding="utf-8")
  print(table)


if __name__ == "__main__":
  main(*sys.argv[1:])
