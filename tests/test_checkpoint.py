"""Tests for seq2seq_jax.training.checkpoint: round trip, keep-latest-N plus best, non-finite refusal, unfinished
saves, corrupt checkpoints and restoring into an abstract (ShapeDtypeStruct) target."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seq2seq_jax.training import checkpoint
from seq2seq_jax.training.checkpoint import CORRUPT_DIR, Checkpointer, CheckpointError, find_nonfinite_leaf

REPO_ROOT = Path(__file__).resolve().parents[1]

# A failed tensorstore read inside orbax can leave a callback aimed at orbax's already-closed asyncio loop;
# Python reports it as "unraisable" (RuntimeError: Event loop is closed). It is harmless noise of the
# library, not of this code, so it is silenced only in the tests that read damaged checkpoints.
ignore_orbax_closed_loop_noise = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def make_state(scale: float = 1.0):
    """A tiny train state: params [3, 4] and [4], an Adam optimizer state, and an int step counter."""
    params = {"w": jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4) * scale, "b": jnp.full((4,), scale)}
    opt_state = optax.adam(1e-3).init(params)
    opt_state = jax.tree.map(lambda x: x + 0.5 * scale if jnp.issubdtype(x.dtype, jnp.floating) else x + 3,
                             opt_state)
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(7, jnp.int32)}


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.asarray(a).dtype == np.asarray(e).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def save_steps(ckpt: Checkpointer, steps, metric_of=None):
    for step in steps:
        metrics = None if metric_of is None else {"valid_loss": metric_of(step)}
        assert ckpt.save(step, make_state(float(step)), {"iterator": {"epoch": step}}, metrics=metrics)
    ckpt.wait_until_finished()


def damage_arrays(step_dir: Path, how: str = "truncate") -> None:
    """Truncate or delete every array data file of a step (what a full disk or a bad copy leaves)."""
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files, f"no array data files found under {step_dir}"
    for path in data_files:
        if how == "truncate":
            with open(path, "r+b") as handle:
                handle.truncate(max(0, path.stat().st_size // 2))
        else:
            path.unlink()


def test_round_trip_with_extra_and_adam_state(tmp_path):
    state = make_state(2.0)
    extra = {"iterator": {"epoch": 3, "position": 17, "order": [2, 0, 1]}, "config": {"model": {"hidden": 8}},
             "rng": [0, 42], "note": "ünïcode"}
    with Checkpointer(tmp_path, keep=2) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(10, state, extra, metrics={"valid_loss": 1.5})
    with Checkpointer(tmp_path, keep=2) as reopened:
        step, restored, restored_extra = reopened.restore(target=make_state(0.0))
        assert step == 10 and reopened.all_steps() == [10]
        assert_trees_equal(restored, state)
        assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
        assert restored_extra == extra
        assert reopened.step_metrics(10) == {"valid_loss": 1.5}


def test_restore_without_target_returns_saved_values(tmp_path):
    state = make_state(3.0)
    with Checkpointer(tmp_path, keep=1) as ckpt:
        ckpt.save(1, state, {})
        _, restored, _ = ckpt.restore(1)
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(state["params"]["w"]))
    assert int(restored["step"]) == 7


def test_keeps_latest_n_and_the_best(tmp_path):
    losses = {1: 5.0, 2: 0.5, 3: 4.0, 4: 3.0, 5: 2.0, 6: 1.0}  # best is step 2, far behind the latest two
    with Checkpointer(tmp_path, keep=2, best_metric="valid_loss", best_mode="min") as ckpt:
        save_steps(ckpt, losses, metric_of=losses.get)
        assert ckpt.all_steps() == [2, 5, 6]
        assert ckpt.best_step() == 2
        on_disk = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
        assert on_disk == ["2", "5", "6"]
    with Checkpointer(tmp_path, keep=2, best_metric="valid_loss", best_mode="min") as reopened:
        assert reopened.best_step() == 2 and reopened.latest_step() == 6
        step, state, extra = reopened.restore("best", target=make_state())
        assert step == 2 and extra == {"iterator": {"epoch": 2}}
        assert_trees_equal(state, make_state(2.0))
        # A new best moves the mark; the old best then falls to the keep-latest rule.
        save_steps(reopened, [7], metric_of=lambda step: 0.1)
        assert reopened.all_steps() == [6, 7] and reopened.best_step() == 7


def test_best_mode_max_and_steps_without_metrics(tmp_path):
    with Checkpointer(tmp_path, keep=1, best_metric="valid_bleu", best_mode="max") as ckpt:
        ckpt.save(1, make_state(), {}, metrics={"valid_bleu": 30.0})
        ckpt.save(2, make_state(), {}, metrics={"valid_bleu": 10.0})
        ckpt.save(3, make_state(), {})  # no metrics: never the best, kept only while latest
        ckpt.save(4, make_state(), {}, metrics={"valid_bleu": float("nan")})
        ckpt.wait_until_finished()
        assert ckpt.best_step() == 1
        assert ckpt.all_steps() == [1, 4]


def test_non_finite_state_is_refused_and_nothing_written(tmp_path):
    bad = make_state()
    bad["opt_state"][0].nu["w"] = bad["opt_state"][0].nu["w"].at[1, 2].set(jnp.nan)
    assert "nu" in find_nonfinite_leaf(bad)
    with Checkpointer(tmp_path, keep=2) as ckpt:
        with pytest.raises(ValueError, match=r"leaf .*nu.* non-finite"):
            ckpt.save(1, bad, {})
        with pytest.raises(ValueError, match="non-finite"):
            ckpt.save(1, {"x": np.array([1.0, np.inf], np.float32)}, {})
        with pytest.raises(ValueError, match="non-finite"):
            ckpt.save(1, {"x": jnp.array([1.0, -np.inf], jnp.bfloat16)}, {})
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == []
        assert not any(p.name.startswith("1") for p in (tmp_path / "checkpoints").iterdir())
        assert find_nonfinite_leaf({"count": jnp.asarray(3), "x": np.ones(2)}) is None


def test_the_compiled_finite_check_agrees_with_the_host_one():
    """Arrays on CPU are checked by numpy in place; elsewhere (accelerators, arrays spread over hosts) one
    compiled pass does it: both give the same answer, leaf by leaf."""
    leaves = [jnp.ones((2, 3)), jnp.array([1.0, jnp.nan]), jnp.array([jnp.inf], jnp.bfloat16),
              jnp.zeros(4, jnp.bfloat16)]
    compiled = [bool(finite) for finite in jax.device_get(checkpoint._leaves_finite(leaves))]
    assert compiled == [True, False, False, True]
    assert [find_nonfinite_leaf([leaf]) for leaf in leaves] == [None, "[0]", "[0]", None]


def test_extra_must_be_json(tmp_path):
    with Checkpointer(tmp_path, keep=1) as ckpt:
        with pytest.raises(ValueError, match="JSON"):
            ckpt.save(1, make_state(), {"rng": np.arange(2)})
        assert ckpt.all_steps() == []


def test_abstract_target_with_sharding_and_dtype(tmp_path):
    state = make_state(1.5)
    device_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device_sharding), state)
    abstract["params"]["b"] = jax.ShapeDtypeStruct((4,), jnp.bfloat16, sharding=device_sharding)
    with Checkpointer(tmp_path, keep=1) as ckpt:
        ckpt.save(3, state, {"k": 1})
        step, restored, _ = ckpt.restore(None, target=abstract)
    assert step == 3
    assert isinstance(restored["params"]["w"], jax.Array)
    assert restored["params"]["w"].sharding == device_sharding
    assert restored["params"]["b"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(state["params"]["w"]))


def test_target_mismatch_is_an_error_not_corruption(tmp_path):
    with Checkpointer(tmp_path, keep=2) as ckpt:
        save_steps(ckpt, [1, 2])
        with pytest.raises(CheckpointError, match="does not match the restore target"):
            ckpt.restore(target={"something": jnp.zeros(3)})
        assert ckpt.all_steps() == [1, 2]
    assert not (tmp_path / CORRUPT_DIR).exists()


def test_uncommitted_tmp_directory_is_never_listed_or_restored(tmp_path):
    with Checkpointer(tmp_path, keep=3) as ckpt:
        save_steps(ckpt, [1])
    # What orbax leaves when killed mid-save: a step directory with the tmp suffix, half written.
    unfinished = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(tmp_path / "checkpoints" / "1", unfinished)
    (unfinished / "extra" / "metadata").write_text("{\"iterator\": ")
    with Checkpointer(tmp_path, keep=3) as reopened:
        assert reopened.all_steps() == [1]
        step, _, extra = reopened.restore()
        assert step == 1 and extra == {"iterator": {"epoch": 1}}
        with pytest.raises(CheckpointError, match="no checkpoint for step 2"):
            reopened.restore(2)


def test_process_killed_mid_save_leaves_nothing_restorable(tmp_path):
    script = textwrap.dedent(f"""
        import glob, os, signal, sys, time
        import jax.numpy as jnp
        from seq2seq_jax.training.checkpoint import Checkpointer
        ckpt = Checkpointer({str(tmp_path)!r}, keep=3)
        ckpt.save(1, {{"w": jnp.ones(4)}}, {{"done": 1}})
        ckpt.wait_until_finished()
        big = {{f"w{{i}}": jnp.ones((1_000_000,)) for i in range(8)}}  # 32 MB: the write outlives the kill
        ckpt.save(2, big, {{"done": 2}})
        # Kill once the background write has started (its tmp directory exists), however loaded the machine.
        deadline = time.monotonic() + 60
        while not glob.glob(os.path.join({str(tmp_path / "checkpoints")!r}, "2.*tmp*")) and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert any(name.startswith("2.") and "tmp" in name for name in leftovers), leftovers
    with Checkpointer(tmp_path, keep=3) as reopened:
        assert reopened.all_steps() == [1]
        step, _, extra = reopened.restore()
        assert (step, extra) == (1, {"done": 1})
        # Saving that step again replaces the stale tmp directory.
        assert reopened.save(2, {"w": jnp.zeros(4)}, {"done": 2})
        reopened.wait_until_finished()
        assert reopened.restore()[0] == 2


