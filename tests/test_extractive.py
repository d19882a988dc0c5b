"""Lead-k and Longest-k: the extractive summarization baselines the DialogSum recipe reports."""

from __future__ import annotations

from seq2seq_jax.decoding.extractive import lead, longest, split_turns

DIALOGUE = ("#Person1#: Hi. #Person2#: Hello there, how are you today? #Person1#: Fine. "
            "#Person2#: Good to hear that you are fine. #Person1#: And you, how have you been all this week?")


def test_split_turns_keeps_tags_and_order():
    assert split_turns(DIALOGUE) == [
        "#Person1#: Hi.", "#Person2#: Hello there, how are you today?", "#Person1#: Fine.",
        "#Person2#: Good to hear that you are fine.", "#Person1#: And you, how have you been all this week?"]
    assert split_turns("intro words #Person_1#: a #Person2#: b") == ["intro words", "#Person_1#: a", "#Person2#: b"]
    assert split_turns("no tags at all") == ["no tags at all"]
    assert split_turns("") == []


def test_lead_takes_the_first_turns():
    assert lead(DIALOGUE, 2) == "#Person1#: Hi. #Person2#: Hello there, how are you today?"
    assert lead("#Person1#: only one", 3) == "#Person1#: only one"


def test_longest_takes_the_longest_turns_in_dialogue_order():
    # Word counts: 2, 7, 2, 8, 10 -> the 10-, 8- and 7-word turns, printed in the order they were said.
    assert longest(DIALOGUE, 3) == ("#Person2#: Hello there, how are you today? #Person2#: Good to hear that you "
                                    "are fine. #Person1#: And you, how have you been all this week?")
    # Ties go to the earlier turn.
    assert longest("#Person1#: a b #Person2#: c d #Person1#: e", 1) == "#Person1#: a b"
