"""The persistent compilation cache: keyed by the machine and software stack, on by default for the commands that
compile, and never the cause of a failed or different run (damaged entries, a directory that cannot be made,
two processes filling it at once)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from run_support import tiny_config

from seq2seq_jax import compilation_cache
from seq2seq_jax.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SOURCES = "March 3, 2021\n14 July 1789\n"
STORED = compilation_cache.STORED_PROGRAMS


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "run"
    train(tiny_config("train.max_steps=4", "train.eval_every=4"), path)
    return path


def translate(workdir: Path, cache: str, *extra: str) -> subprocess.CompletedProcess:
    """``seq2seq translate`` as a user runs it: no JAX_COMPILATION_CACHE_DIR (the test session's), ours instead."""
    env = {key: value for key, value in os.environ.items() if key != "JAX_COMPILATION_CACHE_DIR"}
    env.update({compilation_cache.ENVIRONMENT_VARIABLE: cache, "PYTHONPATH": str(ROOT)})
    return subprocess.run([sys.executable, "-m", "seq2seq_jax", "translate", "--workdir", str(workdir),
                           "--beam-size", "3", *extra], input=SOURCES, capture_output=True, text=True, env=env,
                          timeout=300)


def entries(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def test_the_key_names_the_jax_version_and_changes_with_cpu_and_xla_flags(monkeypatch):
    import jax

    key = compilation_cache.stack_key()
    assert key.startswith(f"jax-{jax.__version__}-")
    monkeypatch.setattr(compilation_cache, "_cpu_description", lambda: "model name=another CPU; flags=sse2")
    other_cpu = compilation_cache.stack_key()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    other_flags = compilation_cache.stack_key()
    assert len({key, other_cpu, other_flags}) == 3


def test_the_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compilation_cache.ENVIRONMENT_VARIABLE, "off")
    assert compilation_cache.default_root() is None
    monkeypatch.setenv(compilation_cache.ENVIRONMENT_VARIABLE, str(tmp_path / "c"))
    assert compilation_cache.default_root() == tmp_path / "c"
    monkeypatch.delenv(compilation_cache.ENVIRONMENT_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.default_root() == tmp_path / "xdg" / "seq2seq-jax"


def test_second_run_reads_the_cache_and_translates_the_same(workdir, tmp_path):
    cache = tmp_path / "cache"
    off = translate(workdir, "off")
    first = translate(workdir, str(cache))
    assert off.returncode == first.returncode == 0, off.stderr + first.stderr
    (stack,) = cache.iterdir()
    written = entries(stack)
    assert written and stack.name == compilation_cache.stack_key()
    assert [path.parent.name for path in written if path.suffix == ".program"] == [STORED]  # the search, whole
    second = translate(workdir, str(cache), "--verbose", "--output", str(tmp_path / "second.txt"))
    assert second.returncode == 0, second.stderr
    assert off.stdout == first.stdout == (tmp_path / "second.txt").read_text()
    assert len(off.stdout.splitlines()) == 2
    assert "loaded stored" in second.stdout and "compiled and stored" not in second.stdout  # nothing traced
    assert {path.name for path in entries(stack)} >= {path.name for path in written if "-cache" in path.name}
    assert "warning" not in (first.stderr + second.stderr).lower()
    # The stored searches gone, jax's cache still holds their programs: what it reads is used, never stored
    # (XLA:CPU serializes an executable it deserialized without its compiled functions).
    shutil.rmtree(stack / STORED)
    third = translate(workdir, str(cache), "--verbose", "--output", str(tmp_path / "third.txt"))
    assert third.returncode == 0 and (tmp_path / "third.txt").read_text() == off.stdout, third.stderr
    assert "compiled from jax's cache, not stored" in third.stdout and not (stack / STORED).exists()
    no_flag = translate(workdir, str(tmp_path / "unused"), "--no-compile-cache")
    assert no_flag.returncode == 0 and no_flag.stdout == off.stdout and not (tmp_path / "unused").exists()


def test_damaged_entries_and_concurrent_writers_fall_back_to_compiling(workdir, tmp_path):
    cache = tmp_path / "cache"
    reference = translate(workdir, "off").stdout
    env = {key: value for key, value in os.environ.items() if key != "JAX_COMPILATION_CACHE_DIR"}
    env.update({compilation_cache.ENVIRONMENT_VARIABLE: str(cache), "PYTHONPATH": str(ROOT)})
    command = [sys.executable, "-m", "seq2seq_jax", "translate", "--workdir", str(workdir), "--beam-size", "3"]
    both = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(2)]
    results = [process.communicate(SOURCES, timeout=300) for process in both]
    assert [process.returncode for process in both] == [0, 0], [err for _, err in results]
    assert [out for out, _ in results] == [reference, reference]
    damaged = [path for path in entries(cache) if "-cache" in path.name or path.suffix == ".program"]
    assert {path.suffix for path in damaged} == {"", ".program"}
    for index, path in enumerate(damaged):  # truncated, emptied, or garbage
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if index % 3 == 0 else b"" if index % 3 == 1 else b"garbage")
    again = translate(workdir, str(cache))
    assert again.returncode == 0, again.stderr
    assert again.stdout == reference
    assert len([line for line in again.stderr.splitlines() if "warning" in line.lower()]) <= 1


def test_a_cache_directory_that_cannot_be_made_is_one_warning(workdir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = translate(workdir, str(blocker / "cache"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == translate(workdir, "off").stdout
    warnings = [line for line in result.stderr.splitlines() if "compilation cache" in line]
    assert len(warnings) == 1 and "cannot create" in warnings[0]
