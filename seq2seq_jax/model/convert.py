"""Flax parameters <-> ``torch_ref`` state_dict, numpy in and numpy out, through one explicit name map.

No torch import here: a state_dict is a ``dict[str, numpy array]`` (``{k: v.numpy() for k, v in
sd.items()}`` on the PyTorch side). Flax parameters are the nested pure dict of
``nnx.state(model, nnx.Param).to_pure_dict()`` (list indices as ints). Both directions are strict: a
missing key, an unexpected key, a wrong shape or a wrong dtype raises ``ValueError`` naming every
offending key. The name and shape table is documented in ``docs/model.md``. The output never shares memory
with the input: ``tensor.numpy()`` aliases a live PyTorch tensor, and JAX may read a host array after an
in-place PyTorch update (asynchronous dispatch), so a view would be a race.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from seq2seq_jax.core.config import ModelConfig
from seq2seq_jax.core.export_format import TIED_SOURCE_KEY, check_state_dict, tied_keys


@dataclasses.dataclass(frozen=True)
class ParamMapping:
    """One parameter: its Flax path, its torch key, its Flax shape, and whether torch stores it transposed."""

    flax_path: str
    torch_key: str
    flax_shape: tuple[int, ...]
    transpose: bool

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return self.flax_shape[::-1] if self.transpose else self.flax_shape


def _lstm_mappings(flax_prefix: str, torch_suffix: str, torch_module: str, input_size: int, hidden: int):
    gates = 4 * hidden
    return [
        ParamMapping(f"{flax_prefix}.w_ih", f"{torch_module}.weight_ih_{torch_suffix}", (input_size, gates), True),
        ParamMapping(f"{flax_prefix}.w_hh", f"{torch_module}.weight_hh_{torch_suffix}", (hidden, gates), True),
        ParamMapping(f"{flax_prefix}.b_ih", f"{torch_module}.bias_ih_{torch_suffix}", (gates,), False),
        ParamMapping(f"{flax_prefix}.b_hh", f"{torch_module}.bias_hh_{torch_suffix}", (gates,), False),
    ]


def _linear(flax_name: str, torch_name: str, in_size: int, out_size: int, bias: bool) -> list[ParamMapping]:
    mappings = [ParamMapping(f"{flax_name}.kernel", f"{torch_name}.weight", (in_size, out_size), True)]
    if bias:
        mappings.append(ParamMapping(f"{flax_name}.bias", f"{torch_name}.bias", (out_size,), False))
    return mappings


def name_map(config: ModelConfig) -> list[ParamMapping]:
    """Every parameter of the model described by ``config``, in a fixed order."""
    c = config.require_resolved()
    mappings = [] if c.tie_src_tgt_embedding else [
        ParamMapping("src_embed.embedding", "src_embed.weight", (c.src_vocab_size, c.src_embed_size), False)]
    mappings.append(ParamMapping("tgt_embed.embedding", "tgt_embed.weight", (c.tgt_vocab_size, c.tgt_embed_size),
                                 False))
    for layer in range(c.enc_layers):
        input_size = c.src_embed_size if layer == 0 else c.memory_size
        mappings += _lstm_mappings(f"encoder.layers.{layer}.fwd", f"l{layer}", "encoder", input_size,
                                   c.enc_hidden_size)
        if c.bidirectional:
            mappings += _lstm_mappings(f"encoder.layers.{layer}.bwd", f"l{layer}_reverse", "encoder", input_size,
                                       c.enc_hidden_size)
    if c.bridge == "dense":
        for name in ("bridge_h", "bridge_c"):
            mappings += _linear(name, name, c.memory_size, c.dec_layers * c.dec_hidden_size, bias=True)
    if c.attention == "additive":
        mappings += _linear("attention.query_proj", "attention.query_proj", c.dec_hidden_size, c.attention_size,
                            bias=False)
        mappings += _linear("attention.key_proj", "attention.key_proj", c.memory_size, c.attention_size, bias=True)
        mappings += _linear("attention.v", "attention.v", c.attention_size, 1, bias=False)
        if c.coverage_attention:
            mappings += _linear("attention.coverage_proj", "attention.coverage_proj", 1, c.attention_size, bias=False)
    elif c.attention == "general":
        mappings += _linear("attention.key_proj", "attention.key_proj", c.memory_size, c.dec_hidden_size,
                            bias=False)
    feed_size = c.memory_size if c.decoder_style == "bahdanau" else c.readout_size
    for layer in range(c.dec_layers):
        input_size = c.tgt_embed_size + feed_size if layer == 0 else c.dec_hidden_size
        mappings += _lstm_mappings(f"decoder.layers.{layer}", f"l{layer}", "decoder", input_size, c.dec_hidden_size)
    if c.decoder_style == "bahdanau":
        readout_in = c.dec_hidden_size + c.memory_size + c.tgt_embed_size
    else:
        readout_in = c.memory_size + c.dec_hidden_size
    mappings += _linear("readout", "readout", readout_in, c.readout_size, bias=c.decoder_style == "bahdanau")
    if not c.tie_output_embedding:
        mappings.append(ParamMapping("output.kernel", "output.weight", (c.readout_size, c.tgt_vocab_size), True))
    mappings.append(ParamMapping("output.bias", "output.bias", (c.tgt_vocab_size,), False))
    if c.copy_attention:
        mappings += _linear("copy_gate", "copy_gate", c.readout_size, 1, bias=True)
    return mappings


def flatten_params(params: Mapping[Any, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict (int or str keys) -> ``{"a.b.0.c": numpy array}``."""
    flat: dict[str, np.ndarray] = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, path + "."))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict[Any, Any]:
    """Inverse of ``flatten_params``; numeric path parts become ints (nnx list indices)."""
    nested: dict[Any, Any] = {}
    for path, value in flat.items():
        node = nested
        parts = [int(p) if p.isdigit() else p for p in path.split(".")]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def to_torch_state_dict(params: Mapping[Any, Any], config: ModelConfig) -> dict[str, np.ndarray]:
    """Flax params (nested pure dict) -> ``torch_ref.Seq2Seq`` state_dict as numpy arrays.

    Keys tied to the target embedding (``output.weight`` with ``tie_output_embedding``, ``src_embed.weight``
    with ``tie_src_tgt_embedding``) are emitted as it: PyTorch's state_dict lists a shared tensor under each name.
    """
    mappings = name_map(config)
    flat = flatten_params(params)
    check_state_dict(flat, {m.flax_path: (m.flax_shape, config.param_dtype) for m in mappings},
                     "Flax params does not match the model config")
    state_dict = {}
    for m in mappings:
        array = flat[m.flax_path]
        state_dict[m.torch_key] = np.array(array.T if m.transpose else array, order="C", copy=True)
    for key in tied_keys(config):
        state_dict[key] = state_dict[TIED_SOURCE_KEY]
    return state_dict


def from_torch_state_dict(state_dict: Mapping[str, np.ndarray], config: ModelConfig) -> dict[Any, Any]:
    """``torch_ref.Seq2Seq`` state_dict (numpy arrays) -> Flax params as a nested pure dict.

    Every key tied to the target embedding (``tied_keys``) must be present and equal to ``tgt_embed.weight``.
    """
    mappings = name_map(config)
    expected = {m.torch_key: (m.torch_shape, config.param_dtype) for m in mappings}
    ties = tied_keys(config)
    for key in ties:
        expected[key] = ((config.tgt_vocab_size, config.tgt_embed_size), config.param_dtype)
    arrays = {key: np.asarray(value) for key, value in state_dict.items()}
    check_state_dict(arrays, expected, "PyTorch state_dict does not match the model config")
    for key, field in ties.items():
        if not np.array_equal(arrays[key], arrays[TIED_SOURCE_KEY]):
            raise ValueError(f"PyTorch state_dict: {key} differs from {TIED_SOURCE_KEY}, but the config ties them "
                             f"(model.{field})")
    flat = {m.flax_path: np.array(arrays[m.torch_key].T if m.transpose else arrays[m.torch_key], order="C", copy=True)
            for m in mappings}
    return unflatten_params(flat)
