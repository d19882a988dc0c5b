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

from seq2seq_jax.config import ModelConfig
from seq2seq_jax.layers import Attention, EncoderLayer, LSTMWeights, dropout, lstm_cell, symmetric_uniform


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

    def __call__(self, readout: jax.Array, tgt_embedding: jax.Array) -> jax.Array:
        """``readout [..., R] -> logits [..., V]``; ``tgt_embedding [V, E]`` is used when tied."""
        kernel = tgt_embedding.T if self.tied else self.kernel[...]
        return readout @ kernel.astype(self.compute_dtype) + self.bias[...].astype(self.compute_dtype)


class Encoder(nnx.Module):
    """``L_enc`` stacked (bi)directional LSTM layers with dropout between them."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        sizes = [config.src_embed_size] + [config.memory_size] * (config.enc_layers - 1)
        self.layers = nnx.List([EncoderLayer(size, config, rngs=rngs) for size in sizes])
        self.rnn_dropout = config.rnn_dropout

    def __call__(self, x: jax.Array, src_len: jax.Array, dropout_rng: jax.Array | None = None):
        """``x [B, S, E_src]`` -> ``memory [B, S, M]``, ``h_n, c_n [L_enc, D, B, H_enc]``."""
        finals_h, finals_c = [], []
        for index, layer in enumerate(self.layers):
            if index > 0 and dropout_rng is not None:
                x = dropout(x, self.rnn_dropout, jax.random.fold_in(dropout_rng, index))
            x, h_n, c_n = layer(x, src_len)
            finals_h.append(h_n)
            finals_c.append(c_n)
        return x, jnp.stack(finals_h), jnp.stack(finals_c)


class DecoderLayers(nnx.Module):
    """The decoder's ``L_dec`` stacked LSTM layers; stepping them is ``Seq2Seq._recurrent_step``."""

    def __init__(self, input_sizes: list[int], config: ModelConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([LSTMWeights(size, config.dec_hidden_size, config, rngs=rngs) for size in input_sizes])


class Seq2Seq(nnx.Module):
    """LSTM encoder, attention, LSTM decoder (Bahdanau or Luong style), readout and output layer."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        config = config.require_resolved()
        self.config = config
        init = symmetric_uniform(config.init_scale)
        param_dtype = jnp.dtype(config.param_dtype)
        compute_dtype = jnp.dtype(config.compute_dtype)
        self.compute_dtype = compute_dtype
        linear = dict(param_dtype=param_dtype, dtype=compute_dtype, kernel_init=init, bias_init=init, rngs=rngs)
        embed = dict(param_dtype=param_dtype, dtype=compute_dtype, embedding_init=init, rngs=rngs)
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

    # ----------------------------------------------------------------------------------------- encoder
    def encode(self, src: jax.Array, src_len: jax.Array, dropout_rng: jax.Array | None = None):
        """``src [B, S]``, ``src_len [B]`` -> ``memory [B, S, M]`` and decoder initial ``h0, c0 [L, B, H]``."""
        config = self.config
        rng_embed, rng_encoder = _split(dropout_rng, 2)
        x = dropout(self.src_embed(src), config.embed_dropout, rng_embed)
        memory, h_n, c_n = self.encoder(x, src_len, rng_encoder)  # h_n: [L_enc, D, B, H_enc]
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
    def _recurrent_step(self, h, c, feed, gates_x0, keys, memory, src_mask, rng):
        """One decoder time step before the output layer.

        ``h, c [L, B, H]``; ``feed [B, R]`` (Luong's ``r_{t-1}``); ``gates_x0 [B, 4H]`` is layer 0's input
        projection of the embedding with both biases. Returns the new ``h, c``, the top output ``s [B, H]``,
        the context ``[B, M]``, the attention weights ``[B, S]`` and, for Luong, the readout ``r [B, R]``.
        """
        config = self.config
        layers = self.decoder.layers
        feed_rows = slice(config.tgt_embed_size, None)
        if config.decoder_style == "bahdanau":
            context, weights = self.attention(h[-1], keys, memory, src_mask)
            gates = gates_x0 + layers[0].partial_input(context, feed_rows)
        else:
            gates = gates_x0 + layers[0].partial_input(feed, feed_rows)
        new_h, new_c = [], []
        layer_input = None
        for index, layer in enumerate(layers):
            if index > 0:
                if rng is not None:
                    layer_input = dropout(layer_input, config.rnn_dropout, jax.random.fold_in(rng, index))
                gates = layer.project_inputs(layer_input)
            h_l, c_l = lstm_cell(gates + layer.recurrent(h[index]), c[index])
            new_h.append(h_l)
            new_c.append(c_l)
            layer_input = h_l
        top = new_h[-1]
        readout = None
        if config.decoder_style == "luong":
            context, weights = self.attention(top, keys, memory, src_mask)
            readout = jnp.tanh(self.readout(jnp.concatenate([context, top], axis=-1)))
            if rng is not None:
                readout = dropout(readout, config.readout_dropout, jax.random.fold_in(rng, 0))
        return jnp.stack(new_h), jnp.stack(new_c), top, context, weights, readout

    def _bahdanau_readout(self, top, context, embedded, rng):
        """``r = tanh(W_r [s; c; emb] + b_r)`` on any leading shape ``[..., R]``."""
        readout = jnp.tanh(self.readout(jnp.concatenate([top, context, embedded.astype(top.dtype)], axis=-1)))
        return dropout(readout, self.config.readout_dropout, rng)

    def init_decode_state(self, src: jax.Array, src_len: jax.Array) -> dict[str, jax.Array]:
        """Encode and build the decoder state of ``docs/model.md`` (every leaf batch-leading)."""
        memory, h0, c0 = self.encode(src, src_len)
        batch, src_size = src.shape
        return {
            "memory": memory,
            "keys": self.attention.precompute_keys(memory),
            "src_mask": jnp.arange(src_size)[None, :] < src_len[:, None],
            "h": h0.transpose(1, 0, 2),
            "c": c0.transpose(1, 0, 2),
            "feed": jnp.zeros((batch, self.config.readout_size), memory.dtype),
            "attention": jnp.zeros((batch, src_size), jnp.float32 if memory.dtype != jnp.float64 else memory.dtype),
        }

    def decode_step(self, state: dict[str, jax.Array], tokens: jax.Array) -> tuple[jax.Array, dict]:
        """Inference step: ``tokens [B]`` (the previous output) -> ``logits [B, V]`` and the next state."""
        embedded = self.tgt_embed(tokens)
        gates_x0 = self.decoder.layers[0].project_inputs(embedded, slice(0, self.config.tgt_embed_size))
        h, c, top, context, weights, readout = self._recurrent_step(
            state["h"].transpose(1, 0, 2), state["c"].transpose(1, 0, 2), state["feed"], gates_x0,
            state["keys"], state["memory"], state["src_mask"], None)
        if readout is None:
            readout = self._bahdanau_readout(top, context, embedded, None)
        logits = self.output(readout, self.tgt_embed.embedding[...])
        new_state = dict(state, h=h.transpose(1, 0, 2), c=c.transpose(1, 0, 2), feed=readout,
                         attention=weights.astype(state["attention"].dtype))
        return logits, new_state

    def __call__(self, src: jax.Array, src_len: jax.Array, tgt_in: jax.Array,
                 dropout_rng: jax.Array | None = None, return_attention: bool = False):
        """Teacher forcing: ``src [B, S]``, ``src_len [B]``, ``tgt_in [B, T]`` -> ``logits [B, T, V]``
        (and ``attention [B, T, S]`` when asked).

        The embedding's input projection runs before the time scan and the readout (Bahdanau) and the
        vocabulary projection after it, each as one matmul over all steps.
        """
        config = self.config
        rng_encode, rng_embed, rng_steps, rng_readout = _split(dropout_rng, 4)
        memory, h0, c0 = self.encode(src, src_len, rng_encode)
        keys = self.attention.precompute_keys(memory)
        src_mask = jnp.arange(src.shape[1])[None, :] < src_len[:, None]
        embedded = dropout(self.tgt_embed(tgt_in), config.embed_dropout, rng_embed)  # [B, T, E]
        gates_x0 = self.decoder.layers[0].project_inputs(embedded, slice(0, config.tgt_embed_size))
        steps = tgt_in.shape[1]
        step_rngs = None if rng_steps is None else jax.random.split(rng_steps, steps)
        feed0 = jnp.zeros((src.shape[0], config.readout_size), memory.dtype)

        def step(carry, inputs_t):
            h, c, feed = carry
            gates_t, rng_t = inputs_t
            h, c, top, context, weights, readout = self._recurrent_step(
                h, c, feed, gates_t, keys, memory, src_mask, rng_t)
            if readout is None:
                return (h, c, feed), (top, context, weights)
            return (h, c, readout), (readout, weights)

        _, outputs = jax.lax.scan(step, (h0, c0, feed0), (gates_x0.transpose(1, 0, 2), step_rngs))
        if config.decoder_style == "bahdanau":
            tops, contexts, weights = (o.transpose(1, 0, 2) for o in outputs)
            readout = self._bahdanau_readout(tops, contexts, embedded, rng_readout)
        else:
            readout, weights = (o.transpose(1, 0, 2) for o in outputs)
        logits = self.output(readout, self.tgt_embed.embedding[...])
        return (logits, weights) if return_attention else logits


def _concat_directions(states: jax.Array) -> jax.Array:
    """``[L, D, B, H] -> [L, B, D·H]``: concatenate the directions' final states per layer."""
    return jnp.concatenate(list(states.transpose(1, 0, 2, 3)), axis=-1)


def _split(rng: jax.Array | None, count: int) -> list[jax.Array | None]:
    if rng is None:
        return [None] * count
    return list(jax.random.split(rng, count))
