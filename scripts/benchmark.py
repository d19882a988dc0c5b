"""Side-by-side CPU benchmark: ``seq2seq_jax`` against ``torch_ref``, on this machine, in one run.

    python scripts/benchmark.py [--out benchmarks] [--repeats 5] [--threads N] [--profile] [--quick]

Both sides get the same configuration, the same initial weights (converted with ``seq2seq_jax.model.convert``), the
same batches and the same number of threads (the process is pinned to ``--threads`` cores, default all, which
sizes XLA's thread pool; ``torch.set_num_threads`` gets the same number). Every measurement is warmed up first
(JAX compiles, torch runs once), then JAX and torch_ref alternate (A B A B ...) for ``--repeats`` (>= 5) rounds,
so a change of machine load hits both sides alike, and medians are reported. Results go to
``OUT/results.json`` (every raw sample) and ``OUT/results.md`` (the table).

Measured:
1. Training: target tokens/s (real ``tgt_len`` tokens, padding excluded) of one optimizer step -- JAX: the
   jitted ``seq2seq_jax.training.steps.make_train_step`` with the state donated; torch: ``torch_ref.Seq2Seq``,
   ``torch_ref.sequence_loss``, ``torch.optim.Adam``, ``clip_grad_norm_`` -- for the ``main`` config (embedding
   256, hidden 512 bidirectional encoder / 512 decoder, attention and readout 512, vocabulary 8000, batch 64)
   and the ``small`` one (hidden 256, attention and readout 256, batch 32). Sentences have 20-30 tokens
   (EOS included) on both sides, batched by ``seq2seq_jax.training.batch_iterator.BatchIterator`` with bucket
   width 16, so every batch is padded to 32 x 32 (one compiled program).
2. Model FLOPs utilization (MFU): the analytic model FLOPs of one step (below) divided by the step time, over
   the float32 matmul peak: the faster of JAX's and torch's median 2048 x 2048 x 2048 matmul, measured in the
   same rounds as the training steps.
3. Decoding (main config, random weights, ``DecodeConfig`` defaults: max_len = ceil(1.5 * src_len + 10),
   length penalty 0): beam-5 latency of single sentences (batch 1) and beam-5 throughput of a batch of 64
   sentences (sentences/s); greedy likewise. JAX: ``model.search_state`` + ``seq2seq_jax.decoding.search``
   ``beam_search`` / ``greedy_search`` in one ``jax.jit`` (what ``Translator`` compiles); torch:
   ``torch_ref.search``. Sources are padded to 32 on both sides. The outputs of both are compared
   (a random model's near-uniform distributions make rare float32 near-ties possible).
4. Compilation: the JAX train step's trace + compile time for the first step of each config, and the number
   of programs ``jax.jit`` compiles over one epoch of ``BatchIterator`` batches (small config, 256 sentences of
   20-30 tokens, batch 32, bucket width 8: the default bucketing).

Model FLOPs (``model_flops``): 2*m*n*k for every matmul the model's forward pass does on the padded batch
``[B, S]`` x ``[B, T]``, times 3 for training (the backward pass does two matmuls per forward matmul):
- encoder, per layer and direction: input projection ``2*B*S*in*4H`` + recurrence ``2*B*S*H*4H``;
- dense bridge ``2 * 2*B*M*(L*H_dec)``; attention keys (additive ``2*B*S*M*A``, general ``2*B*S*M*H_dec``);
- per decoder step: attention (additive: query ``2*B*H_dec*A`` + scores ``2*B*S*A``; dot/general: scores
  ``2*B*S*K``) + context ``2*B*S*M``; LSTM layer 0 ``2*B*(E+feed)*4H + 2*B*H*4H``, other layers
  ``2 * 2*B*H*4H``; readout ``2*B*in_r*R``; output ``2*B*R*V``.
Elementwise work (LSTM gates, tanh, softmax, the loss) and the optimizer are not counted. ``mfu_real_tokens``
counts only real (unpadded) positions instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {  # name -> (threshold, what it is)
    "train_main_ratio": (1.3, "training tokens/s, JAX / torch_ref (main config)"),
    "mfu_main": (0.60, "JAX training MFU (main config)"),
    "beam1_latency_ratio": (3.0, "beam-5 single-sentence latency, torch_ref / JAX"),
    "beam64_throughput_ratio": (1.2, "beam-5 batch-64 sentences/s, JAX / torch_ref"),
    "compile_main_s": (15.0, "first-step compile time, seconds (main config)"),
}
PEAK_SIZE = 2048


# --------------------------------------------------------------------------------------------------------
# Configurations and data
# --------------------------------------------------------------------------------------------------------


def model_configs(quick: bool):
    from seq2seq_jax.core.config import ModelConfig

    vocab = 500 if quick else 8000
    common = dict(src_vocab_size=vocab, tgt_vocab_size=vocab, bidirectional=True, attention="additive",
                  decoder_style="bahdanau", bridge="dense", enc_layers=1, dec_layers=1)
    if quick:
        main = ModelConfig(src_embed_size=32, tgt_embed_size=32, enc_hidden_size=64, dec_hidden_size=64,
                           attention_size=64, readout_size=64, **common)
        small = ModelConfig(src_embed_size=32, tgt_embed_size=32, enc_hidden_size=32, dec_hidden_size=32,
                            attention_size=32, readout_size=32, **common)
        return {"main": (main, 16), "small": (small, 8)}
    main = ModelConfig(src_embed_size=256, tgt_embed_size=256, enc_hidden_size=512, dec_hidden_size=512,
                       attention_size=512, readout_size=512, **common)
    small = ModelConfig(src_embed_size=256, tgt_embed_size=256, enc_hidden_size=256, dec_hidden_size=256,
                        attention_size=256, readout_size=256, **common)
    return {"main": (main, 64), "small": (small, 32)}


def synthetic_examples(count: int, vocab: int, seed: int, min_len: int = 20, max_len: int = 30):
    """``count`` random pairs whose source (EOS included) and target (EOS included) have min..max tokens."""
    import numpy as np

    from seq2seq_jax.core.encoding import Example

    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        src_len, tgt_len = rng.integers(min_len, max_len + 1, 2)
        src = np.append(rng.integers(4, vocab, src_len - 1), 3).astype(np.int32)
        examples.append(Example(src, rng.integers(4, vocab, tgt_len - 1).astype(np.int32)))
    return examples


def model_flops(config, batch: int, src_len: float, tgt_len: float) -> float:
    """Forward-pass matmul FLOPs of the model on ``[batch, src_len]`` -> ``[batch, tgt_len]`` (docstring)."""
    B, S, T = batch, src_len, tgt_len
    D = config.num_directions
    H, Hd, M = config.enc_hidden_size, config.dec_hidden_size, config.memory_size
    E, A, R, V = config.tgt_embed_size, config.attention_size, config.readout_size, config.tgt_vocab_size
    flops = 0.0
    in_size = config.src_embed_size
    for _ in range(config.enc_layers):
        flops += D * (2 * B * S * in_size * 4 * H + 2 * B * S * H * 4 * H)
        in_size = M
    if config.bridge == "dense":
        flops += 2 * (2 * B * M * config.dec_layers * Hd)
    if config.attention == "additive":
        flops += 2 * B * S * M * A
        step = 2 * B * Hd * A + 2 * B * S * A
    elif config.attention == "general":
        flops += 2 * B * S * M * Hd
        step = 2 * B * S * Hd
    else:
        step = 2 * B * S * M
    step += 2 * B * S * M  # context
    feed = M if config.decoder_style == "bahdanau" else R
    step += 2 * B * (E + feed) * 4 * Hd + 2 * B * Hd * 4 * Hd
    step += (config.dec_layers - 1) * 2 * (2 * B * Hd * 4 * Hd)
    readout_in = Hd + M + E if config.decoder_style == "bahdanau" else M + Hd
    step += 2 * B * readout_in * R + 2 * B * R * V
    return flops + T * step


# --------------------------------------------------------------------------------------------------------
# Measurement helpers
# --------------------------------------------------------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def median(values):
    return statistics.median(values) if values else float("nan")


def interleaved(jax_fn, torch_fn, inputs, on_round=None) -> dict:
    """Time ``jax_fn(x)`` then ``torch_fn(x)`` for each ``x`` of ``inputs`` (A B A B ...: a change of load hits
    both sides alike). ``on_round(index, samples)`` runs after each pair. Returns ``{"jax_s", "torch_s": [seconds],
    "jax_out", "torch_out": [outputs]}``."""
    samples = {"jax_s": [], "torch_s": [], "jax_out": [], "torch_out": []}
    for index, x in enumerate(inputs):
        for side, fn in (("jax", jax_fn), ("torch", torch_fn)):
            start = now()
            samples[f"{side}_out"].append(fn(x))
            samples[f"{side}_s"].append(now() - start)
        if on_round is not None:
            on_round(index, samples)
    return samples


class Peak:
    """float32 matmul GFLOP/s of JAX and torch on ``PEAK_SIZE``^3, sampled between the benchmark's rounds."""

    def __init__(self):
        import jax
        import jax.numpy as jnp
        import numpy as np
        import torch

        rng = np.random.default_rng(0)
        a = rng.random((PEAK_SIZE, PEAK_SIZE), dtype=np.float32)
        b = rng.random((PEAK_SIZE, PEAK_SIZE), dtype=np.float32)
        self.jax_a, self.jax_b = jnp.asarray(a), jnp.asarray(b)
        self.jax_mm = jax.jit(jnp.matmul)
        self.torch_a, self.torch_b = torch.from_numpy(a), torch.from_numpy(b)
        self.samples = {"jax": [], "torch": []}
        self.sample(calls=2, record=False)

    def sample(self, calls: int = 3, record: bool = True) -> None:
        import torch

        flops = 2.0 * PEAK_SIZE ** 3
        for _ in range(calls):
            start = now()
            self.jax_mm(self.jax_a, self.jax_b).block_until_ready()
            jax_s = now() - start
            start = now()
            torch.mm(self.torch_a, self.torch_b)
            torch_s = now() - start
            if record:
                self.samples["jax"].append(flops / jax_s / 1e9)
                self.samples["torch"].append(flops / torch_s / 1e9)

    def gflops(self) -> dict:
        jax_peak, torch_peak = median(self.samples["jax"]), median(self.samples["torch"])
        return {"jax_gflops": jax_peak, "torch_gflops": torch_peak, "peak_gflops": max(jax_peak, torch_peak),
                "samples": self.samples}


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------


