"""Building blocks of the model: the scanned LSTM, the length-exact (bi)directional encoder stack, and the
attention scores. Formulation and parameter names: ``docs/model.md``.

Shapes use ``B`` batch, ``S``/``T`` time, ``H`` hidden size, ``D`` directions, ``L`` layers.
Every LSTM keeps PyTorch's layout in transposed form (``w_ih [in, 4H]``, gates in order i, f, g, o, two
biases) so conversion is a transpose and nothing else.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seq2seq_jax.core.config import ModelConfig


def symmetric_uniform(scale: float):
    """Initializer drawing from U(-scale, scale) (OpenNMT's ``param_init``)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when ``rng`` is None (inference) or ``rate`` is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def softmax_dtype(compute_dtype) -> jnp.dtype:
    """Softmax and loss run in float32, or float64 when the model computes in float64."""
    return jnp.promote_types(compute_dtype, jnp.float32)


def lstm_cell(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Apply the LSTM nonlinearity to pre-activations ``gates [..., 4H]`` (order i, f, g, o).

    Returns ``(h', c')`` with ``c' = σ(f)⊙c + σ(i)⊙tanh(g)`` and ``h' = σ(o)⊙tanh(c')``.
    """
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c_next = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_next = jax.nn.sigmoid(o) * jnp.tanh(c_next)
    return h_next, c_next


class LSTMWeights(nnx.Module):
    """The parameters of one LSTM layer in one direction: ``w_ih [in, 4H]``, ``w_hh [H, 4H]``, ``b_ih``, ``b_hh``."""

    def __init__(self, input_size: int, hidden_size: int, config: ModelConfig, *, rngs: nnx.Rngs):
        init = symmetric_uniform(config.init_scale)
        dtype = jnp.dtype(config.param_dtype)
        self.hidden_size = hidden_size
        self.compute_dtype = jnp.dtype(config.compute_dtype)
        self.w_ih = nnx.Param(init(rngs.params(), (input_size, 4 * hidden_size), dtype))
        self.w_hh = nnx.Param(init(rngs.params(), (hidden_size, 4 * hidden_size), dtype))
        self.b_ih = nnx.Param(init(rngs.params(), (4 * hidden_size,), dtype))
        self.b_hh = nnx.Param(init(rngs.params(), (4 * hidden_size,), dtype))

    def project_inputs(self, x: jax.Array, rows: slice = slice(None)) -> jax.Array:
        """``x [..., in'] @ w_ih[rows] + b_ih + b_hh`` for every time step at once -> ``[..., 4H]``.

        ``rows`` selects the part of the input the caller has now (the decoder projects its embeddings
        before the scan and its attention context inside it).
        """
        w_ih = self.w_ih[...][rows].astype(self.compute_dtype)
        bias = (self.b_ih[...] + self.b_hh[...]).astype(self.compute_dtype)
        return x.astype(self.compute_dtype) @ w_ih + bias



class EncoderLayer(nnx.Module):
    """One encoder layer: a forward LSTM and, when bidirectional, a backward one, scanned together."""

    def __init__(self, input_size: int, config: ModelConfig, *, rngs: nnx.Rngs):
        self.fwd = LSTMWeights(input_size, config.enc_hidden_size, config, rngs=rngs)
        if config.bidirectional:
            self.bwd = LSTMWeights(input_size, config.enc_hidden_size, config, rngs=rngs)
        self.bidirectional = config.bidirectional

    def directions(self) -> list[LSTMWeights]:
        return [self.fwd, self.bwd] if self.bidirectional else [self.fwd]

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Run the layer over the time-major ``x [S, B, in]`` with real lengths ``lengths [B]``.

        Returns ``outputs [S, B, D·H]`` (zero at padded positions), and the final states
        ``h_n, c_n [D, B, H]``: per direction, the state after its last real token.

        Time-major is the layout ``lax.scan`` steps over, so the encoder stays in it: all directions share one
        scan; their input projections are computed before it (one matmul each over all steps), and only
        ``h @ w_hh`` runs per step. The backward direction reads the sequence flipped in time: its state stays
        zero over the (now leading) padding and starts at the last real token, what ``pack_padded_sequence``
        does, without any per-length gather.
        """
        directions = self.directions()
        src_len = x.shape[0]
        valid = jnp.arange(src_len)[:, None] < lengths[None, :]  # [S, B]
        inputs = [x] + ([jnp.flip(x, 0)] if self.bidirectional else [])
        masks = [valid] + ([jnp.flip(valid, 0)] if self.bidirectional else [])
        projected = tuple(d.project_inputs(inp) for d, inp in zip(directions, inputs, strict=True))  # D x [S, B, 4H]
        masks = tuple(m[:, :, None] for m in masks)  # D x [S, B, 1]
        kernels = tuple(d.w_hh[...].astype(d.compute_dtype) for d in directions)

        def step(carry, inputs_t):
            gates_x, valid_t = inputs_t
            new_carry, outputs = [], []
            for (h, c), g_x, m, w_hh in zip(carry, gates_x, valid_t, kernels, strict=True):
                h_next, c_next = lstm_cell(g_x + h @ w_hh, c)
                new_carry.append((jnp.where(m, h_next, h), jnp.where(m, c_next, c)))
                outputs.append(jnp.where(m, h_next, 0))
            return tuple(new_carry), tuple(outputs)

        batch, hidden = x.shape[1], directions[0].hidden_size
        zeros = jnp.zeros((batch, hidden), projected[0].dtype)
        finals, outputs = jax.lax.scan(step, tuple((zeros, zeros) for _ in directions), (projected, masks))
        outputs = [outputs[0]] + ([jnp.flip(outputs[1], 0)] if self.bidirectional else [])
        h_n = jnp.stack([h for h, _ in finals])
        c_n = jnp.stack([c for _, c in finals])
        return jnp.concatenate(outputs, axis=-1), h_n, c_n


class Attention(nnx.Module):
    """Masked attention over the encoder memory with an ``additive``, ``dot`` or ``general`` score."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        init = symmetric_uniform(config.init_scale)
        common = dict(param_dtype=jnp.dtype(config.param_dtype), dtype=jnp.dtype(config.compute_dtype),
                      kernel_init=init, bias_init=init, rngs=rngs)
        self.score = config.attention
        self.compute_dtype = jnp.dtype(config.compute_dtype)
        if self.score == "additive":
            self.query_proj = nnx.Linear(config.dec_hidden_size, config.attention_size, use_bias=False, **common)
            self.key_proj = nnx.Linear(config.memory_size, config.attention_size, use_bias=True, **common)
            self.v = nnx.Linear(config.attention_size, 1, use_bias=False, **common)
            if config.coverage_attention:
                self.coverage_proj = nnx.Linear(1, config.attention_size, use_bias=False, **common)
        elif self.score == "general":
            self.key_proj = nnx.Linear(config.memory_size, config.dec_hidden_size, use_bias=False, **common)

    def precompute_keys(self, memory: jax.Array) -> jax.Array:
        """Per-sentence part of the score, computed once: ``memory [B, S, M] -> keys [B, S, K]``.

        ``K`` is the attention size (additive), the decoder hidden size (general), or ``M`` (dot: the memory).
        """
        if self.score == "dot":
            return memory.astype(self.compute_dtype)
        return self.key_proj(memory)

    def __call__(self, query: jax.Array, keys: jax.Array, memory: jax.Array, src_mask: jax.Array,
                 coverage: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``query [B, Q]`` attends over ``memory [B, S, M]`` where ``src_mask [B, S]`` is true.

        ``query`` may also be ``[B, G, Q]``: ``G`` queries per sentence (the hypotheses of a beam) over the
        sentence's one copy of ``keys``, ``memory`` and ``src_mask``. ``coverage [B, (G,) S]`` (with
        ``coverage_attention``): the sum of the query's past attention weights, one row per query; the additive
        score then reads ``coverage_proj(coverage_j)`` as well.
        Returns ``context [B, M]`` and ``weights [B, S]`` (``[B, G, M]`` and ``[B, G, S]`` for grouped queries;
        the softmax runs in at least float32).
        """
        per_sentence = (lambda x: x[:, None]) if query.ndim == 3 else (lambda x: x)
        keys, memory, src_mask = per_sentence(keys), per_sentence(memory), per_sentence(src_mask)
        if self.score == "additive":
            hidden = self.query_proj(query)[..., None, :] + keys  # [B, (G,) S, A]
            if coverage is not None:
                hidden = hidden + self.coverage_proj(coverage[..., None].astype(self.compute_dtype))
            hidden = jnp.tanh(hidden)
            scores = self.v(hidden)[..., 0]
        else:
            scores = jnp.sum(query.astype(keys.dtype)[..., None, :] * keys, axis=-1)
        scores = scores.astype(softmax_dtype(self.compute_dtype))
        scores = jnp.where(src_mask, scores, -jnp.inf)
        weights = jax.nn.softmax(scores, axis=-1)
        context = jnp.sum(weights.astype(self.compute_dtype)[..., None] * memory.astype(self.compute_dtype), axis=-2)
        return context, weights


def copy_log_probs(logits: jax.Array, gate_logit: jax.Array, weights: jax.Array, src: jax.Array) -> jax.Array:
    """The copy mechanism's output distribution (docs/model.md, "Copy attention"), in log space.

    ``p(v) = p_gen · softmax(logits)_v + (1 - p_gen) · Σ_{j: src_j = v} α_j`` with ``p_gen = σ(gate_logit)``:
    the attention weights ``α`` put probability on the vocabulary ids of the source tokens they read (one joint
    vocabulary). ``logits [B, T, V]``, ``gate_logit [B, T, 1]``, ``weights [B, T, S]`` and ``src [B, S]``
    (ids) -> ``log p [B, T, V]``, in at least float32.

    Only the (at most ``S``) source ids get a copy term, so the dense part is ``log p_gen + log_softmax``
    and the mixture is computed per source position, ``[B, T, S]``, then written over those ids: the copy
    mass of position ``j`` is ``Σ_k α_k [src_k = src_j]`` (a ``[S, S]`` same-id product per sentence), and
    the two terms are joined by ``logaddexp`` so that nothing underflows to ``log 0``. Padded positions
    (``α = 0``) have a copy term of ``-inf`` and a zero gradient through it.
    """
    dtype = softmax_dtype(logits.dtype)
    weights = weights.astype(dtype)
    same_id = (src[:, :, None] == src[:, None, :]).astype(dtype)  # [B, S, S]
    copy_mass = jnp.einsum("bts,bsr->btr", weights, same_id)  # [B, T, S]
    reached = copy_mass > 0
    log_copy = jnp.where(reached, jnp.log(jnp.where(reached, copy_mass, 1.0)), -jnp.inf)
    gate = gate_logit.astype(dtype)
    generated = jax.nn.log_sigmoid(gate) + jax.nn.log_softmax(logits.astype(dtype), axis=-1)  # [B, T, V]
    ids = jnp.broadcast_to(src[:, None, :], weights.shape)
    at_source = jnp.logaddexp(jnp.take_along_axis(generated, ids, axis=-1), jax.nn.log_sigmoid(-gate) + log_copy)
    batch, steps = jnp.arange(ids.shape[0])[:, None, None], jnp.arange(ids.shape[1])[None, :, None]
    return generated.at[batch, steps, ids].set(at_source)
