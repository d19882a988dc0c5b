"""Session-wide test settings.

Tests compile many small programs, so compile time dominates: XLA's backend optimisation is turned down
(numerics are unchanged; generated code is slower, which tiny test models do not notice), and compiled
programs are cached on disk for the session so that identical programs (the same tiny model trained by
several tests, or in a subprocess) compile once. torch runs on one thread: the test models are tiny and
two frameworks each spawning a thread per core on a 2-core machine slow both down. The parity suite's
measured errors are printed at the end of the run.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="seq2seq-jax-test-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter):
    try:
        from parity_support import MEASURED
    except ImportError:
        return
    if MEASURED:
        terminalreporter.section("parity: largest relative error per tolerance class")
        for (quantity, dtype), error in sorted(MEASURED.items()):
            terminalreporter.write_line(f"{quantity:>10s} {dtype}: {error:.3e}")
