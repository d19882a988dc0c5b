"""Ensembles in PyTorch, the twin of ``seq2seq_jax/decoding/ensemble.py``: several models that share their tokenizers
decode as one, with the mean of the models' probabilities as the next-token distribution.

``Ensemble`` has the interface search and ``torch_ref.translate`` use (``init_decode_state``, ``decode_step``,
``eval``, ``parameters``); its step returns logits whose ``log_softmax`` is ``log mean_i p_i``
(``ensemble_logits``: the first model's logits themselves when every model agrees, so that a model ensembled
with itself gives exactly its own n-best). The attention it records is the first model's.

    model, src_tokenizer, tgt_tokenizer = load_ensemble(["export_a", "export_b"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from seq2seq_jax.core.tokenizer import Tokenizer, check_shared_tokenizers
from torch_ref.load import load_pretrained
from torch_ref.model import Seq2Seq


def mean_log_probs(log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_i exp(a_i))`` of the models' log-probabilities ``a_i [..., V]``, as
    ``m + log(mean_i exp(a_i - m))`` with ``m = max_i a_i`` (-inf where every model gives -inf)."""
    stacked = torch.stack(list(log_probs))
    top = stacked.max(dim=0).values
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return shift + torch.log(torch.mean(torch.exp(stacked - shift), dim=0))


def ensemble_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits whose ``log_softmax`` is ``mean_log_probs`` of the models' (float32, float64 for float64 models):
    ``z_1 + (mean - log p_1)``, and ``mean + logsumexp(z_1)`` where the first model gives -inf."""
    dtype = torch.float64 if any(z.dtype == torch.float64 for z in logits) else torch.float32
    first = logits[0].to(dtype)
    log_probs = [torch.log_softmax(z.to(dtype), dim=-1) for z in logits]
    mean = mean_log_probs(log_probs)
    normaliser = torch.logsumexp(first, dim=-1, keepdim=True)
    return torch.where(torch.isfinite(log_probs[0]), first + (mean - log_probs[0]), mean + normaliser)


class Ensemble(torch.nn.Module):
    """Several ``Seq2Seq`` models (any sizes and architectures over the same vocabularies) as one decoder."""

    def __init__(self, models: Sequence[Seq2Seq]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = torch.nn.ModuleList(models)

    def init_decode_state(self, src: torch.Tensor, src_len: torch.Tensor) -> dict:
        """``{"models": [state_i], "attention": the first model's [B, S]}``, every leaf batch-leading."""
        states = [model.init_decode_state(src, src_len) for model in self.models]
        return {"models": states, "attention": states[0]["attention"]}

    def decode_step(self, state: dict, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
        outputs = [model.decode_step(model_state, tokens) for model, model_state in zip(self.models, state["models"],
                                                                                      strict=True)]
        new_states = [new for _, new in outputs]
        return ensemble_logits([logits for logits, _ in outputs]), {"models": new_states,
                                                                   "attention": new_states[0]["attention"]}

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits ``[B, T, V]`` whose ``log_softmax`` is the ensemble's log-probabilities."""
        return ensemble_logits([model(src, src_len, tgt_in) for model in self.models])


def load_ensemble(directories: Sequence[str | Path], device: str | torch.device = "cpu"
                  ) -> tuple[Seq2Seq | Ensemble, Tokenizer, Tokenizer]:
    """``load_pretrained`` of one export directory, or an ``Ensemble`` of several that share the tokenizers
    (an error names the two directories and the side that differ)."""
    loaded = [load_pretrained(directory, device) for directory in directories]
    if not loaded:
        raise ValueError("no export directory given")
    check_shared_tokenizers([(str(directory), src, tgt) for directory, (_, src, tgt)
                             in zip(directories, loaded, strict=True)])
    _, src_tokenizer, tgt_tokenizer = loaded[0]
    if len(loaded) == 1:
        return loaded[0]
    return Ensemble([model for model, _, _ in loaded]).eval(), src_tokenizer, tgt_tokenizer
