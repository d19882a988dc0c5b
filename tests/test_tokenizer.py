"""Tokenizers: round trips, vocabulary rules, determinism, save/load and clear errors for every kind."""

import dataclasses
import subprocess
import sys

import pytest

from seq2seq_jax.core.config import ConfigError, DataConfig
from seq2seq_jax.core.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    SentencePieceTokenizer,
    TokenizerError,
    VocabularyTokenizer,
    build_tokenizers,
    load_tokenizer,
    load_tokenizers,
    metadata_path,
    sentencepiece_model_path,
    tokenizer_files,
    train_tokenizer,
)
from seq2seq_jax.training.tasks import generate_task

DATE_PAIRS = generate_task("dates", 200, seed=3)
DATE_SOURCES = [source for source, _ in DATE_PAIRS]
DATE_TARGETS = [target for _, target in DATE_PAIRS]
SPM_VOCAB = 400  # 4 specials + 256 bytes + ~60 characters + a few pieces


@pytest.fixture(scope="module")
def sentencepiece_tokenizers():
    return {kind: SentencePieceTokenizer.train(kind, DATE_SOURCES, SPM_VOCAB, 1.0)
            for kind in ("unigram", "bpe")}


def test_char_round_trip_and_unknown_characters():
    tokenizer = VocabularyTokenizer.train("char", ["abc a", "cab"], min_freq=1, max_vocab_size=100)
    ids = tokenizer.encode("a cab")
    assert len(ids) == 5 and UNK_ID not in ids and BOS_ID not in ids and EOS_ID not in ids
    assert tokenizer.decode(ids) == "a cab"
    assert tokenizer.encode("az") == [tokenizer.encode("a")[0], UNK_ID]
    assert tokenizer.decode(tokenizer.encode("az")) == "a<unk>"


def test_char_vocabulary_by_frequency_then_code_point():
    tokenizer = VocabularyTokenizer.train("char", ["ccbbba", "d"], min_freq=1, max_vocab_size=6)
    assert tokenizer.tokens == ["b", "c"]  # b:3, c:2, then a and d tie at 1 but do not fit
    assert tokenizer.vocab_size == 6
    rare_dropped = VocabularyTokenizer.train("char", ["ccbbba", "d"], min_freq=2, max_vocab_size=100)
    assert rare_dropped.tokens == ["b", "c"]


def test_word_vocabulary_min_freq_max_size_and_ties():
    lines = ["the cat sat", "the dog sat", "the  end\tzebra apple"]
    tokenizer = VocabularyTokenizer.train("word", lines, min_freq=1, max_vocab_size=7)
    # the:3, sat:2, then apple, cat, dog, end, zebra tie at 1 -> code point order
    assert tokenizer.tokens == ["the", "sat", "apple"]
    frequent = VocabularyTokenizer.train("word", lines, min_freq=2, max_vocab_size=100)
    assert frequent.tokens == ["the", "sat"]
    assert frequent.decode(frequent.encode("the   cat sat")) == "the <unk> sat"


def test_decode_skips_specials_everywhere_and_rejects_bad_ids():
    tokenizer = VocabularyTokenizer.train("word", ["a b"], min_freq=1, max_vocab_size=10)
    a, b = tokenizer.encode("a b")
    assert tokenizer.decode([BOS_ID, a, EOS_ID, b, PAD_ID, PAD_ID]) == "a b"
    with pytest.raises(TokenizerError, match="outside"):
        tokenizer.decode([tokenizer.vocab_size])


def test_word_that_looks_like_a_special_is_an_ordinary_token():
    tokenizer = VocabularyTokenizer.train("word", ["<s> x </s>"], min_freq=1, max_vocab_size=10)
    ids = tokenizer.encode("<s> x </s>")
    assert BOS_ID not in ids and EOS_ID not in ids
    assert tokenizer.decode(ids) == "<s> x </s>"


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_sentencepiece_round_trip_with_byte_fallback(sentencepiece_tokenizers, kind):
    tokenizer = sentencepiece_tokenizers[kind]
    assert 4 + 256 < tokenizer.vocab_size <= SPM_VOCAB
    for text in DATE_SOURCES[:20] + ["  two  spaces ", "ünïcødé ☃ never seen", ""]:
        ids = tokenizer.encode(text)
        assert UNK_ID not in ids and BOS_ID not in ids and EOS_ID not in ids
        assert tokenizer.decode(ids) == text
    assert tokenizer.decode([BOS_ID] + tokenizer.encode("March") + [EOS_ID, PAD_ID]) == "March"


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_sentencepiece_training_is_deterministic(sentencepiece_tokenizers, kind):
    again = SentencePieceTokenizer.train(kind, DATE_SOURCES, SPM_VOCAB, 1.0)
    assert again.model_proto == sentencepiece_tokenizers[kind].model_proto


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_user_symbols_are_single_pieces_with_or_without_a_space(kind):
    lines = [f"#Person{i % 2 + 1}#: {source} #Person{(i + 1) % 2 + 1}#'s" for i, source in enumerate(DATE_SOURCES)]
    tokenizer = SentencePieceTokenizer.train(kind, lines, SPM_VOCAB, 1.0, user_symbols=("#Person1#", "#Person2#"))
    plain = SentencePieceTokenizer.train(kind, lines, SPM_VOCAB, 1.0)
    text = "#Person1#: hi #Person2#'s day,#Person1#"
    pieces = [tokenizer._processor.id_to_piece(i) for i in tokenizer.encode(text)]
    assert pieces[0] == "\u2581#Person1#" and "\u2581#Person2#" in pieces and pieces[-1] == "#Person1#"
    assert len(tokenizer.encode(text)) < len(plain.encode(text))
    for line in lines[:20] + [text, "#Person1##Person2#", " #Person2# "]:
        assert tokenizer.decode(tokenizer.encode(line)) == line


