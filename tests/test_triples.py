"""Data-to-text sources (seq2seq_jax.core.triples): WebNLG-style triple sets linearized the same way at training
and decoding time, errors naming the file and line."""

from __future__ import annotations

import pytest

from seq2seq_jax.core.triples import (
    MARKERS,
    TripleFormatError,
    linearize,
    linearize_lines,
    parse_triples,
    prepare_sources,
)


def test_a_triple_set_becomes_marked_words():
    line = ('Aarhus_Airport | cityServed | "Aarhus, Denmark" <TSP> Aarhus_Airport | '
            'elevationAboveTheSeaLevel_(in_metres) | 25.0 <TSP> Alan_B._Miller_Hall | 1stRunwayLengthFeet | "10L/28R"')
    assert linearize(line) == ("<S> Aarhus Airport <P> city served <O> Aarhus, Denmark "
                               "<S> Aarhus Airport <P> elevation above the sea level (in metres) <O> 25.0 "
                               "<S> Alan B. Miller Hall <P> 1st runway length feet <O> 10L/28R")
    assert parse_triples(line)[0] == ("Aarhus_Airport", "cityServed", '"Aarhus, Denmark"')


def test_acronyms_and_case_of_entities_are_kept():
    # Entity words stay as written (a copy-attention model copies them); predicates are lower-cased words.
    assert linearize("ISBN_Book | ISBN_number | 0-7653-1 <TSP> NASA | LCCNNumber | McDonald's") == (
        "<S> ISBN Book <P> isbn number <O> 0-7653-1 <S> NASA <P> lccn number <O> McDonald's")
    assert set(MARKERS) == {"<S>", "<P>", "<O>"}


def test_blank_lines_stay_blank_and_bad_lines_name_file_and_line():
    assert linearize_lines(["A | b | C", "", "D | e | F"], "dev.src") == ["<S> A <P> b <O> C", "", "<S> D <P> e <O> F"]
    with pytest.raises(TripleFormatError, match=r"dev\.src:2: triple 2 \('D \| e'\) is not"):
        linearize_lines(["A | b | C", "A | b | C <TSP> D | e"], "dev.src")
    with pytest.raises(TripleFormatError, match=r"in\.txt:1: triple 1"):
        linearize_lines(["A |  | C"], "in.txt")


def test_prepare_sources_by_input_format():
    lines = ["A | bC | D"]
    assert prepare_sources(lines, "text", "x") == lines
    assert prepare_sources(lines, "triples", "x") == ["<S> A <P> b c <O> D"]
    with pytest.raises(ValueError, match="unknown input format 'xml'"):
        prepare_sources(lines, "xml", "x")
