#!/usr/bin/env bash
# Set up a fresh virtual environment from this checkout and run the built-in demo: train the attention
# model on date normalization ("March 3, 2021" -> "2021-03-03"), print sample translations and the
# exact-match accuracy on a generated held-out set, then translate a few dates with beam search.
# Usage: bash scripts/demo.sh [WORKDIR]        (default runs/demo; VENV=path for the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-demo}
WORKDIR=${1:-runs/demo}
if [ ! -x "$VENV/bin/seq2seq" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[jax]"   # training and translation: no torch (README "Install")
fi
start=$SECONDS
"$VENV/bin/seq2seq" train --workdir "$WORKDIR"
echo "trained in $((SECONDS - start)) s"
printf 'March 3, 2021\n14 July 1789\nsaturday, 1st of january 2000\n12/25/1999\n2.10.1857\n' > "$WORKDIR/demo_inputs.txt"
echo "== beam search (K=5) on new inputs"
paste -d'\t' "$WORKDIR/demo_inputs.txt" <("$VENV/bin/seq2seq" translate --workdir "$WORKDIR" --beam-size 5 \
  --input "$WORKDIR/demo_inputs.txt" 2>/dev/null) | sed 's/\t/  ->  /'
echo "== held-out set (generated, disjoint from training)"
"$VENV/bin/python" - "$WORKDIR" <<'PY'
import json, sys
records = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl") if "valid_exact_match" in line]
last = records[-1]
print(f"exact match {last['valid_exact_match']:.1f}% and BLEU {last['valid_bleu']:.1f} on the held-out sample "
      f"at step {last['step']}")
PY
