"""Parity of the whole model: teacher-forced logits and loss gradients over a grid of configurations, in
float64 and float32, with weights converted in both directions; padding invariance; round trips."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from parity_support import (
    check,
    jax_model,
    jax_params,
    make_batch,
    make_pair,
    precision,
    tiny_config,
    torch_numpy_state_dict,
)

import torch_ref
from seq2seq_jax.model.convert import from_torch_state_dict, to_torch_state_dict
from seq2seq_jax.training.losses import coverage_loss, sequence_loss

LABEL_SMOOTHING = 0.1
COVERAGE_WEIGHT = 0.7


def _grid():
    """Every (score, style, bridge) combination; directions, layer counts and tying vary across them so each
    value of each axis is covered several times."""
    cases = []
    for index, (score, style, bridge) in enumerate(
            itertools.product(("additive", "dot", "general"), ("bahdanau", "luong"), ("zero", "last", "dense"))):
        layers = 1 + (index // 2) % 2
        cases.append(dict(attention=score, decoder_style=style, bridge=bridge, bidirectional=index % 2 == 0,
                          enc_layers=layers, dec_layers=1 + (index // 3) % 2, tie_output_embedding=index % 3 == 1))
    return cases


# Copy attention (one joint vocabulary, so equal vocabulary sizes) in both decoder styles, tied and untied.
COPY_CASES = [
    dict(attention="additive", decoder_style="bahdanau", bridge="dense", bidirectional=True, enc_layers=1,
         dec_layers=1, tie_output_embedding=False),
    dict(attention="general", decoder_style="luong", bridge="zero", bidirectional=False, enc_layers=2,
         dec_layers=2, tie_output_embedding=True),
    dict(attention="dot", decoder_style="bahdanau", bridge="last", bidirectional=True, enc_layers=1,
         dec_layers=1, tie_output_embedding=True),
]
# One embedding matrix for source and target (tie_src_tgt_embedding), with and without the output projection
# (three-way and two-way tying); the shared matrix's gradient is the sum over the encoder, decoder and output.
SHARED_CASES = [
    dict(attention="additive", decoder_style="bahdanau", bridge="dense", bidirectional=True, enc_layers=2,
         dec_layers=1, tie_output_embedding=True),
    dict(attention="general", decoder_style="luong", bridge="zero", bidirectional=False, enc_layers=1,
         dec_layers=2, tie_output_embedding=True),
    dict(attention="dot", decoder_style="bahdanau", bridge="last", bidirectional=True, enc_layers=1,
         dec_layers=1, tie_output_embedding=False),
    dict(attention="additive", decoder_style="bahdanau", bridge="dense", bidirectional=True, enc_layers=1,
         dec_layers=1, tie_output_embedding=True, copy_attention=True),
]
# Coverage attention (additive only): both decoder styles, with copy attention and without.
COVERAGE_CASES = [
    dict(attention="additive", decoder_style="bahdanau", bridge="dense", bidirectional=True, enc_layers=1,
         dec_layers=1, tie_output_embedding=True, copy_attention=True, src_vocab_size=13),
    dict(attention="additive", decoder_style="luong", bridge="zero", bidirectional=False, enc_layers=2,
         dec_layers=2, tie_output_embedding=False),
]
GRID = (_grid() + [dict(case, copy_attention=True, src_vocab_size=13) for case in COPY_CASES]
        + [dict(case, tie_src_tgt_embedding=True) for case in SHARED_CASES]
        + [dict(case, coverage_attention=True) for case in COVERAGE_CASES])
THREE_WAY = GRID.index(dict(SHARED_CASES[0], tie_src_tgt_embedding=True))
COVERAGE = GRID.index(dict(COVERAGE_CASES[0], coverage_attention=True))


def _case_id(case):
    return "-".join([case["attention"], case["decoder_style"], case["bridge"],
                     "bi" if case["bidirectional"] else "uni", f"enc{case['enc_layers']}",
                     f"dec{case['dec_layers']}", "tied" if case["tie_output_embedding"] else "untied"]
                    + (["shared-src"] if case.get("tie_src_tgt_embedding") else [])
                    + (["copy"] if case.get("copy_attention") else [])
                    + (["coverage"] if case.get("coverage_attention") else []))


def _jax_loss_and_grads(model_config, params, batch):
    """Logits, the mean token loss and its gradients; with coverage attention the loss adds
    ``COVERAGE_WEIGHT`` times the coverage loss."""
    def mean_loss(params):
        model = jax_model(model_config, params)
        logits, attention = model(jnp.asarray(batch.src), jnp.asarray(batch.src_len), jnp.asarray(batch.tgt_in),
                                  return_attention=True)
        loss_sum, tokens = sequence_loss(logits, jnp.asarray(batch.tgt_out), jnp.asarray(batch.tgt_len),
                                         LABEL_SMOOTHING)
        if model_config.coverage_attention:
            loss_sum = loss_sum + COVERAGE_WEIGHT * coverage_loss(attention, jnp.asarray(batch.tgt_len))
        return loss_sum / tokens, logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))(params)
    return np.asarray(logits), float(loss), grads


def _torch_loss_and_grads(reference, batch):
    tensors = batch.torch()
    reference.zero_grad()
    logits, attention = reference(tensors["src"], tensors["src_len"], tensors["tgt_in"], return_attention=True)
    loss_sum, tokens = torch_ref.sequence_loss(logits, tensors["tgt_out"], tensors["tgt_len"], LABEL_SMOOTHING)
    if reference.config.coverage_attention:
        loss_sum = loss_sum + COVERAGE_WEIGHT * torch_ref.coverage_loss(attention, tensors["tgt_len"])
    loss = loss_sum / tokens
    loss.backward()
    grads = {name: p.grad.detach().numpy() for name, p in reference.named_parameters()}
    return logits.detach().numpy(), loss.item(), grads


# float64 on the whole grid; float32 on every third configuration (it checks rounding, not structure).
GRID_CASES = [(case, "float64") for case in GRID] + [(case, "float32") for case in GRID[::3]]


@pytest.mark.parametrize(("case", "dtype"), GRID_CASES,
                         ids=[f"{_case_id(case)}-{dtype}" for case, dtype in GRID_CASES])
def test_logits_and_gradients_match(case, dtype):
    config = tiny_config(dtype, **case)
    direction = "torch->flax" if GRID.index(case) % 2 else "flax->torch"
    batch = make_batch(config, seed=GRID.index(case))
    with precision(dtype):
        reference, model = make_pair(config, direction, seed=GRID.index(case))
        logits, loss, grads = _jax_loss_and_grads(config, jax_params(model), batch)
        torch_grads = to_torch_state_dict(jax.tree.map(np.asarray, grads), config)
    ref_logits, ref_loss, ref_grads = _torch_loss_and_grads(reference, batch)
    check("logits", dtype, logits, ref_logits)
    check("loss", dtype, loss, ref_loss)
    assert set(ref_grads) <= set(torch_grads)
    if dtype == "float64":
        for name, ref_grad in ref_grads.items():
            check("grads", dtype, torch_grads[name], ref_grad)
    else:
        names = sorted(ref_grads)
        check("grads", dtype, np.concatenate([torch_grads[name].ravel() for name in names]),
              np.concatenate([ref_grads[name].ravel() for name in names]))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_loss_matches(dtype, label_smoothing):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 6, 13)).astype(dtype)
    targets = rng.integers(0, 13, (4, 6))
    lengths = np.array([6, 1, 3, 0])
    with precision(dtype):
        loss_sum, tokens = sequence_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(lengths),
                                         label_smoothing)
    ref_sum, ref_tokens = torch_ref.sequence_loss(torch.from_numpy(logits), torch.from_numpy(targets),
                                                  torch.from_numpy(lengths), label_smoothing)
    assert float(tokens) == int(ref_tokens) == 10
    check("loss", dtype, float(loss_sum), float(ref_sum))


@pytest.mark.parametrize("case", [GRID[0], GRID[7], GRID[14], GRID[18], GRID[THREE_WAY], GRID[COVERAGE]],
                         ids=_case_id)
def test_padding_changes_no_real_output(case):
    config = tiny_config("float32", **case)
    batch = make_batch(config)
    longer = batch.padded(extra_src=3, extra_tgt=2)
    reference, model = make_pair(config, "flax->torch")
    with precision("float32"):
        short = np.asarray(model(batch.src, batch.src_len, batch.tgt_in))
        long = np.asarray(model(longer.src, longer.src_len, longer.tgt_in))
    with torch.no_grad():
        ref_short = reference(*[batch.torch()[k] for k in ("src", "src_len", "tgt_in")]).numpy()
        ref_long = reference(*[longer.torch()[k] for k in ("src", "src_len", "tgt_in")]).numpy()
    for row, length in enumerate(batch.tgt_len):
        check("padding", "float32", long[row, :length], short[row, :length])
        check("padding", "float32", ref_long[row, :length], ref_short[row, :length])


@pytest.mark.parametrize("case", [GRID[1], GRID[4], GRID[17], GRID[19], GRID[THREE_WAY], GRID[COVERAGE]],
                         ids=_case_id)
def test_round_trips(case):
    config = tiny_config("float32", **case)
    with precision("float32"):
        _, model = make_pair(config, "flax->torch", seed=5)
    params = jax.tree.map(np.asarray, jax_params(model))
    back = from_torch_state_dict(to_torch_state_dict(params, config), config)
    for (path, original), (_, restored) in zip(jax.tree_util.tree_leaves_with_path(params),
                                                jax.tree_util.tree_leaves_with_path(back), strict=True):
        assert original.dtype == restored.dtype and np.array_equal(original, restored), path

    reference, _ = make_pair(config, "torch->flax", seed=6)
    state_dict = torch_numpy_state_dict(reference)
    again = torch_ref.Seq2Seq(config).eval()
    again.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in to_torch_state_dict(
        from_torch_state_dict(state_dict, config), config).items()}, strict=True)
    batch = make_batch(config).torch()
    with torch.no_grad():
        first = reference(batch["src"], batch["src_len"], batch["tgt_in"])
        second = again(batch["src"], batch["src_len"], batch["tgt_in"])
    assert torch.equal(first, second)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_coverage_loss_matches(dtype):
    """Against torch_ref's step loop, and against a case worked by hand."""
    rng = np.random.default_rng(4)
    attention = rng.dirichlet(np.ones(5), size=(3, 6)).astype(dtype)  # [B, T, S], rows sum to 1
    lengths = np.array([6, 2, 0])
    with precision(dtype):
        loss = coverage_loss(jnp.asarray(attention), jnp.asarray(lengths))
    reference = torch_ref.coverage_loss(torch.from_numpy(attention), torch.from_numpy(lengths))
    check("loss", dtype, float(loss), float(reference))
    # Step 1 reads where nothing was read: 0. Step 2 reads 0.5 / 0.5 over coverage 1 / 0: min = 0.5. Step 3 (past
    # the length) does not count.
    worked = np.array([[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]], dtype)
    with precision(dtype):
        assert float(coverage_loss(jnp.asarray(worked), jnp.asarray([2]))) == pytest.approx(0.5)


def test_coverage_changes_the_attention_from_the_second_step():
    """The coverage term is live: with ``coverage_proj`` zeroed the first step (coverage 0) is unchanged and
    every later step's attention differs."""
    config = tiny_config("float64", **GRID[COVERAGE])
    batch = make_batch(config, src_lens=(5, 4), tgt_lens=(4, 4))
    with precision("float64"):
        _, model = make_pair(config, "flax->torch", seed=3)
        params = jax_params(model)
        zeroed = jax.tree.map(lambda leaf: leaf, params)
        zeroed["attention"]["coverage_proj"]["kernel"] = jnp.zeros_like(params["attention"]["coverage_proj"]["kernel"])
        inputs = (jnp.asarray(batch.src), jnp.asarray(batch.src_len), jnp.asarray(batch.tgt_in))
        _, attention = model(*inputs, return_attention=True)
        _, without = jax_model(config, zeroed)(*inputs, return_attention=True)
    np.testing.assert_allclose(attention[:, 0], without[:, 0], rtol=0, atol=1e-15)
    for step in range(1, 4):
        assert np.abs(np.asarray(attention[:, step] - without[:, step])).max() > 1e-5, step
