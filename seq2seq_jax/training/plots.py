"""Plots for a training run: loss curves from the metrics log and attention heatmaps (matplotlib, Agg
backend, no display needed).

The metrics log is JSON Lines: one object per line with at least ``"step"``; the keys used here are
``train_loss``, ``valid_loss``, ``valid_bleu`` and ``valid_exact_match`` (any may be absent on a line).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

LOSS_KEYS = ("train_loss", "valid_loss")
SCORE_KEYS = ("valid_bleu", "valid_exact_match")


class MetricsLogError(ValueError):
    """A metrics JSONL file that cannot be read; the message names the file and line."""


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a metrics log: one JSON object per line, each with a numeric ``"step"``. Blank lines are skipped.

    Raises MetricsLogError naming the file and line for invalid JSON, a non-object, or a missing/invalid step.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise MetricsLogError(f"cannot read metrics file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise MetricsLogError(f"{path}: invalid UTF-8 at byte {error.start}") from None
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise MetricsLogError(f"{path}:{line_number}: invalid JSON: {error.msg}") from None
        if not isinstance(record, dict):
            raise MetricsLogError(f"{path}:{line_number}: expected a JSON object, "
                                  f"got {type(record).__name__}")
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            raise MetricsLogError(f"{path}:{line_number}: missing or non-numeric \"step\"")
        records.append(record)
    return records


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records holding a finite number under ``key``, in step order."""
    points = sorted((float(r["step"]), float(r[key])) for r in records
                    if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
                    and math.isfinite(r[key]))
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(records: Sequence[dict[str, Any]], out_png: str | Path) -> Path:
    """Train and valid loss against step (left axis), valid BLEU / exact match (right axis) when present.

    Returns the path written. Raises ValueError when no record holds any of the plotted keys.
    """
    out_png = Path(out_png)
    loss_series = {key: _series(records, key) for key in LOSS_KEYS}
    score_series = {key: _series(records, key) for key in SCORE_KEYS}
    if not any(steps for steps, _ in (*loss_series.values(), *score_series.values())):
        raise ValueError(f"nothing to plot into {out_png}: no record has any of "
                         f"{LOSS_KEYS + SCORE_KEYS}")
    figure, loss_axis = plt.subplots(figsize=(8, 5))
    try:
        handles = []
        for key, style in zip(LOSS_KEYS, ("-", "o-"), strict=True):
            steps, values = loss_series[key]
            if steps:
                handles += loss_axis.plot(steps, values, style, markersize=3, label=key.replace("_", " "))
        loss_axis.set_xlabel("step")
        loss_axis.set_ylabel("loss (nats / token)")
        loss_axis.grid(True, alpha=0.3)
        if any(steps for steps, _ in score_series.values()):
            score_axis = loss_axis.twinx()
            for key, color in zip(SCORE_KEYS, ("tab:green", "tab:red"), strict=True):
                steps, values = score_series[key]
                if steps:
                    handles += score_axis.plot(steps, values, "s--", color=color, markersize=3,
                                               label=key.replace("_", " "))
            score_axis.set_ylabel("score (0-100)")
        loss_axis.legend(handles=handles, loc="best")
        loss_axis.set_title("training curves")
        figure.tight_layout()
        out_png.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out_png, dpi=100)
    finally:
        plt.close(figure)
    return out_png


def plot_attention(weights: Any, src_tokens: Sequence[str], tgt_tokens: Sequence[str], out_png: str | Path
                   ) -> Path:
    """Heatmap of attention weights ``[tgt_len, src_len]``: row t is the distribution over source tokens
    when producing target token t. Token lists label the axes and must match the shape."""
    out_png = Path(out_png)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2:
        raise ValueError(f"attention weights must be [tgt_len, src_len], got shape {weights.shape}")
    if weights.shape != (len(tgt_tokens), len(src_tokens)):
        raise ValueError(f"attention weights of shape {weights.shape} do not match "
                         f"{len(tgt_tokens)} target tokens x {len(src_tokens)} source tokens")
    tgt_len, src_len = weights.shape
    figure, axis = plt.subplots(figsize=(max(4.0, 0.4 * src_len + 2), max(3.0, 0.4 * tgt_len + 1.5)))
    try:
        image = axis.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0,
                            vmax=max(1e-9, float(np.nanmax(weights)) if weights.size else 1.0))
        axis.set_xticks(range(src_len))
        axis.set_xticklabels(list(src_tokens), rotation=90)
        axis.set_yticks(range(tgt_len))
        axis.set_yticklabels(list(tgt_tokens))
        axis.set_xlabel("source")
        axis.set_ylabel("target")
        figure.colorbar(image, ax=axis)
        figure.tight_layout()
        out_png.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out_png, dpi=100)
    finally:
        plt.close(figure)
    return out_png


__all__ = ["read_metrics_jsonl", "plot_training_curves", "plot_attention", "MetricsLogError"]
