"""Validation during training: loss and perplexity over every validation pair, BLEU and exact match of the
decoding of the first ``train.valid_sample_size`` pairs; with several corpora, of each direction.

A run of one corpus reports ``valid_loss``, ``valid_ppl``, ``valid_bleu`` and ``valid_exact_match``. With
``data.corpora`` each corpus's validation set adds ``valid_loss.NAME``, ``valid_bleu.NAME`` and
``valid_exact_match.NAME``; ``valid_loss`` / ``valid_ppl`` are then over all directions' tokens and
``valid_bleu`` / ``valid_exact_match`` the mean over directions (what ``train.best_metric`` ranks).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from jax.sharding import Mesh

from seq2seq_jax.core.batching import BatchPolicy, eval_batches
from seq2seq_jax.core.config import ExperimentConfig
from seq2seq_jax.core.languages import Languages
from seq2seq_jax.decoding.metrics import corpus_bleu, exact_match, perplexity
from seq2seq_jax.decoding.translate import Translator
from seq2seq_jax.training import parallel
from seq2seq_jax.training.run_data import ValidSet

logger = logging.getLogger(__name__)


class Validation:
    """Validate parameters on ``valid_sets`` (``run_data.ValidSet``): ``validation(params) -> metrics``. Each set
    decodes with ``translator`` and the source tokenizer of its target language (``Languages``; the sets share
    the compiled searches)."""

    def __init__(self, eval_step, valid_sets: Sequence[ValidSet], translator: Translator, config: ExperimentConfig,
                 policy: BatchPolicy, mesh: Mesh, origin: str = "this run"):
        self.eval_step, self.valid_sets, self.translator = eval_step, list(valid_sets), translator
        self.policy, self.mesh = policy, mesh
        self.sample_size = config.train.valid_sample_size
        languages = Languages.of(config, origin)
        self.translators = [translator.with_source_tokenizer(languages.source_tokenizer(translator.src_tokenizer,
                                                                                          valid.tgt_lang))
                            for valid in self.valid_sets]
        self.batch_sharding = parallel.batch_sharding(mesh)
        self.local_rows = functools.partial(parallel.process_rows, self.batch_sharding)

    def _loss(self, params, examples) -> tuple[float, float]:
        loss_sum = tokens = 0.0
        for batch in eval_batches(examples, self.policy, local_rows=self.local_rows):
            batch_sum, batch_tokens = self.eval_step(params, parallel.shard_batch(batch.arrays(), self.batch_sharding,
                                                                                  batch.global_rows))
            loss_sum += float(batch_sum)
            tokens += float(batch_tokens)
        return loss_sum, tokens

    def _decode(self, translator: Translator, valid: ValidSet, logged: int) -> tuple[float, float]:
        """BLEU and exact match of the set's sample; logs ``logged`` of its sentences."""
        sample = valid.pairs[: self.sample_size]
        hyps = translator.translate_best([src for src, _ in sample])
        refs = [tgt for _, tgt in sample]
        label = f" [{valid.name}]" if valid.name else ""
        for (src, ref), hyp in list(zip(sample, hyps, strict=True))[:logged]:
            logger.info(f"  src{label}: {src}\n  ref: {ref}\n  hyp: {hyp}")
        return corpus_bleu(hyps, refs)[0], exact_match(hyps, refs)

    def __call__(self, params) -> dict[str, float]:
        # Every process decodes the whole sample on one of its own devices (the same numbers everywhere, so
        # that early stopping and the best checkpoint are decided alike); one device needs no copy.
        decode_params = params if self.mesh.size == 1 else parallel.local_copy(params)
        total_sum = total_tokens = 0.0
        per_set: dict[str, float] = {}
        bleus, matches = [], []
        for valid, translator in zip(self.valid_sets, self.translators, strict=True):
            loss_sum, tokens = self._loss(params, valid.examples)
            total_sum, total_tokens = total_sum + loss_sum, total_tokens + tokens
            translator.params = decode_params
            bleu, match = self._decode(translator, valid, 3 if len(self.valid_sets) == 1 else 1)
            bleus.append(bleu)
            matches.append(match)
            if valid.name:
                per_set.update({f"valid_loss.{valid.name}": loss_sum / max(tokens, 1.0),
                                f"valid_bleu.{valid.name}": bleu, f"valid_exact_match.{valid.name}": match})
        return {"valid_loss": total_sum / max(total_tokens, 1.0), "valid_ppl": perplexity(total_sum, total_tokens),
                "valid_bleu": sum(bleus) / len(bleus), "valid_exact_match": sum(matches) / len(matches), **per_set}


__all__ = ["Validation"]
