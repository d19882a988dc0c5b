"""Training and the workdir: pure step functions (``steps``, ``losses``), the loop (``trainer``), corpora and
preprocessing, the device mesh (``parallel``), checkpoints, the workdir and its lock, checkpoint averaging,
export to PyTorch and plots. Stands on ``core``, ``model`` and ``decoding``."""
