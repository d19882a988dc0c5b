"""Device meshes, shardings and multi-host initialisation: the same training code on one CPU, eight GPUs or
many hosts, with ``jax.sharding`` and ``jax.distributed`` (docs/scaling.md).

The mesh has a ``data`` axis (the global batch is split along it; XLA inserts the gradient all-reduce) and a
``model`` axis (size 1 unless asked for) that shards the vocabulary dimension of the embeddings and of the
output projection (``MODEL_PARALLEL_RULES``); everything else is replicated, and optimizer moments take
their parameter's sharding. Multi-host: ``initialize_distributed`` comes before any computation; every
process plans the same global batches, builds only its own rows (``BatchIterator(local_rows=...)`` with
``process_rows``) and ``shard_batch`` assembles the global array, so losses match a one-process run up to
floating-point reduction order. The step functions (``training.steps``) know nothing of this: the caller jits
them with the shardings made here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
MODEL_AXIS = "model"

# (regular expression searched in the leaf's ``jax.tree_util.keystr`` path, PartitionSpec on the model axis).
# ``$`` anchors at the end of the path, so ``['output']['kernel']`` matches the parameter and its Adam moments
# (``...mu['output']['kernel']``) but not ``['readout']['kernel']``.
MODEL_PARALLEL_RULES: tuple[tuple[str, PartitionSpec], ...] = (
    (r"\['src_embed'\]\['embedding'\]$", PartitionSpec(MODEL_AXIS, None)),   # [V_src, E]
    (r"\['tgt_embed'\]\['embedding'\]$", PartitionSpec(MODEL_AXIS, None)),   # [V_tgt, E]
    (r"\['output'\]\['kernel'\]$", PartitionSpec(None, MODEL_AXIS)),         # [R, V_tgt]
    (r"\['output'\]\['bias'\]$", PartitionSpec(MODEL_AXIS)),                 # [V_tgt]
)


class ParallelError(ValueError):
    """A mesh or batch layout that cannot work (e.g. a batch size the devices do not divide)."""


# ---------------------------------------------------------------------------------------------- processes

def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> bool:
    """Join a multi-process run with ``jax.distributed.initialize``; call it before any JAX computation.

    With ``coordinator_address`` (``HOST:PORT`` of process 0), ``num_processes`` and ``process_id`` the run is
    set up explicitly; with ``auto=True``, JAX detects what is not given from the cluster environment where it
    can (Cloud TPU pods, SLURM, Open MPI, Kubernetes; ``JAX_COORDINATOR_ADDRESS`` for the address). Returns
    whether ``jax.distributed`` is initialised (False: nothing asked for, a single-process run). On CPU,
    cross-process collectives use gloo.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if all(value is None for value in explicit) and not auto:
        return False
    if num_processes is not None and num_processes < 1:
        raise ParallelError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ParallelError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    if coordinator_address is not None and ":" not in coordinator_address:
        raise ParallelError(f"--coordinator must be HOST:PORT, got {coordinator_address!r}")
    if jax.distributed.is_initialized():
        return True
    _enable_cpu_collectives()
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    logger.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def _enable_cpu_collectives() -> None:
    """Cross-process collectives on the CPU backend need an implementation (gloo); GPUs and TPUs ignore it."""
    name = "jax_cpu_collectives_implementation"
    if not hasattr(jax.config, name):
        return  # this jax has no such option (collectives built in)
    if getattr(jax.config, name) in (None, "", "none"):
        jax.config.update(name, "gloo")


