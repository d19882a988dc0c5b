"""seq2seq-jax: an attention LSTM encoder-decoder in JAX/Flax NNX.

This package's top level imports nothing heavy: ``seq2seq_jax.common`` (what the JAX side and ``torch_ref``
share), ``seq2seq_jax.config``, ``.tokenizer`` and ``.data`` stay free of JAX so that ``torch_ref`` can use them
in an install without JAX (``pip install '.[torch]'``).
"""

__version__ = "0.1.0"
