"""Worker side of tests/test_parallel.py. The device count of a JAX process is fixed when its backend starts
(``--xla_force_host_platform_device_count``), so every multi-device check runs here, in a subprocess:

    python tests/parallel_support.py steps OUT_DIR         (4 devices) sharded steps vs the one-device step;
                                                            saves a checkpoint of the 2x2-sharded state
    python tests/parallel_support.py restore CKPT_DIR OUT_DIR   (any device count) restores that checkpoint
                                                            onto this process's mesh and compares values
    python tests/parallel_support.py read_shards HOST:PORT N I  process I of N (jax.distributed): one epoch
                                                            read and trained from this process's rows only

Each prints one JSON line (the last line of stdout) with what it measured.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_support import tiny_config  # noqa: E402

from seq2seq_jax.core.batching import Batch, BatchPolicy, example_lengths, round_up  # noqa: E402
from seq2seq_jax.core.encoding import encode_pairs  # noqa: E402
from seq2seq_jax.core.tokenizer import build_tokenizers  # noqa: E402
from seq2seq_jax.training import parallel  # noqa: E402
from seq2seq_jax.training.batch_iterator import BatchIterator  # noqa: E402
from seq2seq_jax.training.checkpoint import Checkpointer  # noqa: E402
from seq2seq_jax.training.steps import init_train_state, make_optimizer, make_train_step  # noqa: E402
from seq2seq_jax.training.tasks import task_splits  # noqa: E402
from seq2seq_jax.training.workdir import fresh_train_state  # noqa: E402

STEPS = 3
VOCAB_MULTIPLE = 4  # vocabularies rounded up so that a model axis of 2 shards them (the extra rows go unused)


def encoded_experiment(*overrides: str):
    """The tiny test experiment (dropout on; ``overrides`` as ``--set`` strings) with resolved,
    model-axis-divisible vocabularies, and its encoded training examples."""
    config = tiny_config("data.batch_size=16", *overrides)
    train_pairs, _ = task_splits(config.data.task, config.data.task_train_size, 1, config.data.task_seed)
    src_tok, tgt_tok = build_tokenizers(config.data, [s for s, _ in train_pairs], [t for _, t in train_pairs],
                                        tempfile.mkdtemp())
    config = config.with_vocab_sizes(round_up(src_tok.vocab_size, VOCAB_MULTIPLE),
                                     round_up(tgt_tok.vocab_size, VOCAB_MULTIPLE))
    examples, _ = encode_pairs(train_pairs, src_tok, tgt_tok, config.data)
    return config, examples


def experiment(*overrides: str):
    """``encoded_experiment``'s config and its first ``STEPS`` global batches of one padded shape (one compiled
    program per mesh) as numpy arrays."""
    config, examples = encoded_experiment(*overrides)
    iterator = BatchIterator(examples, BatchPolicy.of(config.data), config.data.seed)
    batches = []
    while len(batches) < STEPS:
        batch = next(iterator)
        arrays = batch.arrays()
        if not batches or all(arrays[k].shape == batches[0][k].shape for k in arrays):
            batches.append(arrays)
    return config, batches


def run_steps(config, batches, mesh, optimizer=None):
    """Jitted train steps on ``mesh`` exactly as the trainer runs them (with ``optimizer`` in place of the
    configured one when given); returns the per-step mean losses, the host copy of the state after each step,
    and the final state on the mesh."""
    graphdef, host_state = fresh_train_state(config)
    if optimizer is None:
        optimizer = make_optimizer(config.train)
    else:
        host_state = init_train_state(host_state.params, optimizer, config.train.seed)
    shardings = parallel.state_shardings(host_state, mesh)
    state = parallel.place(host_state, shardings)
    step_fn = parallel.jit_train_step(make_train_step(graphdef, optimizer, config.train.label_smoothing),
                                      mesh, shardings)
    losses, snapshots = [], []
    for batch in batches:  # global arrays, or a data.Batch of this process's rows
        arrays, global_rows = (batch.arrays(), batch.global_rows) if isinstance(batch, Batch) else (batch,
                                                                                                            None)
        state, metrics = step_fn(state, parallel.shard_batch(arrays, parallel.batch_sharding(mesh), global_rows))
        metrics = jax.device_get(metrics)
        assert int(metrics["finite"]) == 1
        losses.append(float(metrics["loss_sum"]) / float(metrics["tokens"]))
        snapshots.append(parallel.to_host(state))
    return losses, snapshots, state


def relative_errors(reference_losses, losses, reference_state, state) -> dict[str, float]:
    """What "equal up to float32 reduction order" means here:

    ``loss``: the largest relative error of a step's mean loss; ``params``: the largest per-leaf
    ``max|p - p_ref| / max|p_ref|``; ``params_norm`` and ``opt_state_norm``: ``||x - x_ref|| / ||x_ref||`` over
    all leaves together; ``opt_state_leaf``: the largest per-leaf ``||x - x_ref|| / ||x_ref||`` of the optimizer
    state, reported, not bounded: Adam's second moment of a leaf whose gradient is ~1e-10 (the attention's key
    bias at initialisation) inherits that gradient's cancellation-level relative error (~1e-3).
    """
    result = {"loss": max(abs(a - b) / abs(b) for a, b in zip(losses, reference_losses, strict=True))}
    for tree in ("params", "opt_state"):
        pairs = [(np.asarray(ref, np.float64), np.asarray(value, np.float64)) for ref, value in zip(
            jax.tree.leaves(getattr(reference_state, tree)), jax.tree.leaves(getattr(state, tree)), strict=True)
            if np.issubdtype(np.asarray(ref).dtype, np.floating) and np.size(ref)]
        total = float(np.sqrt(sum(np.sum(ref ** 2) for ref, _ in pairs)))
        total_diff = float(np.sqrt(sum(np.sum((value - ref) ** 2) for ref, value in pairs)))
        result[f"{tree}_norm"] = total_diff / total
        per_leaf_max = [float(np.max(np.abs(value - ref)) / np.max(np.abs(ref))) for ref, value in pairs
                        if np.max(np.abs(ref)) > 0]
        per_leaf_norm = [float(np.linalg.norm(value - ref) / np.linalg.norm(ref)) for ref, value in pairs
                         if np.linalg.norm(ref) > 0]
        if tree == "params":
            result["params"] = max(per_leaf_max)
        else:
            result["opt_state_leaf"] = max(per_leaf_norm)
    return result


def sharding_summary(state) -> dict[str, str]:
    return {jax.tree_util.keystr(path): str(leaf.sharding.spec)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]}


def cmd_steps(out_dir: Path) -> dict:
    assert jax.device_count() == 4, jax.devices()
    # The copy mechanism scatters attention into the vocabulary axis, which the model axis shards. Its copy
    # path gives the attention parameters gradient elements near zero, where Adam's update lr·g/(|g| + eps)
    # turns float32 reduction-order noise into per-element errors of ~1e-5; so the copy model steps with SGD
    # (learning rate 1, momentum 0.5, under the train step's non-finite guard): the parameters move by the
    # gradient itself and the momentum buffer holds it, so the bounds compare the sharded gradient with the
    # one-device gradient.
    experiments = {"plain": experiment(), "copy": experiment("model.copy_attention=true", "data.joint_vocab=true")}
    optimizers = {"plain": None, "copy": optax.apply_if_finite(optax.sgd(1.0, momentum=0.5), max_consecutive_errors=1)}
    one_device = parallel.make_mesh(devices=jax.devices()[:1])
    references = {kind: run_steps(config, batches, one_device, optimizers[kind])[:2]
                  for kind, (config, batches) in experiments.items()}
    result = {"devices": jax.device_count(), "reference_losses": references["plain"][0]}
    for name, model_parallel, kind in (("data4", 1, "plain"), ("data2_model2", 2, "plain"),
                                       ("data2_model2_copy", 2, "copy")):
        config, batches = experiments[kind]
        reference_losses, reference = references[kind]
        mesh = parallel.make_mesh(model_parallel)
        losses, snapshots, state = run_steps(config, batches, mesh, optimizers[kind])
        kernel = state.params["output"]["kernel"]
        result[name] = {"mesh": parallel.describe(mesh), "losses": losses,
                        "first_step": relative_errors(reference_losses[:1], losses[:1], reference[0], snapshots[0]),
                        "all_steps": relative_errors(reference_losses, losses, reference[-1], snapshots[-1]),
                        "shardings": sharding_summary(state),
                        "output_kernel_shard_shapes": sorted({tuple(s.data.shape) for s in kernel.addressable_shards})}
        if name == "data2_model2":
            with Checkpointer(out_dir / "workdir", keep=1) as checkpoints:
                checkpoints.save(STEPS, state, extra={"note": "saved on 4 devices, mesh data=2 x model=2"})
            np.savez(out_dir / "saved_values.npz", **flat_values(snapshots[-1]))
    try:
        parallel.check_batch_size(18, parallel.make_mesh())
        result["indivisible_batch_error"] = None
    except parallel.ParallelError as error:
        result["indivisible_batch_error"] = str(error)
    from seq2seq_jax.training import trainer

    try:
        trainer.train(tiny_config("data.batch_size=18"), out_dir / "never")
        result["trainer_indivisible_error"] = None
    except parallel.ParallelError as error:
        result["trainer_indivisible_error"] = str(error)
    result["trainer_wrote_nothing"] = not (out_dir / "never").exists()
    return result


def flat_values(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def cmd_restore(checkpoint_workdir: Path, out_dir: Path) -> dict:
    """Restore the 4-device checkpoint onto this process's devices: a ``(data, model)`` mesh with the model
    axis as large as the devices allow (2 devices: data=1 x model=2; 1 device: plain)."""
    config, _ = experiment()
    model_parallel = min(2, jax.device_count())
    mesh = parallel.make_mesh(model_parallel)
    _, host_state = fresh_train_state(config)
    shardings = parallel.state_shardings(host_state, mesh)
    target = parallel.abstract_like(host_state, shardings)
    with Checkpointer(checkpoint_workdir, keep=1) as checkpoints:
        step, state, extra = checkpoints.restore(None, target=target)
    saved = np.load(out_dir / "saved_values.npz")
    restored = flat_values(parallel.to_host(state))
    max_abs_diff = max(float(np.max(np.abs(restored[key].astype(np.float64) - saved[key].astype(np.float64))))
                       if restored[key].size else 0.0 for key in saved.files)
    shardings_match = all(leaf.sharding == target_leaf.sharding for leaf, target_leaf in
                          zip(jax.tree.leaves(state), jax.tree.leaves(target), strict=True))
    return {"devices": jax.device_count(), "step": step, "extra": extra, "mesh": parallel.describe(mesh),
            "keys_equal": sorted(restored) == sorted(saved.files), "max_abs_diff": max_abs_diff,
            "shardings_match": shardings_match, "output_kernel_spec": str(state.params["output"]["kernel"].sharding),
            "output_kernel_shards": len(state.params["output"]["kernel"].addressable_shards)}


# The per-process reading check: a token budget, so that the global batches have different row counts.
READING = ("data.task_train_size=96", "data.max_tokens=256")


class RecordingSource:
    """A list of examples that records which ones were read (``read``) and offers its ``lengths``, as a
    preprocessed corpus split does, so that planning reads nothing."""

    def __init__(self, examples):
        self.examples, self.read = examples, []
        self.lengths = example_lengths(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int):
        self.read.append(index)
        return self.examples[index]


def reading_batches(config, source, local_rows=None, read_threads: int = 0) -> BatchIterator:
    data = config.data
    return BatchIterator(source, BatchPolicy.of(data, row_quantum=4), data.seed, local_rows=local_rows,
                         read_threads=read_threads, prefetch=2)


def cmd_read_shards(coordinator: str, num_processes: int, process_id: int) -> dict:
    """One epoch of training batches on a 4-device mesh across the processes, each process reading only the
    examples of its rows of every global batch (in a grain thread); the steps are the trainer's."""
    parallel.initialize_distributed(coordinator, num_processes, process_id)
    config, examples = encoded_experiment(*READING)
    mesh = parallel.make_mesh()
    source = RecordingSource(examples)
    iterator = reading_batches(config, source, functools.partial(parallel.process_rows,
                                                                 parallel.batch_sharding(mesh)), read_threads=1)
    batches = [next(iterator) for _ in range(iterator.batches_per_epoch)]
    iterator.close()
    losses, _, _ = run_steps(config, batches, mesh)
    return {"process": jax.process_index(), "devices": jax.device_count(), "mesh": parallel.describe(mesh),
            "read": source.read, "losses": losses, "epoch": iterator.epoch,
            "rows": [[len(batch.index), batch.global_rows] for batch in batches],
            "real_rows": [int((batch.index >= 0).sum()) for batch in batches]}


def main(argv: list[str]) -> None:
    if argv[0] == "steps":
        result = cmd_steps(Path(argv[1]))
    elif argv[0] == "restore":
        result = cmd_restore(Path(argv[1]), Path(argv[2]))
    elif argv[0] == "read_shards":
        result = cmd_read_shards(argv[1], int(argv[2]), int(argv[3]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