@ignore_orbax_closed_loop_noise
@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage_metadata"])
def test_corrupt_latest_falls_back_with_warning_naming_both_steps(tmp_path, caplog, damage):
    with Checkpointer(tmp_path, keep=3) as ckpt:
        save_steps(ckpt, [10, 20])
    latest_dir = tmp_path / "checkpoints" / "20"
    if damage == "garbage_metadata":
        (latest_dir / "extra" / "metadata").write_text("garbage{")
    else:
        damage_arrays(latest_dir, damage)
    with caplog.at_level(logging.WARNING, logger="seq2seq_jax.training.checkpoint"):
        with Checkpointer(tmp_path, keep=3) as reopened:
            step, state, extra = reopened.restore(target=make_state())
            assert step == 10 and extra == {"iterator": {"epoch": 10}}
            assert_trees_equal(state, make_state(10.0))
            # The unreadable step is moved aside, not deleted, so the resumed run can save step 20 again.
            assert reopened.all_steps() == [10]
            assert (tmp_path / CORRUPT_DIR / "20").is_dir()
            assert reopened.save(20, make_state(), {})
    assert "step 20" in caplog.text and "step 10" in caplog.text and str(latest_dir) in caplog.text


@ignore_orbax_closed_loop_noise
def test_all_corrupt_raises_checkpoint_error(tmp_path):
    with Checkpointer(tmp_path, keep=3) as ckpt:
        save_steps(ckpt, [1, 2])
    for step in (1, 2):
        damage_arrays(tmp_path / "checkpoints" / str(step), "delete")
    with Checkpointer(tmp_path, keep=3) as reopened:
        with pytest.raises(CheckpointError, match="no readable checkpoint") as raised:
            reopened.restore()
        assert "step 1" in str(raised.value) and "step 2" in str(raised.value)
        assert reopened.all_steps() == [1, 2]  # nothing moved or deleted when nothing can be resumed
    assert not (tmp_path / CORRUPT_DIR).exists()


