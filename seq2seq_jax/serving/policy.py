"""The batching policy: which row counts searches are compiled for (``row_buckets``) and how long the free
decoder waits for more requests before a search (``seconds_to_wait``).

The decoder waits ``max_wait_ms`` from when both the oldest request and the free decoder are there. Right after a
search with the same settings it waits instead, for at most ``refill_share`` of that search's duration (at least
``max_wait_ms``) from its end, until as many texts are queued as that search answered plus those that had queued
behind it: clients that send again as soon as answered then stay in one search rather than splitting into two
groups that take turns. It never waits once ``max_batch`` texts are queued.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable

from seq2seq_jax.serving.schema import ServeLimits


def row_buckets(max_batch: int, fixed_rows: bool = False) -> tuple[int, ...]:
    """Row counts of the compiled searches: the powers of four below ``max_batch``, and ``max_batch``
    (64 -> 1, 4, 16, 64); only ``max_batch`` with ``fixed_rows``."""
    if fixed_rows:
        return (max_batch,)
    return tuple(sorted({max_batch} | {4 ** k for k in range(max_batch.bit_length()) if 4 ** k < max_batch}))


@dataclasses.dataclass(frozen=True)
class LastSearch:
    """The decoder's latest search, as the batching policy sees it (times: ``time.monotonic()``)."""

    key: Hashable  # its decode settings and attention flag
    ended: float  # when its answers were handed out and the decoder was free again
    seconds: float  # how long it took
    texts: int  # texts it answered: their clients may send again
    queued: int  # texts with its key already queued when it ended


def seconds_to_wait(now: float, first_enqueued: float, key: Hashable, waiting: int, last: LastSearch | None,
                    limits: ServeLimits) -> float:
    """How much longer the free decoder waits before taking the batch headed by the oldest request (enqueued at
    ``first_enqueued``, ``waiting`` texts with its ``key`` queued); 0 or less: take it now (module docstring).
    Never past ``max(max_wait_ms, refill_share * the last search's duration)`` after the later of the oldest
    request's arrival and the end of the last search."""
    if waiting >= limits.max_batch:
        return 0.0
    max_wait = limits.max_wait_ms / 1000.0
    free = last.ended if last is not None else -math.inf
    deadline = max(first_enqueued, free) + max_wait
    if last is not None and last.key == key and last.texts and limits.refill_share:
        refill_end = last.ended + max(max_wait, limits.refill_share * last.seconds)
        if first_enqueued <= refill_end:  # the oldest request came while the answered clients were expected back
            if waiting >= min(limits.max_batch, last.queued + last.texts):
                return 0.0
            deadline = max(deadline, refill_end)
    return deadline - now
