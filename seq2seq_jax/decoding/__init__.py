"""Decoding a trained model: the jittable searches (``search``), text in / hypotheses out (``translate``),
ensembles, forced-decoding scores (``scoring``), the loaded-model front (``loaded_model``), evaluation
metrics and the extractive baselines. Stands on ``core`` and ``model``."""
