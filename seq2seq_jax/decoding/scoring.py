"""Forced decoding: the log-probability a model (or an ensemble) gives to given target sentences.

One teacher-forced pass (``Seq2Seq.__call__``) per batch, jitted once per padded shape; batches are the length
buckets of evaluation (``data.eval_batches``), with no length limit and no pair dropped. Per pair: the sum of
``log_softmax`` at the target pieces and EOS, and their count (``seq2seq_jax.core.pair_scores``). An ensemble
scores with ``log mean_i p_i`` (``seq2seq_jax.decoding.ensemble.mean_log_probs``). ``torch_ref/score.py`` is the twin.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seq2seq_jax.core.batching import BatchPolicy, BucketWidth, eval_batches
from seq2seq_jax.core.encoding import Example
from seq2seq_jax.core.pair_scores import PairScore
from seq2seq_jax.core.tokenizer import EOS_ID, Tokenizer
from seq2seq_jax.decoding.ensemble import mean_log_probs


def make_score_step(graphdefs: Sequence[nnx.GraphDef]):
    """Return the pure ``score_step(params, batch) -> (log_prob [B], count [B])`` of the models ``graphdefs``
    with ``params`` a tuple of their parameters; ``batch`` holds ``src [B, S]``, ``src_len [B]``,
    ``tgt_in [B, T]``, ``tgt_out [B, T]``, ``tgt_len [B]`` (0 for padding rows, which score 0)."""
    graphdefs = tuple(graphdefs)

    def score_step(params, batch: dict[str, jax.Array]):
        log_probs = []
        for graphdef, model_params in zip(graphdefs, params, strict=True):
            logits = nnx.merge(graphdef, model_params)(batch["src"], batch["src_len"], batch["tgt_in"])
            dtype = jnp.promote_types(logits.dtype, jnp.float32)
            log_probs.append(jax.nn.log_softmax(logits.astype(dtype), axis=-1))
        combined = log_probs[0] if len(log_probs) == 1 else mean_log_probs(log_probs)  # [B, T, V]
        token = jnp.take_along_axis(combined, batch["tgt_out"][..., None], axis=-1)[..., 0]
        mask = jnp.arange(token.shape[1])[None, :] < batch["tgt_len"][:, None]
        return jnp.sum(jnp.where(mask, token, 0.0), axis=1), batch["tgt_len"]

    return score_step


class Scorer:
    """Score (source, target) text pairs with one model or an ensemble: ``score(sources, targets)``.

    ``graphdefs`` / ``params``: sequences of the models' graph definitions and parameters (one entry for a
    single model); ``bucket_width`` as ``DataConfig.bucket_widths``. The tokenizers are needed for text only
    (``score``), not for ids (``score_examples``).
    """

    def __init__(self, graphdefs: Sequence[nnx.GraphDef], params: Sequence, src_tokenizer: Tokenizer | None,
                 tgt_tokenizer: Tokenizer | None, batch_size: int = 64, bucket_width: BucketWidth = 8):
        self.params = tuple(params)
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.policy = BatchPolicy(batch_size, bucket_width)
        self._step = jax.jit(make_score_step(graphdefs))

    def examples(self, sources: Sequence[str], targets: Sequence[str]) -> list[Example]:
        """Every pair as an ``Example`` (source ids + EOS, target ids), none dropped or cut."""
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
        return [Example(np.array(self.src_tokenizer.encode(source) + [EOS_ID], np.int32),
                        np.array(self.tgt_tokenizer.encode(target), np.int32))
                for source, target in zip(sources, targets, strict=True)]

    def score(self, sources: Sequence[str], targets: Sequence[str]) -> list[PairScore]:
        """One ``PairScore`` per pair, in input order."""
        return self.score_examples(self.examples(sources, targets))

    def score_examples(self, examples: Sequence[Example]) -> list[PairScore]:
        """One ``PairScore`` per ``Example`` (ids: source with EOS, target without), in order."""
        scores: list[PairScore | None] = [None] * len(examples)
        for batch in eval_batches(examples, self.policy):
            log_prob, count = jax.device_get(self._step(self.params, {
                name: jnp.asarray(getattr(batch, name)) for name in ("src", "src_len", "tgt_in", "tgt_out",
                                                                      "tgt_len")}))
            for row, index in enumerate(batch.index):
                if index >= 0:
                    scores[int(index)] = PairScore(float(log_prob[row]), int(count[row]))
        return scores  # type: ignore[return-value]
