"""seq2seq-jax: an attention LSTM encoder-decoder in JAX/Flax NNX.

This package's top level imports nothing heavy: ``seq2seq_jax.config`` and ``seq2seq_jax.tokenizer`` stay
free of JAX so that ``torch_ref`` can use them in a process without JAX.
"""

__version__ = "0.1.0"