class JaxTrainer:
    def __init__(self, model_config, train_config, seed: int):
        import jax

        from seq2seq_jax.training.steps import init_model, init_train_state, make_optimizer, make_train_step

        self.graphdef, params = init_model(model_config, seed)
        self.numpy_params = jax.tree.map(lambda x: jax.device_get(x).copy(), params)
        optimizer = make_optimizer(train_config)
        self.state = init_train_state(params, optimizer, seed)
        self.step_fn = jax.jit(make_train_step(self.graphdef, optimizer, train_config.label_smoothing),
                               donate_argnums=0)
        self.compiled = None

    def compile(self, batch) -> dict:
        import jax.numpy as jnp

        device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
        start = now()
        lowered = self.step_fn.lower(self.state, device_batch)
        traced = now() - start
        start = now()
        self.compiled = lowered.compile()
        compiled = now() - start
        start = now()
        first_loss = self.step(batch)
        return {"trace_s": traced, "compile_s": compiled, "trace_compile_s": traced + compiled,
                "first_run_s": now() - start, "first_loss": first_loss}

    def step(self, batch) -> float:
        import jax
        import jax.numpy as jnp

        device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
        self.state, metrics = self.compiled(self.state, device_batch)
        metrics = jax.device_get(metrics)
        return float(metrics["loss_sum"] / max(metrics["tokens"], 1.0))


