#!/usr/bin/env bash
# Creates .venv (if missing) and installs mortar_tf with its pinned dependencies
# and its C++ op library. Idempotent: a second run reinstalls only the package
# (the compiled op is cached in build/ops-cache).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip setuptools wheel
"${pip[@]}" -r requirements.txt -r requirements-test.txt
# --no-build-isolation: the op library compiles against the TensorFlow just installed.
rm -rf build/lib* build/bdist*  # stale copies of removed modules would ship otherwise
"${pip[@]}" --no-build-isolation --no-deps .
rm -rf build/lib* build/bdist* mortar_tf.egg-info
