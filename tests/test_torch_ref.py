"""Tests of the PyTorch reference model (torch only; no JAX in this file).

The expected parameter names and shapes are written out from the table in docs/model.md, and
``reference_logits`` below is an independent, unbatched, loop-by-loop transcription of the formulation in
docs/model.md, so that the model is checked against the document rather than against itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from seq2seq_jax.core.config import ModelConfig
from torch_ref import Seq2Seq, sequence_loss

EOS = 3
FIRST_WORD_ID = 4

BASE = ModelConfig(
    src_vocab_size=13,
    tgt_vocab_size=11,
    src_embed_size=4,
    tgt_embed_size=5,
    enc_hidden_size=3,
    dec_hidden_size=7,
    attention_size=2,
    readout_size=6,
    bidirectional=True,
    enc_layers=1,
    dec_layers=1,
    attention="additive",
    decoder_style="bahdanau",
    bridge="dense",
    init_scale=0.5,
)

SRC_LEN = torch.tensor([5, 1, 3])
TGT_LEN = torch.tensor([4, 2, 1])


def make_config(**changes) -> ModelConfig:
    """BASE with ``changes``; sizes that a score or bridge constrains are fixed up to fit."""
    fields = {**BASE.to_dict(), **changes}
    if fields["attention"] == "dot" or fields["bridge"] == "last":
        fields["dec_hidden_size"] = fields["enc_hidden_size"] * (2 if fields["bidirectional"] else 1)
    if fields["bridge"] == "last":
        fields["dec_layers"] = fields["enc_layers"]
    if fields["tie_output_embedding"]:
        fields["readout_size"] = fields["tgt_embed_size"]
    return ModelConfig(**fields)


def make_tokens(lengths: torch.Tensor, max_len: int, vocab_size: int, seed: int) -> torch.Tensor:
    """``[batch, max_len]`` ids: random words, EOS at ``length - 1``, pad (0) after it."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(FIRST_WORD_ID, vocab_size, (len(lengths), max_len), generator=generator)
    positions = torch.arange(max_len)[None, :]
    tokens = torch.where(positions == lengths[:, None] - 1, EOS, tokens)
    return torch.where(positions < lengths[:, None], tokens, 0)


def make_batch(config: ModelConfig, src_max: int = 6, tgt_max: int = 5, seed: int = 0):
    src = make_tokens(SRC_LEN, src_max, config.src_vocab_size, seed)
    tgt_in = make_tokens(TGT_LEN, tgt_max, config.tgt_vocab_size, seed + 1)
    tgt_in[:, 0] = 2  # BOS
    return src, SRC_LEN, tgt_in