@ignore_orbax_closed_loop_noise
def test_explicit_corrupt_step_raises_naming_path(tmp_path):
    with Checkpointer(tmp_path, keep=3, best_metric="valid_loss") as ckpt:
        save_steps(ckpt, [1, 2], metric_of=lambda step: float(step))
    damage_arrays(tmp_path / "checkpoints" / "1", "truncate")
    with Checkpointer(tmp_path, keep=3, best_metric="valid_loss") as reopened:
        path = str(tmp_path / "checkpoints" / "1")
        with pytest.raises(CheckpointError, match="unreadable") as raised:
            reopened.restore(1)
        assert path in str(raised.value)
        with pytest.raises(CheckpointError, match="unreadable"):
            reopened.restore("best")
        assert reopened.restore(2)[0] == 2


def test_no_checkpoint_and_no_best(tmp_path):
    with Checkpointer(tmp_path, keep=1) as ckpt:
        with pytest.raises(CheckpointError, match="no checkpoint in"):
            ckpt.restore()
        ckpt.save(1, make_state(), {})
        with pytest.raises(CheckpointError, match="no best"):
            ckpt.restore("best")
        assert ckpt.best_step() is None
        assert not ckpt.save(1, make_state(), {})  # not newer than the latest: skipped, not overwritten


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path, keep=0)
    with pytest.raises(ValueError, match="best_mode"):
        Checkpointer(tmp_path, keep=1, best_mode="lowest")
    assert os.path.isdir(tmp_path)


DISK_FULL = ValueError('RESOURCE_EXHAUSTED: Error writing "a/0" in OCDBT database at local file "x": Failed to write '
                       "953845 bytes to file 17: No space left on device [os_error_code='28']")


