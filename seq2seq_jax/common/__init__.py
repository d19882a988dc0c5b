"""What the JAX side (``seq2seq_jax``) and the PyTorch side (``torch_ref``) share, written once.

Nothing in this subpackage imports JAX, Flax, optax, orbax or torch: it is part of the core install, which
both ``pip install 'seq2seq-jax[jax]'`` and ``pip install 'seq2seq-jax[torch]'`` provide. Modules:

- ``tokens``: the special token ids;
- ``decoding``: the output length limit, the decode-settings overlay, ``Hypothesis`` and the n-best line;
- ``export_format``: the export directory's files, version check, config reading, strict state_dict check
  and the re-tying of a tied output embedding;
- ``json_files``: reading a JSON file with errors that name the file and line.

This ``__init__`` imports none of them, so ``seq2seq_jax.config`` can use ``decoding`` without a cycle.
"""
