"""Text in, text out: tokenize, batch by length, search (beam, greedy or sampling), detokenize, restore input
order. One output per input line, in order; a blank line (empty or whitespace only) is never searched and its
result is an empty list of hypotheses, written as an empty line in every decoding mode and whatever its prefix.

Every batch has ``batch_size`` rows and a source length rounded up to ``bucket_width``, and the output buffer
is sized for that padded length (rounded up to 8), so one program is compiled per padded shape and decoding
setting, never per sentence; ``Translator.compiled_programs`` counts them. A target prefix per line (rule 10
of docs/search.md) is padded to a multiple of 8 pieces per batch, which adds that width to the key. Several
models that share the tokenizers (``graphdef`` and ``params`` as equal-length sequences) decode as one ensemble
in one jitted search (``seq2seq_jax.decoding.ensemble``); the attention kept for plots is the first model's.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seq2seq_jax.core.batching import round_up, source_batches
from seq2seq_jax.core.config import DecodeConfig
from seq2seq_jax.core.search_settings import Hypothesis, output_ids
from seq2seq_jax.core.tokenizer import PAD_ID, Tokenizer
from seq2seq_jax.decoding.ensemble import ensemble_search_state
from seq2seq_jax.decoding.search import EOS_ID, max_len_bound_for, search
from seq2seq_jax.decoding.stored_programs import StoredProgram

logger = logging.getLogger(__name__)


class Translator:
    """Decode text with a trained model: ``translate(lines) -> [[Hypothesis, ...n_best], ...]``.

    ``graphdef`` and ``params``: one model's, or a tuple of several models' graph definitions and a tuple of
    their parameters (an ensemble; the tokenizers are the ones all of them share). ``compact``: greedy searches
    move their unfinished rows to smaller loops as rows finish (``make_search``); off, every step of a batch
    computes all its rows, so that a line's result is bit-identical whatever else its batch holds.
    """

    def __init__(self, graphdef: nnx.GraphDef | Sequence[nnx.GraphDef], params, src_tokenizer: Tokenizer,
                 tgt_tokenizer: Tokenizer, decode_config: DecodeConfig, bucket_width: int = 8, compact: bool = True):
        self.ensemble = isinstance(graphdef, (tuple, list))
        self.graphdef = tuple(graphdef) if self.ensemble else graphdef
        self.params = tuple(params) if self.ensemble and params is not None else params
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.config = decode_config
        self.bucket_width = bucket_width
        self.compact = compact
        self._compiled: dict[tuple, object] = {}

    @property
    def compiled_programs(self) -> int:
        return len(self._compiled)

    def with_source_tokenizer(self, src_tokenizer: Tokenizer) -> Translator:
        """This translator with another source tokenizer (a language tag's, ``core.languages``), sharing its
        parameters, settings and compiled searches (a search does not depend on the tokenizer)."""
        if src_tokenizer is self.src_tokenizer:
            return self
        other = copy.copy(self)
        other.src_tokenizer = src_tokenizer
        return other

    def _search_fn(self, src_size: int, max_len_bound: int, with_attention: bool, prefix_size: int = 0):
        """One jitted ``make_search`` per (padded source length, output bound, attention kept or not, padded prefix
        length); the settings are fixed per Translator."""
        key = (src_size, max_len_bound, with_attention, prefix_size)
        if key not in self._compiled:
            jitted = jax.jit(make_search(self.graphdef, self.config, max_len_bound, with_attention, self.compact))
            self._compiled[key] = StoredProgram(jitted, search_description(
                self.graphdef, self.config, max_len_bound, with_attention, self.compact))
            logger.debug("compiling search for source length %d, output bound %d%s (%d programs)", src_size,
                        max_len_bound, " with attention" if with_attention else "", len(self._compiled))
        return self._compiled[key]

    def _output_bound(self, src_size: int) -> int:
        """The output buffer's length for sources padded to ``src_size``: a function of the padded length (rounded
        up to 8), so still one program per padded shape."""
        return int(round_up(max_len_bound_for([src_size], self.config.max_len_a, self.config.max_len_b), 8))

    def warm_up(self, src_size: int, with_attention: bool = False) -> None:
        """Compile (and run once, on ``batch_size`` one-token sources) the search for sources padded to
        ``src_size`` tokens, so that the first real batch of that shape does not wait for the compiler."""
        src = np.full((self.config.batch_size, src_size), PAD_ID, dtype=np.int32)
        src[:, 0] = EOS_ID
        src_len = np.ones(self.config.batch_size, dtype=np.int32)
        search = self._search_fn(src_size, self._output_bound(src_size), with_attention, 0)
        jax.block_until_ready(search(self.params, jnp.asarray(src), jnp.asarray(src_len),
                                     jax.random.key(self.config.seed), None, None))

    def encode_prefixes(self, lines: Sequence[str], prefixes: Sequence[str] | None,
                        prefix_name: str = "prefix") -> list[list[int]] | None:
        """The target pieces of each line's prefix (``None`` without prefixes; an empty prefix is ``[]``).

        A prefix with more pieces than its source's output limit (``DecodeConfig.max_len``) is an error naming
        ``prefix_name`` and the 1-based line; so is a number of prefixes unequal to the number of lines."""
        if prefixes is None:
            return None
        if len(prefixes) != len(lines):
            raise ValueError(f"{prefix_name} has {len(prefixes)} lines but the input has {len(lines)}: "
                             "give one prefix per input line (an empty line for none)")
        encoded = [self.tgt_tokenizer.encode(prefix) for prefix in prefixes]
        for number, (line, pieces) in enumerate(zip(lines, encoded, strict=True), start=1):
            if not line.strip():  # a blank line is not translated
                continue
            limit = self.config.max_len(len(self.src_tokenizer.encode(line)) + 1)
            if len(pieces) > limit:
                raise ValueError(f"{prefix_name}:{number}: the prefix has {len(pieces)} target pieces, more than "
                                 f"the {limit} tokens this line's output may have (decode.max_len_a * source "
                                 "length + max_len_b)")
        return encoded

    def translate(self, lines: Sequence[str], with_attention: bool = False, prefixes: Sequence[str] | None = None,
                  prefix_name: str = "prefix") -> list[list[Hypothesis]]:
        """Translate ``lines`` (order kept, one entry per line, each a list of ``n_best`` hypotheses; an empty
        list for a blank line, whatever its prefix).

        ``prefixes``: one target prefix per line (``""`` for none); every hypothesis of a line starts with its
        prefix's pieces (included in ``text``, ``tokens`` and ``score``). Errors name ``prefix_name``."""
        config = self.config
        prefix_ids = self.encode_prefixes(lines, prefixes, prefix_name)
        results: list[list[Hypothesis] | None] = [[] if not line.strip() else None for line in lines]
        sources = [i for i, result in enumerate(results) if result is None]  # the lines that are translated
        encoded = [self.src_tokenizer.encode(lines[i]) for i in sources]
        source_prefixes = None if prefix_ids is None else [prefix_ids[i] for i in sources]
        rng = jax.random.key(config.seed)
        for batch_number, (src, src_len, index) in enumerate(
                source_batches(encoded, config.batch_size, self.bucket_width)):
            prefix, prefix_len = _prefix_batch(source_prefixes, index)
            search = self._search_fn(src.shape[1], self._output_bound(src.shape[1]), with_attention,
                                     prefix.shape[1])
            tokens, lengths, scores, attention = jax.device_get(search(
                self.params, jnp.asarray(src), jnp.asarray(src_len),
                jax.random.fold_in(rng, batch_number), None if prefix.shape[1] == 0 else jnp.asarray(prefix),
                None if prefix.shape[1] == 0 else jnp.asarray(prefix_len)))
            for row, line_index in enumerate(index):
                if line_index < 0:
                    continue
                hypotheses = []
                for rank in range(tokens.shape[1]):
                    length = int(lengths[row, rank])
                    ids = output_ids(tokens[row, rank], length)
                    weights = None
                    if with_attention and attention is not None:
                        weights = np.asarray(attention[row, rank, :length, : int(src_len[row])])
                    hypotheses.append(Hypothesis(self.tgt_tokenizer.decode(ids), ids, float(scores[row, rank]),
                                                 weights))
                results[sources[int(line_index)]] = hypotheses
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"internal error: no output for input lines {missing[:10]}")
        return results  # type: ignore[return-value]

    def translate_best(self, lines: Sequence[str]) -> list[str]:
        """The best hypothesis' text per line (``""`` for a blank line)."""
        return [hypotheses[0].text if hypotheses else "" for hypotheses in self.translate(lines)]