@pytest.mark.parametrize("async_save", [False, True])
@pytest.mark.parametrize("cause", ["disk_full", "other"])
def test_a_failed_save_names_the_step_the_cause_and_the_last_checkpoint(tmp_path, monkeypatch, async_save, cause):
    """Where the failure surfaces (save itself, or the next wait for a background save) does not change the
    error; the full-disk case in a real filesystem is tests/test_full_disk.py."""
    with Checkpointer(tmp_path, keep=3, async_save=async_save) as ckpt:
        save_steps(ckpt, [1])
        manager = ckpt._manager
        error = DISK_FULL if cause == "disk_full" else KeyError("boom")
        partial = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234"

        def failing_save(step, args, force):  # what orbax leaves when a write fails: a partial directory
            partial.mkdir()
            if not async_save:
                raise error
            return True

        def failing_wait():
            monkeypatch.undo()
            raise error

        monkeypatch.setattr(manager, "save", failing_save)
        if async_save:
            ckpt.save(2, make_state(2.0))
            monkeypatch.setattr(manager, "wait_until_finished", failing_wait)
        with pytest.raises(CheckpointError) as raised:
            ckpt.save(2, make_state(2.0)) if not async_save else ckpt.wait_until_finished()
        monkeypatch.undo()
        said = "the disk is full (No space left on device)" if cause == "disk_full" else "KeyError: 'boom'"
        assert str(raised.value) == (f"could not save the checkpoint of step 2 to {tmp_path / 'checkpoints' / '2'}: "
                                     f"{said}; the last complete checkpoint is step 1 "
                                     f"({tmp_path / 'checkpoints' / '1'})")
        assert raised.value.__cause__ is error and not partial.exists()
        assert ckpt.all_steps() == [1] and ckpt.restore(None)[0] == 1


def test_orbax_tracebacks_are_logged_only_at_debug(caplog):
    import seq2seq_jax.training.checkpoint as checkpoint_lib

    absl_logger = logging.getLogger("absl")

    def orbax_record():
        try:
            raise DISK_FULL
        except ValueError:
            return absl_logger.makeRecord("absl", logging.ERROR, "/site-packages/orbax/checkpoint/future.py", 1,
                                          "_SignalingThread.run() raised an exception", (), sys.exc_info())

    plain = absl_logger.makeRecord("absl", logging.WARNING, "/site-packages/orbax/x.py", 1, "a warning", (), None)
    with caplog.at_level(logging.INFO, logger=checkpoint_lib.__name__):
        assert not absl_logger.filter(orbax_record()) and absl_logger.filter(plain)
    with caplog.at_level(logging.DEBUG, logger=checkpoint_lib.__name__):
        assert absl_logger.filter(orbax_record())


def test_unretrieved_write_errors_of_a_failed_save_are_logged_only_at_debug(caplog):
    """asyncio's report of a write's future that nobody awaited, collected after the save failed."""
    import seq2seq_jax.training.checkpoint as checkpoint_lib

    async def fail(message: str) -> None:
        raise ValueError(message)

    def collect_unretrieved(message: str) -> list[str]:
        """Messages asyncio logs for a future, a task and a gathering future whose exceptions nobody retrieved."""
        caplog.clear()
        loop = asyncio.new_event_loop()
        future = loop.create_future()
        future.set_exception(ValueError(message))
        task = loop.create_task(fail(message))
        gathered_task = loop.create_task(fail(message))
        gathered = asyncio.gather(gathered_task)
        loop.run_until_complete(asyncio.wait([task, gathered]))
        gathered_task.exception()  # retrieved: only the gathering future itself goes unretrieved
        loop.close()
        del future, task, gathered, gathered_task
        gc.collect()
        return [record.getMessage().split("\n")[0] for record in caplog.records if record.name == "asyncio"]

    UNRETRIEVED = [f"{kind} exception was never retrieved" for kind in ("Future", "Task", "_GatheringFuture")]
    orphaned_write = ('RESOURCE_EXHAUSTED: Error writing "params.w/0.0" in OCDBT database at local file '
                      '"/w/checkpoints/12.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/"')
    with caplog.at_level(logging.INFO, logger=checkpoint_lib.__name__):
        assert collect_unretrieved(orphaned_write) == []
        assert sorted(collect_unretrieved("a failure of something else")) == sorted(UNRETRIEVED)
    with caplog.at_level(logging.DEBUG, logger=checkpoint_lib.__name__):
        assert sorted(collect_unretrieved(orphaned_write)) == sorted(UNRETRIEVED)
