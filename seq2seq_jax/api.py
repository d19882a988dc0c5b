"""The Python API in one line: ``seq2seq_jax.load(workdir)`` (or a list of workdirs: an ensemble).

    import seq2seq_jax
    model = seq2seq_jax.load("runs/dates", beam_size=5)
    model.translate("March 3, 2021")[0].text                 # a string in: its n-best list out
    model.translate(["March 3, 2021", "14 July 1789"])        # a list in: one n-best list per line
    model.translate("March 3, 2021", prefix="2021-")          # every hypothesis starts with the prefix
    model.score("March 3, 2021", "2021-03-03").log_prob       # forced decoding (PairScore; lists give lists)

``seq2seq translate``, ``evaluate`` and ``score`` run through the same object. Decoding settings default to the
first workdir's ``decode`` section; ``load`` and ``translate`` take any ``DecodeConfig`` field as a keyword
(``beam_size=5`` alone also caps ``n_best`` at 5, as the command line does). Programs compiled for one set of
settings are kept for the next call with the same settings, and reused by later processes through the
persistent compilation cache (``seq2seq_jax.compilation_cache``; ``SEQ2SEQ_JAX_CACHE_DIR=off`` turns it off).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seq2seq_jax import compilation_cache
from seq2seq_jax.decoding.loaded_model import Seq2SeqModel, TrainedModel, with_decode_overrides
from seq2seq_jax.training.workdir import load_trained

__all__ = ["load", "Seq2SeqModel", "TrainedModel", "with_decode_overrides"]


def load(workdirs: str | Path | Sequence[str | Path], checkpoint: str | int = "best",
         **decode_overrides) -> Seq2SeqModel:
    """Load a trained workdir, or several as an ensemble (they must share the tokenizers; the error names the
    two workdirs and the side). ``checkpoint``: ``"best"``, ``"latest"`` or a step, for every workdir;
    ``decode_overrides``: ``DecodeConfig`` fields (``beam_size=5``, ``length_penalty=0.6``, ...)."""
    paths = [workdirs] if isinstance(workdirs, (str, Path)) else list(workdirs)
    if not paths:
        raise ValueError("no workdir given")
    compilation_cache.enable()
    return Seq2SeqModel([load_trained(path, checkpoint) for path in paths], [str(path) for path in paths],
                        **decode_overrides)