def is_main_process() -> bool:
    """Process 0: the one that logs, writes metrics and shows the progress bar."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """Barrier across processes (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on at least one (e.g. one of them got SIGTERM)."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray(int(bool(flag)), dtype=np.int32))
    return bool(np.any(flags))


# ---------------------------------------------------------------------------------------------- the mesh

def make_mesh(model_parallelism: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: every device of every process).

    ``model_parallelism`` is the size of the ``model`` axis; it must divide the number of devices. The axes
    are ``Auto`` (XLA propagates shardings from the inputs), and ``jax.make_mesh`` orders devices for the
    topology (the ``model`` axis, the fastest varying, stays inside a host where possible).
    """
    devices = list(jax.devices() if devices is None else devices)
    count = len(devices)
    if model_parallelism < 1 or count % model_parallelism:
        raise ParallelError(f"model parallelism {model_parallelism} must be a positive divisor of the number of "
                            f"devices ({count})")
    shape = (count // model_parallelism, model_parallelism)
    axis_types = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh(shape, (DATA_AXIS, MODEL_AXIS), axis_types=axis_types, devices=devices)


def data_size(mesh: Mesh) -> int:
    return int(mesh.shape[DATA_AXIS])


def model_size(mesh: Mesh) -> int:
    return int(mesh.shape.get(MODEL_AXIS, 1))


def describe(mesh: Mesh) -> str:
    return (f"mesh data={data_size(mesh)} x model={model_size(mesh)} over {mesh.size} {mesh.devices.flat[0].platform} "
            f"device(s) in {jax.process_count()} process(es)")


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "data.batch_size") -> None:
    """A batch the ``data`` axis does not divide evenly cannot be sharded: a clear error, before any work."""
    devices = data_size(mesh)
    if batch_size % devices:
        lower = batch_size // devices * devices
        suggestion = f"{lower} or {lower + devices}" if lower else f"{devices}"
        raise ParallelError(
            f"{what}={batch_size} is not divisible by the {devices} devices of the mesh's data axis "
            f"({describe(mesh)}); the global batch is split evenly across them. Use a multiple of {devices}, "
            f"e.g. {suggestion}.")


# ---------------------------------------------------------------------------------------------- shardings

def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split along ``data``; any further dimension replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def _spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules, replicated_leaves: list[str]) -> PartitionSpec:
    if model_size(mesh) == 1:
        return PartitionSpec()
    for pattern, spec in rules:
        if not re.search(pattern, path) or len(spec) != len(shape):
            continue
        for dim, axis in zip(shape, spec, strict=True):
            if axis is not None and dim % mesh.shape[axis]:
                replicated_leaves.append(f"{path} {shape}")
                return PartitionSpec()
        return spec
    return PartitionSpec()


def state_shardings(tree: Any, mesh: Mesh, rules=MODEL_PARALLEL_RULES) -> Any:
    """A ``NamedSharding`` for every leaf of ``tree`` (parameters, optimizer state, a whole ``TrainState``).

    Leaves matching ``rules`` are sharded on the ``model`` axis when it is larger than 1 and divides their
    sharded dimension (otherwise they are replicated, with a warning naming them); all others are replicated.
    """
    replicated_leaves: list[str] = []

    def sharding(path, leaf):
        shape = tuple(np.shape(leaf))
        return NamedSharding(mesh, _spec_for(jax.tree_util.keystr(path), shape, mesh, rules, replicated_leaves))

    shardings = jax.tree_util.tree_map_with_path(sharding, tree)
    if replicated_leaves:
        logger.warning("model axis of size %d does not divide the vocabulary dimension of %s; replicated instead",
                       model_size(mesh), ", ".join(sorted(set(replicated_leaves))))
    return shardings


def place(tree: Any, shardings: Any) -> Any:
    """Put a host-identical pytree (numpy or single-device arrays, the same values on every process) onto
    ``shardings``; each process transfers only the pieces its own devices hold."""
    host = jax.device_get(tree)

    def put(value, sharding):
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, host, shardings)


def abstract_like(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves carrying ``shardings``: a restore target for ``Checkpointer.restore``."""
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=sharding),
                        tree, shardings)


