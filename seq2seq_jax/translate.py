"""Text in, text out: tokenize, batch by length, search (beam, greedy or sampling), detokenize, restore input
order. One output per input line, empty lines included.

Every batch has ``batch_size`` rows and a source length rounded up to ``bucket_width``, and the output buffer
is sized for that padded length (rounded up to 8), so one program is compiled per padded shape and decoding
setting, never per sentence; ``Translator.compiled_programs`` counts them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seq2seq_jax.common.decoding import Hypothesis, output_ids
from seq2seq_jax.config import DecodeConfig
from seq2seq_jax.data import round_up, source_batches
from seq2seq_jax.decode import beam_search, greedy_search, max_len_bound_for, sample
from seq2seq_jax.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class Translator:
    """Decode text with a trained model: ``translate(lines) -> [[Hypothesis, ...n_best], ...]``."""

    def __init__(self, graphdef: nnx.GraphDef, params, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer,
                 decode_config: DecodeConfig, bucket_width: int = 8):
        self.graphdef = graphdef
        self.params = params
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.config = decode_config
        self.bucket_width = bucket_width
        self._compiled: dict[tuple, object] = {}

    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, params) -> None:
        """New parameters (the trainer sets them before each validation) also drop their decode kernels."""
        self._params = params
        self._kernels_t = None

    @property
    def compiled_programs(self) -> int:
        return len(self._compiled)

    def _search_fn(self, src_size: int, max_len_bound: int, with_attention: bool):
        """One jitted search per (padded source length, output bound, attention kept or not); the settings are
        fixed per Translator. Without attention the search carries no ``[B, K, L, S]`` attention buffers (for
        long sources they cost more than the model); the encoder memory is never copied per beam
        (``Seq2Seq.search_state``)."""
        key = (src_size, max_len_bound, with_attention)
        if key not in self._compiled:
            config, graphdef = self.config, self.graphdef

            def search(params, kernels_t, src, src_len, rng):
                model = nnx.merge(graphdef, params)
                state, decode_step = model.search_state(src, src_len, with_attention=with_attention,
                                                        kernels_t=kernels_t)
                common = dict(min_len=config.min_len, max_len_a=config.max_len_a, max_len_b=config.max_len_b,
                              max_len_bound=max_len_bound, no_repeat_ngram_size=config.no_repeat_ngram_size)
                if config.sample:
                    tokens, lengths, scores, attention = sample(
                        decode_step, state, src_len, rng, temperature=config.temperature, top_k=config.top_k,
                        top_p=config.top_p, **common)
                    expand = lambda x: None if x is None else x[:, None]
                    return tokens[:, None], lengths[:, None], scores[:, None], expand(attention)
                if config.beam_size == 1:  # greedy: the plain argmax loop, whatever the length penalty
                    result = greedy_search(decode_step, state, src_len, length_penalty=config.length_penalty,
                                           **common)
                else:
                    result = beam_search(decode_step, state, src_len, beam_size=config.beam_size,
                                         length_penalty=config.length_penalty, n_best=config.n_best, **common)
                return result.tokens, result.lengths, result.scores, result.attention

            self._compiled[key] = jax.jit(search)
            logger.info("compiling search for source length %d, output bound %d%s (%d programs)", src_size,
                        max_len_bound, " with attention" if with_attention else "", len(self._compiled))
        return self._compiled[key]

    def _decode_kernels(self):
        """``Seq2Seq.decode_kernels()`` of these parameters, built once rather than in every search call."""
        if self._kernels_t is None:
            graphdef = self.graphdef
            self._kernels_t = jax.jit(lambda params: nnx.merge(graphdef, params).decode_kernels())(self.params)
        return self._kernels_t

    def translate(self, lines: Sequence[str], with_attention: bool = False) -> list[list[Hypothesis]]:
        """Translate ``lines`` (order kept, one entry per line, each a list of ``n_best`` hypotheses)."""
        config = self.config
        encoded = [self.src_tokenizer.encode(line) for line in lines]
        results: list[list[Hypothesis] | None] = [None] * len(lines)
        rng = jax.random.key(config.seed)
        for batch_number, (src, src_len, index) in enumerate(
                source_batches(encoded, config.batch_size, self.bucket_width)):
            # A function of the padded source length, so still one program per padded shape.
            bound = round_up(max_len_bound_for([src.shape[1]], config.max_len_a, config.max_len_b), 8)
            search = self._search_fn(src.shape[1], int(bound), with_attention)
            tokens, lengths, scores, attention = jax.device_get(search(
                self.params, self._decode_kernels(), jnp.asarray(src), jnp.asarray(src_len),
                jax.random.fold_in(rng, batch_number)))
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
                results[int(line_index)] = hypotheses
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"internal error: no output for input lines {missing[:10]}")
        return results  # type: ignore[return-value]

    def translate_best(self, lines: Sequence[str]) -> list[str]:
        return [hypotheses[0].text for hypotheses in self.translate(lines)]