def test_user_symbols_need_sentencepiece_and_no_spaces():
    with pytest.raises(ConfigError, match="needs a sentencepiece tokenizer"):
        DataConfig(tokenizer="word", user_symbols=("#Person1#",))
    with pytest.raises(ConfigError, match="without whitespace"):
        DataConfig(tokenizer="unigram", user_symbols=("a b",))


def test_sentencepiece_vocab_too_small_is_a_clear_error():
    with pytest.raises(TokenizerError, match="data.vocab_size=50"):
        SentencePieceTokenizer.train("bpe", DATE_SOURCES, 50, 1.0)


@pytest.mark.parametrize("kind", ["char", "word", "unigram", "bpe"])
def test_save_load_round_trip(tmp_path, kind):
    config = DataConfig(tokenizer=kind, vocab_size=SPM_VOCAB)
    tokenizer = train_tokenizer(config, DATE_SOURCES)
    written = tokenizer.save(tmp_path, "src")
    assert written == tokenizer.files(tmp_path, "src") and all(path.exists() for path in written)
    loaded = load_tokenizer(tmp_path, "src")
    assert (loaded.kind, loaded.vocab_size) == (kind, tokenizer.vocab_size)
    for text in DATE_SOURCES[:10]:
        assert loaded.encode(text) == tokenizer.encode(text)
        assert loaded.decode(loaded.encode(text)) == tokenizer.decode(tokenizer.encode(text))


def test_build_tokenizers_separate_and_joint(tmp_path):
    config = DataConfig(tokenizer="word")
    src_tok, tgt_tok = build_tokenizers(config, DATE_SOURCES, DATE_TARGETS, tmp_path / "separate")
    assert src_tok.encode(DATE_TARGETS[0]) == [UNK_ID]  # ISO dates never appear on the source side
    assert tgt_tok.decode(tgt_tok.encode(DATE_TARGETS[0])) == DATE_TARGETS[0]

    joint = dataclasses.replace(config, tokenizer="unigram", vocab_size=SPM_VOCAB, joint_vocab=True)
    build_tokenizers(joint, DATE_SOURCES, DATE_TARGETS, tmp_path / "joint")
    files = tokenizer_files(tmp_path / "joint")
    assert [path.name for path in files] == ["src.tokenizer.json", "src.sentencepiece.model",
                                             "tgt.tokenizer.json", "tgt.sentencepiece.model"]
    assert files[1].read_bytes() == files[3].read_bytes()
    src_loaded, tgt_loaded = load_tokenizers(tmp_path / "joint")
    assert src_loaded.encode(DATE_TARGETS[0]) == tgt_loaded.encode(DATE_TARGETS[0])
    assert src_loaded.decode(src_loaded.encode(DATE_TARGETS[0])) == DATE_TARGETS[0]


def test_missing_and_corrupt_files_are_named(tmp_path, sentencepiece_tokenizers):
    with pytest.raises(TokenizerError, match=r"src\.tokenizer\.json is missing"):
        load_tokenizer(tmp_path, "src")
    metadata_path(tmp_path, "src").write_text('{"kind": "word",\n oops}', encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"src\.tokenizer\.json:2: corrupt"):
        load_tokenizer(tmp_path, "src")

    sentencepiece_tokenizers["bpe"].save(tmp_path, "tgt")
    model = sentencepiece_model_path(tmp_path, "tgt")
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(TokenizerError, match=r"tgt\.sentencepiece\.model is corrupt"):
        load_tokenizer(tmp_path, "tgt")
    model.unlink()
    with pytest.raises(TokenizerError, match=r"tgt\.sentencepiece\.model .* cannot be read"):
        load_tokenizer(tmp_path, "tgt")


def test_tokenizer_module_does_not_import_jax():
    code = ("import sys, seq2seq_jax.core.tokenizer, seq2seq_jax.core.config; "
            "bad = [m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
