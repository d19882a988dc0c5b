"""The JAX-free core that both ``seq2seq_jax`` and ``torch_ref`` stand on.

No module here imports JAX, Flax, optax, orbax or torch (``tests/test_layers.py`` holds it): the core install
(``pip install 'seq2seq-jax[torch]'`` as well as ``[jax]``) provides all of it. Modules: ``config`` (the four
frozen sections, each field with its meaning), ``presets`` (named starting configs), ``tokens`` (special ids),
``tokenizer``, ``data`` (text and pair reading, encoding, batching), ``search_settings`` (output length limit,
decode-settings overlay, ``Hypothesis``, the n-best line), ``decode_flags`` (the decoding flags of both command
lines), ``pair_scores``, ``export_format``, ``json_files`` and ``install_hint``.
"""