def to_host(tree: Any) -> Any:
    """Every leaf as a numpy array holding the global value (an all-gather where another process holds a
    part of it; call it on every process)."""

    def fetch(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(jax.device_get(leaf))

    return jax.tree.map(fetch, tree)


def local_copy(tree: Any, device: jax.Device | None = None) -> Any:
    """The global values of ``tree`` on one local device (default: the first one of this process), for
    work that every process does on its own (decoding the validation sample)."""
    return jax.device_put(to_host(tree), device or jax.local_devices()[0])


# ---------------------------------------------------------------------------------------------- batches

def process_rows(sharding: NamedSharding, global_rows: int) -> slice:
    """The rows of a ``global_rows``-row batch that this process's devices hold under ``sharding`` (one
    contiguous block, the convention of ``jax.make_array_from_process_local_data``)."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map((global_rows,)).values():
        rows = index[0]
        starts.append(0 if rows.start is None else rows.start)
        stops.append(global_rows if rows.stop is None else rows.stop)
    start, stop = min(starts), max(stops)
    held = sum(stop_ - start_ for start_, stop_ in sorted(set(zip(starts, stops, strict=True))))
    if held != stop - start:
        raise ParallelError(f"process {jax.process_index()} holds non-contiguous batch rows under {sharding}; "
                            "order the mesh so that each process's devices are adjacent on the data axis")
    return slice(start, stop)


def shard_batch(arrays: dict[str, np.ndarray], sharding: NamedSharding,
                global_rows: int | None = None) -> dict[str, jax.Array]:
    """A batch as global arrays split along ``sharding``'s data axis.

    ``global_rows=None``: ``arrays`` are the whole global batch (the same on every process) and each process
    hands over only its own rows of them (``process_rows``). Otherwise ``arrays`` are already this process's
    rows (``process_rows(sharding, global_rows)``, e.g. from ``BatchIterator(local_rows=...)``) of a global
    batch of ``global_rows`` rows, the other dimensions as given."""
    sizes = {int(np.shape(value)[0]) for value in arrays.values()}
    if len(sizes) != 1:
        raise ParallelError(f"batch arrays disagree on the batch size: { {k: np.shape(v) for k, v in arrays.items()} }")
    rows_given = sizes.pop()
    if global_rows is None:
        global_rows = rows_given
    check_batch_size(global_rows, sharding.mesh, what="batch size")
    rows = process_rows(sharding, global_rows)
    if rows_given == global_rows:
        local = {name: np.asarray(value)[rows] for name, value in arrays.items()}
    elif rows_given == rows.stop - rows.start:
        local = {name: np.asarray(value) for name, value in arrays.items()}
    else:
        raise ParallelError(f"process {jax.process_index()} holds rows {rows.start}:{rows.stop} of a "
                            f"{global_rows}-row batch but was given {rows_given} rows")
    return {name: jax.make_array_from_process_local_data(sharding, value, (global_rows, *value.shape[1:]))
            for name, value in local.items()}


# ---------------------------------------------------------------------------------------------- steps

def jit_train_step(train_step, mesh: Mesh, state_shardings: Any, donate: bool = True):
    """``jax.jit`` a pure ``train_step(state, batch) -> (state, metrics)`` for ``mesh``: the state stays on
    ``state_shardings`` (donated), the batch is split along ``data``, the metrics come back replicated."""
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0 if donate else ())


def jit_grad_accumulation(zero_accumulator, accumulate, apply_update, mesh: Mesh, state_shardings: Any):
    """``jax.jit`` the pure functions of ``train.make_grad_accumulation`` for ``mesh``: the accumulator's
    gradients are sharded like the parameters (and donated from one micro-batch to the next), its sums and the
    metrics replicated, the batch split along ``data``; ``apply_update`` donates the state."""
    acc_shardings = {"grads": state_shardings.params, "loss_sum": replicated(mesh), "tokens": replicated(mesh)}
    zero = jax.jit(zero_accumulator, in_shardings=(state_shardings.params,), out_shardings=acc_shardings)
    add = jax.jit(accumulate, in_shardings=(state_shardings, acc_shardings, batch_sharding(mesh), replicated(mesh)),
                  out_shardings=acc_shardings, donate_argnums=1)
    update = jax.jit(apply_update, in_shardings=(state_shardings, acc_shardings),
                     out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)
    return zero, add, update


def jit_eval_step(eval_step, mesh: Mesh, param_shardings: Any):
    """``jax.jit`` a pure ``eval_step(params, batch) -> (loss_sum, tokens)`` for ``mesh``."""
    return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding(mesh)), out_shardings=replicated(mesh))


__all__ = ["DATA_AXIS", "MODEL_AXIS", "MODEL_PARALLEL_RULES", "ParallelError", "initialize_distributed",
           "is_main_process", "sync_processes", "any_process", "make_mesh", "data_size", "model_size", "describe",
           "check_batch_size", "replicated", "batch_sharding", "state_shardings", "place", "abstract_like",
           "to_host", "local_copy", "process_rows", "shard_batch", "jit_train_step",
           "jit_grad_accumulation", "jit_eval_step"]
