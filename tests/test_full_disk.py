"""A workdir whose disk fills up: training stops with exit code 2 and one line in the user's terms (the step that
could not be saved, where, that the disk is full, which checkpoint remains), no traceback without --verbose,
the partial checkpoint directory removed, and the last complete checkpoint still translates.

The disk is a real one: an 8 MiB tmpfs, mounted in a mount namespace of its own (``unshare --mount``; for a
user other than root, inside a user namespace too, where the kernel permits tmpfs mounts), so the test needs
no root and can never leave a mount behind: the mount goes away with the namespace's last process, in place
of an ``umount`` in a ``finally``. Where namespaces are not permitted the test skips and says why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from run_support import TINY

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
# Checkpoints of about 3.2 MB (parameters and both Adam moments): steps 4 and 8 fit on 8 MiB, step 12 does not.
BIGGER = ["model.enc_hidden_size=64", "model.dec_hidden_size=160", "train.save_every=4", "train.max_steps=16"]
SCENARIO = """
set -u
mount -t tmpfs -o size=8m tmpfs "$DISK" || exit 99
"$PYTHON" -m seq2seq_jax train --workdir "$DISK/run" $SETTINGS 2> "$OUT/train.err" > "$OUT/train.out"
echo $? > "$OUT/train.rc"
ls -A "$DISK/run/checkpoints" > "$OUT/checkpoints.txt"
ls -A "$DISK/run" > "$OUT/workdir.txt"
printf 'March 3, 2021\\n' | "$PYTHON" -m seq2seq_jax translate --workdir "$DISK/run" --checkpoint latest \\
    > "$OUT/translate.out" 2> "$OUT/translate.err"
echo $? > "$OUT/translate.rc"
"""


def namespace_prefix() -> list[str]:
    """``unshare`` arguments that give a private mount namespace in which this user may mount a tmpfs."""
    if shutil.which("unshare") is None:
        pytest.skip("the unshare command (util-linux) is not installed: no private mount namespace for a tmpfs")
    prefix = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        pytest.skip(f"mounting a tmpfs in a private mount namespace is not permitted here: {probe.stderr.strip()}")
    return prefix


def test_a_full_disk_stops_training_with_one_clear_line(tmp_path):
    prefix = namespace_prefix()
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    settings = " ".join(f"--set {pair}" for pair in TINY + BIGGER)  # no spaces or shell characters in them
    env = {**ENV, "DISK": str(disk), "OUT": str(out), "PYTHON": sys.executable, "SETTINGS": settings}
    done = subprocess.run([*prefix, "bash", "-c", SCENARIO], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert not any(disk.iterdir())  # the tmpfs was only ever visible inside the namespace
    stderr = (out / "train.err").read_text()
    assert (out / "train.rc").read_text().strip() == "2", stderr[-3000:]
    checkpoints = disk / "run" / "checkpoints"
    said = re.fullmatch(r"seq2seq train: error: could not save the checkpoint of step (\d+) to (.+): the disk is "
                        r"full \(No space left on device\); the last complete checkpoint is step (\d+) \((.+)\)",
                        stderr.splitlines()[-1])
    assert said, stderr[-3000:]
    failed, remaining = int(said[1]), int(said[3])
    assert failed > remaining >= 4 and failed % 4 == remaining % 4 == 0  # 12 and 8 with orbax 0.12's sizes
    assert said[2] == str(checkpoints / str(failed)) and said[4] == str(checkpoints / str(remaining))
    assert stderr.count("error") == 1
    for noise in ("Traceback", "OCDBT", "orbax", "Event loop"):
        assert noise not in stderr, noise
    kept = [int(name) for name in (out / "checkpoints.txt").read_text().split()]  # no partial directory left
    assert max(kept) == remaining and failed not in kept
    assert ".lock" not in (out / "workdir.txt").read_text().split()
    assert (out / "translate.rc").read_text().strip() == "0", (out / "translate.err").read_text()
    assert len((out / "translate.out").read_text().splitlines()) == 1
