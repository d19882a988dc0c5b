"""Session-wide test settings: the parity suite's measured errors are printed at the end of the run."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    try:
        from parity_support import MEASURED
    except ImportError:
        return
    if MEASURED:
        terminalreporter.section("parity: largest relative error per tolerance class")
        for (quantity, dtype), error in sorted(MEASURED.items()):
            terminalreporter.write_line(f"{quantity:>10s} {dtype}: {error:.3e}")