class TorchTrainer:
    def __init__(self, model_config, train_config, numpy_params):
        import numpy as np
        import torch

        import torch_ref
        from seq2seq_jax.model.convert import to_torch_state_dict

        self.model = torch_ref.Seq2Seq(model_config)
        state_dict = to_torch_state_dict(numpy_params, model_config)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_config.learning_rate,
                                          betas=(train_config.adam_b1, train_config.adam_b2),
                                          eps=train_config.adam_eps)
        self.config = train_config

    def step(self, batch) -> float:
        import torch

        import torch_ref

        tensors = {k: torch.from_numpy(v.astype("int64")) for k, v in batch.items()}
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(tensors["src"], tensors["src_len"], tensors["tgt_in"])
        loss_sum, tokens = torch_ref.sequence_loss(logits, tensors["tgt_out"], tensors["tgt_len"],
                                                   self.config.label_smoothing)
        (loss_sum / tokens.clamp(min=1)).backward()
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return float(loss_sum.detach() / tokens.clamp(min=1))


def bench_training(name, model_config, batch_size, args, peak, log) -> tuple[dict, JaxTrainer, list]:
    from seq2seq_jax.core.batching import BatchPolicy
    from seq2seq_jax.core.config import TrainConfig
    from seq2seq_jax.training.batch_iterator import BatchIterator

    train_config = TrainConfig(schedule="constant", warmup_steps=0, learning_rate=1e-3, max_grad_norm=1.0)
    examples = synthetic_examples(batch_size * 8, model_config.tgt_vocab_size, seed=1)
    iterator = BatchIterator(examples, BatchPolicy(batch_size, bucket_width=16), seed=0)
    batches = [next(iterator).arrays() for _ in range(iterator.batches_per_epoch)]
    shapes = {(b["src"].shape, b["tgt_in"].shape) for b in batches}
    assert len(shapes) == 1, shapes
    src_shape, tgt_shape = shapes.pop()

    jax_trainer = JaxTrainer(model_config, train_config, seed=0)
    torch_trainer = TorchTrainer(model_config, train_config, jax_trainer.numpy_params)
    compile_info = jax_trainer.compile(batches[0])
    torch_first_loss = torch_trainer.step(batches[0])
    log(f"[{name}] JAX trace+compile {compile_info['trace_compile_s']:.1f}s; first-step loss JAX "
        f"{compile_info['first_loss']:.6f} torch {torch_first_loss:.6f}")

    def progress(index, timed):
        peak.sample()  # the matmul peak is measured in the same rounds, between them
        log(f"[{name}] round {index + 1}/{args.repeats}: JAX {timed['jax_s'][-1]:.3f}s "
            f"torch {timed['torch_s'][-1]:.3f}s")

    rounds = [batches[(index + 1) % len(batches)] for index in range(args.repeats)]
    timed = interleaved(jax_trainer.step, torch_trainer.step, rounds, progress)
    samples = {"jax_s": timed["jax_s"], "torch_s": timed["torch_s"],
               "tokens": [int(batch["tgt_len"].sum()) for batch in rounds]}

    jax_tps = [n / s for n, s in zip(samples["tokens"], samples["jax_s"], strict=True)]
    torch_tps = [n / s for n, s in zip(samples["tokens"], samples["torch_s"], strict=True)]
    batch_rows, src_size = src_shape
    tgt_size = tgt_shape[1]
    padded_flops = 3 * model_flops(model_config, batch_rows, src_size, tgt_size)
    real_flops = [3 * model_flops(model_config, 1, float(b["src_len"].sum()) / batch_rows,
                                  float(b["tgt_len"].sum()) / batch_rows) * batch_rows for b in batches]
    result = {
        "config": dataclasses.asdict(model_config),
        "batch_size": batch_size,
        "padded_shape": {"src": list(src_shape), "tgt": list(tgt_shape)},
        "compile": compile_info,
        "torch_first_loss": torch_first_loss,
        "samples": samples,
        "jax_tokens_per_s": median(jax_tps),
        "torch_tokens_per_s": median(torch_tps),
        "ratio": median(jax_tps) / median(torch_tps),
        "jax_step_s": median(samples["jax_s"]),
        "torch_step_s": median(samples["torch_s"]),
        "train_flops_per_step_padded": padded_flops,
        "train_flops_per_step_real": statistics.mean(real_flops),
    }
    return result, jax_trainer, batches


