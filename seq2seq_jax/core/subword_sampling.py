"""Subword regularization: each epoch, every training pair is segmented anew by sampling (unigram sampling,
Kudo 2018, or BPE-dropout, Provilkov et al. 2020: ``seq2seq_jax.core.segmentation_sampler``), so the model sees
many segmentations of one sentence. Validation and decoding keep the one deterministic segmentation.

An epoch's segmentations are a function of ``(seed, epoch)`` and the text alone: pair ``i`` is drawn, source
then target, from a numpy generator seeded with the ``i``-th word of ``numpy.random.SeedSequence([seed,
epoch, SALT])``, so a run resumed in this process or another draws the same ones. A drawn pair longer than
``max_src_len`` / ``max_tgt_len`` (sampled pieces are shorter, so segmentations longer) keeps its deterministic
segmentation, the preprocessed record: nothing is cropped or dropped that preprocessing kept, and each epoch's
count of such pairs is logged. Numpy and sentencepiece only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from seq2seq_jax.core.encoding import Example
from seq2seq_jax.core.tokenizer import Tokenizer
from seq2seq_jax.core.tokens import EOS_ID

logger = logging.getLogger(__name__)

SALT = 0x5B5A  # keeps these seeds apart from the batch order's, which also start from (seed, epoch)


@dataclasses.dataclass(frozen=True)
class SubwordSampling:
    """The sampling settings (``data.subword_alpha``, ``data.subword_nbest_size``)."""

    alpha: float
    nbest_size: int = -1

    def state(self) -> dict[str, float | int]:
        return {"alpha": self.alpha, "nbest_size": self.nbest_size}


@dataclasses.dataclass(frozen=True)
class SampledPart:
    """One run of consecutive training examples: their text, their deterministic examples (the records, same
    order and count) and the tokenizers that encode them (a tagged corpus's source tokenizer adds its tag)."""

    pairs: Sequence[tuple[str, str]]
    records: Sequence[Example]
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer


class SampledEpochs:
    """``epochs(epoch) -> list[Example]``: the training examples of ``parts`` (one after the other) with the
    segmentations drawn for ``epoch``; ``kept_deterministic`` counts the pairs of the last call that kept their
    records' segmentation (drawn longer than the limits)."""

    def __init__(self, parts: Sequence[SampledPart], sampling: SubwordSampling, seed: int, max_src_len: int,
                 max_tgt_len: int):
        for part in parts:
            if len(part.pairs) != len(part.records):
                raise ValueError(f"{len(part.pairs)} training pairs of text for {len(part.records)} records")
        self.parts, self.sampling, self.seed = list(parts), sampling, seed
        self._records = [list(part.records) for part in self.parts]  # read once: the fallback of every epoch
        self.max_src_len, self.max_tgt_len = max_src_len, max_tgt_len
        self.num_examples = sum(len(part.pairs) for part in self.parts)
        self.kept_deterministic = 0

    def __call__(self, epoch: int) -> list[Example]:
        seeds = np.random.SeedSequence([self.seed, epoch, SALT]).generate_state(max(self.num_examples, 1))
        alpha, nbest = self.sampling.alpha, self.sampling.nbest_size
        examples: list[Example] = []
        kept = 0
        for part, records in zip(self.parts, self._records, strict=True):
            for (source, target), record in zip(part.pairs, records, strict=True):
                rng = np.random.default_rng(int(seeds[len(examples)]))
                src = part.src_tokenizer.sample(source, alpha, nbest, rng)
                tgt = part.tgt_tokenizer.sample(target, alpha, nbest, rng)
                if not src or not tgt or len(src) + 1 > self.max_src_len or len(tgt) + 1 > self.max_tgt_len:
                    examples.append(record)
                    kept += 1
                else:
                    examples.append(Example(np.array(src + [EOS_ID], dtype=np.int32),
                                            np.array(tgt, dtype=np.int32)))
        self.kept_deterministic = kept
        logger.info(f"epoch {epoch}: {len(examples)} training pairs segmented by sampling (alpha {alpha}"
                    f"{f', n-best {nbest}' if nbest != -1 else ''}); {kept} drawn longer than max_src_len/"
                    "max_tgt_len kept their usual segmentation")
        return examples
