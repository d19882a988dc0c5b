"""Shared pieces of the parity suite: tiny configs, model pairs with converted weights, batches, errors.

A parity case builds weights in one framework, converts them with ``seq2seq_jax.model.convert`` and compares
real outputs of both frameworks. float64 runs JAX under ``jax.enable_x64`` against ``torch.double``;
float32 runs with matmul precision "highest".
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import torch
from flax import nnx

import torch_ref
from seq2seq_jax.core.batching import Batch
from seq2seq_jax.core.config import ModelConfig
from seq2seq_jax.core.tokens import EOS_ID
from seq2seq_jax.model.convert import from_torch_state_dict, to_torch_state_dict
from seq2seq_jax.model.seq2seq import Seq2Seq
from seq2seq_jax.training.steps import init_model, model_graphdef

# Tolerances on ||Δ|| / ||reference|| (see README, "Parity"). float64 gradients are compared parameter by
# parameter; float32 gradients as one vector over all parameters, since a parameter whose gradient is tiny
# through cancellation (an attention projection with near-uniform weights) carries float32 rounding of the
# size of the whole gradient in both frameworks alike.
TOLERANCES = {
    "float64": {"logits": 1e-10, "loss": 1e-10, "grads": 1e-9, "params": 1e-8, "outputs": 1e-10},
    "float32": {"logits": 1e-5, "loss": 1e-5, "grads": 1e-4, "padding": 1e-6, "outputs": 1e-5},
}


def tiny_config(dtype: str = "float64", **overrides) -> ModelConfig:
    """Embedding != hidden != attention != vocabulary sizes, so a swapped dimension cannot hide."""
    values = dict(src_vocab_size=11, tgt_vocab_size=13, src_embed_size=5, tgt_embed_size=6, enc_hidden_size=4,
                  dec_hidden_size=7, attention_size=9, readout_size=10, bridge="dense", init_scale=0.5,
                  param_dtype=dtype, compute_dtype=dtype)
    values.update(overrides)
    memory = values["enc_hidden_size"] * (2 if values.get("bidirectional", True) else 1)
    if values.get("attention") == "dot" or values.get("bridge") == "last":
        values["dec_hidden_size"] = memory
    if values.get("bridge") == "last":
        values["dec_layers"] = values.get("enc_layers", 1)
    if values.get("tie_output_embedding"):
        values["readout_size"] = values["tgt_embed_size"]
    if values.get("tie_src_tgt_embedding"):  # one joint vocabulary, one embedding width
        values["src_vocab_size"], values["src_embed_size"] = values["tgt_vocab_size"], values["tgt_embed_size"]
    return ModelConfig(**values)


def precision(dtype: str):
    """The numeric context of a parity case: x64 on for float64, "highest" matmuls for float32."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.enable_x64(dtype == "float64"))
    stack.enter_context(jax.default_matmul_precision("highest"))
    return stack