def add_mfu(result: dict, peak_gflops: float) -> None:
    for side in ("jax", "torch"):
        gflops = result["train_flops_per_step_padded"] / result[f"{side}_step_s"] / 1e9
        result[f"{side}_model_gflops"] = gflops
        result[f"{side}_mfu"] = gflops / peak_gflops
        result[f"{side}_mfu_real_tokens"] = (result["train_flops_per_step_real"] / result[f"{side}_step_s"] / 1e9
                                             / peak_gflops)


def bench_compiled_programs(model_config, batch_size, log) -> dict:
    """Run one epoch of default-bucketed batches through the standard jitted step; count its programs."""
    import jax
    import jax.numpy as jnp

    from seq2seq_jax.core.batching import BatchPolicy
    from seq2seq_jax.core.config import TrainConfig
    from seq2seq_jax.training.batch_iterator import BatchIterator
    from seq2seq_jax.training.steps import init_model, init_train_state, make_optimizer, make_train_step

    examples = synthetic_examples(256, model_config.tgt_vocab_size, seed=2)
    iterator = BatchIterator(examples, BatchPolicy(batch_size, bucket_width=8), seed=0)
    train_config = TrainConfig(schedule="constant", warmup_steps=0, learning_rate=1e-3)
    graphdef, params = init_model(model_config, 0)
    optimizer = make_optimizer(train_config)
    state = init_train_state(params, optimizer, 0)
    step = jax.jit(make_train_step(graphdef, optimizer, 0.0), donate_argnums=0)
    start = now()
    epoch = iterator.epoch
    steps = 0
    while iterator.epoch == epoch:
        batch = {k: jnp.asarray(v) for k, v in next(iterator).arrays().items()}
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        steps += 1
    elapsed = now() - start
    programs = step._cache_size()
    log(f"[epoch] {steps} batches, {programs} compiled programs, {elapsed:.1f}s")
    return {"batches": steps, "compiled_programs": programs, "padded_shapes": sorted(iterator.padded_shapes()),
            "epoch_s_incl_compile": elapsed, "bucket_width": 8, "batch_size": batch_size,
            "sentences": len(examples)}


# --------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------


def decode_sources(vocab: int, count: int, seed: int, width: int):
    import numpy as np

    examples = synthetic_examples(count, vocab, seed)
    src = np.zeros((count, width), np.int32)
    src_len = np.zeros(count, np.int32)
    for row, example in enumerate(examples):
        src[row, : len(example.src)] = example.src
        src_len[row] = len(example.src)
    return src, src_len


