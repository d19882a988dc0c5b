"""Endless, resumable training batches over a random-access source of examples, built ahead by grain."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import numpy as np

from seq2seq_jax.core.batching import (
    Batch,
    BatchPolicy,
    LocalRows,
    _BatchBuilder,
    _lengths,
    _positions,
    _source_lengths,
    batch_shapes,
)
from seq2seq_jax.core.encoding import Example
from seq2seq_jax.core.mixing import Mixture
from seq2seq_jax.core.reading import DataError
from seq2seq_jax.core.subword_sampling import SampledEpochs


class BatchIterator:
    """Endless training batches, epoch after epoch, over any random-access ``source`` of examples
    (``len(source)``, ``source[i] -> Example``: a list, or a preprocessed corpus split).

    Each epoch: a permutation drawn from ``(seed, epoch)``, examples grouped into length buckets (by source
    length first, then target length; see ``_plan_batches``), batches cut inside buckets, the batch order
    shuffled. The plan needs only ``lengths [n, 2] int32`` (``len(src)`` with EOS, ``len(tgt)`` without
    BOS/EOS; default ``source.lengths`` where the source has them, else read from every example once): the
    iterator keeps no examples, and reads those of a batch when it builds it. ``state()`` / ``restore(state)``
    resume the exact sequence of batches. ``policy`` says how batches are cut and padded.

    ``local_rows`` (e.g. ``functools.partial(parallel.process_rows, sharding)``) makes each batch only this
    process's rows of the global batch (``Batch.global_rows`` says how many the global batch has), reading only
    their examples, with the global batch's padded lengths: every process plans the same global batches and
    builds its own part. Batches are built by grain (``MapDataset`` over the epoch's plan) in groups of
    consecutive batches whose examples are read in one call (about ``READ_SIZE``), with ``read_threads``
    background threads and ``prefetch`` groups built ahead (0 and 0: built when asked for).

    ``mixture`` (a ``seq2seq_jax.core.mixing.Mixture`` of the corpora that ``source``, a ``ConcatSource``, holds one
    after the other): an epoch is the pairs the mixture draws for it instead of every example once.

    ``resample`` (a ``seq2seq_jax.core.subword_sampling.SampledEpochs``): each epoch's examples are
    ``resample(epoch)`` (as many as ``source`` holds, segmented anew), planned by their own lengths.

    ``epoch`` is the epoch the next batch comes from (0-based; it advances as soon as an epoch's last batch is
    given) and ``position`` the number of that epoch's batches already given.
    """

    def __init__(self, source: Sequence[Example], policy: BatchPolicy, seed: int, lengths: np.ndarray | None = None,
                 local_rows: LocalRows | None = None, read_threads: int = 0, prefetch: int = 0,
                 mixture: Mixture | None = None, resample: SampledEpochs | None = None):
        if not len(source):
            raise DataError("no training examples to batch (every pair was empty or too long?)")
        if read_threads < 0 or prefetch < 0:
            raise ValueError(f"read_threads and prefetch must be >= 0, got {read_threads} and {prefetch}")
        if mixture is not None and sum(mixture.counts) != len(source):
            raise ValueError(f"the mixture's corpora hold {sum(mixture.counts)} examples, the source {len(source)}")
        self.source, self.mixture = source, mixture
        self.num_examples = len(source)
        self.policy = policy
        self.seed = seed
        self.read_threads, self.prefetch = read_threads, prefetch
        self.local_rows, self.resample, self._sampled_epoch = local_rows, resample, 0
        self._use(resample(0) if resample is not None else source, None if resample is not None else lengths)
        self.epoch = 0
        self.position = 0
        self._plan = self._epoch_plan(0)
        self._groups = None  # grain's iterator over the rest of the epoch in groups, opened by __next__
        self._built: collections.deque[Batch] = collections.deque()  # the current group's batches not yet given

    def _use(self, source: Sequence[Example], lengths: np.ndarray | None) -> None:
        """Batch ``source`` from now on (its ``lengths``, else read from it)."""
        if len(source) != self.num_examples:
            raise ValueError(f"resampled {len(source)} examples, the training source holds {self.num_examples}")
        self.source = source
        self.lengths = _source_lengths(source, lengths)
        self._src_len, self._tgt_len = _lengths(self.lengths)
        self._build = _BatchBuilder(source, self._src_len, self._tgt_len, self.policy, self.local_rows)

    def _epoch_plan(self, epoch: int) -> list[np.ndarray]:
        if self.resample is not None and epoch != self._sampled_epoch:
            self._use(self.resample(epoch), None)
            self._sampled_epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        drawn = self.num_examples if self.mixture is None else self.mixture.epoch_indices(self.seed, epoch)
        batches = self.policy.plan(_positions(rng.permutation(drawn)), self._src_len, self._tgt_len)
        return [batches[i] for i in rng.permutation(len(batches))]

    def _open(self):
        """grain's iterator over the batches of ``self._plan`` from ``self.position`` on, in groups read at once
        (``_BatchBuilder.groups``)."""
        import grain

        options = grain.ReadOptions(num_threads=self.read_threads, prefetch_buffer_size=self.prefetch)
        groups = self._build.groups(self._plan[self.position:])
        return iter(grain.MapDataset.source(groups).map(self._build).to_iter_dataset(options))

    def close(self) -> None:
        """Stop building batches ahead (``__next__`` opens a new reader)."""
        if self._groups is not None:
            self._groups.close()
        self._groups, self._built = None, collections.deque()

    @property
    def batches_per_epoch(self) -> int:
        return len(self._plan)

    def padded_shapes(self) -> set[tuple[int, int]]:
        return {shape[1:] for shape in self.batch_shapes()}

    def batch_shapes(self) -> set[tuple[int, int, int]]:
        return batch_shapes(self.source, self.policy, self.lengths)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        if not self._built:
            if self._groups is None:
                self._groups = self._open()
            self._built.extend(next(self._groups))
        batch = self._built.popleft()
        self.position += 1
        if self.position == len(self._plan):
            self.close()
            self.epoch, self.position = self.epoch + 1, 0
            self._plan = self._epoch_plan(self.epoch)
        return batch

    def _settings(self) -> dict[str, Any]:
        """What must match on ``restore``: the same examples batched the same way."""
        policy = self.policy
        return {"seed": self.seed, "num_examples": self.num_examples, "batch_size": policy.batch_size,
                "bucket_width": list(policy.bucket_width), "max_tokens": policy.max_tokens,
                "row_quantum": policy.row_quantum}

    def state(self) -> dict[str, Any]:
        """JSON-able position: ``epoch``, ``position``, and what must match on ``restore`` (the token budget's
        ``max_tokens`` and ``row_quantum`` only when there is one, so that row batching's state is as before)."""
        settings = self._settings()
        if not self.policy.max_tokens:
            del settings["max_tokens"], settings["row_quantum"]
        if self.mixture is not None:
            settings["mixture"] = self.mixture.state()
        if self.resample is not None:
            settings["subword_sampling"] = self.resample.sampling.state()
        return {"epoch": self.epoch, "position": self.position, **settings}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (of an iterator over the same examples and settings)."""
        saved_state = dict(state)
        if "bucket_width" in saved_state:  # an int in runs saved before targets could have their own width
            saved_state["bucket_width"] = list(BatchPolicy(1, saved_state["bucket_width"]).bucket_width)
        saved_state.setdefault("max_tokens", 0)  # row batching (and runs saved before token budgets)
        saved_state.setdefault("row_quantum", 1)
        settings = self._settings()
        settings["mixture"] = None if self.mixture is None else self.mixture.state()
        saved_state.setdefault("mixture", None)
        settings["subword_sampling"] = None if self.resample is None else self.resample.sampling.state()
        saved_state.setdefault("subword_sampling", None)
        for key, value in settings.items():
            if key in saved_state and saved_state[key] != value:
                saved = state.get(key, saved_state[key])
                raise DataError(f"cannot restore the data iterator: saved {key}={saved} but this run has "
                                f"{key}={value} (the training data or data settings changed)")
        epoch, position = int(state["epoch"]), int(state["position"])
        plan = self._epoch_plan(epoch)
        if not 0 <= position < len(plan):
            raise DataError(f"cannot restore the data iterator: position {position} is outside epoch {epoch} "
                            f"of {len(plan)} batches")
        self.close()
        self.epoch, self.position, self._plan = epoch, position, plan
