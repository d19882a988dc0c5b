"""Parity per component, smallest first: LSTM layer, bidirectional encoder on variable lengths, each attention
score, decoder steps of each style (with and without copy attention), the copy distribution. float64 (x64
against torch.double), weights converted both ways."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from parity_support import check, make_batch, make_pair, precision, tiny_config
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq_jax.model.layers import copy_log_probs
from torch_ref.model import copy_log_probs as torch_copy_log_probs

DTYPE = "float64"


@pytest.mark.parametrize("direction", ["torch->flax", "flax->torch"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_layer(direction, bidirectional):
    """One encoder layer on embedded inputs of mixed lengths against ``nn.LSTM`` on packed sequences."""
    config = tiny_config(DTYPE, bidirectional=bidirectional)
    reference, model = make_pair(config, direction)
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(3, 6, config.src_embed_size))
    lengths = np.array([6, 2, 4])
    with precision(DTYPE):
        outputs, h_n, c_n = model.encoder.layers[0](jnp.asarray(inputs).transpose(1, 0, 2), jnp.asarray(lengths))
        outputs = outputs.transpose(1, 0, 2)  # the layer is time-major
    packed = pack_padded_sequence(torch.from_numpy(inputs), torch.from_numpy(lengths), batch_first=True,
                                  enforce_sorted=False)
    with torch.no_grad():
        ref_packed, (ref_h, ref_c) = reference.encoder(packed)
    ref_outputs, _ = pad_packed_sequence(ref_packed, batch_first=True, total_length=6)
    check("outputs", DTYPE, outputs, ref_outputs.numpy())
    check("outputs", DTYPE, h_n, ref_h.numpy())
    check("outputs", DTYPE, c_n, ref_c.numpy())
    assert np.all(np.asarray(outputs)[1, 2:] == 0.0)


@pytest.mark.parametrize("bridge", ["zero", "last", "dense"])
@pytest.mark.parametrize("layers", [1, 2])
def test_bidirectional_encoder_and_bridge(bridge, layers):
    """Memory and decoder initial states for a 1/2-layer bidirectional encoder on mixed lengths."""
    config = tiny_config(DTYPE, bridge=bridge, enc_layers=layers, dec_layers=layers)
    reference, model = make_pair(config, "torch->flax" if layers == 1 else "flax->torch")
    batch = make_batch(config, src_lens=(6, 1, 3, 5))
    with precision(DTYPE):
        memory, h0, c0 = model.encode(jnp.asarray(batch.src), jnp.asarray(batch.src_len))
    tensors = batch.torch()
    with torch.no_grad():
        ref_memory, (h_n, c_n) = reference.encode(tensors["src"], tensors["src_len"])
        ref_h0, ref_c0 = reference.bridge(h_n, c_n)
    check("outputs", DTYPE, memory, ref_memory.numpy())
    # JAX keeps decoder states layer-major [L, B, H]; torch_ref's bridge returns [B, L, H].
    check("outputs", DTYPE, np.asarray(h0).transpose(1, 0, 2), ref_h0.numpy())
    check("outputs", DTYPE, np.asarray(c0).transpose(1, 0, 2), ref_c0.numpy())


@pytest.mark.parametrize("score", ["additive", "dot", "general"])
def test_attention_score(score):
    """Context and weights of one attention read, masked to each source length."""
    config = tiny_config(DTYPE, attention=score)
    reference, model = make_pair(config, "torch->flax" if score != "general" else "flax->torch")
    rng = np.random.default_rng(2)
    memory = rng.normal(size=(3, 5, config.memory_size))
    query = rng.normal(size=(3, config.dec_hidden_size))
    mask = np.arange(5)[None, :] < np.array([5, 1, 3])[:, None]
    with precision(DTYPE):
        keys = model.attention.precompute_keys(jnp.asarray(memory))
        context, weights = model.attention(jnp.asarray(query), keys, jnp.asarray(memory), jnp.asarray(mask))
    with torch.no_grad():
        ref_memory = torch.from_numpy(memory)
        ref_keys = reference.attention.keys(ref_memory)
        ref_context, ref_weights = reference.attention(torch.from_numpy(query), ref_keys, ref_memory,
                                                       torch.from_numpy(mask))
    check("outputs", DTYPE, keys, ref_keys.numpy())
    check("outputs", DTYPE, context, ref_context.numpy())
    check("outputs", DTYPE, weights, ref_weights.numpy())
    assert np.all(np.asarray(weights)[~mask] == 0.0)


@pytest.mark.parametrize(("style", "layers", "copy"), [("bahdanau", 1, False), ("bahdanau", 2, False),
                                                     ("luong", 1, False), ("luong", 2, False),
                                                     ("bahdanau", 1, True), ("luong", 2, True)])
def test_decoder_steps(style, layers, copy):
    """Three inference steps of ``decode_step``: logits and every state entry agree after each step."""
    copy_fields = dict(copy_attention=True, src_vocab_size=13) if copy else {}
    config = tiny_config(DTYPE, decoder_style=style, dec_layers=layers, enc_layers=layers, **copy_fields)
    reference, model = make_pair(config, "torch->flax" if style == "luong" else "flax->torch")
    batch = make_batch(config)
    tensors = batch.torch()
    with precision(DTYPE):
        state = model.init_decode_state(jnp.asarray(batch.src), jnp.asarray(batch.src_len))
        with torch.no_grad():
            ref_state = reference.init_decode_state(tensors["src"], tensors["src_len"])
        for step in range(3):
            tokens = batch.tgt_in[:, step]
            logits, state = model.decode_step(state, jnp.asarray(tokens))
            with torch.no_grad():
                ref_logits, ref_state = reference.decode_step(ref_state, torch.from_numpy(tokens.astype(np.int64)))
            check("logits", DTYPE, logits, ref_logits.numpy())
            for name in ("h", "c", "feed", "attention", "memory", "keys"):
                check("outputs", DTYPE, state[name], ref_state[name].numpy())
            assert np.array_equal(np.asarray(state["src_mask"]), ref_state["src_mask"].numpy())
            if copy:
                assert np.allclose(np.exp(np.asarray(logits)).sum(-1), 1.0)  # log-probabilities, normalised


def _one_step_copy(logits, gate, weights, src):
    """``copy_log_probs`` (``[B, T, ...]``) on one step's rows ``[N, ...]``."""
    logits, gate, weights, src = map(jnp.asarray, (logits, gate, weights, src))
    return copy_log_probs(logits[:, None], gate[:, None], weights[:, None], src)[:, 0]