def make_search(graphdef: nnx.GraphDef | tuple[nnx.GraphDef, ...], config: DecodeConfig, max_len_bound: int,
                with_attention: bool, compact: bool = True):
    """The search ``Translator`` jits, for one model (``graphdef``) or an ensemble (a tuple of them):
    ``search(params, src [B, S], src_len [B], rng, prefix [B, P] | None, prefix_len [B] | None) -> BeamResult``
    with ``n = n_best`` hypotheses a sentence (1 for greedy search and sampling), ``L = max_len_bound``.

    ``params``: the model's (a tuple of the models' for an ensemble). Without attention the search carries no
    ``[B, K, L, S]`` attention buffers (for long sources they cost more than the model); the encoder memory is
    never copied per beam (``Seq2Seq.search_state``). ``compact``: greedy search moves its unfinished rows to
    smaller loops as rows finish (``seq2seq_jax.decoding.sequential_search``): the same tokens, scores equal up
    to float rounding.
    """
    ensemble = isinstance(graphdef, tuple)
    compact = compact and config.beam_size == 1 and not config.sample

    def run(params, src, src_len, rng, prefix, prefix_len):
        if ensemble:
            state, decode_step = ensemble_search_state([
                nnx.merge(model_graphdef, model_params).search_state(
                    src, src_len, with_attention=with_attention and index == 0, compactable=compact)
                for index, (model_graphdef, model_params) in enumerate(zip(graphdef, params, strict=True))])
        else:
            state, decode_step = nnx.merge(graphdef, params).search_state(src, src_len, with_attention=with_attention,
                                                                          compactable=compact)
        return search(decode_step, state, src_len, config, max_len_bound=max_len_bound, rng=rng, prefix=prefix,
                      prefix_len=prefix_len, compact=compact)

    return run


