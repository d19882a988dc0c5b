#!/usr/bin/env bash
# Build the two one-framework installs from this checkout and check them (README "Install"):
#   .venv-jax-only    pip install .[jax]    no torch: the demo task trains for 300 steps, translates (200
#                     inputs, greedy and beam 5), and export-torch / import-torch (.safetensors) give identical
#                     output; a .pt import says to install the torch extra
#   .venv-torch-only  pip install .[torch]  no JAX: `python -m torch_ref.translate` on the full environment's
#                     export of that demo model gives the lines of `seq2seq translate`; the `seq2seq` commands
#                     say to install the jax extra
# Both are installed (not editable) from a wheel of this checkout's files and run outside the checkout, so
# they use only what the install holds. pip's cache is reused. Prints their sizes on disk and the time taken.
# Usage: bash scripts/check_installs.sh [FULL_VENV]     (default .venv-test, as scripts/test.sh builds it; any
#        environment with both extras will do: it runs this checkout's code through PYTHONPATH)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
FULL=$(realpath "${1:-.venv-test}")
TORCH_VENV=$REPO/.venv-torch-only
JAX_VENV=$REPO/.venv-jax-only
start=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/seq2seq-installs.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fail() { echo "check_installs: FAILED: $*" >&2; exit 1; }
full() { PYTHONPATH="$REPO" "$FULL/bin/python" "$@"; }   # the full environment runs the checkout's code
# same_translations REFERENCE FILE WHAT: FILE, written by WHAT, has the 200 lines of REFERENCE
same_translations() {
  [ "$(wc -l < "$2")" = 200 ] || fail "$3 wrote $(wc -l < "$2") lines"
  cmp -s "$1" "$2" || { diff "$1" "$2" | head; fail "$3: $2 differs from $1"; }
}

# A wheel built from a copy of what it is made of: an in-tree build would leave build/ behind, whose stale
# modules a later build would package.
mkdir "$WORK/src"
cp -r pyproject.toml README.md seq2seq_jax torch_ref "$WORK/src"
"$FULL/bin/python" -m pip wheel -q --no-deps -w "$WORK/wheel" "$WORK/src"
WHEEL=$(ls "$WORK"/wheel/seq2seq_jax-*.whl)

new_venv() { rm -rf "$1"; python3 -m venv "$1"; "$1/bin/python" -m pip install -q --upgrade pip; }
# The two builds overlap (mostly downloads, unpacking and writing files).
(
  new_venv "$TORCH_VENV"
  "$TORCH_VENV/bin/python" -m pip install -q "torch==2.13.0"   # the CPU build first, as scripts/test.sh does
  "$TORCH_VENV/bin/python" -m pip install -q "$WHEEL[torch]"
) &
torch_build=$!
new_venv "$JAX_VENV"
"$JAX_VENV/bin/python" -m pip install -q "$WHEEL[jax]"
wait "$torch_build" || fail "building $TORCH_VENV"
built=$((SECONDS - start))

cd "$WORK"   # from here on nothing imports the checkout: only what each environment installed
"$TORCH_VENV/bin/python" -c "import jax" 2>/dev/null && fail "jax is importable in $TORCH_VENV"
"$TORCH_VENV/bin/python" -c "import flax" 2>/dev/null && fail "flax is importable in $TORCH_VENV"
"$JAX_VENV/bin/python" -c "import torch" 2>/dev/null && fail "torch is importable in $JAX_VENV"

status=0
"$TORCH_VENV/bin/seq2seq" train --workdir "$WORK/never" 2> torch-train.err || status=$?
[ "$status" = 2 ] && [ "$(cat torch-train.err)" = "seq2seq train needs JAX: install the jax extra (pip install 'seq2seq-jax[jax]')" ] \
  || fail "seq2seq train in $TORCH_VENV: exit $status, stderr: $(cat torch-train.err)"

