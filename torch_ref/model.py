"""The attention LSTM encoder-decoder of docs/model.md in plain PyTorch.

This is the reference that ``seq2seq_jax`` must match: ``nn.Embedding``, one ``nn.LSTM`` for the encoder
(run on packed sequences, so padding never enters a state), a bridge, an attention module, one ``nn.LSTM``
for the decoder stepped one token at a time, a readout and the output projection. Parameter names are the
``torch_ref`` column of the table in docs/model.md; ``seq2seq_jax/model/convert.py`` maps them to the Flax side.

All tensors are batch-first. Lengths are int64 tensors ``[batch]``. Token ids: pad 0, unk 1, bos 2, eos 3.
This module never imports JAX; ``seq2seq_jax.core.config`` is JAX-free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq_jax.core.config import ModelConfig
from seq2seq_jax.core.tokens import PAD_ID

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

DecodeState = dict[str, torch.Tensor]


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[batch]`` lengths -> ``[batch, max_len]`` bool mask, True at real positions ``j < length``."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions[None, :] < lengths[:, None]


class Attention(nn.Module):
    """Masked attention over the encoder memory; subclasses define the score ``e_j``.

    The keys (whatever the score needs from the memory) are computed once per sentence by ``keys``;
    each decoder step then calls ``forward`` with its query.
    """

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """``memory [batch, src_len, M]`` -> ``keys [batch, src_len, K]``."""
        raise NotImplementedError

    def scores(self, query: torch.Tensor, keys: torch.Tensor, coverage: torch.Tensor | None = None) -> torch.Tensor:
        """``query [batch, H_dec]``, ``keys [batch, src_len, K]`` (and, for coverage attention, ``coverage
        [batch, src_len]``) -> ``scores [batch, src_len]``."""
        raise NotImplementedError

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
        coverage: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One attention read.

        Args:
            query: ``[batch, H_dec]``.
            keys: ``[batch, src_len, K]`` from ``self.keys(memory)``.
            memory: ``[batch, src_len, M]``.
            src_mask: ``[batch, src_len]`` bool, True at real source positions.
            coverage: ``[batch, src_len]``, the sum of the past steps' weights (coverage attention only).

        Returns:
            ``context [batch, M]`` and ``weights [batch, src_len]`` (zero at padded positions).
        """
        scores = self.scores(query, keys, coverage).masked_fill(~src_mask, float("-inf"))
        # Softmax in float32 (float64 when the model is float64), then back to the model's dtype.
        softmax_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        weights = torch.softmax(scores.to(softmax_dtype), dim=-1).to(memory.dtype)
        context = torch.einsum("bs,bsm->bm", weights, memory)
        return context, weights