class JaxSearch:
    """The search ``seq2seq_jax.decoding.translate.Translator`` runs (``make_search``), compiled ahead of time per input
    shape."""

    def __init__(self, graphdef, params, beam_size: int, decode_config, bound: int):
        import jax

        from seq2seq_jax.decoding.translate import make_search

        config = dataclasses.replace(decode_config, beam_size=beam_size, n_best=1)
        self.params = params
        self.fn = jax.jit(make_search(graphdef, config, bound, with_attention=False))
        self.rng = jax.random.key(config.seed)
        self.compiled = {}

    def compile(self, src, src_len) -> float:
        """Compile ahead of time for this input shape; returns the seconds it took."""
        start = now()
        self.compiled[src.shape] = self.fn.lower(self.params, src, src_len, self.rng, None, None).compile()
        return now() - start

    def __call__(self, src, src_len):
        import jax

        tokens, lengths, _, _ = jax.device_get(self.compiled[src.shape](self.params, src, src_len, self.rng, None,
                                                                        None))
        return [list(tokens[row, 0, : lengths[row, 0]]) for row in range(tokens.shape[0])]


class TorchSearch:
    def __init__(self, model, beam_size: int, decode_config, bound: int):
        self.model = model
        self.beam_size = beam_size
        self.config = decode_config
        self.bound = bound

    def __call__(self, src, src_len):
        import torch

        from torch_ref import search

        src_t = torch.from_numpy(src.astype("int64"))
        len_t = torch.from_numpy(src_len.astype("int64"))
        settings = dataclasses.replace(self.config, beam_size=self.beam_size, n_best=1)
        with torch.no_grad():
            state = self.model.init_decode_state(src_t, len_t)
            search_fn = search.greedy_search if self.beam_size == 1 else search.beam_search
            result = search_fn(self.model.decode_step, state, len_t, settings, max_len_bound=self.bound)
        return [result.tokens[row, 0, : int(result.lengths[row, 0])].tolist() for row in range(src.shape[0])]


def bench_decoding(model_config, numpy_params, graphdef, args, log, on_part=None) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    import torch_ref
    from seq2seq_jax.core.batching import round_up
    from seq2seq_jax.core.config import DecodeConfig
    from seq2seq_jax.decoding.search import max_len_bound_for
    from seq2seq_jax.model.convert import to_torch_state_dict

    decode_config = DecodeConfig()
    width = 32
    bound = int(round_up(max_len_bound_for([width], decode_config.max_len_a, decode_config.max_len_b), 8))
    params = jax.tree.map(jnp.asarray, numpy_params)
    model = torch_ref.Seq2Seq(model_config)
    state_dict = to_torch_state_dict(numpy_params, model_config)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
    model.eval()
    batch_rows = 64
    singles = args.sentences_per_round
    results = {"max_len_bound": bound, "src_padded_to": width, "decode_config": dataclasses.asdict(decode_config)}
    for beam in (5, 1):
        label = "beam5" if beam == 5 else "greedy"
        jax_search = JaxSearch(graphdef, params, beam, decode_config, bound)
        torch_search = TorchSearch(model, beam, decode_config, bound)
        # batch 1: per-sentence latency
        src, src_len = decode_sources(model_config.src_vocab_size, singles * args.repeats + 1, seed=3, width=width)
        compile_single = jax_search.compile(src[:1], src_len[:1])
        jax_search(src[:1], src_len[:1])
        torch_search(src[:1], src_len[:1])
        singles_timed = interleaved(lambda i: jax_search(src[i: i + 1], src_len[i: i + 1]),
                                    lambda i: torch_search(src[i: i + 1], src_len[i: i + 1]), range(1, len(src)))
        jax_lat, torch_lat = singles_timed["jax_s"], singles_timed["torch_s"]
        agree = [a == b for a, b in zip(singles_timed["jax_out"], singles_timed["torch_out"], strict=True)]
        log(f"[{label} x1] latency JAX {median(jax_lat) * 1e3:.1f} ms, torch {median(torch_lat) * 1e3:.1f} ms")
        # batch 64: throughput
        batch_src, batch_len = decode_sources(model_config.src_vocab_size, batch_rows, seed=4, width=width)
        compile_batch = jax_search.compile(batch_src, batch_len)

        def progress(index, timed):
            log(f"[{label} x64] round {index + 1}/{args.repeats}: JAX {timed['jax_s'][-1]:.2f}s "
                f"torch {timed['torch_s'][-1]:.2f}s")

        batch_timed = interleaved(lambda _: jax_search(batch_src, batch_len),
                                  lambda _: torch_search(batch_src, batch_len), range(args.repeats), progress)
        jax_batch, torch_batch = batch_timed["jax_s"], batch_timed["torch_s"]
        batch_agree = sum(a == b for a, b in zip(batch_timed["jax_out"][-1], batch_timed["torch_out"][-1],
                                                 strict=True)) / batch_rows
        jax_sps, torch_sps = batch_rows / median(jax_batch), batch_rows / median(torch_batch)
        if args.profile and beam == 5:
            results.setdefault("profiles", {})["beam-5 search, one sentence"] = profile_ops(
                lambda: jax_search(src[1:2], src_len[1:2]), jax_search.compiled[src[:1].shape].as_text(), log,
                "beam-5 batch-1", calls=3)
            results["profiles"]["beam-5 search, batch 64"] = profile_ops(
                lambda: jax_search(batch_src, batch_len), jax_search.compiled[batch_src.shape].as_text(), log,
                "beam-5 batch-64", calls=1)
        results[label] = {
            "single": {"jax_latency_s": median(jax_lat), "torch_latency_s": median(torch_lat),
                       "latency_ratio": median(torch_lat) / median(jax_lat), "sentences": len(jax_lat),
                       "jax_samples_s": jax_lat, "torch_samples_s": torch_lat,
                       "identical_outputs": sum(agree) / len(agree),
                       "jax_compile_s": compile_single},
            "batch64": {"jax_sentences_per_s": jax_sps, "torch_sentences_per_s": torch_sps,
                        "throughput_ratio": jax_sps / torch_sps, "jax_samples_s": jax_batch,
                        "torch_samples_s": torch_batch, "identical_outputs": batch_agree,
                        "jax_compile_s": compile_batch},
        }
        if on_part is not None:
            on_part(results)
    return results


