"""A workdir whose disk fills up: training stops with exit code 2 and one line in the user's terms (the step that
could not be saved, where, that the disk is full, which checkpoint remains), no traceback without --verbose,
the partial checkpoint directory removed, and the last complete checkpoint still translates.

The disk is a real one: an 8 MiB tmpfs mounted for the test (root is needed to mount; the test says so and
skips where mounting is not permitted).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from run_support import TINY

from seq2seq_jax import cli
from seq2seq_jax.workdir import load_trained

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
# Checkpoints of about 3.2 MB (parameters and both Adam moments): steps 4 and 8 fit on 8 MiB, step 12 does not.
BIGGER = ["model.enc_hidden_size=64", "model.dec_hidden_size=160", "train.save_every=4", "train.max_steps=16"]


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs mounted at ``tmp_path / "disk"``, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (mount -t tmpfs); run the suite as root to include this test")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_stops_training_with_one_clear_line(small_disk, capsys, monkeypatch):
    workdir = small_disk / "run"
    command = [sys.executable, "-m", "seq2seq_jax", "train", "--workdir", str(workdir)]
    for pair in TINY + BIGGER:
        command += ["--set", pair]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    checkpoints = workdir / "checkpoints"
    expected = (f"seq2seq train: error: could not save the checkpoint of step 12 to {checkpoints / '12'}: the disk "
                f"is full (No space left on device); the last complete checkpoint is step 8 ({checkpoints / '8'})")
    assert result.stderr.splitlines()[-1] == expected, result.stderr[-3000:]
    assert result.stderr.count("error") == 1
    for noise in ("Traceback", "OCDBT", "orbax", "Event loop"):
        assert noise not in result.stderr, noise
    assert sorted(os.listdir(checkpoints)) == ["4", "8"]  # the partial step-12 directory is removed
    assert not (workdir / ".lock").exists()
    assert load_trained(workdir, "latest").step == 8
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"March 3, 2021\n"), encoding="utf-8"))
    assert cli.main(["translate", "--workdir", str(workdir), "--checkpoint", "latest"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1, err
