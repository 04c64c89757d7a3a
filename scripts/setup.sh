#!/usr/bin/env bash
# Creates .venv (if missing) and installs mortar_tf with its pinned dependencies.
# Idempotent: a second run only reinstalls the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
# --no-build-isolation: the package builds against the TensorFlow it installs.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation '.[test]'
rm -rf build
