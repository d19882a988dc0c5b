"""A trained model in memory, ready to translate and score: ``TrainedModel`` (one workdir's checkpoint,
its config and tokenizers) and ``Seq2SeqModel`` (one such model, or an ensemble of several sharing their
tokenizers), with one ``Translator`` kept per distinct decode setting. ``seq2seq_jax.load`` builds one from
workdirs; ``seq2seq serve`` is handed one. A multilingual model (``data.corpora`` with target languages) takes
``tgt_lang`` wherever it translates or scores (``seq2seq_jax.core.languages``)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

from flax import nnx

from seq2seq_jax.core.config import DecodeConfig, ExperimentConfig
from seq2seq_jax.core.languages import Languages
from seq2seq_jax.core.pair_scores import PairScore
from seq2seq_jax.core.search_settings import decode_settings
from seq2seq_jax.core.tokenizer import Tokenizer, check_shared_tokenizers
from seq2seq_jax.decoding.scoring import Scorer
from seq2seq_jax.decoding.translate import Hypothesis, Translator


@dataclasses.dataclass
class TrainedModel:
    config: ExperimentConfig
    graphdef: nnx.GraphDef
    params: Any
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    step: int
    metrics: dict[str, float]



def with_decode_overrides(base: DecodeConfig, **changes) -> DecodeConfig:
    """``base`` with the given fields changed (``None`` values ignored); a new ``beam_size`` without an
    ``n_best`` caps ``n_best`` at it."""
    unknown = sorted(set(changes) - {field.name for field in dataclasses.fields(DecodeConfig)})
    if unknown:
        raise TypeError(f"unknown decoding settings {unknown}; the DecodeConfig fields are "
                        f"{[field.name for field in dataclasses.fields(DecodeConfig)]}")
    return decode_settings(base, changes)


class Seq2SeqModel:
    """One trained model, or an ensemble of several that share their tokenizers, ready to translate and score.

    ``models``: the ``TrainedModel`` of each workdir (``seq2seq_jax.training.workdir.load_trained``); the first
    gives the tokenizers, the decoding defaults and the bucket widths.
    """

    def __init__(self, models: Sequence[TrainedModel], names: Sequence[str] | None = None, **decode_overrides):
        if not models:
            raise ValueError("no model to load")
        names = [str(name) for name in (names or range(len(models)))]
        check_shared_tokenizers([(name, model.src_tokenizer, model.tgt_tokenizer)
                                 for name, model in zip(names, models, strict=True)])
        self.models = list(models)
        self.names = names
        first = models[0]
        self.src_tokenizer, self.tgt_tokenizer = first.src_tokenizer, first.tgt_tokenizer
        self.languages = Languages.of(first.config, names[0])
        for name, model in zip(names[1:], models[1:], strict=True):
            languages = Languages.of(model.config, name)
            if languages.tags != self.languages.tags:
                raise ValueError(f"an ensemble needs the same languages: {name} has "
                                 f"{model.config.data.languages or 'none'}, {names[0]} {self.languages.tags or 'none'}")
            if languages.tags and languages.position != self.languages.position:
                raise ValueError(f"an ensemble needs its language tags in one place: {name} puts them "
                                 f"{languages.position}, {names[0]} {self.languages.position}")
        self.decode_config = self.languages.decode_config(
            with_decode_overrides(first.config.decode, **decode_overrides), self.tgt_tokenizer)
        self._translators: dict[DecodeConfig, Translator] = {}
        self._scorer: Scorer | None = None

    @property
    def is_ensemble(self) -> bool:
        return len(self.models) > 1

    def source_tokenizer(self, tgt_lang: str | None = None) -> Tokenizer:
        """The source tokenizer that asks for ``tgt_lang`` (its tag where ``data.tag_position`` puts it); the plain
        one without language tags.
        A missing (for a multilingual model) or unknown language is a ``LanguageError`` listing the languages."""
        return self.languages.source_tokenizer(self.src_tokenizer, tgt_lang)

    def translator(self, decode_config: DecodeConfig | None = None, tgt_lang: str | None = None) -> Translator:
        """The ``Translator`` for these settings (default: the model's), one per distinct setting, into
        ``tgt_lang`` (the languages share the compiled searches)."""
        config = decode_config or self.decode_config
        if config not in self._translators:
            self._translators[config] = self.new_translator(config)
        return self._translators[config].with_source_tokenizer(self.source_tokenizer(tgt_lang))

    def new_translator(self, decode_config: DecodeConfig, compact: bool = True) -> Translator:
        """A new ``Translator`` (its own compiled programs, kept by the caller) for these settings: the ensemble's
        search when several models are loaded. ``seq2seq serve`` keeps one per row count. ``compact``: see
        ``Translator``."""
        first = self.models[0]
        if self.is_ensemble:
            graphdef, params = tuple(m.graphdef for m in self.models), tuple(m.params for m in self.models)
        else:
            graphdef, params = first.graphdef, first.params
        return Translator(graphdef, params, self.src_tokenizer, self.tgt_tokenizer, decode_config,
                          first.config.data.bucket_width, compact)

    def translate(self, lines: str | Sequence[str], beam_size: int | None = None, n_best: int | None = None,
                  prefix: str | Sequence[str] | None = None, with_attention: bool = False, tgt_lang: str | None = None,
                  **decode_overrides) -> list[Hypothesis] | list[list[Hypothesis]]:
        """Translate a string (returns its ``n_best`` list of ``Hypothesis``, best first) or a list of strings
        (returns one such list per line, in order). ``prefix``: a target prefix (a string for a string, one
        per line for a list; ``""`` for none) that every hypothesis starts with. ``tgt_lang``: the target
        language of a multilingual model (``self.languages.names``; may be left out when it has one)."""
        config = with_decode_overrides(self.decode_config, beam_size=beam_size, n_best=n_best, **decode_overrides)
        single = isinstance(lines, str)
        if prefix is not None and single != isinstance(prefix, str):
            raise TypeError("give prefix as a string for a string input, as a list of strings for a list")
        batch = [lines] if single else list(lines)
        prefixes = None if prefix is None else ([prefix] if single else list(prefix))
        results = self.translator(config, tgt_lang).translate(batch, with_attention=with_attention, prefixes=prefixes)
        return results[0] if single else results

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            first = self.models[0]
            self._scorer = Scorer([m.graphdef for m in self.models], [m.params for m in self.models],
                                  self.src_tokenizer, self.tgt_tokenizer, self.decode_config.batch_size,
                                  first.config.data.bucket_widths)
        return self._scorer

    def scorer_for(self, tgt_lang: str | None = None) -> Scorer:
        """``scorer`` with the source tokenizer of ``tgt_lang`` (sharing its compiled step)."""
        scorer, src_tokenizer = self.scorer, self.source_tokenizer(tgt_lang)
        if src_tokenizer is scorer.src_tokenizer:
            return scorer
        scorer = copy.copy(scorer)
        scorer.src_tokenizer = src_tokenizer
        return scorer

    def score(self, src: str | Sequence[str], tgt: str | Sequence[str],
              tgt_lang: str | None = None) -> PairScore | list[PairScore]:
        """Forced decoding: the ``PairScore`` (summed log-probability of the target pieces and EOS, count,
        mean) of a pair of strings, or a list of them for two equally long lists
        (``seq2seq_jax.core.pair_scores``); ``tgt_lang`` as in ``translate``."""
        if isinstance(src, str) != isinstance(tgt, str):
            raise TypeError("give src and tgt both as strings or both as lists of strings")
        scorer = self.scorer_for(tgt_lang)
        if isinstance(src, str):
            return scorer.score([src], [tgt])[0]
        return scorer.score(list(src), list(tgt))