def search_description(graphdef: nnx.GraphDef | tuple[nnx.GraphDef, ...], config: DecodeConfig, max_len_bound: int,
                       with_attention: bool, compact: bool) -> str:
    """What ``make_search``'s program is a function of besides its arguments' shapes, as text: the key of its
    stored executable (``seq2seq_jax.decoding.stored_programs``). Object addresses are left out of the graph
    definition, which names the model's modules, static attributes and functions."""
    graph = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(graphdef))
    return f"make_search\n{graph}\n{config!r}\n{max_len_bound} {with_attention} {compact}"


def _prefix_batch(prefix_ids: list[list[int]] | None, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(prefix [rows, P] int32, prefix_len [rows] int32)`` for a batch's rows (``index``, -1 for padding rows),
    ``P`` the longest prefix rounded up to 8 (0 when no row has one)."""
    rows = len(index)
    lengths = np.zeros(rows, np.int32)
    if prefix_ids is not None:
        lengths = np.array([len(prefix_ids[i]) if i >= 0 else 0 for i in index], np.int32)
    width = int(round_up(int(lengths.max()), 8)) if rows else 0
    prefix = np.zeros((rows, width), np.int32)
    for row, line_index in enumerate(index):
        if lengths[row]:
            prefix[row, :lengths[row]] = prefix_ids[line_index]
    return prefix, lengths
