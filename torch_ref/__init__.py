"""PyTorch reference of the seq2seq-jax model (no JAX import anywhere in this package)."""

from torch_ref.load import load_pretrained
from torch_ref.model import Seq2Seq, coverage_loss, sequence_loss

__all__ = ["Seq2Seq", "coverage_loss", "load_pretrained", "sequence_loss"]
