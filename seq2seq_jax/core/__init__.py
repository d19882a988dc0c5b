"""The JAX-free core that both ``seq2seq_jax`` and ``torch_ref`` stand on.

No module here imports JAX, Flax, optax, orbax or torch (``tests/test_layers.py`` holds it): the core install
(``pip install 'seq2seq-jax[torch]'`` as well as ``[jax]``) provides all of it. Modules: ``config`` (the four
frozen sections), ``tokens`` (special ids), ``tokenizer``, ``data`` (text and pair reading, encoding,
batching), ``search_settings`` (output length limit, decode-settings overlay, ``Hypothesis``, the n-best
line), ``pair_scores``, ``export_format`` and ``json_files``.
"""
