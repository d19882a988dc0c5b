"""One writer per workdir: the lock itself (refusal, stale takeover, release, staged directories), then real
``seq2seq train`` processes: a second trainer on a busy workdir is refused at once while the first finishes,
and a SIGKILLed trainer's lock is taken over by the next run."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_support import TINY, tiny_config

from seq2seq_jax.training.staging import is_nonempty_dir, staged_directory
from seq2seq_jax.training.workdir_lock import LOCK_FILE, WorkdirLockedError, refuse_if_locked, workdir_lock

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
HOLD_LOCK = """
import sys, time
from seq2seq_jax.training.workdir_lock import workdir_lock
with workdir_lock(sys.argv[1], "test holder"):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_in_subprocess(directory: Path) -> subprocess.Popen:
    """A process holding ``directory``'s lock (it says 'held' once it does)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True,
                               env=ENV)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    holder = hold_in_subprocess(tmp_path / "w")
    try:
        start = time.perf_counter()
        with pytest.raises(WorkdirLockedError) as refused, workdir_lock(tmp_path / "w", "second"):
            pass
        assert time.perf_counter() - start < 1.0
        message = str(refused.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert "test holder" in message and "since" in message and str(tmp_path / "w") in message
        assert f"kill {holder.pid}" in message
        assert holder.poll() is None  # the holder is unaffected
    finally:
        holder.kill()
        holder.wait()


def test_release_deletes_the_record_and_a_dead_holders_lock_is_taken_over(tmp_path):
    directory = tmp_path / "w"
    directory.mkdir()
    warnings: list[str] = []
    with workdir_lock(directory, "first", warn=warnings.append) as path:
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["command"] == "first"
    assert not (directory / LOCK_FILE).exists() and directory.is_dir()
    holder = hold_in_subprocess(directory)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((directory / LOCK_FILE).read_text())["pid"] == holder.pid  # its record survives it
    with workdir_lock(directory, "next", warn=warnings.append):
        pass
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"took over the stale lock of pid {holder.pid} on host {socket.gethostname()} "
                                  f"(test holder, since ")
    assert f"on {directory}: that process is gone" in warnings[0]
    assert not (directory / LOCK_FILE).exists()


def test_the_quick_check_refuses_a_held_lock_and_changes_nothing(tmp_path):
    directory = tmp_path / "w"
    refuse_if_locked(directory)  # no workdir yet: nothing to refuse, nothing created
    assert not directory.exists()
    holder = hold_in_subprocess(directory)
    try:
        with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid} on host"):
            refuse_if_locked(directory)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    stale = (directory / LOCK_FILE).read_bytes()
    refuse_if_locked(directory)  # a dead holder's record: not refused, and left for workdir_lock to report
    assert (directory / LOCK_FILE).read_bytes() == stale


def test_a_filesystem_without_file_locks_is_a_warning(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    warnings: list[str] = []
    (tmp_path / "w").mkdir()
    with workdir_lock(tmp_path / "w", "train", warn=warnings.append):
        (tmp_path / "w" / "config.json").write_text("{}")
    assert len(warnings) == 1 and "does not support file locks" in warnings[0] and "second writer" in warnings[0]
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["config.json"]


def test_a_directory_made_only_for_the_lock_is_removed_with_it(tmp_path):
    with workdir_lock(tmp_path / "new", "x"):
        assert (tmp_path / "new" / LOCK_FILE).is_file()
    assert not (tmp_path / "new").exists()


def test_the_lock_moves_with_a_staged_directory(tmp_path):
    target = tmp_path / "out"
    with workdir_lock(target, "average"):
        assert not is_nonempty_dir(target)  # only the lock file: still an empty target
        with staged_directory(target) as temporary:
            (temporary / "config.json").write_text("{}")
        assert sorted(p.name for p in target.iterdir()) == [LOCK_FILE, "config.json"]
        with pytest.raises(WorkdirLockedError):  # still held, now inside the renamed directory
            with workdir_lock(target, "other"):
                pass
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]


def test_average_and_import_refuse_a_locked_output_before_reading_anything(tmp_path):
    from seq2seq_jax.training.averaging import average_checkpoints
    from seq2seq_jax.training.export import import_torch

    out = tmp_path / "out"
    with workdir_lock(out, "seq2seq train"):
        with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
            average_checkpoints(tmp_path / "no-such-run", out, last=1)
        with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
            import_torch(tmp_path / "no-such-export", out)
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]


# ------------------------------------------------------------------------------------------ real trainers


def train_command(workdir: Path, *overrides: str) -> list[str]:
    command = [sys.executable, "-m", "seq2seq_jax", "train", "--workdir", str(workdir)]
    for pair in TINY + list(overrides):
        command += ["--set", pair]
    return command


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.2)


def step_records(workdir: Path) -> list[int]:
    """The steps of the training-loss records in metrics.jsonl, in file order."""
    if not (workdir / "metrics.jsonl").is_file():
        return []
    lines = (workdir / "metrics.jsonl").read_text().split("\n")[:-1]  # complete lines only: a trainer may be writing
    records = [json.loads(line) for line in lines]
    return [record["step"] for record in records if "train_loss" in record]


def lock_holder_pid(workdir: Path) -> int | None:
    try:
        return json.loads((workdir / LOCK_FILE).read_text()).get("pid")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def translate_line(workdir: Path, checkpoint: str, capsys, monkeypatch) -> str:
    from seq2seq_jax import cli

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"March 3, 2021\n\n"), encoding="utf-8"))
    assert cli.main(["translate", "--workdir", str(workdir), "--checkpoint", checkpoint]) == 0
    return capsys.readouterr().out


def test_a_second_trainer_is_refused_and_the_first_finishes(tmp_path, capsys, monkeypatch):
    from seq2seq_jax.training.trainer import train

    workdir = tmp_path / "run"
    train(tiny_config("train.max_steps=4"), workdir)  # step 4 for a reader to read meanwhile
    first = subprocess.Popen(train_command(workdir, "train.max_steps=100000", "train.save_every=100000"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        wait_for(lambda: len(step_records(workdir)) > 4, 240, "the first trainer's first step")
        assert lock_holder_pid(workdir) == first.pid
        start = time.perf_counter()
        second = subprocess.run(train_command(workdir, "train.max_steps=5"), capture_output=True, text=True,
                                env=ENV, timeout=120)
        refused_after = time.perf_counter() - start
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert "is in use" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None and lock_holder_pid(workdir) == first.pid
        reader_output = translate_line(workdir, "4", capsys, monkeypatch)  # a reader takes no lock
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)  # the first one finishes: saves and exits 0
        output, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, output
    print(f"second trainer refused after {refused_after:.1f} s (process start included)", file=sys.stderr)
    steps = step_records(workdir)
    assert steps == list(range(1, len(steps) + 1))  # one writer: every step once, in order
    assert not (workdir / LOCK_FILE).exists()
    for out in (reader_output, translate_line(workdir, "latest", capsys, monkeypatch)):
        assert len(out.split("\n")) == 3 and out.split("\n")[1] == ""


def test_a_killed_trainers_lock_is_taken_over_by_the_next_run(tmp_path):
    workdir = tmp_path / "run"
    killed = subprocess.Popen(train_command(workdir, "train.max_steps=100000", "train.save_every=4"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for(lambda: (workdir / "checkpoints" / "4").is_dir(), 240, "the first checkpoint")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert lock_holder_pid(workdir) == killed.pid
    rerun = subprocess.run(train_command(workdir, "train.max_steps=8"), capture_output=True, text=True, env=ENV,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"took over the stale lock of pid {killed.pid} on host {socket.gethostname()}" in rerun.stderr
    assert "resumed from step" in rerun.stdout and "stopped at step 8" in rerun.stdout
    assert not (workdir / LOCK_FILE).exists()