def relative_error(actual, reference) -> float:
    """``||actual - reference|| / ||reference||`` (absolute error when the reference is zero)."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    scale = np.linalg.norm(reference)
    error = np.linalg.norm(actual - reference)
    return float(error / scale) if scale > 0 else float(error)


def torch_numpy_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {key: value.detach().cpu().numpy() for key, value in module.state_dict().items()}


def jax_model(config: ModelConfig, params) -> Seq2Seq:
    """A JAX model carrying ``params`` (nested pure dict)."""
    return nnx.merge(model_graphdef(config), params)


def jax_params(model: Seq2Seq) -> dict:
    return nnx.state(model, nnx.Param).to_pure_dict()


def pair_from_torch(config: ModelConfig, seed: int = 0) -> tuple[torch_ref.Seq2Seq, Seq2Seq]:
    """Initialise in PyTorch, convert PyTorch -> Flax."""
    torch.manual_seed(seed)
    reference = torch_ref.Seq2Seq(config).eval()
    params = from_torch_state_dict(torch_numpy_state_dict(reference), config)
    with precision(config.param_dtype):
        return reference, jax_model(config, params)


def pair_from_jax(config: ModelConfig, seed: int = 0) -> tuple[torch_ref.Seq2Seq, Seq2Seq]:
    """Initialise in Flax, convert Flax -> PyTorch and load strictly."""
    with precision(config.param_dtype):
        graphdef, params = init_model(config, seed)
        model = nnx.merge(graphdef, params)
        state_dict = to_torch_state_dict(params, config)
    reference = torch_ref.Seq2Seq(config).eval()
    reference.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
    return reference, model


def make_pair(config: ModelConfig, direction: str, seed: int = 0):
    return pair_from_torch(config, seed) if direction == "torch->flax" else pair_from_jax(config, seed)


def eos_prone_pair(dtype: str, copy: bool = False, tgt_vocab_size: int = 13, coverage: bool = False):
    """``(config, torch_ref model, JAX model)`` for the search parity tests: a 2-layer Luong/general model whose
    EOS is likely enough that hypotheses end both by EOS and by length; with ``copy``, a Bahdanau model with copy
    attention (the search then ranks mixture log-probabilities), with ``coverage`` as well coverage attention
    (each hypothesis carries its own coverage, reordered with it)."""
    if copy:
        config = tiny_config(dtype, copy_attention=True, src_vocab_size=13, coverage_attention=coverage)
    else:
        config = tiny_config(dtype, decoder_style="luong", attention="general", enc_layers=2, dec_layers=2,
                             tgt_vocab_size=tgt_vocab_size)
    reference, _ = make_pair(config, "torch->flax", seed=7)
    with torch.no_grad():
        reference.output.bias[EOS_ID] += 2.0
    params = from_torch_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, config)
    with precision(dtype):
        model = jax_model(config, params)
    return config, reference, model


class Batch(Batch):
    """``seq2seq_jax.core.batching.Batch`` with its arrays as torch tensors and a way to pad it further."""

    __slots__ = ()

    def torch(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v.astype(np.int64)) for k, v in self.arrays().items()}

    def padded(self, extra_src: int, extra_tgt: int) -> Batch:
        """The same sentences with more padding on both sides."""
        return self._replace(src=np.pad(self.src, ((0, 0), (0, extra_src))),
                             tgt_in=np.pad(self.tgt_in, ((0, 0), (0, extra_tgt))),
                             tgt_out=np.pad(self.tgt_out, ((0, 0), (0, extra_tgt))))


def make_batch(config: ModelConfig, src_lens=(5, 2, 4, 1), tgt_lens=(3, 4, 1, 2), seed: int = 0) -> Batch:
    """Random real tokens (ids >= 4) with EOS ending each source; pad 0 beyond each length."""
    rng = np.random.default_rng(seed)
    batch, src_size, tgt_size = len(src_lens), max(src_lens) + 1, max(tgt_lens) + 1
    src = np.zeros((batch, src_size), np.int32)
    tgt_in = np.zeros((batch, tgt_size), np.int32)
    tgt_out = np.zeros((batch, tgt_size), np.int32)
    for row, (s, t) in enumerate(zip(src_lens, tgt_lens, strict=True)):
        src[row, : s - 1] = rng.integers(4, config.src_vocab_size, s - 1)
        src[row, s - 1] = 3
        words = rng.integers(4, config.tgt_vocab_size, t - 1)
        tgt_in[row, :t] = np.concatenate([[2], words])
        tgt_out[row, :t] = np.concatenate([words, [3]])
    return Batch(src, np.array(src_lens, np.int32), tgt_in, tgt_out, np.array(tgt_lens, np.int32), np.arange(batch))


# The largest relative error seen per (quantity, dtype) in this session; conftest prints it at the end.
MEASURED: dict[tuple[str, str], float] = {}


def check(quantity: str, dtype: str, actual, reference, tolerance: float | None = None) -> float:
    """Assert ``relative_error(actual, reference)`` is within the tolerance of ``quantity`` and record it."""
    error = relative_error(actual, reference)
    limit = TOLERANCES[dtype][quantity] if tolerance is None else tolerance
    key = (quantity, dtype)
    MEASURED[key] = max(MEASURED.get(key, 0.0), error)
    assert error <= limit, f"{quantity} ({dtype}): relative error {error:.3e} > {limit:.1e}"
    return error