def make_model(config: ModelConfig, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(config).eval()


# ---------------------------------------------------------------------------------------- parameter names


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The torch_ref column of the parameter table in docs/model.md, written out by hand."""
    v_src, v_tgt = config.src_vocab_size, config.tgt_vocab_size
    e_src, e_tgt = config.src_embed_size, config.tgt_embed_size
    h_enc, h_dec = config.enc_hidden_size, config.dec_hidden_size
    m = h_enc * (2 if config.bidirectional else 1)
    a, r = config.attention_size, config.readout_size
    shapes = {"src_embed.weight": (v_src, e_src), "tgt_embed.weight": (v_tgt, e_tgt)}
    directions = ["", "_reverse"] if config.bidirectional else [""]
    for layer in range(config.enc_layers):
        in_size = e_src if layer == 0 else m
        for suffix in directions:
            shapes[f"encoder.weight_ih_l{layer}{suffix}"] = (4 * h_enc, in_size)
            shapes[f"encoder.weight_hh_l{layer}{suffix}"] = (4 * h_enc, h_enc)
            shapes[f"encoder.bias_ih_l{layer}{suffix}"] = (4 * h_enc,)
            shapes[f"encoder.bias_hh_l{layer}{suffix}"] = (4 * h_enc,)
    if config.bridge == "dense":
        for name in ("bridge_h", "bridge_c"):
            shapes[f"{name}.weight"] = (config.dec_layers * h_dec, m)
            shapes[f"{name}.bias"] = (config.dec_layers * h_dec,)
    if config.attention == "additive":
        shapes["attention.query_proj.weight"] = (a, h_dec)
        shapes["attention.key_proj.weight"] = (a, m)
        shapes["attention.key_proj.bias"] = (a,)
        shapes["attention.v.weight"] = (1, a)
    elif config.attention == "general":
        shapes["attention.key_proj.weight"] = (h_dec, m)
    bahdanau = config.decoder_style == "bahdanau"
    for layer in range(config.dec_layers):
        in_size = (e_tgt + (m if bahdanau else r)) if layer == 0 else h_dec
        shapes[f"decoder.weight_ih_l{layer}"] = (4 * h_dec, in_size)
        shapes[f"decoder.weight_hh_l{layer}"] = (4 * h_dec, h_dec)
        shapes[f"decoder.bias_ih_l{layer}"] = (4 * h_dec,)
        shapes[f"decoder.bias_hh_l{layer}"] = (4 * h_dec,)
    shapes["readout.weight"] = (r, h_dec + m + e_tgt if bahdanau else m + h_dec)
    if bahdanau:
        shapes["readout.bias"] = (r,)
    shapes["output.weight"] = (v_tgt, r)
    shapes["output.bias"] = (v_tgt,)
    return shapes


GRID = list(itertools.product(
    [False, True],  # bidirectional
    [1, 2],  # enc_layers
    ["additive", "dot", "general"],
    ["bahdanau", "luong"],
    ["zero", "last", "dense"],
    [False, True],  # tie_output_embedding
))


@pytest.mark.parametrize("bidirectional,enc_layers,attention,style,bridge,tied", GRID)
def test_state_dict_names_and_shapes_match_docs(bidirectional, enc_layers, attention, style, bridge, tied):
    config = make_config(bidirectional=bidirectional, enc_layers=enc_layers, dec_layers=3 - enc_layers,
                         attention=attention, decoder_style=style, bridge=bridge, tie_output_embedding=tied)
    model = Seq2Seq(config)
    actual = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert actual == expected_shapes(config)
    if tied:
        assert model.output.weight is model.tgt_embed.weight


@pytest.mark.parametrize("param_dtype", ["float32", "float64"])
def test_parameters_have_config_dtype_and_init_range(param_dtype):
    config = make_config(param_dtype=param_dtype, init_scale=0.05, enc_layers=2, dec_layers=2)
    model = Seq2Seq(config)
    expected_dtype = {"float32": torch.float32, "float64": torch.float64}[param_dtype]
    for name, parameter in model.named_parameters():
        assert parameter.dtype == expected_dtype, name
        assert parameter.abs().max() <= 0.05, name
        assert parameter.abs().max() > 0.0, name  # padding rows included: nothing left at zero
    src, src_len, tgt_in = make_batch(config)
    assert model(src, src_len, tgt_in).dtype == expected_dtype


def test_tied_output_weight_is_the_embedding_tensor():
    model = Seq2Seq(make_config(tie_output_embedding=True))
    assert model.output.weight is model.tgt_embed.weight
    names = [name for name, _ in model.named_parameters()]
    assert "output.weight" not in names and "output.bias" in names  # one parameter, counted once
    other = Seq2Seq(make_config(tie_output_embedding=True))
    other.load_state_dict(model.state_dict())
    assert other.output.weight is other.tgt_embed.weight
    torch.testing.assert_close(other.output.weight, model.tgt_embed.weight, rtol=0, atol=0)


def test_three_way_tying_is_one_embedding_tensor():
    config = make_config(tie_output_embedding=True, tie_src_tgt_embedding=True, src_vocab_size=BASE.tgt_vocab_size,
                         src_embed_size=BASE.tgt_embed_size)
    model = Seq2Seq(config)
    assert model.src_embed.weight is model.tgt_embed.weight is model.output.weight
    assert {name for name, _ in model.named_parameters() if name.endswith("embed.weight")} == {"src_embed.weight"}
    assert {"src_embed.weight", "tgt_embed.weight", "output.weight"} <= set(model.state_dict())
    other = Seq2Seq(config)
    other.load_state_dict(model.state_dict())
    assert other.src_embed.weight is other.tgt_embed.weight is other.output.weight
    torch.testing.assert_close(other.src_embed.weight, model.tgt_embed.weight, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ the formulation


def lstm_step(x, h, c, params, module, suffix):
    """One LSTM cell step with the weights ``{module}.weight_ih_{suffix}`` etc.; ``x [in]``, ``h, c [H]``."""
    gates = (x @ params[f"{module}.weight_ih_{suffix}"].T + params[f"{module}.bias_ih_{suffix}"]
             + h @ params[f"{module}.weight_hh_{suffix}"].T + params[f"{module}.bias_hh_{suffix}"])
    i, f, g, o = gates.chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def reference_logits(config: ModelConfig, params: dict, src: list[int], tgt_in: list[int]) -> torch.Tensor:
    """docs/model.md for one unpadded sentence, step by step: ``[len(tgt_in), V_tgt]``."""
    h_enc, h_dec = config.enc_hidden_size, config.dec_hidden_size
    # Encoder: per layer, a forward pass and (bidirectional) a backward pass over the real tokens only.
    layer_input = params["src_embed.weight"][src]  # [n, E_src]
    finals = []  # per layer: (h, c) as concat(fwd, bwd)
    n = len(src)
    for layer in range(config.enc_layers):
        outputs, final_h, final_c = [], [], []
        passes = [("", range(n)), ("_reverse", range(n - 1, -1, -1))]
        for suffix, order in passes[: config.num_directions]:
            h = c = torch.zeros(h_enc, dtype=torch.float64)
            per_position = [None] * n
            for t in order:
                h, c = lstm_step(layer_input[t], h, c, params, "encoder", f"l{layer}{suffix}")
                per_position[t] = h
            outputs.append(torch.stack(per_position))
            final_h.append(h)
            final_c.append(c)
        layer_input = torch.cat(outputs, dim=-1)
        finals.append((torch.cat(final_h), torch.cat(final_c)))
    memory = layer_input  # [n, M]

    if config.bridge == "zero":
        h = [torch.zeros(h_dec, dtype=torch.float64) for _ in range(config.dec_layers)]
        c = [torch.zeros(h_dec, dtype=torch.float64) for _ in range(config.dec_layers)]
    elif config.bridge == "last":
        h = [finals[layer][0] for layer in range(config.dec_layers)]
        c = [finals[layer][1] for layer in range(config.dec_layers)]
    else:
        top_h, top_c = finals[-1]
        h0 = torch.tanh(params["bridge_h.weight"] @ top_h + params["bridge_h.bias"])
        c0 = torch.tanh(params["bridge_c.weight"] @ top_c + params["bridge_c.bias"])
        h = [h0[layer * h_dec:(layer + 1) * h_dec] for layer in range(config.dec_layers)]
        c = [c0[layer * h_dec:(layer + 1) * h_dec] for layer in range(config.dec_layers)]

    def attend(query):
        scores = []
        for j in range(n):
            if config.attention == "additive":
                hidden = torch.tanh(params["attention.query_proj.weight"] @ query
                                    + params["attention.key_proj.weight"] @ memory[j]
                                    + params["attention.key_proj.bias"])
                scores.append(params["attention.v.weight"][0] @ hidden)
            elif config.attention == "dot":
                scores.append(query @ memory[j])
            else:
                scores.append(query @ (params["attention.key_proj.weight"] @ memory[j]))
        weights = torch.softmax(torch.stack(scores), dim=0)
        return weights @ memory

    def run_decoder_layers(x):
        for layer in range(config.dec_layers):
            h[layer], c[layer] = lstm_step(x, h[layer], c[layer], params, "decoder", f"l{layer}")
            x = h[layer]
        return x

    feed = torch.zeros(config.readout_size, dtype=torch.float64)
    all_logits = []
    for token in tgt_in:
        embedded = params["tgt_embed.weight"][token]
        if config.decoder_style == "bahdanau":
            context = attend(h[-1])
            s = run_decoder_layers(torch.cat([embedded, context]))
            readout = torch.tanh(params["readout.weight"] @ torch.cat([s, context, embedded])
                                 + params["readout.bias"])
        else:
            s = run_decoder_layers(torch.cat([embedded, feed]))
            context = attend(s)
            readout = torch.tanh(params["readout.weight"] @ torch.cat([context, s]))
            feed = readout
        all_logits.append(params["output.weight"] @ readout + params["output.bias"])
    return torch.stack(all_logits)


FORMULATION_CONFIGS = [
    dict(attention="additive", decoder_style="bahdanau", bridge="dense", enc_layers=2, dec_layers=2),
    dict(attention="general", decoder_style="luong", bridge="zero", bidirectional=False),
    dict(attention="dot", decoder_style="luong", bridge="last", enc_layers=2),
    dict(attention="dot", decoder_style="bahdanau", bridge="last", bidirectional=False),
    dict(attention="additive", decoder_style="luong", bridge="dense", enc_layers=2,
         tie_output_embedding=True),
    dict(attention="general", decoder_style="bahdanau", bridge="dense", bidirectional=False, dec_layers=2),
]


@pytest.mark.parametrize("changes", FORMULATION_CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_forward_matches_docs_formulation_sentence_by_sentence(changes):
    config = make_config(param_dtype="float64", **changes)
    model = make_model(config)
    src, src_len, tgt_in = make_batch(config)
    with torch.no_grad():
        logits = model(src, src_len, tgt_in)
        params = model.state_dict()
        for b in range(len(src)):
            expected = reference_logits(config, params, src[b, : src_len[b]].tolist(),
                                        tgt_in[b, : TGT_LEN[b]].tolist())
            torch.testing.assert_close(logits[b, : TGT_LEN[b]], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("style", ["bahdanau", "luong"])
def test_forward_equals_stepping_decode_step(style):
    config = make_config(decoder_style=style, enc_layers=2, dec_layers=2)
    model = make_model(config)
    src, src_len, tgt_in = make_batch(config)
    with torch.no_grad():
        logits, attention = model(src, src_len, tgt_in, return_attention=True)
        state = model.init_decode_state(src, src_len)
        for t in range(tgt_in.shape[1]):
            step_logits, state = model.decode_step(state, tgt_in[:, t])
            torch.testing.assert_close(logits[:, t], step_logits, rtol=0, atol=0)
            torch.testing.assert_close(attention[:, t], state["attention"], rtol=0, atol=0)


@pytest.mark.parametrize("attention", ["additive", "dot", "general"])
def test_decode_state_has_the_documented_keys_and_shapes(attention):
    config = make_config(attention=attention, decoder_style="luong", dec_layers=2)
    model = make_model(config)
    src, src_len, tgt_in = make_batch(config)
    batch, src_max = src.shape
    key_size = {"additive": config.attention_size, "dot": config.memory_size,
                "general": config.dec_hidden_size}[attention]
    expected = {
        "memory": (batch, src_max, config.memory_size),
        "keys": (batch, src_max, key_size),
        "src_mask": (batch, src_max),
        "h": (batch, config.dec_layers, config.dec_hidden_size),
        "c": (batch, config.dec_layers, config.dec_hidden_size),
        "feed": (batch, config.readout_size),
        "attention": (batch, src_max),
    }
    with torch.no_grad():
        state = model.init_decode_state(src, src_len)
        assert {name: tuple(value.shape) for name, value in state.items()} == expected
        assert state["src_mask"].dtype == torch.bool
        assert state["src_mask"].sum(dim=1).tolist() == src_len.tolist()
        assert not state["feed"].any()
        _, new_state = model.decode_step(state, tgt_in[:, 0])
        assert {name: tuple(value.shape) for name, value in new_state.items()} == expected
        torch.testing.assert_close(new_state["attention"].sum(dim=1), torch.ones(batch))
        assert not new_state["attention"][~state["src_mask"]].any()


# ---------------------------------------------------------------------------------------------- padding


def test_encoder_outputs_are_zero_at_padding_and_final_states_follow_the_last_real_token():
    config = make_config(enc_layers=2, dec_layers=2)
    model = make_model(config)
    src, src_len, _ = make_batch(config)
    with torch.no_grad():
        memory, (h_n, c_n) = model.encode(src, src_len)
        padding = torch.arange(src.shape[1])[None, :] >= src_len[:, None]
        assert padding.any()
        assert not memory[padding].any()
        assert memory[~padding].abs().min() > 0
        for b in range(len(src)):
            alone, (h_alone, c_alone) = model.encode(src[b:b + 1, : src_len[b]], src_len[b:b + 1])
            torch.testing.assert_close(memory[b, : src_len[b]], alone[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(h_n[:, b], h_alone[:, 0], rtol=0, atol=1e-6)
            torch.testing.assert_close(c_n[:, b], c_alone[:, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("style,attention", [("bahdanau", "additive"), ("luong", "general")])
def test_extra_padding_changes_no_real_logit(style, attention):
    config = make_config(decoder_style=style, attention=attention, enc_layers=2, dec_layers=2)
    model = make_model(config)
    src, src_len, tgt_in = make_batch(config, src_max=5, tgt_max=4)
    wider_src = F.pad(src, (0, 3))
    longer_tgt_in = F.pad(tgt_in, (0, 2))
    with torch.no_grad():
        logits, attention_weights = model(src, src_len, tgt_in, return_attention=True)
        padded_logits, padded_attention = model(wider_src, src_len, longer_tgt_in, return_attention=True)
        torch.testing.assert_close(padded_logits[:, : tgt_in.shape[1]], logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(padded_attention[:, : tgt_in.shape[1], : src.shape[1]], attention_weights,
                                   rtol=0, atol=1e-6)
        assert not padded_attention[:, :, src.shape[1]:].any()
        for b in range(len(src)):
            alone = model(src[b:b + 1, : src_len[b]], src_len[b:b + 1], tgt_in[b:b + 1, : TGT_LEN[b]])
            torch.testing.assert_close(alone[0], logits[b, : TGT_LEN[b]], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------- loss


def hand_written_loss(logits, targets, tgt_len, epsilon):
    log_probs = torch.log_softmax(logits, dim=-1)  # [B, T, V]
    nll = -log_probs.gather(-1, targets[..., None])[..., 0]
    smooth = -log_probs.mean(dim=-1)
    per_token = (1 - epsilon) * nll + epsilon * smooth
    mask = torch.arange(targets.shape[1])[None, :] < tgt_len[:, None]
    return torch.where(mask, per_token, 0.0).sum(), int(mask.sum())


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_sequence_loss_is_masked_label_smoothed_cross_entropy(epsilon):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 5), generator=generator)
    tgt_len = torch.tensor([5, 2, 1])
    padding = torch.arange(5)[None, :] >= tgt_len[:, None]
    logits[padding] = float("nan")  # whatever sits at padded positions must not reach the loss
    loss_sum, token_count = sequence_loss(logits, targets, tgt_len, label_smoothing=epsilon)
    expected_sum, expected_count = hand_written_loss(logits, targets, tgt_len, epsilon)
    assert int(token_count) == expected_count == 8
    assert loss_sum.dtype == torch.float64
    torch.testing.assert_close(loss_sum, expected_sum, rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("dropout_name", ["embed_dropout", "rnn_dropout", "readout_dropout"])
def test_dropout_is_active_in_train_and_inactive_in_eval(dropout_name):
    config = make_config(enc_layers=2, dec_layers=2, **{dropout_name: 0.5})
    model = make_model(config)
    no_dropout = make_model(dataclasses.replace(config, **{dropout_name: 0.0}))
    no_dropout.load_state_dict(model.state_dict())
    src, src_len, tgt_in = make_batch(config)
    with torch.no_grad():
        reference = no_dropout(src, src_len, tgt_in)
        torch.testing.assert_close(model.eval()(src, src_len, tgt_in), reference, rtol=0, atol=0)
        model.train()
        torch.manual_seed(1)
        first = model(src, src_len, tgt_in)
        torch.manual_seed(2)
        second = model(src, src_len, tgt_in)
    assert (first - reference).abs().max() > 1e-3
    assert (first - second).abs().max() > 1e-3


@pytest.mark.parametrize("dropout_name,encoder_side", [
    ("embed_dropout", True), ("rnn_dropout", True), ("readout_dropout", False),
])
def test_dropout_acts_on_both_sides_where_documented(dropout_name, encoder_side):
    """embed_dropout: both embedded sequences; rnn_dropout: encoder and decoder; readout_dropout: decoder."""
    config = make_config(enc_layers=2, dec_layers=2, **{dropout_name: 0.5})
    model = make_model(config)
    src, src_len, tgt_in = make_batch(config)
    with torch.no_grad():
        state = model.eval().init_decode_state(src, src_len)
        model.train()
        memories, step_logits = [], []
        for seed in (1, 2):
            torch.manual_seed(seed)
            memories.append(model.encode(src, src_len)[0])
            step_logits.append(model.decode_step(state, tgt_in[:, 0])[0])
    assert ((memories[0] - memories[1]).abs().max() > 1e-3) == encoder_side
    assert (step_logits[0] - step_logits[1]).abs().max() > 1e-3


@pytest.mark.parametrize("style", ["bahdanau", "luong"])
def test_the_dropped_readout_is_what_feeds_the_output_and_the_next_step(style):
    config = make_config(decoder_style=style, readout_dropout=0.5)
    model = make_model(config).train()
    src, src_len, tgt_in = make_batch(config)
    with torch.no_grad():
        state = model.init_decode_state(src, src_len)
        logits, state = model.decode_step(state, tgt_in[:, 0])
        assert (state["feed"] == 0).any()  # some units dropped...
        torch.testing.assert_close(model.output(state["feed"]), logits, rtol=0, atol=0)  # ...in what fed W_o


# ------------------------------------------------------------------------------------------------ imports


def test_torch_ref_imports_no_jax():
    code = ("import sys, torch_ref; "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax', 'orbax')]; "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