# --------------------------------------------------------------------------------------------------------
# Profile (optional): where the JAX train step spends its time, per XLA op
# --------------------------------------------------------------------------------------------------------


def profile_ops(run, hlo_text: str, log, label: str, calls: int = 2, top: int = 15) -> dict:
    """Trace ``calls`` calls of ``run()`` (a compiled JAX program whose HLO is ``hlo_text``) with
    ``jax.profiler``; aggregate thunk time per HLO op and per category.

    Categories: forward / backward (op metadata under ``transpose(jvp(...))``), inside / outside loops
    (``/while/``), matmul (YNNPACK / Eigen dot) / other. XLA's CPU runtime overlaps independent ops and the OS
    may preempt any of them, so the sum can differ from the wall time.
    """
    import collections
    import glob
    import gzip
    import re
    import tempfile

    import jax

    text = hlo_text
    meta = {}
    for line in text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        if match:
            op_name = re.search(r'op_name="([^"]*)"', line)
            meta[match.group(1)] = (op_name.group(1) if op_name else "", match.group(2)[:100])
    with tempfile.TemporaryDirectory() as directory:
        jax.profiler.start_trace(directory, create_perfetto_trace=True)
        start = now()
        for _ in range(calls):
            run()
        wall = (now() - start) / calls
        jax.profiler.stop_trace()
        path = glob.glob(f"{directory}/**/perfetto_trace.json.gz", recursive=True)[0]
        with gzip.open(path) as handle:
            events = json.load(handle)
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op = collections.defaultdict(float)
    categories = collections.defaultdict(float)
    for event in events:
        args_ = event.get("args") or {}
        name = args_.get("hlo_op")
        if not name or event.get("ph") != "X" or name.startswith("while"):
            continue
        seconds = event["dur"] / 1e6 / calls
        per_op[name] += seconds
        op_name = meta.get(name, ("", ""))[0]
        key = ("backward" if "transpose(" in op_name else "forward",
               "in loop" if "/while/" in op_name else "outside loops",
               "matmul" if name.startswith(("ynn", "dot")) else "other")
        categories[" / ".join(key)] += seconds
    ops = [{"op": name, "seconds": seconds, "hlo": meta.get(name, ("", ""))[1],
            "where": meta.get(name, ("", ""))[0][-70:]}
           for name, seconds in sorted(per_op.items(), key=lambda item: -item[1])[:top]]
    log(f"[profile {label}] wall {wall:.3f}s per call; op time {sum(per_op.values()):.3f}s")
    return {"wall_s_per_call": wall, "op_seconds_total": sum(per_op.values()),
            "categories": dict(sorted(categories.items())), "top_ops": ops}


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------


def environment(threads: int) -> dict:
    import flax
    import jax
    import jaxlib
    import numpy
    import optax
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads_used": threads,
                    "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": list(os.getloadavg())},
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "torch": torch.__version__, "numpy": numpy.__version__},
        "git_commit": commit,
        "jax_backend": jax.default_backend(),
        "torch_threads": torch.get_num_threads(),
        "torch_parallel_backend": "OpenMP" if "OpenMP" in torch.__config__.parallel_info() else "other",
        "env": {name: os.environ.get(name, "") for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "XLA_FLAGS",
                                                              "MKL_NUM_THREADS")},
    }


