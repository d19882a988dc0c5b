"""seq2seq-jax: an attention LSTM encoder-decoder in JAX/Flax NNX.

This package's top level imports nothing heavy: ``seq2seq_jax.common`` (what the JAX side and ``torch_ref``
share), ``seq2seq_jax.config``, ``.tokenizer`` and ``.data`` stay free of JAX so that ``torch_ref`` can use them
in an install without JAX (``pip install '.[torch]'``). ``seq2seq_jax.load`` (the Python
API, ``seq2seq_jax.api``) imports JAX when it is first called.
"""

__version__ = "0.1.0"


def load(workdirs, checkpoint="best", **decode_overrides):
    """``seq2seq_jax.api.load``: a trained workdir (or a list of workdirs, an ensemble) ready to ``translate``
    and ``score``."""
    from seq2seq_jax.api import load as load_model

    return load_model(workdirs, checkpoint, **decode_overrides)
