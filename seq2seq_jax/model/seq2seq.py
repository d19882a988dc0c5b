"""The attention encoder-decoder (``Seq2Seq``): ``encode``, ``init_decode_state``, ``decode_step`` for
inference and ``__call__`` for teacher forcing, all computing the formulation in ``docs/model.md``.

Shapes: ``B`` batch, ``S`` source length, ``T`` target length, ``V`` target vocabulary, ``E`` embedding,
``H`` decoder hidden, ``M`` memory width, ``R`` readout, ``L`` decoder layers.
Dropout is driven by an explicit ``dropout_rng``: ``None`` means inference (no dropout).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seq2seq_jax.core.config import ModelConfig
from seq2seq_jax.model.layers import (
    Attention,
    EncoderLayer,
    LSTMWeights,
    copy_log_probs,
    dropout,
    lstm_cell,
    softmax_dtype,
    symmetric_uniform,
)


class OutputLayer(nnx.Module):
    """``logits = r @ W_o + b_o``; with a tied embedding, ``W_o`` is the target embedding (no own kernel)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        init = symmetric_uniform(config.init_scale)
        dtype = jnp.dtype(config.param_dtype)
        if not config.tie_output_embedding:
            self.kernel = nnx.Param(init(rngs.params(), (config.readout_size, config.tgt_vocab_size), dtype))
        self.bias = nnx.Param(init(rngs.params(), (config.tgt_vocab_size,), dtype))
        self.tied = config.tie_output_embedding
        self.compute_dtype = jnp.dtype(config.compute_dtype)

    def matrix(self, tgt_embedding: jax.Array) -> jax.Array:
        """``W_o [R, V]`` in the compute dtype; ``tgt_embedding [V, E]`` is it, transposed, when tied."""
        return (tgt_embedding.T if self.tied else self.kernel[...]).astype(self.compute_dtype)

    def __call__(self, readout: jax.Array, matrix: jax.Array) -> jax.Array:
        """``readout [..., R] -> logits [..., V]`` with ``matrix``, ``W_o`` (``matrix()``)."""
        return readout.astype(self.compute_dtype) @ matrix + self.bias[...].astype(self.compute_dtype)


