"""Subword regularization (``data.subword_alpha``): training pairs segmented anew each epoch by sampling, a
function of (seed, epoch) alone, never changing the text, never longer than the limits; off for validation and
decoding; a run resumed in another process draws the same segmentations (bit-identical losses)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_support import step_losses, tiny_config

from seq2seq_jax.core.config import ConfigError, DataConfig
from seq2seq_jax.core.encoding import Example
from seq2seq_jax.core.languages import TaggedTokenizer
from seq2seq_jax.core.subword_sampling import SampledEpochs, SampledPart, SubwordSampling
from seq2seq_jax.core.tokenizer import SentencePieceTokenizer, TokenizerError, VocabularyTokenizer
from seq2seq_jax.core.tokens import EOS_ID

LINES = [f"the {colour} {animal} runs over the {place} near the river" for colour in ("red", "blue", "green")
         for animal in ("horse", "dog", "elephant", "cat") for place in ("bridge", "meadow", "mountain")]
SAMPLED = ["data.tokenizer=unigram", "data.vocab_size=360", "data.subword_alpha=0.5"]
TESTS = Path(__file__).resolve().parent
TRAIN_IN_A_NEW_PROCESS = """
import sys
from run_support import tiny_config
from seq2seq_jax.training.trainer import train
train(tiny_config(*sys.argv[2:]), sys.argv[1])
"""


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def tokenizer(request):
    return SentencePieceTokenizer.train(request.param, LINES * 4, vocab_size=330, character_coverage=1.0)


def records(tokenizer, pairs):
    return [Example(np.array(tokenizer.encode(s) + [EOS_ID], np.int32), np.array(tokenizer.encode(t), np.int32))
            for s, t in pairs]


def epochs(tokenizer, alpha=0.5, max_len=100, seed=3, part_tokenizer=None):
    pairs = [(line, line.replace("the ", "a ")) for line in LINES]
    part = SampledPart(pairs, records(tokenizer, pairs), part_tokenizer or tokenizer, tokenizer)
    return pairs, SampledEpochs([part], SubwordSampling(alpha), seed, max_len, max_len)


def test_an_epoch_is_a_function_of_seed_and_epoch_and_keeps_the_text(tokenizer):
    pairs, sampled = epochs(tokenizer)
    first, again, other_epoch = sampled(0), sampled(0), sampled(1)
    other_seed = epochs(tokenizer, seed=4)[1](0)
    as_lists = lambda examples: [(e.src.tolist(), e.tgt.tolist()) for e in examples]  # noqa: E731
    assert as_lists(first) == as_lists(again)
    assert as_lists(first) != as_lists(other_epoch) and as_lists(first) != as_lists(other_seed)
    deterministic = as_lists(records(tokenizer, pairs))
    assert sum(a != b for a, b in zip(as_lists(first), deterministic, strict=True)) > len(pairs) // 2
    for (source, target), example in zip(pairs, first, strict=True):
        assert example.src[-1] == EOS_ID and example.src.dtype == np.int32 and example.tgt.dtype == np.int32
        assert tokenizer.decode(example.src) == source and tokenizer.decode(example.tgt) == target


def test_a_drawn_pair_over_the_limits_keeps_its_usual_segmentation(tokenizer):
    pairs = [(line, line.replace("the ", "a ")) for line in LINES]
    usual = records(tokenizer, pairs)
    # every record fits, and so do draws up to two pieces longer; longer draws do not. Two pieces of slack
    # keep both kinds of pair in the epoch for either tokenizer, whatever the draws (at the longest record's
    # length, nearly every BPE-dropout draw is longer)
    limit = max(max(len(e.src), len(e.tgt) + 1) for e in usual) + 2
    _, sampled = epochs(tokenizer, alpha=0.1, max_len=limit)
    drawn = sampled(0)
    assert 0 < sampled.kept_deterministic < len(pairs)
    assert max(len(e.src) for e in drawn) <= limit and max(len(e.tgt) + 1 for e in drawn) <= limit
    kept = [i for i, (a, b) in enumerate(zip(drawn, usual, strict=True)) if a.src.tolist() == b.src.tolist()]
    assert len(kept) >= sampled.kept_deterministic


def test_a_tagged_source_keeps_its_tag_first(tokenizer):
    tag = tokenizer.encode("the")[:1]
    _, sampled = epochs(tokenizer, part_tokenizer=TaggedTokenizer(tokenizer, tag))
    assert all(example.src[: len(tag)].tolist() == tag for example in sampled(2))


def test_sampling_needs_a_sentencepiece_tokenizer_and_sane_settings():
    with pytest.raises(TokenizerError, match="sentencepiece"):
        VocabularyTokenizer.train("char", LINES, 1, 100).sample("abc", 0.1, -1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="unigram or bpe"):
        DataConfig(subword_alpha=0.1)
    with pytest.raises(ConfigError, match=r"subword_alpha must be in \[0, 1\]"):
        DataConfig(tokenizer="unigram", subword_alpha=1.5)
    with pytest.raises(ConfigError, match="subword_nbest_size"):
        DataConfig(tokenizer="unigram", subword_alpha=0.1, subword_nbest_size=1)
    with pytest.raises(ConfigError, match="from 2 to 512"):
        DataConfig(tokenizer="unigram", subword_alpha=0.1, subword_nbest_size=513)


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    from seq2seq_jax.training.trainer import train

    workdir = tmp_path_factory.mktemp("sampled") / "run"
    train(tiny_config(*SAMPLED, "train.max_steps=30", "train.save_every=10"), workdir)
    return workdir


def test_resume_with_sampling_in_another_process_is_bit_identical_across_epochs(sampled_run, tmp_path):
    """200 pairs in batches of 16: 13 batches an epoch, so steps 14 and 27 start newly sampled epochs; the run
    stopped at step 20 resumes from step 10 in a new process and logs the uninterrupted run's losses."""
    from seq2seq_jax.training.trainer import train

    run = tmp_path / "run"
    train(tiny_config(*SAMPLED, "train.max_steps=20", "train.save_every=10"), run)
    shutil.rmtree(run / "checkpoints" / "20")  # killed after step 20, before its save: resume from step 10
    paths = [str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    resumed_run = subprocess.run([sys.executable, "-c", TRAIN_IN_A_NEW_PROCESS, str(run), *SAMPLED,
                                  "train.max_steps=30", "train.save_every=10"], capture_output=True, text=True,
                                 env=env, timeout=300)
    assert resumed_run.returncode == 0, resumed_run.stderr[-3000:]
    resumed, uninterrupted = step_losses(run), step_losses(sampled_run)
    assert sorted(resumed) == list(range(1, 31))
    for step in range(11, 31):
        assert resumed[step] == uninterrupted[step], step


def test_sampling_changes_training_batches_but_not_validation(sampled_run, tmp_path):
    from seq2seq_jax.core.batching import BatchPolicy
    from seq2seq_jax.training.run_data import prepare_data
    from seq2seq_jax.training.workdir import Workdir

    config = tiny_config(*SAMPLED)
    plain = tiny_config(*SAMPLED[:2])
    with_sampling = prepare_data(config, Workdir(tmp_path / "a"), True, BatchPolicy(16, (16, 16)))
    without = prepare_data(plain, Workdir(tmp_path / "b"), True, BatchPolicy(16, (16, 16)))
    valid = [[(e.src.tolist(), e.tgt.tolist()) for e in data.valid_sets[0].examples]
             for data in (with_sampling, without)]
    assert valid[0] == valid[1]
    batches = [[next(data.iterator) for _ in range(3)] for data in (with_sampling, without)]
    assert any(not np.array_equal(a.src, b.src) for a, b in zip(*batches, strict=True))
    assert step_losses(sampled_run)[1] > 0


def test_a_preprocessed_corpus_keeps_the_training_text_only_for_sampling(tmp_path):
    """``preprocess`` with ``data.subword_alpha`` keeps ``train.pairs.jsonl`` beside the records, and training
    from it samples; a corpus made without it is refused for sampling with what to do."""
    from seq2seq_jax.core.batching import BatchPolicy
    from seq2seq_jax.core.reading import DataError
    from seq2seq_jax.training.preprocess import preprocess
    from seq2seq_jax.training.run_data import prepare_data
    from seq2seq_jax.training.workdir import Workdir

    sampled = preprocess(tiny_config(*SAMPLED), tmp_path / "sampled", progress=False)
    plain = preprocess(tiny_config(*SAMPLED[:2]), tmp_path / "plain", progress=False)
    assert len(sampled.kept_pairs("train")) == len(sampled.split("train")) == 200
    assert not (plain.path / "train.pairs.jsonl").exists()
    data = prepare_data(tiny_config(*SAMPLED, f"data.preprocessed_dir={sampled.path}"), Workdir(tmp_path / "a"),
                        True, BatchPolicy(16, (16, 16)))
    assert data.iterator.state()["subword_sampling"] == {"alpha": 0.5, "nbest_size": -1}
    with pytest.raises(DataError, match="made without data.subword_alpha"):
        prepare_data(tiny_config(*SAMPLED, f"data.preprocessed_dir={plain.path}"), Workdir(tmp_path / "b"), True,
                     BatchPolicy(16, (16, 16)))
