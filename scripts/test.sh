#!/usr/bin/env bash
# Installs mortar_tf into .venv the way CI does and runs the whole test suite
# against the installed package (tests/ holds no package, so the source tree
# does not shadow it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/pytest tests -q "$@"