# A small demo model (300 steps of the dates task) and 200 held-out inputs.
DEMO=(--task dates --set train.max_steps=300 --set train.eval_every=300 --set train.save_every=300
      --set model.enc_hidden_size=32 --set model.dec_hidden_size=64 --set data.task_valid_size=100
      --set train.valid_sample_size=50 --set data.bucket_width=64)   # one bucket: one compiled program per setting
full -c "
from seq2seq_jax.training.tasks import generate_task
open('inputs.txt', 'w').write(''.join(src + '\n' for src, _ in generate_task('dates', 200, seed=4242)))"

echo "== .venv-jax-only: train, translate, export-torch, import-torch, translate"
"$JAX_VENV/bin/seq2seq" train --workdir jax "${DEMO[@]}" > jax-train.log 2>&1 || { cat jax-train.log; fail "training in $JAX_VENV"; }
"$JAX_VENV/bin/seq2seq" export-torch --workdir jax --out jax-export > /dev/null
"$JAX_VENV/bin/seq2seq" import-torch --src jax-export --workdir jax-imported > /dev/null
for beam in 1 5; do
  "$JAX_VENV/bin/seq2seq" translate --workdir jax --beam-size "$beam" --input inputs.txt --output "jax.$beam.txt" 2>/dev/null
  "$JAX_VENV/bin/seq2seq" translate --workdir jax-imported --beam-size "$beam" --input inputs.txt \
    --output "imported.$beam.txt" 2>/dev/null
  same_translations "jax.$beam.txt" "imported.$beam.txt" "seq2seq translate of the imported workdir, beam $beam"
  echo "beam $beam: 200 identical lines before and after export + import"
done

echo "== full environment: export-torch of that workdir; .venv-torch-only: python -m torch_ref.translate"
full -m seq2seq_jax export-torch --workdir jax --out export > /dev/null
cmp -s export/model.safetensors jax-export/model.safetensors || fail "the two environments' exports differ"
for beam in 1 5; do
  "$TORCH_VENV/bin/python" -m torch_ref.translate export --beam-size "$beam" --input inputs.txt \
    --output "torch.$beam.txt" 2>/dev/null
  same_translations "jax.$beam.txt" "torch.$beam.txt" "torch_ref.translate, beam $beam"
  echo "beam $beam: 200 lines identical to seq2seq translate"
done

echo "== seq2seq score (.venv-jax-only) and python -m torch_ref.score (.venv-torch-only) of those translations"
"$JAX_VENV/bin/seq2seq" score --workdir jax --src inputs.txt --tgt jax.1.txt > jax.scores 2>/dev/null
"$TORCH_VENV/bin/python" -m torch_ref.score export --src inputs.txt --tgt jax.1.txt > torch.scores 2>/dev/null
full -c "
jax = [line.split() for line in open('jax.scores')]
torch = [line.split() for line in open('torch.scores')]
assert len(jax) == len(torch) == 200, (len(jax), len(torch))
worst = max(abs(float(a[0]) - float(b[0])) / max(1.0, abs(float(b[0]))) for a, b in zip(jax, torch, strict=True))
assert worst <= 1e-5, worst
print(f'200 pair scores agree (largest relative difference {worst:.1e})')" || fail "seq2seq score and torch_ref.score differ"

full -c "
import torch
from safetensors.torch import load_file
torch.save(load_file('jax-export/model.safetensors'), 'jax-export/model.pt')"
rm jax-export/model.safetensors
status=0
"$JAX_VENV/bin/seq2seq" import-torch --src jax-export/model.pt --workdir pt-imported 2> pt.err || status=$?
[ "$status" = 2 ] && grep -q "install the torch extra" pt.err || fail "import-torch of a .pt: exit $status, $(cat pt.err)"

echo "sizes on disk: $(du -sm "$TORCH_VENV" | cut -f1) MB .venv-torch-only, $(du -sm "$JAX_VENV" | cut -f1) MB .venv-jax-only"
echo "check_installs: OK (environments built in ${built} s, $((SECONDS - start)) s in all)"