def summary(report: dict) -> dict:
    results = report["results"]
    values = {}
    if "train_main" in results:
        values["train_main_ratio"] = results["train_main"]["ratio"]
        values["mfu_main"] = results["train_main"]["jax_mfu"]
        values["compile_main_s"] = results["train_main"]["compile"]["trace_compile_s"]
    if "beam5" in results.get("decode", {}):
        values["beam1_latency_ratio"] = results["decode"]["beam5"]["single"]["latency_ratio"]
        values["beam64_throughput_ratio"] = results["decode"]["beam5"]["batch64"]["throughput_ratio"]
    out = {}
    for name, value in values.items():
        threshold, what = TARGETS[name]
        met = value <= threshold if name.endswith("_s") else value >= threshold
        out[name] = {"value": value, "target": threshold, "met": met, "what": what}
    return out


def markdown(report: dict) -> str:
    env, results = report["environment"], report["results"]
    load_start, load_end = env["machine"]["loadavg_start"][0], env["machine"].get("loadavg_end", [0])[0]
    lines = [f"# seq2seq_jax vs torch_ref, CPU ({env['date']})", "",
             f"Machine: {env['machine']['cpu']}, {env['machine']['logical_cpus']} logical CPUs, "
             f"{env['machine']['threads_used']} threads per framework, 1-minute load average at start "
             f"{load_start:.2f}, at end {load_end:.2f}; float32; total {env.get('total_s', 0) / 60:.1f} min.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
             + f"; commit {env['git_commit'] or '?'}.", "",
             f"Medians over {report['settings']['repeats']} interleaved rounds (JAX, torch_ref, JAX, ...) after "
             "warm-up.", "",
             "| measurement | JAX | torch_ref | JAX advantage | target | met |", "|---|---|---|---|---|---|"]
    targets = report["targets"]

    def target_cells(name):
        if name not in targets:
            return "", ""
        item = targets[name]
        sign = "<=" if name.endswith("_s") else ">="
        unit = " s" if name.endswith("_s") else ("" if name.startswith("mfu") else "x")
        threshold = f"{item['target']:.0%}" if name.startswith("mfu") else f"{item['target']:g}{unit}"
        return f"{sign} {threshold}", "yes" if item["met"] else "**no**"

    for key, label in (("train_main", "main"), ("train_small", "small")):
        if key not in results:
            continue
        r = results[key]
        t, m = target_cells("train_main_ratio") if label == "main" else ("", "")
        lines.append(f"| training tokens/s, {label} config (batch {r['batch_size']}) | {r['jax_tokens_per_s']:.0f} | "
                     f"{r['torch_tokens_per_s']:.0f} | {r['ratio']:.2f}x | {t} | {m} |")
        t, m = target_cells("mfu_main") if label == "main" else ("", "")
        lines.append(f"| training MFU, {label} config (padded / real tokens) | {r['jax_mfu']:.1%} / "
                     f"{r['jax_mfu_real_tokens']:.1%} | {r['torch_mfu']:.1%} / {r['torch_mfu_real_tokens']:.1%} | "
                     f" | {t} | {m} |")
    if "decode" in results:
        d = results["decode"]
        for label, name in (("beam5", "beam-5"), ("greedy", "greedy")):
            if label not in d:
                continue
            single, batch = d[label]["single"], d[label]["batch64"]
            t, m = target_cells("beam1_latency_ratio") if label == "beam5" else ("", "")
            lines.append(f"| {name} single-sentence latency (ms) | {single['jax_latency_s'] * 1e3:.1f} | "
                         f"{single['torch_latency_s'] * 1e3:.1f} | {single['latency_ratio']:.2f}x | {t} | {m} |")
            t, m = target_cells("beam64_throughput_ratio") if label == "beam5" else ("", "")
            lines.append(f"| {name} batch-64 sentences/s | {batch['jax_sentences_per_s']:.1f} | "
                         f"{batch['torch_sentences_per_s']:.1f} | {batch['throughput_ratio']:.2f}x | {t} | {m} |")
    for key, label in (("train_main", "main"), ("train_small", "small")):
        if key in results:
            c = results[key]["compile"]
            t, m = target_cells("compile_main_s") if label == "main" else ("", "")
            lines.append(f"| first train step trace + compile (s), {label} config | {c['trace_compile_s']:.1f} | "
                         f"- | | {t} | {m} |")
    if "epoch" in results:
        e = results["epoch"]
        lines.append(f"| compiled train-step programs over one epoch ({e['batches']} bucketed batches) | "
                     f"{e['compiled_programs']} | - | | | |")
    if "peak" in results:
        p = results["peak"]
        lines.append(f"| float32 matmul peak, {PEAK_SIZE}^3 (GFLOP/s) | {p['jax_gflops']:.1f} | "
                     f"{p['torch_gflops']:.1f} | | | |")
    lines.append("")
    if "decode" in results:
        d = results["decode"]
        lines.append("Identical outputs (JAX vs torch_ref): " + ", ".join(
            f"{label} x1 {d[label]['single']['identical_outputs']:.0%}, "
            f"x64 {d[label]['batch64']['identical_outputs']:.0%}" for label in ("beam5", "greedy") if label in d) + ".")
        lines.append("")
    profiles = {**results.get("profiles", {}), **results.get("decode", {}).get("profiles", {})}
    for label, p in profiles.items():
        lines += [f"JAX profile, {label} ({p['wall_s_per_call']:.2f} s wall per call; "
                  f"{p['op_seconds_total']:.2f} s of op time):", "", "| category | s/call |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in p["categories"].items()]
        lines += ["", "| op | s/call | where |", "|---|---|---|"]
        lines += [f"| `{o['op']}` `{o['hlo'][:60]}` | {o['seconds']:.3f} | `{o['where']}` |" for o in p["top_ops"]]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="directory for results.json / results.md")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per measurement (>= 5)")
    parser.add_argument("--threads", type=int, default=0, help="cores for each framework (default: all)")
    parser.add_argument("--sentences-per-round", type=int, default=2,
                        help="single-sentence decodes per round (latency)")
    parser.add_argument("--skip", action="append", default=[], choices=["train", "small", "decode", "epoch"],
                        help="leave a part out (repeatable)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the JAX main-config train step and the beam-5 batch-64 search")
    parser.add_argument("--omp-passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE for torch (a shared, loaded machine; see docs/benchmarks.md)")
    parser.add_argument("--quick", action="store_true", help="tiny models (a smoke test, not a measurement)")
    args = parser.parse_args(argv)
    if args.repeats < 5 and not args.quick:
        parser.error("--repeats must be >= 5 (medians over at least five rounds)")
    return args


