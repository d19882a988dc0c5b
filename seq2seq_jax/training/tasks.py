"""Built-in generated tasks: the demo data, made on the fly from a seed (no download).

- ``dates``: a date written in one of many human formats -> ISO ``YYYY-MM-DD`` (years 1700-2099).
  Each format is unambiguous by its pattern: slashes are always month/day/year (US) or year/month/day,
  dots are always day.month.year or year.month.day, so the pattern alone fixes the reading.
- ``numbers``: an integer 0-999,999 in digits -> English words
  ("1234" -> "one thousand two hundred thirty-four").
- ``reverse``: a string of lowercase letters -> the same string reversed.

Sources within one generated set are unique, so ``task_splits`` gives train and valid sets that share no
source.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
from collections.abc import Callable

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
MONTH_ABBREVIATIONS = tuple(month[:3] for month in MONTHS)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEEKDAY_ABBREVIATIONS = tuple(day[:3] for day in WEEKDAYS)
FIRST_DATE = datetime.date(1700, 1, 1)
LAST_DATE = datetime.date(2099, 12, 31)

# Fields: {d} day, {dd} zero-padded day, {dth} ordinal day (3rd), {m} month, {mm} zero-padded month,
# {month} / {mon} month name / abbreviation, {weekday} / {wkd} weekday name / abbreviation, {yyyy} year.
DATE_FORMATS = (
    "{month} {d}, {yyyy}",            # March 3, 2021
    "{month} {d} {yyyy}",             # March 3 2021
    "{month} {dth}, {yyyy}",          # March 3rd, 2021
    "{d} {month} {yyyy}",             # 3 March 2021
    "{dth} of {month}, {yyyy}",       # 3rd of March, 2021
    "{dth} {month} {yyyy}",           # 3rd March 2021
    "{mon} {d} {yyyy}",               # Mar 3 2021
    "{mon}. {d}, {yyyy}",             # Mar. 3, 2021
    "{d} {mon} {yyyy}",               # 3 Mar 2021
    "{dd}-{mon}-{yyyy}",              # 03-Mar-2021
    "{weekday}, {month} {d}, {yyyy}",  # Wednesday, March 3, 2021
    "{weekday} {d} {month} {yyyy}",   # Wednesday 3 March 2021
    "{wkd}, {d} {mon} {yyyy}",        # Wed, 3 Mar 2021
    "{mm}/{dd}/{yyyy}",               # 03/03/2021  (US: month first)
    "{m}/{d}/{yyyy}",                 # 3/3/2021    (US: month first)
    "{d}.{m}.{yyyy}",                 # 3.3.2021    (day first)
    "{dd}.{mm}.{yyyy}",               # 03.03.2021  (day first)
    "{yyyy}-{mm}-{dd}",               # 2021-03-03
    "{yyyy}/{mm}/{dd}",               # 2021/03/03
    "{yyyy}.{mm}.{dd}",               # 2021.03.03
)
CASES = ("as_written", "lower", "upper")

ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
LARGEST_NUMBER = 999_999


class TaskError(ValueError):
    """An unknown task or a request the task cannot satisfy."""


def ordinal(day: int) -> str:
    """``1 -> "1st"``, ``2 -> "2nd"``, ``11 -> "11th"``, ``23 -> "23rd"``."""
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def format_date(date: datetime.date, template: str, case: str = "as_written") -> str:
    """``date`` written with one of ``DATE_FORMATS`` in one of ``CASES`` (English names, no locale)."""
    text = template.format(
        d=date.day, dd=f"{date.day:02d}", dth=ordinal(date.day), m=date.month, mm=f"{date.month:02d}",
        month=MONTHS[date.month - 1], mon=MONTH_ABBREVIATIONS[date.month - 1],
        weekday=WEEKDAYS[date.weekday()], wkd=WEEKDAY_ABBREVIATIONS[date.weekday()], yyyy=f"{date.year:04d}")
    if case == "lower":
        return text.lower()
    if case == "upper":
        return text.upper()
    if case != "as_written":
        raise TaskError(f"unknown case {case!r}; cases are {CASES}")
    return text


def sample_date_pair(rng: random.Random) -> tuple[str, str]:
    """A random date in 1700-2099 in a random format and case -> its ISO form."""
    date = datetime.date.fromordinal(rng.randint(FIRST_DATE.toordinal(), LAST_DATE.toordinal()))
    case = rng.choices(CASES, weights=(3, 1, 1))[0]
    return format_date(date, rng.choice(DATE_FORMATS), case), date.isoformat()


def number_to_words(number: int) -> str:
    """English words of ``0 <= number <= 999_999``: ``1234 -> "one thousand two hundred thirty-four"``."""
    if not 0 <= number <= LARGEST_NUMBER:
        raise TaskError(f"number_to_words handles 0..{LARGEST_NUMBER}, got {number}")
    if number == 0:
        return ONES[0]
    thousands, rest = divmod(number, 1000)
    words = []
    if thousands:
        words += [_below_thousand(thousands), "thousand"]
    if rest:
        words.append(_below_thousand(rest))
    return " ".join(words)


def _below_thousand(number: int) -> str:
    hundreds, rest = divmod(number, 100)
    words = [f"{ONES[hundreds]} hundred"] if hundreds else []
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(TENS[tens] + (f"-{ONES[ones]}" if ones else ""))
    elif rest:
        words.append(ONES[rest])
    return " ".join(words)


def sample_number_pair(rng: random.Random) -> tuple[str, str]:
    """A number with 1-6 digits (the digit count drawn uniformly) -> its English words."""
    digits = rng.randint(1, 6)
    number = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
    return str(number), number_to_words(number)


def sample_reverse_pair(rng: random.Random) -> tuple[str, str]:
    """1-20 lowercase letters -> the same letters reversed."""
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 20)))
    return letters, letters[::-1]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    description: str
    sample_pair: Callable[[random.Random], tuple[str, str]]


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("dates", "human-written dates (many formats, 1700-2099) -> ISO YYYY-MM-DD", sample_date_pair),
    Task("numbers", "integers 0-999,999 in digits -> English words", sample_number_pair),
    Task("reverse", "lowercase letter strings -> reversed", sample_reverse_pair),
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        listing = "; ".join(f"{task.name} ({task.description})" for task in TASKS.values())
        raise TaskError(f"unknown task {name!r}; built-in tasks are: {listing}")
    return TASKS[name]


def generate_task(name: str, size: int, seed: int) -> list[tuple[str, str]]:
    """``size`` (source, target) pairs of task ``name`` with unique sources; the same seed gives the same
    pairs, and a larger ``size`` extends a smaller one (the first pairs are the same)."""
    task = get_task(name)
    if size < 0:
        raise TaskError(f"task size must be >= 0, got {size}")
    rng = random.Random(seed)
    seen: set[str] = set()
    pairs = []
    attempts_left = 20 * size + 1000
    while len(pairs) < size:
        if attempts_left == 0:
            raise TaskError(f"task {name!r} could only make {len(pairs)} distinct examples "
                            f"of the {size} asked")
        attempts_left -= 1
        source, target = task.sample_pair(rng)
        if source not in seen:
            seen.add(source)
            pairs.append((source, target))
    return pairs


def task_splits(name: str, train_size: int, valid_size: int,
                seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train_pairs, valid_pairs)`` sharing no source string. Valid comes first in the generated stream, so
    changing ``train_size`` keeps the same validation set."""
    pairs = generate_task(name, valid_size + train_size, seed)
    return pairs[valid_size:], pairs[:valid_size]
