"""Tests for seq2seq_jax.training.plots: the metrics log reader and the PNG outputs."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from seq2seq_jax.training.plots import MetricsLogError, plot_attention, plot_training_curves, read_metrics_jsonl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_read_metrics_jsonl(tmp_path):
    log = tmp_path / "metrics.jsonl"
    write_log(log, [{"step": 1, "train_loss": 3.0}, {"step": 2, "valid_loss": 2.5, "valid_bleu": 10.0}])
    log.write_text(log.read_text() + "\n", encoding="utf-8")  # a trailing blank line is fine
    assert read_metrics_jsonl(log) == [{"step": 1, "train_loss": 3.0},
                                       {"step": 2, "valid_loss": 2.5, "valid_bleu": 10.0}]


@pytest.mark.parametrize("bad_line, message", [
    ('{"step": 2, "train_loss": ', "invalid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"train_loss": 1.0}', "step"),
])
def test_bad_line_names_file_and_line(tmp_path, bad_line, message):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "train_loss": 3.0}\n' + bad_line + "\n", encoding="utf-8")
    with pytest.raises(MetricsLogError, match=message) as raised:
        read_metrics_jsonl(log)
    assert f"{log}:2:" in str(raised.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MetricsLogError, match="cannot read metrics file"):
        read_metrics_jsonl(tmp_path / "absent.jsonl")


def test_training_curves_png(tmp_path):
    records = [{"step": s, "train_loss": 4.0 / s} for s in range(1, 41)]
    records += [{"step": s, "valid_loss": 3.0 / s, "valid_bleu": 2.0 * s, "valid_exact_match": s}
                for s in (10, 20, 30, 40)]
    log = tmp_path / "metrics.jsonl"
    write_log(log, records)
    out = plot_training_curves(read_metrics_jsonl(log), tmp_path / "plots" / "curves.png")
    width, height = png_size(out)
    assert (width, height) == (800, 500)
    assert out.stat().st_size > 10_000
    loss_only = plot_training_curves(records[:40], tmp_path / "loss_only.png")
    assert loss_only.stat().st_size > 5_000
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_training_curves([{"step": 1, "lr": 0.1}], tmp_path / "empty.png")


def test_attention_png(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.random((4, 6))
    weights /= weights.sum(axis=1, keepdims=True)
    src_tokens = ["le", "chat", "est", "sur", "tapis", "</s>"]
    tgt_tokens = ["the", "cat", "sits", "</s>"]
    out = plot_attention(weights, src_tokens, tgt_tokens, tmp_path / "attention.png")
    width, height = png_size(out)
    assert width > 200 and height > 200
    assert out.stat().st_size > 5_000
    with pytest.raises(ValueError, match="do not match"):
        plot_attention(weights, src_tokens[:-1], tgt_tokens, tmp_path / "bad.png")