class AdditiveAttention(Attention):
    """Bahdanau: ``e_j = v · tanh(query_proj(q) + key_proj(M_j))``; with coverage,
    ``e_j = v · tanh(query_proj(q) + key_proj(M_j) + coverage_proj(cov_j))``."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int, coverage: bool = False):
        super().__init__()
        self.query_proj = nn.Linear(query_size, attention_size, bias=False)
        self.key_proj = nn.Linear(memory_size, attention_size, bias=True)
        self.v = nn.Linear(attention_size, 1, bias=False)
        if coverage:
            self.coverage_proj = nn.Linear(1, attention_size, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # [batch, src_len, A]

    def scores(self, query: torch.Tensor, keys: torch.Tensor, coverage: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.query_proj(query)[:, None, :] + keys  # [batch, src_len, A]
        if coverage is not None:
            hidden = hidden + self.coverage_proj(coverage[:, :, None])
        return self.v(torch.tanh(hidden)).squeeze(-1)


class DotAttention(Attention):
    """Luong dot: ``e_j = q · M_j`` (no parameters; the keys are the memory itself)."""

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return memory

    def scores(self, query: torch.Tensor, keys: torch.Tensor, coverage: torch.Tensor | None = None) -> torch.Tensor:
        return torch.einsum("bh,bsh->bs", query, keys)


class GeneralAttention(DotAttention):
    """Luong general: ``e_j = q · key_proj(M_j)`` with ``key_proj: M -> H_dec``, no bias."""

    def __init__(self, query_size: int, memory_size: int):
        super().__init__()
        self.key_proj = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # [batch, src_len, H_dec]


def build_attention(config: ModelConfig) -> Attention:
    if config.attention == "additive":
        return AdditiveAttention(config.dec_hidden_size, config.memory_size, config.attention_size,
                                 coverage=config.coverage_attention)
    if config.attention == "dot":
        return DotAttention()
    if config.attention == "general":
        return GeneralAttention(config.dec_hidden_size, config.memory_size)
    raise ValueError(f"unknown attention score {config.attention!r}")


class Seq2Seq(nn.Module):
    """Embedding -> (bi)LSTM encoder -> bridge -> attention LSTM decoder -> readout -> logits.

    Built from a resolved ``ModelConfig``; parameters are in ``config.param_dtype`` and initialised
    uniformly in ``[-init_scale, init_scale]``. Tying shares ``tgt_embed.weight`` as ``output.weight``
    (``tie_output_embedding``) and as ``src_embed.weight`` (``tie_src_tgt_embedding``).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.require_resolved()
        self.config = config
        dtype = _TORCH_DTYPES[config.param_dtype]
        memory_size = config.memory_size
        luong = config.decoder_style == "luong"

        self.src_embed = nn.Embedding(config.src_vocab_size, config.src_embed_size, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(config.tgt_vocab_size, config.tgt_embed_size, padding_idx=PAD_ID)
        self.embed_dropout = nn.Dropout(config.embed_dropout)

        self.encoder = nn.LSTM(
            config.src_embed_size,
            config.enc_hidden_size,
            num_layers=config.enc_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            # nn.LSTM warns about (and ignores) dropout with a single layer.
            dropout=config.rnn_dropout if config.enc_layers > 1 else 0.0,
        )
        if config.bridge == "dense":
            bridge_size = config.dec_layers * config.dec_hidden_size
            self.bridge_h = nn.Linear(memory_size, bridge_size)
            self.bridge_c = nn.Linear(memory_size, bridge_size)

        self.attention = build_attention(config)

        feed_size = config.readout_size if luong else memory_size
        self.decoder = nn.LSTM(
            config.tgt_embed_size + feed_size,
            config.dec_hidden_size,
            num_layers=config.dec_layers,
            batch_first=True,
            dropout=config.rnn_dropout if config.dec_layers > 1 else 0.0,
        )
        if luong:
            readout_in = memory_size + config.dec_hidden_size  # [c; s]
        else:
            readout_in = config.dec_hidden_size + memory_size + config.tgt_embed_size  # [s; c; emb]
        self.readout = nn.Linear(readout_in, config.readout_size, bias=not luong)
        self.readout_dropout = nn.Dropout(config.readout_dropout)
        self.output = nn.Linear(config.readout_size, config.tgt_vocab_size)
        if config.copy_attention:
            self.copy_gate = nn.Linear(config.readout_size, 1)  # p_gen = sigmoid(copy_gate(r_t))

        self.to(dtype)
        if config.tie_output_embedding:
            self.output.weight = self.tgt_embed.weight
        if config.tie_src_tgt_embedding:  # sizes equal: ModelConfig checks them
            self.src_embed.weight = self.tgt_embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter (embedding padding rows included) ~ uniform(-init_scale, init_scale)."""
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.uniform_(-self.config.init_scale, self.config.init_scale)

    @property
    def dtype(self) -> torch.dtype:
        return self.tgt_embed.weight.dtype

    # ----------------------------------------------------------------------------------------------- encoder

    def encode(
        self, src: torch.Tensor, src_len: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run the encoder on packed sequences.

        Args:
            src: ``[batch, src_len_max]`` token ids.
            src_len: ``[batch]`` int64, every length >= 1.

        Returns:
            ``memory [batch, src_len_max, M]`` (zeros at padded positions) and the final states
            ``(h_n, c_n)``, each ``[enc_layers * directions, batch, H_enc]`` in nn.LSTM's order
            (index ``layer * directions + direction``), taken after each sequence's last real token.
        """
        embedded = self.embed_dropout(self.src_embed(src))  # [batch, S, E_src]
        packed = pack_padded_sequence(embedded, src_len.cpu(), batch_first=True, enforce_sorted=False)
        packed_memory, (h_n, c_n) = self.encoder(packed)
        memory, _ = pad_packed_sequence(packed_memory, batch_first=True, total_length=src.shape[1])
        return memory, (h_n, c_n)

    def bridge(self, h_n: torch.Tensor, c_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder final states -> decoder initial states (docs/model.md, step 3).

        ``h_n, c_n [enc_layers * D, batch, H_enc]`` -> ``h0, c0 [batch, L_dec, H_dec]``.
        """
        config = self.config
        batch = h_n.shape[1]
        shape = (batch, config.dec_layers, config.dec_hidden_size)
        if config.bridge == "zero":
            zeros = h_n.new_zeros(shape)
            return zeros, zeros.clone()
        # [L_enc * D, batch, H_enc] -> [batch, L_enc, D * H_enc]: per layer, concat(final fwd, final bwd).
        h_layers = self._join_directions(h_n)
        c_layers = self._join_directions(c_n)
        if config.bridge == "last":
            return h_layers, c_layers
        # dense: from the top encoder layer; columns l*H_dec ... (l+1)*H_dec-1 are decoder layer l.
        h0 = torch.tanh(self.bridge_h(h_layers[:, -1])).reshape(shape)
        c0 = torch.tanh(self.bridge_c(c_layers[:, -1])).reshape(shape)
        return h0, c0

    def _join_directions(self, final_states: torch.Tensor) -> torch.Tensor:
        """``[enc_layers * D, batch, H_enc]`` -> ``[batch, enc_layers, D * H_enc]``."""
        _, batch, hidden = final_states.shape
        per_layer = final_states.reshape(self.config.enc_layers, self.config.num_directions, batch, hidden)
        return per_layer.permute(2, 0, 1, 3).reshape(batch, self.config.enc_layers, -1)

    # ----------------------------------------------------------------------------------------------- decoder

    def init_decode_state(self, src: torch.Tensor, src_len: torch.Tensor) -> DecodeState:
        """Encode and build the decoder state (see docs/model.md, "Decoder state").

        Returns a dict whose every value is batch-leading: ``memory [B, S, M]``, ``keys [B, S, K]``,
        ``src_mask [B, S]`` (bool), ``h``/``c [B, L_dec, H_dec]``, ``feed [B, R]`` (zeros),
        ``attention [B, S]`` (zeros), with ``copy_attention`` the source ids ``src [B, S]`` and with
        ``coverage_attention`` the coverage ``[B, S]`` (zeros: the sum of the past steps' attention weights).
        """
        memory, (h_n, c_n) = self.encode(src, src_len)
        h0, c0 = self.bridge(h_n, c_n)
        batch, max_src_len, _ = memory.shape
        copy_state = {"src": src} if self.config.copy_attention else {}
        coverage_state = {"coverage": memory.new_zeros(batch, max_src_len)} if self.config.coverage_attention else {}
        return {
            **copy_state,
            **coverage_state,
            "memory": memory,
            "keys": self.attention.keys(memory),
            "src_mask": lengths_to_mask(src_len.to(memory.device), max_src_len),
            "h": h0,
            "c": c0,
            "feed": memory.new_zeros(batch, self.config.readout_size),
            "attention": memory.new_zeros(batch, max_src_len),
        }

    def decode_step(self, state: DecodeState, tokens: torch.Tensor) -> tuple[torch.Tensor, DecodeState]:
        """One decoder step: previous tokens ``[batch]`` -> ``logits [batch, V_tgt]`` and the new state.
        With ``copy_attention`` the "logits" are the copy mechanism's log-probabilities (``copy_log_probs``).

        ``new_state['attention']`` holds this step's weights ``[batch, S]``; ``new_state['feed']`` is this
        step's (dropped) readout ``r_t``, the next step's input feeding for Luong.
        """
        embedded = self.embed_dropout(self.tgt_embed(tokens))  # [batch, E_tgt]
        memory, keys, src_mask = state["memory"], state["keys"], state["src_mask"]
        coverage = state.get("coverage")
        previous = (state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous())

        if self.config.decoder_style == "bahdanau":
            query = state["h"][:, -1]  # s_{t-1}: top layer before the step, [batch, H_dec]
            context, weights = self.attention(query, keys, memory, src_mask, coverage)
            lstm_input = torch.cat([embedded, context], dim=-1)
            top_output, (h, c) = self.decoder(lstm_input[:, None, :], previous)
            top_output = top_output[:, 0]  # s_t, [batch, H_dec]
            readout_input = torch.cat([top_output, context, embedded], dim=-1)
        else:
            lstm_input = torch.cat([embedded, state["feed"]], dim=-1)
            top_output, (h, c) = self.decoder(lstm_input[:, None, :], previous)
            top_output = top_output[:, 0]
            context, weights = self.attention(top_output, keys, memory, src_mask, coverage)
            readout_input = torch.cat([context, top_output], dim=-1)

        readout = self.readout_dropout(torch.tanh(self.readout(readout_input)))  # r_t, [batch, R]
        logits = self.output(readout)
        if self.config.copy_attention:
            logits = copy_log_probs(logits, self.copy_gate(readout), weights, state["src"])
        new_state = {
            **state,
            "h": h.transpose(0, 1),
            "c": c.transpose(0, 1),
            "feed": readout,
            "attention": weights,
        }
        if coverage is not None:
            new_state["coverage"] = coverage + weights
        return logits, new_state

    def forward(
        self,
        src: torch.Tensor,
        src_len: torch.Tensor,
        tgt_in: torch.Tensor,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing.

        Args:
            src: ``[batch, src_len_max]``; src_len: ``[batch]``.
            tgt_in: ``[batch, tgt_len_max]`` decoder inputs ``[BOS, y_1 ... y_T]`` (padded).

        Returns:
            ``logits [batch, tgt_len_max, V_tgt]``; with ``return_attention`` also
            ``attention [batch, tgt_len_max, src_len_max]``.
        """
        state = self.init_decode_state(src, src_len)
        step_logits, step_attention = [], []
        for t in range(tgt_in.shape[1]):
            logits, state = self.decode_step(state, tgt_in[:, t])
            step_logits.append(logits)
            step_attention.append(state["attention"])
        logits = torch.stack(step_logits, dim=1)
        if return_attention:
            return logits, torch.stack(step_attention, dim=1)
        return logits


def copy_log_probs(
    logits: torch.Tensor, gate_logit: torch.Tensor, weights: torch.Tensor, src: torch.Tensor
) -> torch.Tensor:
    """``log(p_gen · softmax(logits) + (1 - p_gen) · Σ_{j: src_j = v} α_j)`` with ``p_gen = σ(gate_logit)``
    (docs/model.md, "Copy attention").

    ``logits [batch, V]``, ``gate_logit [batch, 1]``, ``weights [batch, S]``, ``src [batch, S]`` ids ->
    ``[batch, V]`` in float32 (float64 for a float64 model), as a ``logaddexp`` of the two terms; ids no
    attention reaches have copy term ``-inf``.
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    copy = weights.new_zeros(logits.shape, dtype=dtype).scatter_add(-1, src, weights.to(dtype))
    reached = copy > 0
    log_copy = torch.where(reached, torch.where(reached, copy, torch.ones_like(copy)).log(),
                           torch.full_like(copy, float("-inf")))
    gate = gate_logit.to(dtype)
    return torch.logaddexp(F.logsigmoid(gate) + torch.log_softmax(logits.to(dtype), dim=-1),
                           F.logsigmoid(-gate) + log_copy)


def coverage_loss(attention: torch.Tensor, tgt_len: torch.Tensor) -> torch.Tensor:
    """``Σ_{t < tgt_len} Σ_j min(α_tj, cov_tj)`` of ``attention [batch, tgt_len_max, S]`` with ``cov_t`` the sum
    of the weights of the steps before ``t`` (docs/model.md, "Coverage"): a scalar, divided on the caller's side."""
    coverage = torch.zeros_like(attention[:, 0])
    total = attention.new_zeros(())
    mask = lengths_to_mask(tgt_len.to(attention.device), attention.shape[1])
    for t in range(attention.shape[1]):
        total = total + (torch.minimum(attention[:, t], coverage).sum(-1) * mask[:, t]).sum()
        coverage = coverage + attention[:, t]
    return total


def sequence_loss(
    logits: torch.Tensor, targets: torch.Tensor, tgt_len: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy over real target positions.

    Args:
        logits: ``[batch, tgt_len_max, V]``.
        targets: ``[batch, tgt_len_max]`` ids; positions ``t >= tgt_len`` are ignored.
        tgt_len: ``[batch]`` int64.
        label_smoothing: ε, as in ``F.cross_entropy``.

    Returns:
        ``(loss_sum, token_count)``: scalar in the logits' dtype, scalar int64. Divide on the caller's side.
    """
    mask = lengths_to_mask(tgt_len.to(logits.device), targets.shape[1])  # [batch, tgt_len_max]
    loss_sum = F.cross_entropy(
        logits[mask], targets[mask], label_smoothing=label_smoothing, reduction="sum"
    )
    return loss_sum, mask.sum()
