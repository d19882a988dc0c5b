#!/usr/bin/env bash
# Build a fresh virtual environment from this checkout's own files, lint (ruff), build and check the two
# one-framework installs (scripts/check_installs.sh), and run the test suite.
# Usage: bash scripts/test.sh [pytest arguments]      (VENV=path to choose where the environment goes)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-test}
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the CPU build; an unpinned request may pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE "^(jax|jaxlib|flax|optax|orbax-checkpoint|torch|numpy) "
"$VENV/bin/ruff" check seq2seq_jax torch_ref tests scripts
# The two one-framework installs (.venv-torch-only, .venv-jax-only), built and checked; SKIP_INSTALLS=1 leaves them out.
if [ "${SKIP_INSTALLS:-0}" != 1 ]; then
  bash scripts/check_installs.sh "$VENV"
fi
exec "$VENV/bin/python" -m pytest "$@"
