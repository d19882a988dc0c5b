"""Load an export directory (written by ``seq2seq export-torch``) with PyTorch alone.

    model, src_tokenizer, tgt_tokenizer = torch_ref.load_pretrained("export_dir")

The directory holds ``config.json`` (``format_version``, the model config, the experiment config),
``model.safetensors`` (the ``torch_ref.Seq2Seq`` state_dict), ``tokenizer/`` and ``meta.json``. Tensors tied
to the target embedding (``output.weight``, ``src_embed.weight``) are left out of the file, which holds
``tgt_embed.weight`` once (safetensors stores a tensor once); loading re-ties them. Loading is strict: a
missing, unexpected, misshapen or wrongly-typed tensor is an error naming the file and the keys.

The format itself (file names, version check, strict check, re-tying) is ``seq2seq_jax.core.export_format``,
shared with ``seq2seq import-torch``. This module never imports JAX (``seq2seq_jax.core`` is JAX-free).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seq2seq_jax.core.config import ConfigError, DecodeConfig, ExperimentConfig, ModelConfig
from seq2seq_jax.core.export_format import (
    CONFIG_FILE,
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    TOKENIZER_DIR,
    ExportFormatError,
    check_state_dict,
    dtype_name,
    read_export_config,
    retie,
)
from seq2seq_jax.core.json_files import read_json_object
from seq2seq_jax.core.languages import Languages
from seq2seq_jax.core.tokenizer import Tokenizer, load_tokenizers
from torch_ref.model import Seq2Seq


def read_config(directory: str | Path) -> ExperimentConfig:
    """The checked experiment config of an export directory (``config.json``: its ``format_version``, the
    ``model`` and, usually, the ``experiment`` sections)."""
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"export directory {directory} does not exist")
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not an export directory "
                                "(write one with `seq2seq export-torch`)")
    return read_export_config(path, export_only=True)


def model_config(directory: str | Path) -> ModelConfig:
    """The ModelConfig of an export directory."""
    config = read_config(directory).model
    try:
        return config.require_resolved()
    except ConfigError as error:
        raise ExportFormatError(f"{Path(directory) / CONFIG_FILE}: model: {error}") from None


def decode_config(directory: str | Path) -> DecodeConfig:
    """The decode settings of the exported experiment (defaults when the export has none)."""
    return read_config(directory).decode


def languages(directory: str | Path) -> Languages:
    """The target languages of an export (its config's ``data.corpora``; none for a model without tags)."""
    return Languages.of(read_config(directory), str(directory))


def read_meta(directory: str | Path) -> dict[str, Any]:
    """``meta.json`` (step, metrics, versions); ``{}`` when the file is absent."""
    path = Path(directory) / META_FILE
    return read_json_object(path, ExportFormatError) if path.is_file() else {}


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


def check_loadable(state_dict: dict[str, torch.Tensor], model: Seq2Seq, origin: str) -> dict[str, torch.Tensor]:
    """Re-tie the tensors tied to the target embedding, then check keys, shapes and dtypes against ``model``;
    returns the state_dict to load with ``strict=True``. Every problem is listed, naming ``origin`` and the keys."""
    state_dict = retie(state_dict, model.config, origin)
    expected = {key: (tuple(value.shape), dtype_name(value)) for key, value in model.state_dict().items()}
    check_state_dict(state_dict, expected, f"{origin} does not match the model of config.json")
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
    state_dict = check_loadable(state_dict, model, str(model_path))
    model.load_state_dict(state_dict, strict=True)
    src_tokenizer, tgt_tokenizer = load_tokenizers(directory / TOKENIZER_DIR)
    sizes = (src_tokenizer.vocab_size, tgt_tokenizer.vocab_size)
    if sizes != (config.src_vocab_size, config.tgt_vocab_size):
        raise ExportFormatError(f"{directory / TOKENIZER_DIR}: tokenizer vocabulary sizes {sizes} differ from "
                                f"config.json's model ({config.src_vocab_size}, {config.tgt_vocab_size})")
    model.to(device)
    model.eval()
    return model, src_tokenizer, tgt_tokenizer


__all__ = ["load_pretrained", "read_config", "model_config", "decode_config", "languages", "read_meta",
           "check_loadable",
           "ExportFormatError", "FORMAT_VERSION"]
