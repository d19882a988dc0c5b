"""Which checkpoints orbax keeps: the ``keep`` newest steps and the best one, in one manager.

Orbax's own ``best_fn`` / ``max_to_keep`` keep only the best N by metric, so the latest checkpoints (the ones
a resumed run needs) could be deleted. Instead the manager gets a preservation policy
(``CheckpointManagerOptions.preservation_policy``, the ``ocp.checkpoint_managers`` protocol) that keeps a
step when it is among the newest **or** it is the best by the ``Checkpointer``'s own table of per-step
metrics. Orbax applies it after a save has committed, so a failed save never deletes anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orbax.checkpoint as ocp


def preservation_policy_available() -> bool:
    managers = getattr(ocp, "checkpoint_managers", None)
    fields = getattr(ocp.CheckpointManagerOptions, "__dataclass_fields__", {})
    has_protocol = managers is not None and hasattr(managers, "PreservationPolicy")
    return has_protocol and "preservation_policy" in fields


class KeepLatestAndBest:
    """Orbax preservation policy (``ocp.checkpoint_managers.PreservationPolicy`` protocol): keep a step when
    it is among the ``keep`` newest steps or it is the best one according to ``best_step_among``."""

    def __init__(self, keep: int, best_step_among):
        self.keep = keep
        self.best_step_among = best_step_among

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any = None) -> Sequence[bool]:
        steps = [info.step for info in checkpoints]
        newest = set(sorted(steps)[-self.keep:])
        best = self.best_step_among(steps)
        return [step in newest or step == best for step in steps]
