"""Pure training steps: the optax optimizer and schedule, the model's parameters, the ``TrainState`` pytree,
and ``train_step`` / ``eval_step`` / gradient accumulation over it. The loop that runs them is ``trainer``.

``train_step(state, batch) -> (state, metrics)`` is pure; the caller jits it (``donate_argnums=0`` for the
state). The model lives in the state as a nested dict of parameters and is rebuilt inside the step with
``nnx.merge(graphdef, params)``. Dropout draws from ``fold_in(state.rng, state.step)`` (micro-batch ``i``:
``fold_in(fold_in(state.rng, step), i)``), so a resumed run draws exactly what an uninterrupted one would.
``make_grad_accumulation`` gives ``zero_accumulator``, ``accumulate`` (one micro-batch's gradient of its summed
token loss) and ``apply_update`` (divide by the total token count, update): one update over k batches, the state
unchanged in structure (docs/scaling.md, "Token budgets and gradient accumulation").
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from seq2seq_jax.core.config import ModelConfig, TrainConfig
from seq2seq_jax.model.seq2seq import Seq2Seq
from seq2seq_jax.training.losses import coverage_loss, sequence_loss


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    ``params``: nested dict of parameter arrays (``nnx.state(model, nnx.Param).to_pure_dict()``);
    ``opt_state``: the optax state; ``step``: int32 scalar; ``rng``: base PRNG key data ``uint32 [2]``.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warmup to ``learning_rate``, then ``constant``, ``inverse_sqrt``, ``cosine`` or ``linear`` decay."""
    peak, warmup, total = config.learning_rate, config.warmup_steps, config.max_steps
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1), end_value=0.0)
    if config.schedule == "linear":
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                     optax.linear_schedule(peak, 0.0, max(total - warmup, 1))], [warmup])
    if config.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)],
                                    [warmup])

    def inverse_sqrt(count):
        step = jnp.maximum(count, 1).astype(jnp.float32)
        if warmup == 0:
            return peak * jnp.ones_like(step)
        return peak * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))

    return inverse_sqrt


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam or AdamW on the schedule, wrapped in ``optax.apply_if_finite`` so
    that a non-finite gradient leaves parameters and moments untouched (the loop aborts after
    ``max_nonfinite_steps`` such steps in a row)."""
    schedule = learning_rate_schedule(config)
    if config.optimizer == "adamw":
        inner = optax.adamw(schedule, config.adam_b1, config.adam_b2, config.adam_eps,
                            weight_decay=config.weight_decay)
    else:
        inner = optax.adam(schedule, config.adam_b1, config.adam_b2, config.adam_eps)
    if config.max_grad_norm > 0:
        inner = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), inner)
    # The loop stops long before optax would apply a non-finite update regardless.
    return optax.apply_if_finite(inner, max_consecutive_errors=config.max_nonfinite_steps + 1)


def model_graphdef(config: ModelConfig) -> nnx.GraphDef:
    """The graph definition of ``Seq2Seq(config)``, nothing computed: ``nnx.merge`` it with a parameter dict."""
    return _abstract_model(config)[0]


def _abstract_model(config: ModelConfig):
    return nnx.split(nnx.eval_shape(lambda: Seq2Seq(config, rngs=nnx.Rngs(0))), nnx.Param)


def abstract_params(config: ModelConfig) -> tuple[nnx.GraphDef, dict]:
    """The model's graph definition and its parameters' shapes and dtypes (a nested dict of
    ``jax.ShapeDtypeStruct``), nothing computed."""
    graphdef, abstract = _abstract_model(config)
    return graphdef, abstract.to_pure_dict()


def init_model(config: ModelConfig, seed: int) -> tuple[nnx.GraphDef, dict]:
    """The model's graph definition and freshly initialised parameters (a pure nested dict).

    Every parameter is drawn from U(-init_scale, init_scale), the distribution of the modules' own
    initializers, but on the host with numpy in a fixed (sorted path) order: the same seed gives the same
    model on every backend, and nothing has to be compiled (a jitted threefry initialisation of this
    model costs seconds of XLA compile time on CPU).
    """
    graphdef, abstract = _abstract_model(config)
    rng = np.random.default_rng(seed)
    scale = config.init_scale

    def draw(leaf):
        return jnp.asarray(rng.uniform(-scale, scale, leaf.shape).astype(np.float64), dtype=leaf.dtype)

    return graphdef, jax.tree.map(draw, abstract.to_pure_dict())


def init_train_state(params: dict, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)))


def _batch_loss(graphdef: nnx.GraphDef, params, batch: dict[str, jax.Array], dropout_rng: jax.Array,
                label_smoothing: float, coverage_loss_weight: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """``(loss_sum, tokens)`` of the model ``params`` on ``batch``, with dropout drawn from ``dropout_rng``:
    the label-smoothed cross-entropy plus, with ``coverage_loss_weight`` λ > 0, λ times the coverage loss."""
    model = nnx.merge(graphdef, params)
    logits, attention = model(batch["src"], batch["src_len"], batch["tgt_in"], dropout_rng=dropout_rng,
                              return_attention=True)
    loss_sum, tokens = sequence_loss(logits, batch["tgt_out"], batch["tgt_len"], label_smoothing)
    if coverage_loss_weight:
        loss_sum = loss_sum + coverage_loss_weight * coverage_loss(attention, batch["tgt_len"])
    return loss_sum, tokens


def _apply_gradients(state: TrainState, optimizer: optax.GradientTransformation, grads, loss_sum: jax.Array,
                     tokens: jax.Array):
    """One optimizer update with ``grads`` (of the mean token loss): ``(state, metrics)`` of a train step."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss_sum": loss_sum, "tokens": tokens, "grad_norm": optax.global_norm(grads),
               "finite": (opt_state.last_finite & jnp.isfinite(loss_sum)).astype(jnp.int32)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, label_smoothing: float,
                    coverage_loss_weight: float = 0.0):
    """Return the pure ``train_step(state, batch) -> (state, metrics)``.

    ``batch`` holds ``src [B, S]``, ``src_len [B]``, ``tgt_in [B, T]``, ``tgt_out [B, T]``, ``tgt_len [B]``.
    The gradient is that of the mean token loss (with ``coverage_loss_weight`` λ, the cross-entropy plus λ
    times the coverage loss); ``metrics`` holds ``loss_sum`` (that loss), ``tokens`` (divide on the host),
    ``grad_norm`` and ``finite`` (0 when this update was skipped).
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def mean_loss(params):
            loss_sum, tokens = _batch_loss(graphdef, params, batch, dropout_rng, label_smoothing,
                                           coverage_loss_weight)
            return loss_sum / jnp.maximum(tokens, 1.0), (loss_sum, tokens)

        (_, (loss_sum, tokens)), grads = jax.value_and_grad(mean_loss, has_aux=True)(state.params)
        return _apply_gradients(state, optimizer, grads, loss_sum, tokens)

    return train_step


def make_grad_accumulation(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                           label_smoothing: float, coverage_loss_weight: float = 0.0):
    """Return the pure ``(zero_accumulator, accumulate, apply_update)`` of one update over k micro-batches.

    The accumulator is ``{"grads": like params, "loss_sum": [], "tokens": []}``: sums over the micro-batches so
    far of the gradient of the summed token loss, the loss and the token count.
    ``zero_accumulator(params) -> acc``; ``accumulate(state, acc, batch, micro_index) -> acc`` (``batch`` as in
    ``make_train_step``, ``micro_index`` an int32 scalar); ``apply_update(state, acc) -> (state, metrics)``
    applies the gradient of the mean token loss over all the micro-batches' tokens (the accumulated gradient
    divided once by the token total, so micro-batches of different token counts weigh each token equally) and
    returns the metrics of ``train_step`` for the whole update.
    """

    def zero_accumulator(params):
        # Sums in the default float type: float32, float64 under x64 (as the loss of a float64 model).
        return {"grads": jax.tree.map(jnp.zeros_like, params), "loss_sum": jnp.zeros((), float),
                "tokens": jnp.zeros((), float)}

    def accumulate(state: TrainState, acc, batch: dict[str, jax.Array], micro_index: jax.Array):
        step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        dropout_rng = jax.random.fold_in(step_rng, micro_index)

        def summed_loss(params):
            loss_sum, tokens = _batch_loss(graphdef, params, batch, dropout_rng, label_smoothing,
                                           coverage_loss_weight)
            return loss_sum, tokens

        (loss_sum, tokens), grads = jax.value_and_grad(summed_loss, has_aux=True)(state.params)
        return {"grads": jax.tree.map(jnp.add, acc["grads"], grads),
                "loss_sum": acc["loss_sum"] + loss_sum.astype(acc["loss_sum"].dtype),
                "tokens": acc["tokens"] + tokens.astype(acc["tokens"].dtype)}

    def apply_update(state: TrainState, acc):
        tokens = jnp.maximum(acc["tokens"], 1.0)
        grads = jax.tree.map(lambda grad: (grad / tokens).astype(grad.dtype), acc["grads"])
        return _apply_gradients(state, optimizer, grads, acc["loss_sum"], acc["tokens"])

    return zero_accumulator, accumulate, apply_update


def make_eval_step(graphdef: nnx.GraphDef):
    """Return the pure ``eval_step(params, batch) -> (loss_sum, tokens)`` (no dropout, no smoothing)."""

    def eval_step(params, batch: dict[str, jax.Array]):
        model = nnx.merge(graphdef, params)
        logits = model(batch["src"], batch["src_len"], batch["tgt_in"])
        return sequence_loss(logits, batch["tgt_out"], batch["tgt_len"])

    return eval_step
