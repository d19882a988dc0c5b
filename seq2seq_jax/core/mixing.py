"""Several corpora as one training source, drawn by temperature-based sampling rates.

Corpus ``i`` of ``n_i`` kept pairs is drawn with rate ``p_i = n_i ** (1/T) / sum_j n_j ** (1/T)`` (``T = 1``:
in proportion to its size; large ``T``: uniform). An epoch draws ``m_i = max(1, round(p_i * N))`` pairs of corpus
``i`` (``N = sum n_i``): the next ``m_i`` positions of the corpus's endless stream of permutations (pass ``k`` a
permutation seeded by ``(seed, i, k)``), so that a small corpus repeats and a large one is seen in full before
any of its pairs comes again. Everything is a function of ``(seed, epoch)``: a resumed run draws the same pairs.
``ConcatSource`` puts the corpora one after the other in one index space. Numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from seq2seq_jax.core.batching import example_lengths
from seq2seq_jax.core.encoding import Example


def sampling_rates(counts: Sequence[int], temperature: float) -> np.ndarray:
    """``p_i`` of each corpus (float64 ``[C]``, summing to 1); an empty corpus gets 0."""
    if temperature <= 0:
        raise ValueError(f"the sampling temperature must be positive, got {temperature}")
    sizes = np.asarray(counts, dtype=np.float64)
    weights = np.where(sizes > 0, sizes ** (1.0 / temperature), 0.0)
    if not weights.sum():
        raise ValueError("every corpus is empty: nothing to sample")
    return weights / weights.sum()


def stream_positions(count: int, start: int, size: int, seed: int, corpus: int) -> np.ndarray:
    """Positions ``start .. start + size - 1`` of corpus ``corpus``'s stream of permutations of ``count`` items."""
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    first, last = start // count, (start + size - 1) // count
    passes = [np.random.default_rng([seed, 1 + corpus, k, 0]).permutation(count) for k in range(first, last + 1)]
    joined = np.concatenate(passes)
    return joined[start - first * count: start - first * count + size]


@dataclasses.dataclass(frozen=True)
class Mixture:
    """The corpora's sizes (``counts``, their kept pairs, in ``ConcatSource`` order), ``names`` and temperature."""

    counts: tuple[int, ...]
    temperature: float = 1.0
    names: tuple[str, ...] = ()

    @property
    def rates(self) -> np.ndarray:
        return sampling_rates(self.counts, self.temperature)

    @property
    def draws(self) -> list[int]:
        """``m_i``: the pairs an epoch draws from each corpus."""
        total = sum(self.counts)
        return [max(1, round(float(rate) * total)) if count else 0 for count, rate in zip(self.counts, self.rates,
                                                                                          strict=True)]

    def epoch_indices(self, seed: int, epoch: int) -> np.ndarray:
        """The ``ConcatSource`` indices epoch ``epoch`` draws (int64, corpus after corpus, unshuffled)."""
        offsets = np.cumsum([0, *self.counts])
        parts = [offsets[i] + stream_positions(count, epoch * draw, draw, seed, i)
                 for i, (count, draw) in enumerate(zip(self.counts, self.draws, strict=True)) if count]
        return np.concatenate(parts).astype(np.int64)

    def state(self) -> dict[str, Any]:
        """What a resumed run's mixture must equal (``BatchIterator.state``)."""
        return {"counts": list(self.counts), "temperature": self.temperature}

    def describe(self, totals: Sequence[int] | None = None) -> list[str]:
        """One line per corpus: its pairs (``totals``, before filtering), kept pairs, rate and draws per epoch."""
        lines = []
        for i, (count, rate, draw) in enumerate(zip(self.counts, self.rates, self.draws, strict=True)):
            name = self.names[i] if i < len(self.names) else str(i)
            pairs = f"{totals[i]} pairs, " if totals is not None else ""
            lines.append(f"corpus {name}: {pairs}{count} kept, rate {rate:.3f} ({draw} per epoch, "
                         f"{draw / max(count, 1):.2f} x its size)")
        return lines


def _lengths_of(part: Sequence[Example]) -> np.ndarray:
    lengths = getattr(part, "lengths", None)
    return example_lengths(part) if lengths is None else np.asarray(lengths, dtype=np.int32).reshape(-1, 2)


class ConcatSource(Sequence):
    """Several random-access sources of ``Example`` one after the other: index ``offsets[i] + j`` is ``parts[i][j]``.
    ``lengths [N, 2]``: the parts' lengths (their own ``lengths`` where they have them), concatenated."""

    def __init__(self, parts: Sequence[Sequence[Example]]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0, *(len(part) for part in self.parts)])
        self.lengths = np.concatenate([_lengths_of(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Example]:
        """The examples at ``indices``, in order, one read per part."""
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(wanted) and (wanted.min() < 0 or wanted.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} examples")
        part_of = np.searchsorted(self.offsets, wanted, side="right") - 1
        result: list[Example | None] = [None] * len(wanted)
        for part in np.unique(part_of).tolist():
            rows = np.flatnonzero(part_of == part)
            local = (wanted[rows] - self.offsets[part]).tolist()
            getitems = getattr(self.parts[part], "__getitems__", None)
            examples = getitems(local) if getitems is not None else [self.parts[part][i] for i in local]
            for row, example in zip(rows.tolist(), examples, strict=True):
                result[row] = example
        return result  # type: ignore[return-value]


__all__ = ["ConcatSource", "Mixture", "sampling_rates", "stream_positions"]
