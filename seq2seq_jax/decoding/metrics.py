"""Evaluation metrics on detokenized text: sacrebleu BLEU, chrF, chrF++ and TER (with their signatures),
rouge-score ROUGE-1/2/L, perplexity and exact match.

References, everywhere in this module, are given **per example**:

* ``refs: Sequence[str]`` -- one reference per hypothesis, ``refs[i]`` for ``hyps[i]``; or
* ``refs: Sequence[Sequence[str]]`` -- several references per hypothesis, ``refs[i]`` is the (non-empty)
  list of references of ``hyps[i]``; examples may have different numbers of references.

sacrebleu itself takes reference *streams* (``streams[k][i]`` is the k-th reference of example i, e.g. one
stream per reference file); ``per_example_references(streams)`` converts that layout to this one.
Hypothesis/reference count mismatches raise ``ValueError`` stating both counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF, TER

from seq2seq_jax.core.pair_scores import perplexity

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def per_example_references(streams: Sequence[Sequence[str]], names: Sequence[str] | None = None) -> list[list[str]]:
    """Convert sacrebleu-style reference streams (``[num_refs][num_examples]``, e.g. one list per reference
    file, ``names`` their file names) to per-example lists (``[num_examples][num_refs_i]``), leaving out empty
    references: a set of reference files where an example has fewer references leaves its line empty (as
    WebNLG's ``dev_sets.refN`` do). All streams must have the same length."""
    lengths = [len(stream) for stream in streams]
    names = list(names) if names is not None else [f"reference stream {k + 1}" for k in range(len(streams))]
    if not lengths:
        raise ValueError("no reference streams given")
    if len(set(lengths)) != 1:
        counts = ", ".join(f"{name}: {length}" for name, length in zip(names, lengths, strict=True))
        raise ValueError(f"reference streams have different numbers of lines ({counts})")
    # An example whose every reference is empty keeps one empty reference: a blank line of a one-file set.
    return [[ref for ref in refs if ref.strip()] or [refs[0]] for refs in zip(*streams, strict=True)]


def _per_example(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], metric: str
                 ) -> list[list[str]]:
    """Validate and normalise ``refs`` to ``[num_examples][num_refs_i]`` (each list non-empty)."""
    if isinstance(hyps, str) or isinstance(refs, str):
        raise TypeError(f"{metric}: hyps and refs must be sequences of strings, "
                        "not a single string")
    if len(hyps) != len(refs):
        raise ValueError(f"{metric}: {len(hyps)} hypotheses but {len(refs)} reference entries; "
                         "they must match one to one (refs[i] are the references of hyps[i])")
    if len(hyps) == 0:
        raise ValueError(f"{metric}: no hypotheses to score")
    normalised = []
    for index, (hyp, entry) in enumerate(zip(hyps, refs, strict=True)):
        if not isinstance(hyp, str):
            raise TypeError(f"{metric}: hypothesis {index} is a {type(hyp).__name__}, not a str")
        entry_refs = [entry] if isinstance(entry, str) else list(entry)
        if not entry_refs:
            raise ValueError(f"{metric}: example {index} has no reference")
        for ref in entry_refs:
            if not isinstance(ref, str):
                raise TypeError(f"{metric}: a reference of example {index} is a "
                                f"{type(ref).__name__}, not a str")
        normalised.append(entry_refs)
    return normalised


def _sacrebleu_streams(per_example: list[list[str]]) -> list[list[str | None]]:
    """Per-example references to sacrebleu streams, padding with None (which sacrebleu skips) where an
    example has fewer references than the most referenced one."""
    num_streams = max(len(refs) for refs in per_example)
    return [[refs[k] if k < len(refs) else None for refs in per_example] for k in range(num_streams)]


def _corpus_score(metric: Any, hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], name: str
                  ) -> tuple[float, str]:
    streams = _sacrebleu_streams(_per_example(hyps, refs, name))
    return float(metric.corpus_score(list(hyps), streams).score), str(metric.get_signature())


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], **bleu_options: Any
                ) -> tuple[float, str]:
    """Corpus BLEU (0-100) and its sacrebleu signature string, e.g.
    ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``.

    ``bleu_options`` go to ``sacrebleu.metrics.BLEU`` (e.g. ``tokenize="zh"``, ``lowercase=True``).
    """
    return _corpus_score(BLEU(**bleu_options), hyps, refs, "BLEU")


def corpus_chrf(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], **chrf_options: Any
                ) -> tuple[float, str]:
    """Corpus chrF (0-100; ``word_order=2`` gives chrF++) and its sacrebleu signature string.

    ``chrf_options`` go to ``sacrebleu.metrics.CHRF``.
    """
    return _corpus_score(CHRF(**chrf_options), hyps, refs, "chrF")


def corpus_ter(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], **ter_options: Any
               ) -> tuple[float, str]:
    """Corpus TER (edits per reference word x100, lower is better; several references: the closest) and its
    sacrebleu signature string. ``ter_options`` go to ``sacrebleu.metrics.TER``."""
    return _corpus_score(TER(**ter_options), hyps, refs, "TER")


def translation_scores(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> dict[str, Any]:
    """sacrebleu's defaults, as reported everywhere: ``bleu``, ``chrf``, ``chrf_pp`` (chrF++, word bigrams too)
    and ``ter``, each with its ``*_signature``."""
    scores: dict[str, Any] = {}
    for name, (value, signature) in (("bleu", corpus_bleu(hyps, refs)), ("chrf", corpus_chrf(hyps, refs)),
                                     ("chrf_pp", corpus_chrf(hyps, refs, word_order=2)),
                                     ("ter", corpus_ter(hyps, refs))):
        scores[name], scores[f"{name}_signature"] = value, signature
    return scores


def rouge(hyps: Sequence[str], refs_lists: Sequence[str] | Sequence[Sequence[str]], use_stemmer: bool = True,
          tokenizer: Any = None) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (x100), averaged over examples.

    With several references, each example counts its best reference, chosen separately for each ROUGE type.
    Note: rouge-score's default tokenizer keeps only ASCII letters and digits (text in other scripts scores
    0); pass a ``tokenizer`` (an object with ``tokenize(text) -> list[str]``) for such text.

    Returns ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``.
    """
    per_example = _per_example(hyps, refs_lists, "ROUGE")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer, tokenizer=tokenizer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, refs in zip(hyps, per_example, strict=True):
        scores = [scorer.score(target=ref, prediction=hyp) for ref in refs]
        for rouge_type in ROUGE_TYPES:
            totals[rouge_type] += max(score[rouge_type].fmeasure for score in scores)
    return {rouge_type: 100.0 * total / len(per_example) for rouge_type, total in totals.items()}


def exact_match(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Percentage (0-100) of hypotheses equal to one of their references, ignoring leading/trailing space."""
    per_example = _per_example(hyps, refs, "exact match")
    matches = sum(hyp.strip() in {ref.strip() for ref in refs}
                  for hyp, refs in zip(hyps, per_example, strict=True))
    return 100.0 * matches / len(per_example)


__all__ = ["corpus_bleu", "corpus_chrf", "corpus_ter", "translation_scores", "rouge", "perplexity", "exact_match",
           "per_example_references", "ROUGE_TYPES"]