class Encoder(nnx.Module):
    """``L_enc`` stacked (bi)directional LSTM layers with dropout between them."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        sizes = [config.src_embed_size] + [config.memory_size] * (config.enc_layers - 1)
        self.layers = nnx.List([EncoderLayer(size, config, rngs=rngs) for size in sizes])
        self.rnn_dropout = config.rnn_dropout

    def __call__(self, x: jax.Array, src_len: jax.Array, dropout_rng: jax.Array | None = None):
        """Time-major ``x [S, B, E_src]`` -> ``memory [S, B, M]``, ``h_n, c_n [L_enc, D, B, H_enc]``."""
        finals_h, finals_c = [], []
        for index, layer in enumerate(self.layers):
            if index > 0 and dropout_rng is not None:
                x = _dropout_time_major(x, self.rnn_dropout, jax.random.fold_in(dropout_rng, index))
            x, h_n, c_n = layer(x, src_len)
            finals_h.append(h_n)
            finals_c.append(c_n)
        return x, jnp.stack(finals_h), jnp.stack(finals_c)


class DecoderLayers(nnx.Module):
    """The decoder's ``L_dec`` stacked LSTM layers; stepping them is ``Seq2Seq._recurrent_step``."""

    def __init__(self, input_sizes: list[int], config: ModelConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([LSTMWeights(size, config.dec_hidden_size, config, rngs=rngs) for size in input_sizes])


class Seq2Seq(nnx.Module):
    """LSTM encoder, attention, LSTM decoder (Bahdanau or Luong style), readout and output layer.

    With ``tie_src_tgt_embedding`` there is no ``src_embed``: the encoder embeds with ``tgt_embed``.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        config = config.require_resolved()
        self.config = config
        init = symmetric_uniform(config.init_scale)
        param_dtype = jnp.dtype(config.param_dtype)
        compute_dtype = jnp.dtype(config.compute_dtype)
        self.compute_dtype = compute_dtype
        linear = dict(param_dtype=param_dtype, dtype=compute_dtype, kernel_init=init, bias_init=init, rngs=rngs)
        embed = dict(param_dtype=param_dtype, dtype=compute_dtype, embedding_init=init, rngs=rngs)
        if not config.tie_src_tgt_embedding:  # tied: the encoder reads tgt_embed (one matrix, stored once)
            self.src_embed = nnx.Embed(config.src_vocab_size, config.src_embed_size, **embed)
        self.tgt_embed = nnx.Embed(config.tgt_vocab_size, config.tgt_embed_size, **embed)
        self.encoder = Encoder(config, rngs=rngs)
        if config.bridge == "dense":
            bridge_out = config.dec_layers * config.dec_hidden_size
            self.bridge_h = nnx.Linear(config.memory_size, bridge_out, **linear)
            self.bridge_c = nnx.Linear(config.memory_size, bridge_out, **linear)
        self.attention = Attention(config, rngs=rngs)
        feed_size = config.memory_size if config.decoder_style == "bahdanau" else config.readout_size
        sizes = [config.tgt_embed_size + feed_size] + [config.dec_hidden_size] * (config.dec_layers - 1)
        self.decoder = DecoderLayers(sizes, config, rngs=rngs)
        if config.decoder_style == "bahdanau":
            readout_in = config.dec_hidden_size + config.memory_size + config.tgt_embed_size
        else:
            readout_in = config.memory_size + config.dec_hidden_size
        self.readout = nnx.Linear(readout_in, config.readout_size,
                                  use_bias=config.decoder_style == "bahdanau", **linear)
        self.output = OutputLayer(config, rngs=rngs)
        if config.copy_attention:
            self.copy_gate = nnx.Linear(config.readout_size, 1, **linear)

    # ----------------------------------------------------------------------------------------- encoder
    def encode(self, src: jax.Array, src_len: jax.Array, dropout_rng: jax.Array | None = None):
        """``src [B, S]``, ``src_len [B]`` -> ``memory [B, S, M]`` and decoder initial ``h0, c0 [L, B, H]``."""
        config = self.config
        rng_embed, rng_encoder = _split(dropout_rng, 2)
        src_embed = self.tgt_embed if config.tie_src_tgt_embedding else self.src_embed
        x = _dropout_time_major(src_embed(src.T), config.embed_dropout, rng_embed)  # [S, B, E_src]
        memory, h_n, c_n = self.encoder(x, src_len, rng_encoder)  # h_n: [L_enc, D, B, H_enc]
        memory = memory.transpose(1, 0, 2)  # [B, S, M]: attention reads it batch-major
        batch = src.shape[0]
        shape = (config.dec_layers, batch, config.dec_hidden_size)
        if config.bridge == "zero":
            h0 = jnp.zeros(shape, self.compute_dtype)
            c0 = jnp.zeros(shape, self.compute_dtype)
        elif config.bridge == "last":
            h0 = _concat_directions(h_n)
            c0 = _concat_directions(c_n)
        else:
            h0 = jnp.tanh(self.bridge_h(_concat_directions(h_n[-1:])[0]))
            c0 = jnp.tanh(self.bridge_c(_concat_directions(c_n[-1:])[0]))
            h0 = h0.reshape(batch, config.dec_layers, config.dec_hidden_size).transpose(1, 0, 2)
            c0 = c0.reshape(batch, config.dec_layers, config.dec_hidden_size).transpose(1, 0, 2)
        return memory, h0, c0

    # ----------------------------------------------------------------------------------------- decoder
    def _layer_kernels(self, embedding_rows: bool) -> list[tuple[jax.Array, jax.Array]]:
        """Per decoder layer, ``(kernel, bias)`` of ``gates = [input_l; h_l] @ kernel + bias``, in the compute dtype.

        ``kernel = [w_ih[rows]; w_hh]`` ``[in_l + H, 4H]`` multiplies ``[input_l; h_l]`` in one matmul and
        ``bias = b_ih + b_hh``. Layer 0's ``input_0`` starts with the embedding, unless ``embedding_rows`` is
        false (teacher forcing): then ``rows`` are only the context (Bahdanau) or ``r_{t-1}`` (Luong) rows, and
        the embedding's projection with both biases is computed for all steps before the loop (and given to
        ``_recurrent_step`` as layer 0's bias). Built once per call, outside any loop over time, so that the
        loop neither slices nor concatenates parameters.
        """
        kernels = []
        for index, layer in enumerate(self.decoder.layers):
            w_ih = layer.w_ih[...] if index > 0 or embedding_rows else layer.w_ih[...][self.config.tgt_embed_size:]
            kernel = jnp.concatenate([w_ih, layer.w_hh[...]], axis=0).astype(layer.compute_dtype)
            kernels.append((kernel, (layer.b_ih[...] + layer.b_hh[...]).astype(layer.compute_dtype)))
        return kernels

    def _recurrent_step(self, carry, embedded, attend, layers, rng):
        """One decoder time step before the output layer.

        ``carry = (h, c, feed, coverage)``: ``h, c`` tuples of ``L`` arrays ``[B, H]``, ``feed [B, R]``
        (Luong's ``r_{t-1}``), ``coverage [B, S]`` (the sum of the past steps' attention weights; None without
        ``coverage_attention``); ``embedded [B, E]``, the step's target embedding, or None when ``layers``
        (``(kernel, bias)`` per layer, ``_layer_kernels``) leave it out and layer 0's bias ``[B, 4H]`` holds its
        projection; ``attend(query, coverage) -> (context, weights)``; ``rng`` drives dropout (None: inference).
        Returns the new carry (Luong's ``feed`` is the step's readout ``r [B, R]``; the coverage has the step's
        weights added) and ``(top, context, weights)``: the top output ``s [B, H]``, the context ``[B, M]`` and
        the attention weights ``[B, S]``.
        """
        h, c, feed, coverage = carry
        config = self.config
        if config.decoder_style == "bahdanau":
            context, weights = attend(h[-1], coverage)
            layer_input = context
        else:
            layer_input = feed
        new_h, new_c = [], []
        for index, (kernel, bias) in enumerate(layers):
            parts = [layer_input.astype(kernel.dtype), h[index]]
            if index == 0 and embedded is not None:
                parts.insert(0, embedded.astype(kernel.dtype))
            if index > 0 and rng is not None:
                parts[0] = dropout(parts[0], config.rnn_dropout, jax.random.fold_in(rng, index))
            h_l, c_l = lstm_cell(jnp.concatenate(parts, axis=-1) @ kernel + bias, c[index])
            new_h.append(h_l)
            new_c.append(c_l)
            layer_input = h_l
        top = new_h[-1]
        if config.decoder_style == "luong":
            context, weights = attend(top, coverage)
            feed = jnp.tanh(self.readout(jnp.concatenate([context, top], axis=-1)))
            if rng is not None:
                feed = dropout(feed, config.readout_dropout, jax.random.fold_in(rng, 0))
        if coverage is not None:
            coverage = coverage + weights.astype(coverage.dtype)
        return (tuple(new_h), tuple(new_c), feed, coverage), (top, context, weights)

    def _bahdanau_readout(self, top, context, embedded, rng):
        """``r = tanh(W_r [s; c; emb] + b_r)`` on any leading shape ``[..., R]``."""
        readout = jnp.concatenate([top, context, embedded.astype(top.dtype)], axis=-1)
        return dropout(jnp.tanh(self.readout(readout)), self.config.readout_dropout, rng)

    def _copy(self, logits: jax.Array, readout: jax.Array, weights: jax.Array, src: jax.Array) -> jax.Array:
        """Copy attention's output ``log p [B, T, V]`` (``copy_log_probs``) from ``logits [B, T, V]``, the readout
        ``[B, T, R]`` (the gate's input), the attention ``weights [B, T, S]`` and the source ids ``src [B, S]``.
        ``T`` is the target length in teacher forcing and a sentence's hypotheses in ``decode_step``."""
        return copy_log_probs(logits, self.copy_gate(readout), weights, src)

    def init_decode_state(self, src: jax.Array, src_len: jax.Array) -> dict[str, jax.Array]:
        """Encode and build the decoder state of ``docs/model.md`` (every leaf batch-leading); with
        ``copy_attention`` it also holds the source ids ``src [B, S]``, with ``coverage_attention`` the
        coverage ``[B, S]`` (zeros)."""
        memory, h0, c0 = self.encode(src, src_len)
        batch, src_size = src.shape
        weights_dtype = softmax_dtype(self.compute_dtype)
        copy_state = {"src": src} if self.config.copy_attention else {}
        coverage_state = ({"coverage": jnp.zeros((batch, src_size), weights_dtype)}
                          if self.config.coverage_attention else {})
        return {
            **copy_state,
            **coverage_state,
            "memory": memory,
            "keys": self.attention.precompute_keys(memory),
            "src_mask": jnp.arange(src_size)[None, :] < src_len[:, None],
            "h": h0.transpose(1, 0, 2),
            "c": c0.transpose(1, 0, 2),
            "feed": jnp.zeros((batch, self.config.readout_size), memory.dtype),
            "attention": jnp.zeros((batch, src_size), weights_dtype),
        }

    def decode_weights(self) -> dict:
        """The matrices ``decode_step`` multiplies, with what it adds to their products, in the compute dtype:
        ``{"layers": [(kernel [in_l + H, 4H], bias [4H])] per decoder layer (``_layer_kernels``, embedding rows
        included), "output": W_o [R, V]}``. ``search_state`` builds them once per search, outside its loop, so
        that no step slices, concatenates or transposes parameters.
        """
        return {"layers": self._layer_kernels(embedding_rows=True),
                "output": self.output.matrix(self.tgt_embed.embedding[...])}

    def decode_step(self, state: dict[str, jax.Array], tokens: jax.Array,
                    weights: dict | None = None) -> tuple[jax.Array, dict]:
        """Inference step: ``tokens [N]`` (the previous output) -> ``logits [N, V]`` and the next state.
        With ``copy_attention`` the "logits" are the log-probabilities of the copy mechanism (normalised, so a
        ``log_softmax`` of them changes nothing).

        ``h, c [N, L, H]`` and ``feed [N, R]`` have a row per hypothesis. ``memory``, ``keys``, ``src_mask``
        (and ``src``) have a row per sentence, ``[B, ...]`` with ``N = B·G``: rows ``b·G .. b·G + G - 1`` are
        sentence ``b``'s hypotheses (``G = 1`` in teacher-forced use). ``attention [N, S]``, the step's
        weights, is written only when the state holds it; ``coverage [N, S]`` (``coverage_attention``) is per
        hypothesis too. ``weights``: ``decode_weights()`` (built here when None).
        """
        weights = self.decode_weights() if weights is None else weights
        embedded = self.tgt_embed(tokens)
        layers = range(self.config.dec_layers)
        h = tuple(state["h"][:, index] for index in layers)
        c = tuple(state["c"][:, index] for index in layers)
        rows, sentences = tokens.shape[0], state["memory"].shape[0]
        if rows % sentences:
            raise ValueError(f"decode_step: {rows} hypotheses do not divide among {sentences} sentences")

        def attend(query, coverage):  # [N, H], [N, S] or None -> context [N, M], weights [N, S]
            if rows == sentences:
                return self.attention(query, state["keys"], state["memory"], state["src_mask"], coverage)
            group = (sentences, rows // sentences, -1)
            grouped_coverage = None if coverage is None else coverage.reshape(group)
            context, alignment = self.attention(query.reshape(group), state["keys"], state["memory"],
                                                state["src_mask"], grouped_coverage)
            return context.reshape(rows, -1), alignment.reshape(rows, -1)

        (h, c, readout, coverage), (top, context, attention) = self._recurrent_step(
            (h, c, state["feed"], state.get("coverage")), embedded, attend, weights["layers"], None)
        if self.config.decoder_style == "bahdanau":
            readout = self._bahdanau_readout(top, context, embedded, None)
        logits = self.output(readout, weights["output"])
        if self.config.copy_attention:  # the hypotheses of a sentence share its one row of source ids
            grouped = (sentences, rows // sentences, -1)
            logits = self._copy(logits.reshape(grouped), readout.reshape(grouped), attention.reshape(grouped),
                                state["src"]).reshape(rows, -1)
        new_state = dict(state, h=jnp.stack(h, axis=1), c=jnp.stack(c, axis=1), feed=readout)
        if coverage is not None:
            new_state["coverage"] = coverage
        if "attention" in state:
            new_state["attention"] = attention.astype(state["attention"].dtype)
        return logits, new_state

    def search_state(self, src: jax.Array, src_len: jax.Array, with_attention: bool = True,
                     weights: dict | None = None, compactable: bool = False):
        """Encode once and split the decode state for ``seq2seq_jax.decoding.search``: ``(state, step)``.

        ``state`` holds what each hypothesis carries and search copies per beam and reorders every step:
        ``h, c [B, L, H]``, ``feed [B, R]``, ``coverage [B, S]`` (``coverage_attention``) and, when
        ``with_attention``, ``attention [B, S]``.
        ``step(state, tokens)`` is ``decode_step`` closed over the sentence-level ``memory``, ``keys``,
        ``src_mask`` (and ``src`` for copy attention; ``[B, ...]``, one copy per sentence however many
        hypotheses) and over ``weights`` (``decode_weights()``, built here, once per search, when None); it
        returns the per-hypothesis state only, so that search never copies or reorders the ``[B, S, ...]``
        encoder tensors per beam. ``compactable`` (one hypothesis per sentence: greedy search): the
        sentence-level tensors are in ``state`` too and ``step`` takes any number of rows, which a compacting
        search (``greedy_search(..., compact=True)``) needs.
        """
        full = self.init_decode_state(src, src_len)
        sentence = {name: full[name] for name in SENTENCE_STATE if name in full and not compactable}
        state = {name: value for name, value in full.items()
                 if name not in sentence and (with_attention or name != "attention")}
        weights = self.decode_weights() if weights is None else weights

        def step(state: dict[str, jax.Array], tokens: jax.Array) -> tuple[jax.Array, dict]:
            logits, new_state = self.decode_step({**state, **sentence}, tokens, weights)
            return logits, {name: new_state[name] for name in state}

        return state, step

    def __call__(self, src: jax.Array, src_len: jax.Array, tgt_in: jax.Array,
                 dropout_rng: jax.Array | None = None, return_attention: bool = False):
        """Teacher forcing: ``src [B, S]``, ``src_len [B]``, ``tgt_in [B, T]`` -> ``logits [B, T, V]``
        (and ``attention [B, T, S]`` when asked). With ``copy_attention`` the "logits" are the copy
        mechanism's log-probabilities.

        The time loop runs time-major (no transposes inside it) and holds only what depends on the previous
        step: attention, one ``[input; h] @ [w_ih; w_hh]`` matmul per layer, the LSTM cell. The embedding's
        input projection runs before it, the readout (Bahdanau) and the vocabulary projection after it, each
        as one matmul over all steps. The attention is rematerialised in the backward pass rather than stored
        (its ``tanh`` activations would be ``[T, B, S, A]``).
        """
        config = self.config
        rng_encode, rng_embed, rng_steps, rng_readout = _split(dropout_rng, 4)
        memory, h0, c0 = self.encode(src, src_len, rng_encode)  # memory [B, S, M]: attention reads it per sentence
        keys = self.attention.precompute_keys(memory)
        src_mask = jnp.arange(src.shape[1])[None, :] < src_len[:, None]
        embedded = _dropout_time_major(self.tgt_embed(tgt_in.T), config.embed_dropout, rng_embed)  # [T, B, E]
        gates_x0 = self.decoder.layers[0].project_inputs(embedded, slice(0, config.tgt_embed_size))  # [T, B, 4H]
        steps = tgt_in.shape[1]
        step_rngs = None if rng_steps is None else jax.random.split(rng_steps, steps)
        feed0 = jnp.zeros((src.shape[0], config.readout_size), memory.dtype)
        coverage0 = jnp.zeros(src.shape, softmax_dtype(self.compute_dtype)) if config.coverage_attention else None
        (kernel0, _), *upper = self._layer_kernels(embedding_rows=False)
        attend = jax.checkpoint(lambda query, coverage: self.attention(query, keys, memory, src_mask, coverage))

        def step(carry, inputs_t):
            gates_t, rng_t = inputs_t  # layer 0: the embedding's projection with both biases
            carry, (top, context, weights) = self._recurrent_step(carry, None, attend, [(kernel0, gates_t), *upper],
                                                                  rng_t)
            if config.decoder_style == "luong":
                return carry, (carry[2], weights)
            return carry, (top, context, weights)

        carry = (tuple(h0), tuple(c0), feed0, coverage0)
        _, outputs = jax.lax.scan(step, carry, (gates_x0, step_rngs))
        if config.decoder_style == "bahdanau":
            tops, contexts, weights = outputs  # [T, B, ...]
            readout = self._bahdanau_readout(tops, contexts, embedded, None).transpose(1, 0, 2)
            readout = dropout(readout, config.readout_dropout, rng_readout)
        else:
            readout, weights = outputs
            readout = readout.transpose(1, 0, 2)
        logits = self.output(readout, self.output.matrix(self.tgt_embed.embedding[...]))
        weights = weights.transpose(1, 0, 2)  # [B, T, S]
        if config.copy_attention:
            logits = self._copy(logits, readout, weights, src)
        return (logits, weights) if return_attention else logits


# What ``decode_step`` reads per sentence and never changes (``search_state`` keeps it out of the beam).
SENTENCE_STATE = ("memory", "keys", "src_mask", "src")


def _concat_directions(states: jax.Array) -> jax.Array:
    """``[L, D, B, H] -> [L, B, D·H]``: concatenate the directions' final states per layer."""
    return jnp.concatenate(list(states.transpose(1, 0, 2, 3)), axis=-1)


def _dropout_time_major(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """``dropout`` of a time-major ``x [T, B, ...]`` that draws the mask of the batch-major ``[B, T, ...]``
    tensor (the same random draw whichever layout the computation uses)."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[1], x.shape[0]) + x.shape[2:]).swapaxes(0, 1)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _split(rng: jax.Array | None, count: int) -> list[jax.Array | None]:
    if rng is None:
        return [None] * count
    return list(jax.random.split(rng, count))
