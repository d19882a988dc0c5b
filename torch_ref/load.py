"""Load an export directory (written by ``seq2seq export-torch``) with PyTorch alone.

    model, src_tokenizer, tgt_tokenizer = torch_ref.load_pretrained("export_dir")

The directory holds ``config.json`` (``format_version``, the model config, the experiment config),
``model.safetensors`` (the ``torch_ref.Seq2Seq`` state_dict), ``tokenizer/`` and ``meta.json``. For a model
with a tied output embedding the file holds ``tgt_embed.weight`` only (safetensors stores a tensor once);
loading re-ties ``output.weight`` to it. Loading is strict: a missing, unexpected, misshapen or
wrongly-typed tensor is an error naming the file and the keys.

This module never imports JAX (``seq2seq_jax.config`` and ``seq2seq_jax.tokenizer`` are JAX-free).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from seq2seq_jax.config import ConfigError, DecodeConfig, ModelConfig
from seq2seq_jax.tokenizer import Tokenizer, load_tokenizers
from torch_ref.model import Seq2Seq

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"


class ExportFormatError(ValueError):
    """An export directory that cannot be loaded; the message names the file (and line or keys)."""


def read_config(directory: str | Path) -> dict[str, Any]:
    """The checked ``config.json`` of an export directory (a dict with ``format_version``, ``model`` and,
    usually, ``experiment``)."""
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"export directory {directory} does not exist")
    path = Path(directory) / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: {directory} is not an export directory "
                                "(write one with `seq2seq export-torch`)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ExportFormatError(f"cannot read {path}: {error}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExportFormatError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
    if not isinstance(record, dict):
        raise ExportFormatError(f"{path}: expected a JSON object")
    if record.get("format_version") != FORMAT_VERSION:
        raise ExportFormatError(f"{path}: unsupported format_version {record.get('format_version')!r}; "
                                f"this version of torch_ref reads {FORMAT_VERSION}")
    if not isinstance(record.get("model"), dict):
        raise ExportFormatError(f"{path}: has no 'model' object")
    return record


def model_config(directory: str | Path) -> ModelConfig:
    """The ModelConfig of an export directory."""
    path = Path(directory) / CONFIG_FILE
    try:
        return ModelConfig.from_dict(read_config(directory)["model"]).require_resolved()
    except (ConfigError, TypeError) as error:
        raise ExportFormatError(f"{path}: model: {error}") from None


def decode_config(directory: str | Path) -> DecodeConfig:
    """The decode settings of the exported experiment (defaults when the export has none)."""
    path = Path(directory) / CONFIG_FILE
    decode = (read_config(directory).get("experiment") or {}).get("decode", {})
    try:
        return DecodeConfig.from_dict(decode)
    except (ConfigError, TypeError) as error:
        raise ExportFormatError(f"{path}: experiment.decode: {error}") from None


def read_meta(directory: str | Path) -> dict[str, Any]:
    """``meta.json`` (step, metrics, versions); ``{}`` when the file is absent."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ExportFormatError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None


def read_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing or unreadable file is an error naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return load_file(str(path), device=str(device))
    except Exception as error:  # safetensors raises SafetensorError / OSError on a corrupt file
        raise ExportFormatError(f"{path}: cannot read safetensors file: {error}") from None


def check_state_dict(state_dict: dict[str, torch.Tensor], model: Seq2Seq, origin: str) -> dict[str, torch.Tensor]:
    """Re-tie a tied output embedding, then check keys, shapes and dtypes against ``model``; returns the
    state_dict to load with ``strict=True``. Every problem is listed, naming ``origin`` and the keys."""
    state_dict = dict(state_dict)
    if model.config.tie_output_embedding and "tgt_embed.weight" in state_dict:
        if "output.weight" in state_dict and not torch.equal(state_dict["output.weight"],
                                                             state_dict["tgt_embed.weight"]):
            raise ExportFormatError(f"{origin}: output.weight differs from tgt_embed.weight, but config.json "
                                    "ties them (model.tie_output_embedding)")
        state_dict["output.weight"] = state_dict["tgt_embed.weight"]
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    for key in sorted(set(expected) & set(state_dict)):
        found, want = state_dict[key], expected[key]
        if tuple(found.shape) != tuple(want.shape):
            problems.append(f"{key}: shape {tuple(found.shape)}, expected {tuple(want.shape)}")
        elif found.dtype != want.dtype:
            problems.append(f"{key}: dtype {found.dtype}, expected {want.dtype}")
    if problems:
        raise ExportFormatError(f"{origin} does not match the model of config.json: " + "; ".join(problems))
    return state_dict


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Seq2Seq, Tokenizer, Tokenizer]:
    """``(model, src_tokenizer, tgt_tokenizer)`` from an export directory; the model is in eval mode on
    ``device``, its weights loaded strictly."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"export directory {directory} does not exist")
    config = model_config(directory)
    model_path = directory / MODEL_FILE
    state_dict = read_state_dict(model_path)
    model = Seq2Seq(config)
    state_dict = check_state_dict(state_dict, model, str(model_path))
    model.load_state_dict(state_dict, strict=True)
    src_tokenizer, tgt_tokenizer = load_tokenizers(directory / TOKENIZER_DIR)
    sizes = (src_tokenizer.vocab_size, tgt_tokenizer.vocab_size)
    if sizes != (config.src_vocab_size, config.tgt_vocab_size):
        raise ExportFormatError(f"{directory / TOKENIZER_DIR}: tokenizer vocabulary sizes {sizes} differ from "
                                f"config.json's model ({config.src_vocab_size}, {config.tgt_vocab_size})")
    model.to(device)
    model.eval()
    return model, src_tokenizer, tgt_tokenizer


__all__ = ["load_pretrained", "read_config", "model_config", "decode_config", "read_meta", "check_state_dict",
           "ExportFormatError", "FORMAT_VERSION"]
