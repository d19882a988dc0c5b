"""The export directory format that ``seq2seq export-torch`` writes and ``torch_ref`` and ``import-torch`` read.

    DIR/config.json        {"format_version": 1, "model": ModelConfig dict, "experiment": ExperimentConfig dict}
    DIR/model.safetensors  the torch_ref.Seq2Seq state_dict
    DIR/tokenizer/         src.* and tgt.* tokenizer files
    DIR/meta.json          step, checkpoint, validation metrics of that checkpoint, library versions

Tensors tied to the target embedding (``output.weight``, ``src_embed.weight``; ``tied_keys``) are stored once,
as ``tgt_embed.weight``; readers re-tie them to it (``retie``). State_dicts are checked strictly by key, shape
and dtype name (``check_state_dict``), on numpy arrays and torch tensors alike, without importing either
framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from seq2seq_jax.core.config import ConfigError, ExperimentConfig, ModelConfig
from seq2seq_jax.core.json_files import read_json_object

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
TIED_KEY = "output.weight"
SRC_TIED_KEY = "src_embed.weight"
TIED_SOURCE_KEY = "tgt_embed.weight"


class ExportFormatError(ValueError):
    """An export (or state_dict) that cannot be written or read; the message names the file (and line or keys)."""


def check_export_record(record: Mapping[str, Any], path: str | Path) -> None:
    """Check an export ``config.json`` record: the ``format_version`` this code reads and a ``model`` object."""
    if record.get("format_version") != FORMAT_VERSION:
        raise ExportFormatError(f"{path}: unsupported format_version {record.get('format_version')!r}; "
                                f"this version reads {FORMAT_VERSION}")
    if not isinstance(record.get("model"), dict):
        raise ExportFormatError(f"{path}: has no 'model' object")


def read_export_config(path: str | Path, export_only: bool = False) -> ExperimentConfig:
    """The ExperimentConfig of an export ``config.json`` or, unless ``export_only``, of a workdir's
    ``config.json`` (an ExperimentConfig dict). An export without an ``experiment`` gets the default sections."""
    path = Path(path)
    record = read_json_object(path, ExportFormatError)
    try:
        if "format_version" not in record and not export_only:
            return ExperimentConfig.from_dict(record)
        check_export_record(record, path)
        model = ModelConfig.from_dict(record["model"])
        experiment = record.get("experiment")
        config = ExperimentConfig.from_dict(experiment) if isinstance(experiment, dict) else ExperimentConfig()
        if config.model != model:
            config = ExperimentConfig(model=model, data=config.data, train=config.train, decode=config.decode)
        return config
    except (ConfigError, TypeError) as error:
        raise ExportFormatError(f"{path}: {error}") from None


def dtype_name(array: Any) -> str:
    """``"float32"``, ``"bfloat16"``, ... for a numpy array or a torch tensor."""
    return str(array.dtype).removeprefix("torch.")


def _equal(a: Any, b: Any) -> bool:
    equal = getattr(a, "equal", None)  # torch.Tensor.equal; numpy arrays have none
    return bool(equal(b)) if equal is not None else bool(np.array_equal(a, b))


def tied_keys(config: ModelConfig) -> dict[str, str]:
    """``{state_dict key: config field}`` of the tensors that ``config`` ties to ``tgt_embed.weight``."""
    ties = {TIED_KEY: "tie_output_embedding", SRC_TIED_KEY: "tie_src_tgt_embedding"}
    return {key: field for key, field in ties.items() if getattr(config, field)}


def retie(state_dict: Mapping[str, Any], config: ModelConfig, origin: str) -> dict[str, Any]:
    """``state_dict`` with every key that ``config`` ties (``tied_keys``) set to ``tgt_embed.weight``; such a
    key present and different is an error naming ``origin``."""
    state_dict = dict(state_dict)
    if TIED_SOURCE_KEY not in state_dict:
        return state_dict
    for key, field in tied_keys(config).items():
        if key in state_dict and not _equal(state_dict[key], state_dict[TIED_SOURCE_KEY]):
            raise ExportFormatError(f"{origin}: {key} differs from {TIED_SOURCE_KEY}, but the config ties "
                                    f"them (model.{field})")
        state_dict[key] = state_dict[TIED_SOURCE_KEY]
    return state_dict


def check_state_dict(found: Mapping[str, Any], expected: Mapping[str, tuple[tuple[int, ...], str]],
                     mismatch: str) -> None:
    """Strict check of ``found`` (numpy arrays or torch tensors) against ``expected`` ``{key: (shape, dtype
    name)}``: every missing or unexpected key and every wrong shape or dtype, in one error that starts with
    ``mismatch`` (e.g. ``"DIR/model.safetensors does not match the model of config.json"``)."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    for key in sorted(set(expected) & set(found)):
        shape, dtype = tuple(found[key].shape), dtype_name(found[key])
        want_shape, want_dtype = expected[key]
        if shape != tuple(want_shape):
            problems.append(f"{key}: shape {shape}, expected {tuple(want_shape)}")
        elif dtype != want_dtype:
            problems.append(f"{key}: dtype {dtype}, expected {want_dtype}")
    if problems:
        raise ExportFormatError(f"{mismatch}: " + "; ".join(problems))


__all__ = ["FORMAT_VERSION", "CONFIG_FILE", "MODEL_FILE", "META_FILE", "TOKENIZER_DIR", "TIED_KEY", "SRC_TIED_KEY",
           "TIED_SOURCE_KEY", "ExportFormatError", "check_export_record", "read_export_config", "dtype_name",
           "tied_keys", "retie", "check_state_dict"]
