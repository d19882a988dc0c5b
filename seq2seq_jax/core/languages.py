"""A model's target languages at decoding time: the tag in each source, and the ids never output.

A run's languages are its config's ``data.corpora`` (``DataConfig.languages``: ``{language: tag}``) and where the tag
goes (``data.tag_position``: first, or last before the EOS), so a workdir and an export record them in
``config.json``. ``Languages.source_tokenizer(src_tok, tgt_lang)`` is the source tokenizer that puts the tag of
``tgt_lang`` there (``TaggedTokenizer``); ``Languages.decode_config`` bans every tag
that is a piece of the target vocabulary (a joint one) from the search's output. A run without tags takes no
language; asking one of it, or none (or an unknown one) of a multilingual model, is a ``LanguageError`` that
lists the model's languages. Standard library only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from seq2seq_jax.core.corpora import TAG_POSITIONS
from seq2seq_jax.core.tokenizer import Tokenizer

if TYPE_CHECKING:
    import numpy as np


class LanguageError(ValueError):
    """A target language missing, unknown, or asked of a model without language tags."""


class TaggedTokenizer(Tokenizer):
    """``base`` with the ids ``tag`` (a language tag's) in every encoded text: ``encode(text) = tag +
    base.encode(text)`` at ``position`` "first", ``base.encode(text) + tag`` at "last"; ``crop`` keeps the tag;
    everything else is ``base``'s."""

    def __init__(self, base: Tokenizer, tag: Sequence[int], position: str = "first"):
        if position not in TAG_POSITIONS:
            raise LanguageError(f"a language tag goes first or last in the source, not {position!r}")
        self.base, self.tag, self.position, self.kind = base, list(tag), position, base.kind

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    def _tagged(self, ids: list[int]) -> list[int]:
        return self.tag + ids if self.position == "first" else ids + self.tag

    def encode(self, text: str) -> list[int]:
        return self._tagged(self.base.encode(text))

    def sample(self, text: str, alpha: float, nbest_size: int, rng: np.random.Generator) -> list[int]:
        return self._tagged(self.base.sample(text, alpha, nbest_size, rng))

    def crop(self, ids: list[int], length: int) -> list[int]:
        """The first ``length`` ids of a tagged text with the tag kept: the text is what is cropped."""
        if self.position == "first" or length <= len(self.tag):
            return ids[:length]
        return ids[: length - len(self.tag)] + self.tag

    def decode(self, ids: Iterable[int]) -> str:
        return self.base.decode(ids)

    def piece_id(self, piece: str) -> int | None:
        return self.base.piece_id(piece)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return self.base.pieces(ids)

    def __repr__(self) -> str:
        return f"TaggedTokenizer({self.base!r}, tag={self.tag}, position={self.position!r})"


def tag_id(tokenizer: Tokenizer, tag: str, origin: str) -> int:
    """The id of ``tag`` in ``tokenizer``, which must hold it as one piece (a ``LanguageError`` otherwise)."""
    token_id = tokenizer.piece_id(tag)
    if token_id is None:
        raise LanguageError(f"{origin}: the language tag {tag} is not one piece of the source vocabulary; the "
                            "tokenizer must be trained with the corpora's tags (an adopted sentencepiece model "
                            "needs them as user_defined_symbols)")
    return token_id


@dataclasses.dataclass(frozen=True)
class Languages:
    """``tags``: ``{target language: its tag}`` of a model (empty: no language tags); ``origin`` names the model
    in errors (its workdir or export directory); ``position``: where the tag goes in a source (first or last)."""

    tags: dict[str, str]
    origin: str = "the model"
    position: str = "first"

    @classmethod
    def of(cls, config, origin: str) -> Languages:
        """The languages of an ``ExperimentConfig`` (its ``data.corpora`` and ``data.tag_position``)."""
        return cls(dict(config.data.languages), str(origin), config.data.tag_position)

    @property
    def names(self) -> list[str]:
        return list(self.tags)

    def resolve(self, tgt_lang: str | None) -> str | None:
        """The language to translate into: ``tgt_lang``, or the only one of a model with one; None without tags."""
        listed = ", ".join(self.tags)
        if not self.tags:
            if tgt_lang:
                raise LanguageError(f"{self.origin} has no language tags (one language pair): translate without a "
                                    f"target language, not {tgt_lang!r}")
            return None
        if not tgt_lang:
            if len(self.tags) == 1:
                return self.names[0]
            raise LanguageError(f"{self.origin} translates into {listed}: give the target language (--tgt-lang; "
                                "tgt_lang in the API and the server)")
        if tgt_lang not in self.tags:
            raise LanguageError(f"{self.origin} does not translate into {tgt_lang!r}; its languages are {listed}")
        return tgt_lang

    def source_tokenizer(self, src_tokenizer: Tokenizer, tgt_lang: str | None) -> Tokenizer:
        """``src_tokenizer`` with the tag of ``tgt_lang`` (``resolve``d) at ``position``; itself for a model without
        tags."""
        language = self.resolve(tgt_lang)
        if language is None:
            return src_tokenizer
        return TaggedTokenizer(src_tokenizer, [tag_id(src_tokenizer, self.tags[language], self.origin)], self.position)

    def banned_ids(self, tgt_tokenizer: Tokenizer) -> tuple[int, ...]:
        """The ids of the tags that are pieces of the target vocabulary: never an output."""
        ids = (tgt_tokenizer.piece_id(tag) for tag in self.tags.values())
        return tuple(sorted(token_id for token_id in ids if token_id is not None))

    def decode_config(self, decode_config, tgt_tokenizer: Tokenizer):
        """``decode_config`` with ``banned_ids`` extended by ``banned_ids(tgt_tokenizer)``."""
        banned = tuple(sorted(set(decode_config.banned_ids) | set(self.banned_ids(tgt_tokenizer))))
        return dataclasses.replace(decode_config, banned_ids=banned)


__all__ = ["Languages", "LanguageError", "TaggedTokenizer", "tag_id"]
