"""Searches kept compiled between processes (``seq2seq_jax.decoding.stored_programs``): a stored executable is
found again under the same description and arguments only, computes what the function computes, and a damaged
entry or a store that cannot be written costs a compile, never a failed or different result."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax.decoding import stored_programs
from seq2seq_jax.decoding.stored_programs import StoredProgram


def step(params, x, extra):
    """A small program with a loop, a pytree argument and an optional (None) argument."""
    out = jax.lax.fori_loop(0, 3, lambda _, h: jnp.tanh(h @ params["w"] + params["b"]), x)
    return {"sum": out.sum(axis=-1), "out": out if extra is None else out + extra}


@pytest.fixture
def store(tmp_path):
    stored_programs.enable(tmp_path / "searches")
    stored_programs._state["warned"] = False  # one warning per process: each test starts without one
    yield tmp_path / "searches"
    stored_programs.enable(None)


def arguments(rows=4):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32), "b": jnp.zeros(8, jnp.float32)}
    return params, jnp.asarray(rng.normal(size=(rows, 8)), jnp.float32), None


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_without_a_store_it_is_the_jitted_function(tmp_path):
    stored_programs.enable(None)
    jitted = jax.jit(step)
    assert same(StoredProgram(jitted, "step")(*arguments()), jitted(*arguments()))
    assert not list(tmp_path.iterdir())


def test_a_second_program_loads_what_the_first_stored_and_computes_the_same(store, caplog):
    expected = jax.jit(step)(*arguments())
    with caplog.at_level(logging.DEBUG, logger=stored_programs.__name__):
        first = StoredProgram(jax.jit(step), "step")(*arguments())
        (entry,) = store.glob("*.program")
        second = StoredProgram(jax.jit(step), "step")(*arguments())
    assert same(first, expected) and same(second, expected)
    assert [r.message.split()[0] for r in caplog.records] == ["compiled", "loaded"]
    assert list(store.glob("*.program")) == [entry]


def test_another_description_or_argument_shape_is_another_entry(store):
    StoredProgram(jax.jit(step), "step")(*arguments())
    StoredProgram(jax.jit(step), "step, other settings")(*arguments())
    program = StoredProgram(jax.jit(step), "step")
    params, x, _ = arguments(rows=6)
    assert same(program(params, x, None), jax.jit(step)(params, x, None))
    assert same(program(params, x, jnp.ones_like(x)), jax.jit(step)(params, x, jnp.ones_like(x)))
    assert len(list(store.glob("*.program"))) == 4


@pytest.mark.parametrize("damage", ["truncated", "emptied", "garbage", "one byte flipped"])
def test_a_damaged_entry_is_compiled_again_with_one_warning(store, caplog, damage):
    StoredProgram(jax.jit(step), "step")(*arguments())
    (entry,) = store.glob("*.program")
    data = entry.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "emptied": b"", "garbage": b"garbage",
               "one byte flipped": data[:-10] + bytes([data[-10] ^ 1]) + data[-9:]}[damage]
    entry.write_bytes(damaged)
    stored_programs._state["warned"] = False
    with caplog.at_level(logging.WARNING, logger=stored_programs.__name__):
        result = StoredProgram(jax.jit(step), "step")(*arguments())
        StoredProgram(jax.jit(step), "step, again")(*arguments())
    assert same(result, jax.jit(step)(*arguments()))
    assert len(caplog.records) == 1 and "damaged" in caplog.records[0].message
    assert entry.read_bytes() != damaged  # written again, whole


def test_an_entry_that_fails_to_run_is_compiled_again_with_one_warning(store, caplog):
    """XLA:CPU serializes a deserialized executable without its compiled functions: such an entry passes its
    checksum and loads, and fails on its first run; that run compiles instead and stores a sound entry."""
    expected = jax.jit(step)(*arguments())
    StoredProgram(jax.jit(step), "step")(*arguments())
    (entry,) = store.glob("*.program")
    stored_programs._store(entry, stored_programs._load(entry, arguments()))  # serialized again after loading
    with caplog.at_level(logging.DEBUG, logger=stored_programs.__name__):
        again = StoredProgram(jax.jit(step), "step")(*arguments())
        third = StoredProgram(jax.jit(step), "step")(*arguments())
    assert same(again, expected) and same(third, expected)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "failed to run, compiling it instead" in warnings[0]
    assert [r.message.split()[0] for r in caplog.records if r.levelno == logging.DEBUG] == ["compiled", "loaded"]


def test_a_store_that_cannot_be_written_is_one_warning(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    stored_programs.enable(blocker / "searches")
    stored_programs._state["warned"] = False
    try:
        with caplog.at_level(logging.WARNING, logger=stored_programs.__name__):
            for description in ("one", "two"):
                assert same(StoredProgram(jax.jit(step), description)(*arguments()), jax.jit(step)(*arguments()))
    finally:
        stored_programs.enable(None)
    assert len(caplog.records) == 1 and "cannot store" in caplog.records[0].message


def test_the_least_recently_used_entries_go_over_the_cap(store, monkeypatch):
    import os

    StoredProgram(jax.jit(step), "first")(*arguments())
    (first,) = store.glob("*.program")
    os.utime(first, (1, 1))  # long unused
    monkeypatch.setattr(stored_programs, "MAX_BYTES", first.stat().st_size + 1)
    StoredProgram(jax.jit(step), "second")(*arguments())
    (kept,) = store.glob("*.program")
    assert kept != first