class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupted)  # keep what was measured when terminated
    try:
        return _run(args)
    except (Interrupted, KeyboardInterrupt) as error:
        print(f"benchmark interrupted ({error or 'Ctrl-C'}); partial results (if any) are in {args.out}",
              file=sys.stderr)
        return 130


def _run(args) -> int:
    threads = args.threads or os.cpu_count() or 1
    if hasattr(os, "sched_setaffinity") and threads < (os.cpu_count() or 1):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    if args.omp_passive:
        if "torch" in sys.modules:
            raise RuntimeError("--omp-passive must be set before torch is imported (run the script directly)")
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # compile times must be real
    import torch

    torch.set_num_threads(threads)
    started = now()

    def log(message: str) -> None:
        print(f"[{now() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    report = {"environment": environment(threads), "settings": vars(args), "results": {}}
    load = os.getloadavg()[0]
    if load > 0.5 * threads:
        log(f"warning: load average {load:.2f} on {os.cpu_count()} CPUs before starting: other processes share "
            "the cores, which slows both sides and torch's spinning OpenMP threads most; the results say so")
    results = report["results"]
    configs = model_configs(args.quick)
    peak = Peak()
    main_trainer = None
    if "train" not in args.skip:
        for name in ("main", "small"):
            if name == "small" and "small" in args.skip:
                continue
            model_config, batch_size = configs[name]
            result, trainer, batches = bench_training(name, model_config, batch_size, args, peak, log)
            results[f"train_{name}"] = result
            if name == "main":
                main_trainer = trainer
                if args.profile:
                    results.setdefault("profiles", {})["main-config train step"] = profile_ops(
                        lambda: trainer.step(batches[0]), trainer.compiled.as_text(), log, "train step")
        results["peak"] = peak.gflops()
        for name in ("main", "small"):
            if f"train_{name}" in results:
                add_mfu(results[f"train_{name}"], results["peak"]["peak_gflops"])
        save(report, args.out, started)
    if "decode" not in args.skip:
        model_config, _ = configs["main"]
        if main_trainer is None:
            from seq2seq_jax.training.steps import init_model

            graphdef, params = init_model(model_config, 0)
            numpy_params = jax.tree.map(lambda x: jax.device_get(x).copy(), params)
        else:
            graphdef, numpy_params = main_trainer.graphdef, main_trainer.numpy_params
        def save_part(decode_results):
            results["decode"] = decode_results
            save(report, args.out, started)

        bench_decoding(model_config, numpy_params, graphdef, args, log, on_part=save_part)
    if "epoch" not in args.skip:
        model_config, batch_size = configs["small"]
        results["epoch"] = bench_compiled_programs(model_config, batch_size, log)
    save(report, args.out, started, complete=True)
    print(markdown(report))
    log(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'results.md'}")
    return 0


def save(report: dict, out_dir: str, started: float, complete: bool = False) -> None:
    """Write results.json and results.md (also after each part, so that an interrupted run keeps its data)."""
    report["complete"] = complete
    report["environment"]["machine"]["loadavg_end"] = list(os.getloadavg())
    report["environment"]["total_s"] = now() - started
    report["targets"] = summary(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / "results.md").write_text(markdown(report) + "\n")


if __name__ == "__main__":
    sys.exit(main())
