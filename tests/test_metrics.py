"""Tests for seq2seq_jax.decoding.metrics against direct sacrebleu / rouge-score calls."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from seq2seq_jax.decoding.metrics import (
    corpus_bleu,
    corpus_chrf,
    corpus_ter,
    exact_match,
    per_example_references,
    perplexity,
    rouge,
    translation_scores,
)

HYPS = ["the cat sat on the mat", "a quick brown fox jumps", "hello world again"]
REFS_A = ["the cat sat on a mat", "the quick brown fox jumped over", "hello world"]
REFS_B = ["a cat was sitting on the mat", "a quick brown fox jumps", "hi there world again"]


def test_bleu_single_reference_matches_sacrebleu():
    score, signature = corpus_bleu(HYPS, REFS_A)
    expected = sacrebleu.metrics.BLEU().corpus_score(HYPS, [REFS_A])
    assert score == pytest.approx(expected.score)
    assert 0 < score < 100
    assert signature.startswith("nrefs:1|") and "tok:13a" in signature and "version:" in signature


def test_bleu_and_chrf_several_references_match_sacrebleu_streams():
    per_example = [[a, b] for a, b in zip(REFS_A, REFS_B, strict=True)]
    assert per_example_references([REFS_A, REFS_B]) == per_example
    score, signature = corpus_bleu(HYPS, per_example)
    assert score == pytest.approx(sacrebleu.metrics.BLEU().corpus_score(HYPS, [REFS_A, REFS_B]).score)
    assert score > corpus_bleu(HYPS, REFS_A)[0]  # the second reference only adds matches
    assert signature.startswith("nrefs:2|")
    chrf, chrf_signature = corpus_chrf(HYPS, per_example)
    assert chrf == pytest.approx(sacrebleu.metrics.CHRF().corpus_score(HYPS, [REFS_A, REFS_B]).score)
    assert chrf_signature.startswith("nrefs:2|") and "nc:6" in chrf_signature


def test_variable_number_of_references():
    per_example = [[REFS_A[0], REFS_B[0]], [REFS_A[1]], [REFS_A[2], REFS_B[2]]]
    score, signature = corpus_bleu(HYPS, per_example)
    streams = [REFS_A, [REFS_B[0], None, REFS_B[2]]]
    assert score == pytest.approx(sacrebleu.metrics.BLEU().corpus_score(HYPS, streams).score)
    assert signature.startswith("nrefs:var|")


def test_chrf_single_reference_and_options():
    score, signature = corpus_chrf(HYPS, REFS_A, word_order=2)
    assert score == pytest.approx(sacrebleu.metrics.CHRF(word_order=2).corpus_score(HYPS, [REFS_A]).score)
    assert "nw:2" in signature
    assert corpus_bleu(["one two three four five"], ["one two three four five"])[0] == pytest.approx(100.0)
    assert corpus_chrf(["identical text"], ["identical text"])[0] == pytest.approx(100.0)


def test_rouge_matches_rouge_score_single_reference():
    result = rouge(HYPS, REFS_A)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(ref, hyp) for hyp, ref in zip(HYPS, REFS_A, strict=True)]
    for rouge_type in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(score[rouge_type].fmeasure for score in direct) / len(HYPS)
        assert result[rouge_type] == pytest.approx(expected)
    assert set(result) == {"rouge1", "rouge2", "rougeL"}
    # Stemming matters: "jumps"/"jumped" match only with the stemmer.
    assert rouge(["fox jumps"], ["fox jumped"])["rouge1"] == pytest.approx(100.0)
    assert rouge(["fox jumps"], ["fox jumped"], use_stemmer=False)["rouge1"] == pytest.approx(50.0)


def test_rouge_takes_best_reference_per_example_and_per_metric():
    per_example = [[a, b] for a, b in zip(REFS_A, REFS_B, strict=True)]
    result = rouge(HYPS, per_example)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for rouge_type in ("rouge1", "rouge2", "rougeL"):
        best = [max(scorer.score(a, hyp)[rouge_type].fmeasure, scorer.score(b, hyp)[rouge_type].fmeasure)
                for hyp, a, b in zip(HYPS, REFS_A, REFS_B, strict=True)]
        assert result[rouge_type] == pytest.approx(100 * sum(best) / len(best))
        assert result[rouge_type] >= rouge(HYPS, REFS_A)[rouge_type]
        assert result[rouge_type] >= rouge(HYPS, REFS_B)[rouge_type]
    # Example 2 is an exact copy of REFS_B[1]: its best reference scores 100 on every type.
    assert rouge([HYPS[1]], [[REFS_A[1], REFS_B[1]]]) == pytest.approx(
        {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})


def test_perplexity():
    assert perplexity(0.0, 10) == pytest.approx(1.0)
    assert perplexity(10 * math.log(4.0), 10) == pytest.approx(4.0)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="token count"):
        perplexity(1.0, 0)


def test_exact_match():
    assert exact_match(["a b", "c", "d "], ["a b", "x", "d"]) == pytest.approx(200 / 3)
    assert exact_match(["a", "b"], [["z", "a"], ["y"]]) == pytest.approx(50.0)


@pytest.mark.parametrize("function", [corpus_bleu, corpus_chrf, rouge, exact_match])
def test_count_mismatch_names_both_counts(function):
    with pytest.raises(ValueError, match=r"3 hypotheses but 2 reference entries"):
        function(HYPS, REFS_A[:2])


def test_bad_reference_inputs():
    with pytest.raises(ValueError, match="no hypotheses"):
        corpus_bleu([], [])
    with pytest.raises(ValueError, match="example 1 has no reference"):
        corpus_bleu(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="different numbers of lines"):
        per_example_references([["a", "b"], ["c"]])


def test_empty_reference_lines_are_left_out_of_a_multi_reference_set():
    """Reference files of a set whose examples have different numbers of references leave the missing lines
    empty (WebNLG's dev_sets.refN): those are not references. BLEU, chrF, chrF++ and TER then equal
    sacrebleu's with the missing references as None, and an example whose only reference is empty keeps it."""
    ref2 = [REFS_B[0], "", REFS_B[2]]
    ref3 = ["", "", "hello world again indeed"]
    per_example = per_example_references([REFS_A, ref2, ref3], ["ref1", "ref2", "ref3"])
    assert per_example == [[REFS_A[0], REFS_B[0]], [REFS_A[1]], [REFS_A[2], REFS_B[2], ref3[2]]]
    streams = [REFS_A, [REFS_B[0], None, REFS_B[2]], [None, None, ref3[2]]]
    scores = translation_scores(HYPS, per_example)
    for name, metric in [("bleu", sacrebleu.metrics.BLEU()), ("chrf", sacrebleu.metrics.CHRF()),
                         ("chrf_pp", sacrebleu.metrics.CHRF(word_order=2)), ("ter", sacrebleu.metrics.TER())]:
        assert scores[name] == pytest.approx(metric.corpus_score(HYPS, streams).score), name
        assert scores[f"{name}_signature"].startswith("nrefs:var|"), name
    assert per_example_references([["a", ""], ["b", ""]]) == [["a", "b"], [""]]
    with pytest.raises(ValueError, match=r"different numbers of lines \(ref1: 2, ref2: 1\)"):
        per_example_references([["a", "b"], ["c"]], ["ref1", "ref2"])


def test_ter_and_chrf_plus_plus_match_sacrebleu():
    score, signature = corpus_ter(HYPS, REFS_A)
    assert score == pytest.approx(sacrebleu.metrics.TER().corpus_score(HYPS, [REFS_A]).score)
    assert "tok:tercom" in signature
    chrf_pp, chrf_pp_signature = corpus_chrf(HYPS, REFS_A, word_order=2)
    assert chrf_pp == pytest.approx(sacrebleu.metrics.CHRF(word_order=2).corpus_score(HYPS, [REFS_A]).score)
    assert "nw:2" in chrf_pp_signature
