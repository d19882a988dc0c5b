"""A user's own sentencepiece model: renumbered to this toolkit's special ids, splitting text exactly as before,
used by preprocess and training as given, and kept as the workdir's own copy."""

from __future__ import annotations

import io

import pytest
import sentencepiece
from test_preprocess import file_config

from seq2seq_jax.core.config import ConfigError, DataConfig
from seq2seq_jax.core.tokenizer import TokenizerError, load_tokenizers
from seq2seq_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from seq2seq_jax.training.adopted_tokenizer import adopt_sentencepiece_model
from seq2seq_jax.training.preprocess import preprocess

LINES = [f"the cat number {i} sat on the mat beside dog {i * 7}" for i in range(300)]


def user_model(tmp_path, kind: str, **options):
    """A model as sentencepiece trains it by default: unk 0, bos 1, eos 2, no pad."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(LINES), model_writer=model, vocab_size=60,
                                             model_type=kind, minloglevel=2, **options)
    path = tmp_path / f"{kind}.model"
    path.write_bytes(model.getvalue())
    return path, sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_renumbered_model_splits_text_into_the_same_pieces(tmp_path, kind):
    path, theirs = user_model(tmp_path, kind)
    assert (theirs.unk_id(), theirs.bos_id(), theirs.eos_id(), theirs.pad_id()) == (0, 1, 2, -1)
    ours = adopt_sentencepiece_model(path)
    assert ours.kind == kind and ours.vocab_size == theirs.get_piece_size() + 1  # a <pad> piece added
    processor = sentencepiece.SentencePieceProcessor(model_proto=ours.model_proto)
    assert (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id()) == \
        (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    for text in ("the cat number 12 sat on a hat", "dog 7 and a zebra!", ""):
        ids = ours.encode(text)
        assert [processor.id_to_piece(i) for i in ids] == [theirs.id_to_piece(i) for i in theirs.encode(text)]
        assert ours.decode(ids) == theirs.decode(theirs.encode(text))


def test_a_file_that_is_not_a_usable_model_is_named(tmp_path):
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(TokenizerError, match=r"junk\.model: not a sentencepiece model"):
        adopt_sentencepiece_model(junk)
    with pytest.raises(TokenizerError, match=r"missing\.model: cannot read"):
        adopt_sentencepiece_model(tmp_path / "missing.model")
    word, _ = user_model(tmp_path, "word")
    with pytest.raises(TokenizerError, match="unigram or bpe model is needed"):
        adopt_sentencepiece_model(word)


def test_preprocess_uses_the_given_models_and_keeps_a_copy(tmp_path):
    src_model, _ = user_model(tmp_path, "unigram")
    tgt_model, _ = user_model(tmp_path, "bpe")
    config = file_config(tmp_path, f"data.src_spm_model={src_model}", f"data.tgt_spm_model={tgt_model}")
    corpus = preprocess(config, tmp_path / "D", progress=False)
    src_tok, tgt_tok = load_tokenizers(corpus.path / "tokenizer")
    assert src_tok.model_proto == adopt_sentencepiece_model(src_model).model_proto
    assert tgt_tok.model_proto == adopt_sentencepiece_model(tgt_model).model_proto
    src_model.unlink()  # the corpus (and a workdir made from it) keeps its own copy
    assert load_tokenizers(corpus.path / "tokenizer")[0].kind == "unigram"
    # one side given: the other is trained as configured
    one_side = file_config(tmp_path, f"data.tgt_spm_model={tgt_model}")
    mixed = load_tokenizers(preprocess(one_side, tmp_path / "E", progress=False).path / "tokenizer")
    assert mixed[0].kind == "word" and mixed[1].model_proto == tgt_tok.model_proto


def test_joint_vocab_takes_one_model():
    with pytest.raises(ConfigError, match="give one sentencepiece model"):
        DataConfig(joint_vocab=True, tokenizer="unigram", src_spm_model="a.model", tgt_spm_model="b.model")
