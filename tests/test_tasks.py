"""Built-in tasks: every date format parses back to its ISO target and is unambiguous; numbers are spelled
correctly; generation is deterministic; train and valid share no source."""

import datetime
import random
import re

import pytest

from seq2seq_jax.training.tasks import (
    CASES,
    DATE_FORMATS,
    TASKS,
    WEEKDAYS,
    TaskError,
    format_date,
    generate_task,
    number_to_words,
    ordinal,
    task_splits,
)

# An independent reading of every template with datetime.strptime (ordinal suffixes removed first).
STRPTIME_OF = {
    "{month} {d}, {yyyy}": "%B %d, %Y",
    "{month} {d} {yyyy}": "%B %d %Y",
    "{month} {dth}, {yyyy}": "%B %d, %Y",
    "{d} {month} {yyyy}": "%d %B %Y",
    "{dth} of {month}, {yyyy}": "%d of %B, %Y",
    "{dth} {month} {yyyy}": "%d %B %Y",
    "{mon} {d} {yyyy}": "%b %d %Y",
    "{mon}. {d}, {yyyy}": "%b. %d, %Y",
    "{d} {mon} {yyyy}": "%d %b %Y",
    "{dd}-{mon}-{yyyy}": "%d-%b-%Y",
    "{weekday}, {month} {d}, {yyyy}": "%A, %B %d, %Y",
    "{weekday} {d} {month} {yyyy}": "%A %d %B %Y",
    "{wkd}, {d} {mon} {yyyy}": "%a, %d %b %Y",
    "{mm}/{dd}/{yyyy}": "%m/%d/%Y",
    "{m}/{d}/{yyyy}": "%m/%d/%Y",
    "{d}.{m}.{yyyy}": "%d.%m.%Y",
    "{dd}.{mm}.{yyyy}": "%d.%m.%Y",
    "{yyyy}-{mm}-{dd}": "%Y-%m-%d",
    "{yyyy}/{mm}/{dd}": "%Y/%m/%d",
    "{yyyy}.{mm}.{dd}": "%Y.%m.%d",
}
ORDINAL_SUFFIX = re.compile(r"\b(\d{1,2})(st|nd|rd|th)\b", re.IGNORECASE)


def readings(text: str) -> set[datetime.date]:
    """Every date that some format's strptime pattern reads from ``text`` (strptime ignores case)."""
    plain = ORDINAL_SUFFIX.sub(r"\1", text)
    dates = set()
    for pattern in set(STRPTIME_OF.values()):
        try:
            dates.add(datetime.datetime.strptime(plain, pattern).date())
        except ValueError:
            pass
    return dates


def test_every_format_has_an_independent_reading():
    assert set(STRPTIME_OF) == set(DATE_FORMATS)


@pytest.mark.parametrize("template", DATE_FORMATS)
def test_each_format_parses_back_to_the_date(template):
    rng = random.Random(template)
    for date in [datetime.date(1700, 1, 1), datetime.date(2099, 12, 31), datetime.date(2021, 3, 3)] + [
            datetime.date.fromordinal(rng.randint(620_000, 766_000)) for _ in range(20)]:
        for case in CASES:
            text = format_date(date, template, case)
            plain = ORDINAL_SUFFIX.sub(r"\1", text)
            assert datetime.datetime.strptime(plain, STRPTIME_OF[template]).date() == date, text
            if "weekday" in template or "wkd" in template:
                assert WEEKDAYS[date.weekday()][:3].lower() in text.lower(), text
            if "dth" in template:
                assert ordinal(date.day).lower() in text.lower(), text


def test_examples_from_the_brief():
    date = datetime.date(2021, 3, 3)
    written = {format_date(date, template) for template in DATE_FORMATS}
    assert {"March 3, 2021", "3 March 2021", "03/03/2021", "3.3.2021", "Mar 3 2021", "2021-03-03",
            "Wednesday, March 3, 2021", "3rd of March, 2021"} <= written
    assert format_date(date, "{month} {d}, {yyyy}", "upper") == "MARCH 3, 2021"
    assert [ordinal(day) for day in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st"]


def test_generated_dates_are_unambiguous_and_correct():
    pairs = generate_task("dates", 400, seed=5)
    for source, target in pairs:
        assert readings(source) == {datetime.date.fromisoformat(target)}, source
        assert 1700 <= int(target[:4]) <= 2099
    assert len({source for source, _ in pairs}) == len(pairs)
    assert any(source.isupper() for source, _ in pairs) and any(source.islower() for source, _ in pairs)


def test_numbers_in_words():
    expected = {0: "zero", 7: "seven", 15: "fifteen", 20: "twenty", 42: "forty-two", 100: "one hundred",
                101: "one hundred one", 1000: "one thousand", 1234: "one thousand two hundred thirty-four",
                20_019: "twenty thousand nineteen", 100_000: "one hundred thousand",
                999_999: "nine hundred ninety-nine thousand nine hundred ninety-nine"}
    assert {number: number_to_words(number) for number in expected} == expected
    with pytest.raises(TaskError):
        number_to_words(1_000_000)
    for source, target in generate_task("numbers", 50, seed=0):
        assert target == number_to_words(int(source)) and source == str(int(source))


def test_reverse_task():
    for source, target in generate_task("reverse", 20, seed=0):
        assert target == source[::-1] and source.isalpha()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generation_is_deterministic_and_prefix_stable(name):
    assert generate_task(name, 30, seed=1) == generate_task(name, 30, seed=1)
    assert generate_task(name, 30, seed=1) != generate_task(name, 30, seed=2)
    assert generate_task(name, 60, seed=1)[:30] == generate_task(name, 30, seed=1)


def test_splits_are_disjoint_and_valid_is_stable():
    train, valid = task_splits("dates", 300, 50, seed=9)
    assert (len(train), len(valid)) == (300, 50)
    assert not {source for source, _ in train} & {source for source, _ in valid}
    assert task_splits("dates", 100, 50, seed=9)[1] == valid


def test_unknown_task_lists_the_tasks():
    with pytest.raises(TaskError, match="unknown task 'nope'.*dates.*numbers.*reverse"):
        generate_task("nope", 10, seed=0)
