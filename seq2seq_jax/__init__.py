"""seq2seq-jax: an attention LSTM encoder-decoder in JAX/Flax NNX.

This package's top level imports nothing heavy: ``seq2seq_jax.config`` and ``seq2seq_jax.tokenizer`` stay
free of JAX so that ``torch_ref`` can use them in a process without JAX. ``seq2seq_jax.load`` (the Python
API, ``seq2seq_jax.api``) imports JAX when it is first called.
"""

__version__ = "0.1.0"


def load(workdirs, checkpoint="best", **decode_overrides):
    """``seq2seq_jax.api.load``: a trained workdir (or a list of workdirs, an ensemble) ready to ``translate``
    and ``score``."""
    from seq2seq_jax.api import load as load_model

    return load_model(workdirs, checkpoint, **decode_overrides)
