"""A user's own sentencepiece model (``data.src_spm_model`` / ``data.tgt_spm_model``) as this toolkit's tokenizer.

This toolkit needs the special ids pad 0, unk 1, bos 2, eos 3; sentencepiece's defaults are unk 0, bos 1, eos
2 and no pad. ``adopt_sentencepiece_model`` renumbers the model's pieces (the four specials first, added where
the model has none, then every other piece in its order) and sets the trainer spec's ids to match. Pieces,
scores and the normalizer are unchanged, so the model splits every text into the same pieces as before; only
their ids move. The workdir saves the renumbered model as its own copy. Reading the model needs protobuf (with
the jax extra); the saved copy is a plain sentencepiece model that any install reads.
"""

from __future__ import annotations

from pathlib import Path

from seq2seq_jax.core.tokenizer import SentencePieceTokenizer, TokenizerError
from seq2seq_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

KIND_OF_MODEL_TYPE = {1: "unigram", 2: "bpe"}  # TrainerSpec.ModelType: UNIGRAM, BPE (WORD, CHAR not supported)
NORMAL, UNKNOWN, CONTROL = 1, 2, 3  # ModelProto.SentencePiece.Type


def adopt_sentencepiece_model(path: str | Path) -> SentencePieceTokenizer:
    """The sentencepiece model at ``path`` with its pieces renumbered to this toolkit's special ids; an unreadable
    file or a word/char model is a ``TokenizerError`` naming the file."""
    from sentencepiece import sentencepiece_model_pb2

    path = Path(path)
    try:
        model = sentencepiece_model_pb2.ModelProto.FromString(path.read_bytes())
    except OSError as error:
        raise TokenizerError(f"{path}: cannot read the sentencepiece model ({error.strerror})") from None
    except Exception as error:  # protobuf's DecodeError, or a file that is no model
        raise TokenizerError(f"{path}: not a sentencepiece model ({error})") from None
    kind = KIND_OF_MODEL_TYPE.get(model.trainer_spec.model_type)
    if kind is None or not len(model.pieces):
        raise TokenizerError(f"{path}: a sentencepiece unigram or bpe model is needed (this one has model type "
                             f"{model.trainer_spec.model_type} and {len(model.pieces)} pieces)")
    spec = model.trainer_spec
    names = {PAD_ID: spec.pad_piece or "<pad>", UNK_ID: spec.unk_piece or "<unk>", BOS_ID: spec.bos_piece or "<s>",
             EOS_ID: spec.eos_piece or "</s>"}
    pieces = []
    for piece in model.pieces:  # copies: the repeated field is rewritten below
        pieces.append(sentencepiece_model_pb2.ModelProto.SentencePiece())
        pieces[-1].CopyFrom(piece)
    special = {}
    for special_id, name in names.items():
        wanted_type = UNKNOWN if special_id == UNK_ID else CONTROL
        found = [piece for piece in pieces if piece.type == wanted_type and (special_id == UNK_ID
                                                                              or piece.piece == name)]
        if found:
            special[special_id] = found[0]
        else:
            made = sentencepiece_model_pb2.ModelProto.SentencePiece(piece=name, score=0.0, type=wanted_type)
            special[special_id] = made
    kept = [piece for piece in pieces if all(piece is not chosen for chosen in special.values())]
    del model.pieces[:]
    model.pieces.extend([special[i] for i in sorted(special)] + kept)
    spec.pad_id, spec.unk_id, spec.bos_id, spec.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
    spec.pad_piece, spec.unk_piece, spec.bos_piece, spec.eos_piece = (names[i] for i in sorted(names))
    try:
        return SentencePieceTokenizer(kind, model.SerializeToString())
    except (RuntimeError, TokenizerError) as error:
        raise TokenizerError(f"{path}: the renumbered sentencepiece model does not load: {error}") from None
