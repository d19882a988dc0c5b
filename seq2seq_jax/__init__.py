"""seq2seq-jax: an attention LSTM encoder-decoder in JAX/Flax NNX.

One sub-package a layer, each importing only those below it (``tests/test_layers.py`` holds it):
``core`` (JAX-free: config, tokenizers, text and pairs, the export format; what ``torch_ref`` stands on),
``model``, ``decoding``, ``training`` (with the workdir and its checkpoints), ``serving``; ``api`` and ``cli``
on top. This top level imports nothing heavy: ``seq2seq_jax.load`` (``seq2seq_jax.api``) imports JAX when it
is first called.
"""

__version__ = "0.1.0"


def load(workdirs, checkpoint="best", **decode_overrides):
    """``seq2seq_jax.api.load``: a trained workdir (or a list of workdirs, an ensemble) ready to ``translate``
    and ``score``."""
    from seq2seq_jax.api import load as load_model

    return load_model(workdirs, checkpoint, **decode_overrides)
