"""Tests for seq2seq_jax.training.staging beyond the lock (tests/test_workdir_lock.py): the staging directories that an
interrupted run leaves are removed by the next staging of the same target once their process is gone."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

from seq2seq_jax.training.staging import staged_directory


def test_abandoned_staging_directories_are_removed_by_the_next_staging(tmp_path, caplog):
    host = socket.gethostname()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its process id now names no process
    abandoned = tmp_path / f".out.tmp-{host}-{finished.pid}-abc123_"
    kept = {"a live process's": tmp_path / f".out.tmp-{host}-{os.getpid()}-def456",
            "another host's": tmp_path / f".out.tmp-{host}x-{finished.pid}-ghi789",
            "another target's": tmp_path / f".outer.tmp-{host}-{finished.pid}-jkl012",
            "without host and process": tmp_path / ".out.tmp-x1y2z3"}
    for directory in [abandoned, *kept.values()]:
        directory.mkdir()
        (directory / "train-00000-of-00001.array_record").write_bytes(b"shard")
    with caplog.at_level(logging.WARNING, logger="seq2seq_jax.training.staging"):
        with staged_directory(tmp_path / "out") as staging:
            assert staging.name.startswith(f".out.tmp-{host}-{os.getpid()}-")
            (staging / "manifest.json").write_text("{}", encoding="utf-8")
    assert not abandoned.exists() and (tmp_path / "out" / "manifest.json").is_file()
    assert [name for name, directory in kept.items() if not directory.is_dir()] == []
    assert f"removed {abandoned}: the staging directory of an interrupted run (process {finished.pid}" in caplog.text