def test_copy_log_probs_matches_torch_and_moves_attention_onto_source_ids():
    """``copy_log_probs`` of both frameworks on rows with repeated source ids and padding (zero weights); a
    closed gate gives the softmax, an open gate the attention summed per source id."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 9))
    src = np.array([[4, 5, 4, 3, 0], [6, 3, 0, 0, 0], [7, 8, 8, 8, 3]])
    weights = rng.random(src.shape) * (np.arange(5) < np.array([[4], [2], [5]]))
    weights /= weights.sum(-1, keepdims=True)
    gate = rng.normal(size=(3, 1))
    with precision(DTYPE):
        log_probs = np.asarray(_one_step_copy(logits, gate, weights, src))
    reference = torch_copy_log_probs(*map(torch.from_numpy, (logits, gate, weights, src))).numpy()
    check("outputs", DTYPE, log_probs, reference)
    copied = np.zeros_like(logits)
    for row in range(3):
        np.add.at(copied[row], src[row], weights[row])
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p_gen = 1 / (1 + np.exp(-gate))
    np.testing.assert_allclose(np.exp(log_probs), p_gen * softmax + (1 - p_gen) * copied, rtol=1e-12)
    assert copied[0, 4] == weights[0, 0] + weights[0, 2] and copied[0, 0] == 0.0
    with precision(DTYPE):
        closed = _one_step_copy(logits, np.full((3, 1), 60.0), weights, src)
        opened = _one_step_copy(logits, np.full((3, 1), -60.0), weights, src)
    np.testing.assert_allclose(np.exp(np.asarray(closed)), softmax, rtol=1e-12)
    np.testing.assert_allclose(np.exp(np.asarray(opened)), copied, atol=1e-20)
