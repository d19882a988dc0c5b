"""Three training steps of the project's optimizer (optax Adam with global-norm clipping, via ``train_step``)
against ``torch.optim.Adam`` with ``clip_grad_norm_``, in float64: the cross-entropy alone, and with the
coverage loss of a coverage-attention model added."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from parity_support import TOLERANCES, check, make_batch, make_pair, precision, tiny_config

import torch_ref
from seq2seq_jax.core.config import TrainConfig
from seq2seq_jax.model.convert import from_torch_state_dict, to_torch_state_dict
from seq2seq_jax.training.steps import init_train_state, make_optimizer, make_train_step, model_graphdef

CASES = {
    "cross-entropy": (dict(decoder_style="luong", attention="general", enc_layers=2, dec_layers=2), 0.0),
    "with-coverage-loss": (dict(coverage_attention=True, copy_attention=True, src_vocab_size=13), 0.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_three_adam_steps_with_clipping_match_torch(case):
    model_fields, coverage_weight = CASES[case]
    config = tiny_config("float64", **model_fields)
    train_config = TrainConfig(optimizer="adam", learning_rate=0.002, schedule="constant", warmup_steps=0,
                               max_grad_norm=0.5, label_smoothing=0.1, coverage_loss_weight=coverage_weight)
    reference, _ = make_pair(config, "torch->flax", seed=4)
    reference.train()  # no dropout configured: train mode changes nothing but the optimizer's view
    optimizer_ref = torch.optim.Adam(reference.parameters(), lr=train_config.learning_rate,
                                     betas=(train_config.adam_b1, train_config.adam_b2), eps=train_config.adam_eps)
    params = from_torch_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()}, config)
    with precision("float64"):
        graphdef = model_graphdef(config)
        optimizer = make_optimizer(train_config)
        state = init_train_state(params, optimizer, seed=0)
        train_step = jax.jit(make_train_step(graphdef, optimizer, train_config.label_smoothing,
                                             train_config.coverage_loss_weight))
        grad_norms_clipped = 0
        for step in range(3):
            batch = make_batch(config, seed=10 + step)
            tensors = batch.torch()
            state, metrics = train_step(state, batch.arrays())

            optimizer_ref.zero_grad()
            logits, attention = reference(tensors["src"], tensors["src_len"], tensors["tgt_in"], return_attention=True)
            loss_sum, tokens = torch_ref.sequence_loss(logits, tensors["tgt_out"], tensors["tgt_len"], 0.1)
            if coverage_weight:
                loss_sum = loss_sum + coverage_weight * torch_ref.coverage_loss(attention, tensors["tgt_len"])
            (loss_sum / tokens).backward()
            norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), train_config.max_grad_norm)
            optimizer_ref.step()
            grad_norms_clipped += int(float(norm) > train_config.max_grad_norm)

            # After the first update the parameters differ by the clipping epsilon torch adds (1e-6 / norm);
            # the loss then agrees at the parameter tolerance.
            check("loss", "float64", float(metrics["loss_sum"]) / float(metrics["tokens"]),
                  float(loss_sum / tokens), tolerance=TOLERANCES["float64"]["loss" if step == 0 else "params"])
            check("grads", "float64", float(metrics["grad_norm"]), float(norm))
            updated = to_torch_state_dict(jax.tree.map(np.asarray, state.params), config)
            for name, value in reference.state_dict().items():
                check("params", "float64", updated[name], value.detach().numpy())
    assert grad_norms_clipped >= 1, "the test must exercise clipping"
