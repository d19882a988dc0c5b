#!/usr/bin/env bash
# Set up a virtual environment from this checkout (once) and run one recipe end to end.
# Usage: bash scripts/recipes/run.sh NAME [run.py options]     NAME: multi30k-de-en, multi30k-en-de, dialogsum
#   e.g. bash scripts/recipes/run.sh multi30k-de-en --data ../shared/data
# VENV=path chooses the environment (default .venv-recipes); results go to docs/results/ (see run.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv-recipes}
if [ ! -x "$VENV/bin/seq2seq" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"   # the CPU build; see README
  "$VENV/bin/python" -m pip install -q -e .
fi
exec "$VENV/bin/python" scripts/recipes/run.py "$@"
