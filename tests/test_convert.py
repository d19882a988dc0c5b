"""The converters are strict, and the parity suite can fail: a dropped key, an unexpected key, a wrong shape
or dtype each raise naming the key; a converter that swaps gate blocks or leaves a square kernel untransposed
passes every shape check but fails the forward comparison."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch
from parity_support import TOLERANCES, jax_model, make_batch, make_pair, precision, relative_error, tiny_config

import torch_ref
from seq2seq_jax.model.convert import from_torch_state_dict, name_map, to_torch_state_dict

LOGITS_TOLERANCE = TOLERANCES["float64"]["logits"]
CONFIG = tiny_config("float64", attention="additive", attention_size=7, dec_hidden_size=7)


@pytest.fixture(scope="module")
def state_dict():
    reference, _ = make_pair(CONFIG, "torch->flax")
    return {k: v.detach().numpy() for k, v in reference.state_dict().items()}


def test_name_map_shapes_equal_the_model(state_dict):
    params = from_torch_state_dict(state_dict, CONFIG)
    with precision("float64"):
        model = jax_model(CONFIG, params)
    from flax import nnx

    from seq2seq_jax.model.convert import flatten_params

    model_shapes = {k: v.shape for k, v in flatten_params(nnx.state(model, nnx.Param).to_pure_dict()).items()}
    assert model_shapes == {m.flax_path: m.flax_shape for m in name_map(CONFIG)}


@pytest.mark.parametrize("mutation", ["missing", "unexpected", "shape", "dtype"])
def test_from_torch_is_strict(state_dict, mutation):
    broken = dict(state_dict)
    if mutation == "missing":
        del broken["decoder.bias_hh_l0"]
        key = "decoder.bias_hh_l0"
    elif mutation == "unexpected":
        broken["encoder.weight_ih_l9"] = np.zeros((3, 3))
        key = "encoder.weight_ih_l9"
    elif mutation == "shape":
        broken["readout.weight"] = broken["readout.weight"][:, :-1]
        key = "readout.weight"
    else:
        broken["output.bias"] = broken["output.bias"].astype(np.float32)
        key = "output.bias"
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        from_torch_state_dict(broken, CONFIG)


def test_to_torch_names_every_offender(state_dict):
    params = from_torch_state_dict(state_dict, CONFIG)
    del params["attention"]["v"]
    params["encoder"]["layers"][0]["fwd"]["w_hh"] = np.zeros((2, 2))
    params["extra"] = {"kernel": np.zeros(1)}
    with pytest.raises(ValueError) as error:
        to_torch_state_dict(params, CONFIG)
    for key in ("attention.v.kernel", "encoder.layers.0.fwd.w_hh", "extra.kernel"):
        assert key in str(error.value)


def test_tied_output_must_equal_embedding():
    config = tiny_config("float64", tie_output_embedding=True)
    reference, _ = make_pair(config, "torch->flax")
    state_dict = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    state_dict["output.weight"] = state_dict["output.weight"] + 1.0
    with pytest.raises(ValueError, match="output.weight"):
        from_torch_state_dict(state_dict, config)


def test_tied_source_embedding_must_equal_target_embedding():
    config = tiny_config("float64", tie_output_embedding=True, tie_src_tgt_embedding=True)
    reference, _ = make_pair(config, "torch->flax")
    state_dict = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    assert {"src_embed.weight", "tgt_embed.weight", "output.weight"} <= set(state_dict)
    state_dict["src_embed.weight"] = state_dict["src_embed.weight"] + 1.0
    with pytest.raises(ValueError, match=r"src_embed\.weight differs .*model\.tie_src_tgt_embedding"):
        from_torch_state_dict(state_dict, config)
    del state_dict["src_embed.weight"]
    with pytest.raises(ValueError, match=r"missing keys: \['src_embed\.weight'\]"):
        from_torch_state_dict(state_dict, config)


def test_three_way_tying_keeps_one_embedding_matrix():
    """Output tying drops W_o; sharing the source embedding drops one more [V, E] matrix, in both frameworks;
    the converted state_dict names the one matrix three times, as PyTorch does."""
    from flax import nnx

    untied = tiny_config("float64", tie_output_embedding=True, src_vocab_size=13, src_embed_size=6)
    shared = tiny_config("float64", tie_output_embedding=True, tie_src_tgt_embedding=True)
    assert dataclasses.replace(untied, tie_src_tgt_embedding=True) == shared
    counts = {}
    for name, config in (("untied", untied), ("shared", shared)):
        reference, model = make_pair(config, "flax->torch")
        with precision("float64"):
            params = nnx.state(model, nnx.Param).to_pure_dict()
            counts[name] = sum(np.size(leaf) for leaf in jax.tree.leaves(params))
        assert counts[name] == sum(p.numel() for p in reference.parameters())
    assert counts["untied"] - counts["shared"] == shared.tgt_vocab_size * shared.tgt_embed_size
    assert "src_embed" not in params and not any(m.flax_path.startswith("src_embed") for m in name_map(shared))
    state_dict = to_torch_state_dict(jax.tree.map(np.asarray, params), shared)
    for key in ("src_embed.weight", "output.weight"):
        np.testing.assert_array_equal(state_dict[key], state_dict["tgt_embed.weight"], err_msg=key)
    assert reference.src_embed.weight is reference.tgt_embed.weight is reference.output.weight


def _forward_error(state_dict, reference) -> float:
    """Load ``state_dict`` into JAX and compare logits against ``reference`` (the correct weights)."""
    batch = make_batch(CONFIG)
    with precision("float64"):
        model = jax_model(CONFIG, from_torch_state_dict(state_dict, CONFIG))
        logits = np.asarray(model(batch.src, batch.src_len, batch.tgt_in))
    tensors = batch.torch()
    with torch.no_grad():
        ref_logits = reference(tensors["src"], tensors["src_len"], tensors["tgt_in"]).numpy()
    return relative_error(logits, ref_logits)


def test_swapped_gate_order_fails_the_forward_comparison(state_dict):
    reference = torch_ref.Seq2Seq(CONFIG).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    assert _forward_error(state_dict, reference) <= LOGITS_TOLERANCE
    swapped = dict(state_dict)
    for key in ("encoder.weight_ih_l0", "encoder.weight_hh_l0", "encoder.bias_ih_l0", "encoder.bias_hh_l0"):
        i, f, g, o = np.split(state_dict[key], 4, axis=0)
        swapped[key] = np.concatenate([f, i, g, o], axis=0)  # a converter reading gates as f, i, g, o
    assert _forward_error(swapped, reference) > LOGITS_TOLERANCE


def test_untransposed_square_kernel_fails_the_forward_comparison(state_dict):
    assert state_dict["attention.query_proj.weight"].shape == (7, 7)  # square: shape checks cannot catch it
    reference = torch_ref.Seq2Seq(CONFIG).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    untransposed = dict(state_dict)
    untransposed["attention.query_proj.weight"] = state_dict["attention.query_proj.weight"].T.copy()
    assert _forward_error(untransposed, reference) > LOGITS_TOLERANCE
