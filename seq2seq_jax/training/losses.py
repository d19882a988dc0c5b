"""Masked, label-smoothed cross-entropy over target sequences, and the coverage loss of the attention.

Both are sums over the real target tokens (``sequence_loss`` returns their number too); the division happens
on the host (or after an all-reduce), so that batches of different sizes and devices of different shards weigh
tokens equally.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seq2seq_jax.model.layers import softmax_dtype


def target_mask(tgt_len: jax.Array, steps: int) -> jax.Array:
    """``tgt_len [B]`` -> ``[B, T]`` true at real target positions (``t < tgt_len``)."""
    return jnp.arange(steps)[None, :] < tgt_len[:, None]


def sequence_loss(logits: jax.Array, targets: jax.Array, tgt_len: jax.Array, label_smoothing: float = 0.0
                  ) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy of ``logits [B, T, V]`` against ``targets [B, T]`` over positions ``t < tgt_len [B]``.

    With smoothing ε the per-token loss is ``(1-ε)·(-log p_y) + ε·mean_v(-log p_v)``, the definition of
    ``torch.nn.functional.cross_entropy(label_smoothing=ε)``. Computed in at least float32.
    Returns ``(loss_sum, token_count)``, both scalars.
    """
    log_probs = jax.nn.log_softmax(logits.astype(softmax_dtype(logits.dtype)), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(axis=-1)
    mask = target_mask(tgt_len, targets.shape[1])
    return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask).astype(log_probs.dtype)


def coverage_loss(attention: jax.Array, tgt_len: jax.Array) -> jax.Array:
    """The coverage loss of ``attention [B, T, S]`` (a teacher-forced pass's weights) summed over the real target
    positions ``t < tgt_len [B]``: ``Σ_t Σ_j min(α_tj, cov_tj)`` with ``cov_t = Σ_{t' < t} α_t'`` (See et al.,
    2017), so attending again where the source was already read costs what it repeats. In at least float32."""
    attention = attention.astype(softmax_dtype(attention.dtype))
    before = jnp.cumsum(attention, axis=1)[:, :-1]  # [B, T-1, S]
    coverage = jnp.concatenate([jnp.zeros_like(attention[:, :1]), before], axis=1)  # the steps before t
    per_step = jnp.sum(jnp.minimum(attention, coverage), axis=-1)  # [B, T]
    return jnp.sum(jnp.where(target_mask(tgt_len, attention.shape[1]), per_step, 0.0))
