"""The CLI's logging: what a run reports on stdout, warnings on stderr, details only with -v."""

from __future__ import annotations

import logging

import pytest

from seq2seq_jax.core import logs


@pytest.fixture
def package_logger():
    """The package logger, put back as it was after the test (``configure`` replaces its handlers)."""
    logger = logging.getLogger(logs.PACKAGE)
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.mark.parametrize("verbose", [False, True])
def test_info_to_stdout_warnings_to_stderr_details_with_verbose(package_logger, capsys, verbose):
    logs.configure(verbose, prefix="seq2seq serve: ")
    module_logger = logging.getLogger("seq2seq_jax.training.trainer")
    module_logger.debug("compiled a program")
    module_logger.info("resumed from step 3")
    module_logger.warning("removed a stale staging directory")
    out, err = capsys.readouterr()
    expected_out = ["seq2seq serve: compiled a program"] * verbose + ["seq2seq serve: resumed from step 3"]
    assert out.splitlines() == expected_out
    assert err.splitlines() == ["seq2seq serve: removed a stale staging directory"]


def test_warnings_only_silences_info_in_the_block(package_logger, capsys):
    logs.configure()
    logger = logging.getLogger("seq2seq_jax.training.preprocess")
    with logs.warnings_only(logger.name):
        logger.info("tokenizers: trained")
        logger.warning("a warning still shows")
    with logs.warnings_only(enabled=False):
        logger.info("shown: not enabled")
    logger.info("shown again")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["shown: not enabled", "shown again"] and err.splitlines() == ["a warning still shows"]
