"""``python -m seq2seq_jax`` is the ``seq2seq`` command."""

from seq2seq_jax.cli import main

raise SystemExit(main())
