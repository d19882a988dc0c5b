"""Per-process reading: with 2 processes x 2 CPU devices (gloo, 127.0.0.1) each process reads only the
examples of its rows of every global batch, the two sets of examples read in an epoch are disjoint and together
are the epoch, and the losses equal one process training on the same global batches.

The processes run tests/parallel_support.py ``read_shards``; the one-process reference runs here, on one
device, with the same tiny experiment (a token budget, so the global batches differ in rows).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from parallel_support import READING, RecordingSource, encoded_experiment, reading_batches, run_steps
from test_data import make_examples
from test_parallel import ROOT, SUPPORT, TOLERANCE, device_env

from seq2seq_jax.core.batching import BatchPolicy, example_lengths
from seq2seq_jax.core.reading import DataError
from seq2seq_jax.training import parallel
from seq2seq_jax.training.batch_iterator import BatchIterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes() -> list[dict]:
    coordinator = f"127.0.0.1:{free_port()}"
    processes = [subprocess.Popen([sys.executable, str(SUPPORT), "read_shards", coordinator, "2", str(index)],
                                  env=device_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for index in range(2)]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stdout[-3000:] + stderr[-5000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return sorted(results, key=lambda result: result["process"])


def test_each_process_reads_its_own_part_of_the_epoch(two_processes):
    config, examples = encoded_experiment(*READING)
    planned = reading_batches(config, RecordingSource(examples))
    first, second = (set(result["read"]) for result in two_processes)
    assert all(len(result["read"]) == len(set(result["read"])) for result in two_processes)  # each read once
    assert not first & second
    assert first | second == set(range(len(examples)))
    assert all(result["epoch"] == 1 and result["mesh"].startswith("mesh data=4") for result in two_processes)
    # The same steps everywhere: both processes took the epoch's batches, each holding half the rows of each.
    rows = [result["rows"] for result in two_processes]
    assert len(rows[0]) == len(rows[1]) == planned.batches_per_epoch
    assert all(local * 2 == global_ for result_rows in rows for local, global_ in result_rows)
    assert len({global_ for _, global_ in rows[0]}) > 1  # the token budget gives batches of different rows
    assert sum(two_processes[0]["real_rows"]) == len(first) and sum(two_processes[1]["real_rows"]) == len(second)


def test_losses_equal_one_process_on_the_same_global_batches(two_processes):
    config, examples = encoded_experiment(*READING)
    planned = reading_batches(config, examples)
    batches = [next(planned).arrays() for _ in range(planned.batches_per_epoch)]
    losses, _, _ = run_steps(config, batches, parallel.make_mesh(devices=jax.devices()[:1]))
    assert two_processes[0]["losses"] == two_processes[1]["losses"]  # replicated metrics
    errors = [abs(a - b) / b for a, b in zip(two_processes[0]["losses"], losses, strict=True)]
    print(f"\nper-process reading, {len(losses)} steps: largest per-step loss relative error {max(errors):.2e}")
    assert max(errors) <= TOLERANCE  # float32 reduction order: 4 devices against 1


def test_local_rows_reads_only_those_rows_with_the_global_widths():
    examples = make_examples(200, seed=4, max_len=30)
    whole = BatchIterator(examples, BatchPolicy(16, (8, 4), max_tokens=128, row_quantum=4), seed=2)
    halves = [BatchIterator(source, BatchPolicy(16, (8, 4), max_tokens=128, row_quantum=4), seed=2,
                                     local_rows=local, read_threads=threads, prefetch=3)
              for source, local, threads in ((RecordingSource(examples), lambda rows: slice(0, rows // 2), 0),
                                             (RecordingSource(examples), lambda rows: slice(rows // 2, rows), 2))]
    for _ in range(whole.batches_per_epoch + 3):  # into the second epoch
        batch, parts = next(whole), [next(half) for half in halves]
        for field in ("src", "src_len", "tgt_in", "tgt_out", "tgt_len", "index"):
            np.testing.assert_array_equal(getattr(batch, field), np.concatenate([getattr(p, field) for p in parts]))
        assert batch.global_rows is None and all(part.global_rows == len(batch.index) for part in parts)
        for part, half in zip(parts, halves, strict=True):
            assert set(part.index[part.index >= 0].tolist()) <= set(half.source.read)
    state = halves[1].state()
    assert state == whole.state()  # the position does not depend on the rows read
    resumed = BatchIterator(RecordingSource(examples), BatchPolicy(16, (8, 4), max_tokens=128, row_quantum=4), seed=2,
                                     local_rows=lambda rows: slice(rows // 2, rows), read_threads=2, prefetch=3)
    resumed.restore(state)
    for _ in range(4):
        np.testing.assert_array_equal(next(resumed).index, next(halves[1]).index)


def test_lengths_must_describe_the_source():
    examples = make_examples(10)
    with pytest.raises(DataError, match=r"lengths of shape \(9, 2\) do not describe 10 examples"):
        BatchIterator(examples, BatchPolicy(4, 4), seed=0, lengths=example_lengths(examples[:9]))
    wrong = example_lengths(examples)
    wrong[:, 0] = 1  # every source claimed one token long
    iterator = BatchIterator(examples, BatchPolicy(4, 4), seed=0, lengths=wrong)
    with pytest.raises(DataError, match="longer than their lengths say"):
        next(iterator)


def test_shard_batch_takes_process_local_rows():
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    sharding = parallel.batch_sharding(mesh)
    arrays = {"src": np.arange(16).reshape(8, 2), "src_len": np.arange(8)}
    local = parallel.shard_batch(arrays, sharding, global_rows=8)  # one process holds every row
    np.testing.assert_array_equal(np.asarray(local["src"]), arrays["src"])
    with pytest.raises(parallel.ParallelError, match="holds rows 0:12 of a 12-row batch but was given 8 rows"):
        parallel.shard_batch(arrays, sharding, global_rows=12)
