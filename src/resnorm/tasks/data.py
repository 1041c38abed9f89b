"""Examples, strata, held-out splits, vocabularies, batches and the TSV loader.

Strata
    Every example has one ``stratum`` label: ``"zero-heavy"`` when the expression's main
    integer (the cardinal, ordinal or amount; the integer part of a decimal) has at least four
    digits and at least half of them are 0 (1001, 100001000, 20050000), otherwise a length
    bucket of the Chinese source in characters: ``"len1-4"``, ``"len5-8"``, ``"len9-16"``,
    ``"len17+"``. Evaluation groups by category, by stratum, or by both.

Splits (see :func:`make_splits`)
    * ``listed``: spaces small enough to list completely: every cardinal, ordinal, amount of
      money and whole percentage below 1000 (with the 两 variants), and every expression of at
      most four Chinese characters (八亿, 第三百万, 二分之一, 负三, 三点一四), about 7,000 in all.
      They are all trained on and evaluated in full rather than held out: a family of nine
      values cannot lend most of its values to training and still leave a held-out set something
      to test.
    * ``test`` and ``valid``: held out *by value*: no English target of ``test`` or ``valid``
      is a target of ``train``, so neither the source string nor its 两/二 twin was seen in
      training. Held out *by form* too, with a cap: a form (:func:`form_of`: the category, the
      source with its digits abstracted, and the role of the last English word) lends at most a
      quarter of its values, and a form too rare to be drawn 40 times lends none; so every
      held-out expression has a form that training shows, often. Stratified: equal shares per
      category, then equal shares per stratum inside a category; validation is a stratified
      tenth of the same draw. The book's chapter uses ``n_test >= 20_000``.
    * ``train``: ``listed`` plus expressions sampled by :func:`generate`, skipping held-out
      values; zero-heavy numbers are oversampled (the task's specification reports a prototype
      that stalled at 80% on them until they made up a large share of its training data).

Tokens
    Chinese: one token per character. English: words, with ``-`` and ``,`` as tokens of
    their own ("thirty-five" -> ``thirty - five``; "November first, two thousand" -> ``November
    first , two thousand``); :func:`detokenize_english` glues ``-`` to both neighbours and
    ``,`` to the word before it, which restores every target string of the task exactly.
    Two vocabularies (source and target), built from the task's full alphabet, not from a
    sample; ids 0, 1, 2 are always ``<pad>``, ``<bos>``, ``<eos>``.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import math
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from . import zh_numbers as zh
from .zh_numbers import CATEGORIES, Expression

# ----------------------------------------------------------------------------- examples and strata


class Example(NamedTuple):
    """One sentence pair: Chinese ``source``, English ``target``, its ``category`` and ``stratum``."""

    source: str
    target: str
    category: str
    stratum: str


LENGTH_BUCKETS = ((4, "len1-4"), (8, "len5-8"), (16, "len9-16"))
ZERO_HEAVY = "zero-heavy"
STRATA = ("len1-4", "len5-8", "len9-16", "len17+", ZERO_HEAVY)


def length_bucket(source: str) -> str:
    """The length stratum of a source string (characters)."""
    n = len(source)
    for limit, name in LENGTH_BUCKETS:
        if n <= limit:
            return name
    return "len17+"


def is_zero_heavy(n: int) -> bool:
    """At least four digits, at least half of them zeros (1001, 20050000, 100001000)."""
    if n < 1000:
        return False
    digits = str(n)
    return 2 * digits.count("0") >= len(digits)


def main_integer(expr: Expression) -> int | None:
    """The integer whose 零 rules make an expression hard; None for fractions and dates."""
    return _main_integer(expr.category, expr.value)


def _main_integer(category: str, value: Any) -> int | None:
    if category in ("cardinal", "ordinal", "money"):
        return value
    if category in ("decimal", "percent"):
        return abs(int(value))
    return None


def stratum_of(expr: Expression, source: str) -> str:
    """``"zero-heavy"`` or the source's length bucket (see the module docstring)."""
    return _stratum(expr.category, expr.value, source)


def _stratum(category: str, value: Any, source: str) -> str:
    n = _main_integer(category, value)
    if n is not None and n >= 1000 and is_zero_heavy(n):
        return ZERO_HEAVY
    k = len(source)
    return "len1-4" if k <= 4 else "len5-8" if k <= 8 else "len9-16" if k <= 16 else "len17+"


def make_example(expr: Expression, liang: bool = False) -> Example:
    """The example of an expression (``liang``: write 两 where the category allows it)."""
    source = zh.to_chinese(expr, liang=liang)
    return Example(source, zh.to_english(expr), expr.category, stratum_of(expr, source))


# ----------------------------------------------------------------------------- sampling

DEFAULT_WEIGHTS = {
    "cardinal": 0.25, "decimal": 0.15, "fraction": 0.10, "percent": 0.10,
    "ordinal": 0.15, "date": 0.10, "money": 0.15,
}
ZERO_HEAVY_SHARE = 0.3  # of the numbers in cardinal, decimal, ordinal and money


def _as_rng(rng: int | random.Random | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if rng is None or (isinstance(rng, int) and not isinstance(rng, bool)):
        return random.Random(rng)
    raise TypeError(f"rng must be a random.Random or an int seed, got {type(rng).__name__}")


def _uniform_digits(rand: Callable[[], float], k: int) -> int:
    """A uniformly random integer with exactly k digits (0 .. 9 when k == 1)."""
    if k == 1:
        return int(rand() * 10)
    low = 10 ** (k - 1)
    if k <= 15:  # 9 * 10**14 < 2**53: one float draw resolves every value
        return low + int(rand() * 9 * low)
    return low + int(rand() * 9 * 10 ** (k - 9)) * 10**8 + int(rand() * 10**8)


def _zero_heavy_int(rng: random.Random, k: int) -> int:
    """A k-digit integer (k >= 4) with at least half of its digits zero."""
    rand = rng.random
    max_nonzero = (k - 1) - (k + 1) // 2  # non-zero digits allowed after the leading one
    m = int(rand() * (max_nonzero + 1))
    n = (1 + int(rand() * 9)) * 10 ** (k - 1)
    for pos in rng.sample(range(k - 1), m):
        n += (1 + int(rand() * 9)) * 10**pos
    return n


def _sample_integer(rng: random.Random, max_digits: int, zero_heavy_share: float) -> int:
    rand = rng.random
    if max_digits >= 4 and rand() < zero_heavy_share:
        return _zero_heavy_int(rng, 4 + int(rand() * (max_digits - 3)))
    return _uniform_digits(rand, 1 + int(rand() * max_digits))


def _frac_digits(rand: Callable[[], float], places: int) -> str:
    if places == 0:
        return ""
    return "".join(str(int(rand() * 10)) for _ in range(places - 1)) + str(1 + int(rand() * 9))


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _sample_value(category: str, rng: random.Random, zero_heavy_share: float) -> Any:
    rand = rng.random
    if category == "cardinal":
        return _sample_integer(rng, 16, zero_heavy_share)
    if category == "ordinal":
        return max(1, _sample_integer(rng, 8, zero_heavy_share))
    if category == "money":
        return _sample_integer(rng, 12, zero_heavy_share)
    if category == "decimal":
        int_part = _sample_integer(rng, 8, zero_heavy_share)
        places = int(rand() * (zh.DECIMAL_MAX_PLACES + 1))
        if places == 0 and int_part == 0:
            int_part = 1 + int(rand() * 9)
        negative = places == 0 or rand() < 0.5
        return Decimal(f"{'-' if negative else ''}{int_part}.{_frac_digits(rand, places)}".rstrip("."))
    if category == "percent":
        int_part = _uniform_digits(rand, 1 + int(rand() * 3))
        places = (0, 0, 1, 2)[int(rand() * 4)]
        return Decimal(f"{int_part}.{_frac_digits(rand, places)}".rstrip("."))
    if category == "fraction":
        den = zh.FRACTION_DENOMINATOR_MIN + int(rand() * (zh.FRACTION_DENOMINATOR_MAX - zh.FRACTION_DENOMINATOR_MIN + 1))
        top = den - 1 if rand() < 0.5 else zh.FRACTION_NUMERATOR_MAX  # half proper, half up to 999
        return (1 + int(rand() * top), den)
    if category == "date":
        # Half the dates in 2000-2099 (cardinal years in English), half in 1100-1999 (years in pairs).
        year = 2000 + int(rand() * 100) if rand() < 0.5 else zh.YEAR_MIN + int(rand() * (2000 - zh.YEAR_MIN))
        month = 1 + int(rand() * 12)
        days = 29 if month == 2 and calendar.isleap(year) else _MONTH_DAYS[month - 1]
        return _dt.date(year, month, 1 + int(rand() * days))
    raise ValueError(f"unknown category {category!r}; the categories are {', '.join(CATEGORIES)}")


def _example(category: str, value: Any, liang: bool) -> Example:
    """Like :func:`make_example` without the range checks (the sampler stays inside the ranges)."""
    source = zh._chinese_of(category, value, liang and category in zh.LIANG_CATEGORIES)
    return Example(source, zh._english_of(category, value), category, _stratum(category, value, source))


def _check_categories(categories: Sequence[str] | None, weights: Any) -> tuple[list[str], list[float]]:
    cats = list(CATEGORIES if categories is None else categories)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown or not cats:
        raise ValueError(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    if weights is None:
        w = [DEFAULT_WEIGHTS[c] for c in cats]
    elif isinstance(weights, dict):
        extra = set(weights) - set(cats)
        if extra:
            raise ValueError(f"weights given for categories not sampled: {sorted(extra)}")
        w = [float(weights.get(c, 0.0)) for c in cats]
    else:
        w = [float(x) for x in weights]
        if len(w) != len(cats):
            raise ValueError(f"{len(w)} weights for {len(cats)} categories")
    if any(x < 0 or not math.isfinite(x) for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w}")
    return cats, w


def generate(
    n: int,
    rng: int | random.Random | None = None,
    categories: Sequence[str] | None = None,
    weights: dict[str, float] | Sequence[float] | None = None,
    zero_heavy_share: float = ZERO_HEAVY_SHARE,
) -> list[Example]:
    """Sample ``n`` examples (duplicates possible).

    ``rng``: a ``random.Random`` (advanced in place) or an int seed. ``categories`` restricts
    the categories; ``weights`` (a dict by category or a list aligned with ``categories``)
    defaults to :data:`DEFAULT_WEIGHTS`. In cardinal, decimal, ordinal and money, a share
    ``zero_heavy_share`` of the numbers has at least half of its digits zero; the rest have a
    digit count drawn uniformly, so long and short numbers are equally common. Where Chinese
    allows 两, it is written half of the time.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not 0.0 <= zero_heavy_share <= 1.0:
        raise ValueError(f"zero_heavy_share must lie in [0, 1], got {zero_heavy_share}")
    rng = _as_rng(rng)
    cats, w = _check_categories(categories, weights)
    rand = rng.random
    return [
        _example(category, _sample_value(category, rng, zero_heavy_share), rand() < 0.5)
        for category in rng.choices(cats, w, k=n)
    ]


LISTED_BELOW = 1000  # 1- to 3-digit cardinals, ordinals, amounts and whole percentages are listed
SHORT_SOURCE_MAX = 4  # every expression of at most this many Chinese characters is listed
HELD_OUT_FORM_SHARE = 0.25  # the held-out sets take at most this share of a form's values
HELD_OUT_FORM_MIN_SEEN = 40  # ... and nothing from a form seen fewer times in the held-out draws


def _few_nonzero_digits(max_digits: int, max_nonzero: int = 2) -> list[int]:
    """Every integer of at most ``max_digits`` digits with 1 .. ``max_nonzero`` non-zero digits (ascending).

    A Chinese numeral spends a digit character and (except in the units place) a unit character
    on every non-zero digit, so a source of at most 4 characters has at most 2 non-zero digits
    (``tests/test_tasks_data.py`` checks this claim on a large sample of the generator).
    """
    from itertools import combinations, product

    values = set()
    for k in range(1, max_nonzero + 1):
        for places in combinations(range(max_digits), k):
            for digits in product(range(1, 10), repeat=k):
                values.add(sum(d * 10**p for d, p in zip(digits, places)))
    return sorted(values)


def short_examples(max_chars: int = SHORT_SOURCE_MAX) -> list[Example]:
    """Every expression of the task whose Chinese source has at most ``max_chars`` characters.

    These are the task's smallest families (八亿, 第三百万, 二分之一, 负三, 三点一四): a family of
    nine values cannot lend most of its values to training and still give a held-out set
    something to test, so all of them are trained on and evaluated in full (see :func:`make_splits`).
    The enumeration mirrors :func:`generate`'s ranges: a decimal without a fractional part is
    negative (a positive one would be a cardinal), and no date is this short.
    """
    if max_chars > SHORT_SOURCE_MAX:
        raise ValueError(f"short_examples enumerates sources of at most {SHORT_SOURCE_MAX} characters")
    out: dict[str, Example] = {}

    def add(category: str, value: Any) -> None:
        for liang in (False, True):
            if liang and category not in zh.LIANG_CATEGORIES:
                continue
            ex = _example(category, value, liang)
            if len(ex.source) <= max_chars:
                out.setdefault(ex.source, ex)

    for category, digits in (("cardinal", 16), ("ordinal", 8), ("money", 12)):
        for n in [0, *_few_nonzero_digits(digits)] if category != "ordinal" else _few_nonzero_digits(digits):
            add(category, n)
    for n in range(0, 11):  # 百分之D and 百分之十; longer percentages have five characters or more
        add("percent", Decimal(n))
    for den in range(zh.FRACTION_DENOMINATOR_MIN, 11):  # one-character denominators (二 .. 十)
        for num in range(1, 11):  # and numerators (一 .. 十)
            add("fraction", (num, den))
    for int_part in [0, *_few_nonzero_digits(8)]:
        int_chars = len(zh._chinese_of("cardinal", int_part, False))
        if int_chars > max_chars - 1:
            continue
        if int_part:
            add("decimal", Decimal(-int_part))  # 负三: no fractional part, always negative
        for places in range(1, max_chars - int_chars):
            for frac in range(1, 10**places):
                digits = str(frac).zfill(places)
                if digits.endswith("0"):
                    continue
                for sign in ("", "-"):
                    add("decimal", Decimal(f"{sign}{int_part}.{digits}"))
    return sorted(out.values(), key=lambda e: (e.category, len(e.source), e.source))


def listed_examples(short: bool = True) -> list[Example]:
    """The spaces small enough to list completely: every cardinal, ordinal, amount of money and
    whole percentage below 1000, with the 两 twin where Chinese allows one, and every expression
    of at most :data:`SHORT_SOURCE_MAX` characters (:func:`short_examples`; ``short=False`` leaves
    those out, as the book's first split did). They go to training and are evaluated in full
    instead of being held out."""
    out: dict[str, Example] = {}
    for category, first in (("cardinal", 0), ("ordinal", 1), ("money", 0), ("percent", 0)):
        for n in range(first, LISTED_BELOW):
            expr = Expression(category, n)
            for liang in (False, True):
                ex = make_example(expr, liang=liang)
                out.setdefault(ex.source, ex)
    for ex in short_examples() if short else ():
        out.setdefault(ex.source, ex)
    return list(out.values())


# ----------------------------------------------------------------------------- forms

_DIGIT_RUN = re.compile(f"[{zh.ZH_DIGITS}两〇]+")


def source_skeleton(source: str) -> str:
    """The source with every run of digit characters replaced by ``D``: 第三百万 -> 第D百万,
    二〇二六年十一月 -> D年十D月, 负三点一四 -> 负D点D. Units (十 百 千 万 亿) and markers stay."""
    return _DIGIT_RUN.sub("D", source)


def _last_word_classes() -> dict[str, str]:
    """English number words -> the role they play as the last word of a target.

    ``one`` … ``nine`` -> ``<unit>``, ``ten`` … ``nineteen`` -> ``<teen>``, ``twenty`` … ``ninety``
    -> ``<tens>``, and the same with ``th`` (ordinals: ``fifth``, ``twelfth``, ``sixtieth``) and
    ``ths`` (plural denominators: ``fifths``). Scale words (hundred, million, millionth, ...),
    ``half``/``halves``, ``yuan``, ``percent`` and month names stay themselves: each is a shape
    the model must learn to write, while sixty and seventy differ only in a digit.
    """
    classes: dict[str, str] = {}
    groups = (("<unit>", zh._EN_ONES[1:10]), ("<teen>", zh._EN_ONES[10:20]), ("<tens>", zh._EN_TENS[2:]))
    for name, words in groups:
        for w in words:
            classes[w] = name
            classes[zh._ordinal_word(w)] = name + "th"
            classes[zh._ordinal_word(w) + "s"] = name + "ths"
    return classes


_LAST_WORD_CLASS = _last_word_classes()


FORM_SKELETON_MAX = 8  # sources up to this length are grouped by their skeleton; longer ones by length


def form_of(ex: Example) -> tuple[str, str, str]:
    """The form of an example: (category, source shape, role of the last English word).

    The source shape is the :func:`source_skeleton` for sources of at most
    :data:`FORM_SKELETON_MAX` characters (八亿 -> D亿, 第三百万 -> 第D百万) and the length stratum
    for longer ones. Two expressions of one form differ only in their digits, and the model must
    learn to write the last word of each form: "one fifth" and "three fifths" are different forms
    (fifth / fifths), as are "eight millionth" and "eight million" (the last word's role, not its
    digit, counts: see :func:`_last_word_classes`). A held-out expression is
    learnable only if training shows its form, so :func:`make_splits` keeps most of every form's
    values in training. Long sources are not split further by skeleton: a source of nine or more
    characters (other than a date, whose year alone has four digits) writes at least two digit
    characters 一 … 九 (a test checks this on a large sample), each free to take eight or nine
    values without changing the skeleton, so even its skeleton's family has dozens of members,
    however rarely that particular pattern of zeros is drawn.
    """
    words = english_tokens(ex.target)
    shape = source_skeleton(ex.source) if len(ex.source) <= FORM_SKELETON_MAX else length_bucket(ex.source)
    last = words[-1] if words else ""
    return ex.category, shape, _LAST_WORD_CLASS.get(last, last)


# ----------------------------------------------------------------------------- splits


@dataclass
class Splits:
    """``train`` (shuffled, contains all of ``listed``), held-out ``valid`` and ``test``, and
    ``listed`` (the fully enumerated small spaces; evaluate on them as well as on ``test``)."""

    train: list[Example]
    valid: list[Example]
    test: list[Example]
    listed: list[Example]
    seed: int = 0

    def eval_sets(self) -> dict[str, list[Example]]:
        """The sets to report accuracy on: held-out ``test`` and the fully listed small spaces."""
        return {"test": self.test, "listed": self.listed}


def _water_fill(quota: int, available: dict[str, int]) -> dict[str, int]:
    """Split ``quota`` as evenly as possible over cells, none taking more than it has."""
    take = {k: 0 for k in available}
    left = quota
    open_cells = sorted(k for k, v in available.items() if v > 0)
    while left > 0 and open_cells:
        share, extra = divmod(left, len(open_cells))
        for i, k in enumerate(open_cells):
            add = min(share + (1 if i < extra else 0), available[k] - take[k])
            take[k] += add
            left -= add
        open_cells = [k for k in open_cells if take[k] < available[k]]
    return take


def _held_out(
    n: int, rng: random.Random, cats: list[str], exclude: set[str], zero_heavy_share: float,
    taken_per_form: dict[tuple, int], form_share: float = HELD_OUT_FORM_SHARE,
    min_seen: int = HELD_OUT_FORM_MIN_SEEN,
) -> list[Example]:
    """``n`` distinct examples, stratified by category then by stratum, none with a target in ``exclude``.

    No form (:func:`form_of`) gives more than ``form_share`` of its values: a form may lend at most
    ``form_share`` times the number of its distinct values seen in this category's draws, minus
    what earlier calls took (``taken_per_form``, updated here). The values seen are a subset of the
    form's values, so training keeps at least ``1 - form_share`` of every form. A form with fewer
    than ``min_seen`` distinct values in the draws lends nothing: it is rare in the generator, so
    it would be rare in the training stream too, and a held-out set should test what training
    shows often enough to learn.
    """
    out: list[Example] = []
    base, extra = divmod(n, len(cats))
    for i, category in enumerate(cats):
        quota = base + (1 if i < extra else 0)
        if quota == 0:
            continue
        candidates: list[tuple[Example, tuple]] = []  # distinct, not excluded, in draw order
        seen_per_form: dict[tuple, set[str]] = {}
        draw = int(quota / form_share) + 200
        while True:
            before = sum(len(v) for v in seen_per_form.values())
            for ex in generate(draw, rng, [category], zero_heavy_share=zero_heavy_share):
                form = form_of(ex)
                values = seen_per_form.setdefault(form, set())
                if ex.target in values:
                    continue
                values.add(ex.target)
                if ex.target not in exclude:
                    candidates.append((ex, form))
            # Each form lends its first `allowed` candidates; then the quota is spread over strata.
            allowed = {f: int(form_share * len(v)) - taken_per_form.get(f, 0) if len(v) >= min_seen else 0
                       for f, v in seen_per_form.items()}
            used: dict[tuple, int] = {}
            cells: dict[str, list[tuple[Example, tuple]]] = {}
            for ex, form in candidates:
                if used.get(form, 0) < allowed[form]:
                    used[form] = used.get(form, 0) + 1
                    cells.setdefault(ex.stratum, []).append((ex, form))
            take = _water_fill(quota, {k: len(v) for k, v in cells.items()})
            new = sum(len(v) for v in seen_per_form.values()) - before
            if sum(take.values()) >= quota or new < draw // 20:
                break  # filled, or the category's space is nearly exhausted
        for k in sorted(cells):
            for ex, form in cells[k][: take[k]]:
                out.append(ex)
                taken_per_form[form] = taken_per_form.get(form, 0) + 1
    for ex in out:
        exclude.add(ex.target)
    return out


def make_splits(
    n_train: int,
    n_test: int = 20_000,
    seed: int = 0,
    n_valid: int | None = None,
    weights: dict[str, float] | None = None,
    zero_heavy_share: float = ZERO_HEAVY_SHARE,
    form_share: float = HELD_OUT_FORM_SHARE,
    min_form_seen: int = HELD_OUT_FORM_MIN_SEEN,
    list_short: bool = True,
) -> Splits:
    """Deterministic train / valid / test / listed splits (see the module docstring).

    ``form_share``, ``min_form_seen`` and ``list_short`` are the three safeguards that keep every
    held-out form learnable. ``form_share=1.0, min_form_seen=0, list_short=False`` switches them
    off: a naive split by value, which the training chapter uses to show what goes wrong.

    ``n_train`` counts all training examples, including the listed ones (so it must be at
    least ``len(listed_examples())``); ``n_valid`` defaults to ``n_test // 10``. Sizes are exact unless a
    category's space is too small to fill its share of the held-out sets (not the case for
    the default ranges). The chapter uses ``n_test=20_000``.
    """
    if not 0 < form_share <= 1 or min_form_seen < 0:
        raise ValueError(f"form_share must lie in (0, 1] and min_form_seen be >= 0, got {form_share}, {min_form_seen}")
    listed = listed_examples(short=list_short)
    for name, value in (("n_train", n_train), ("n_test", n_test), ("n_valid", n_valid)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if n_train < len(listed):
        raise ValueError(
            f"n_train={n_train} is smaller than the {len(listed)} listed expressions that training must contain"
        )
    n_valid = n_test // 10 if n_valid is None else n_valid
    rng = random.Random(seed)
    cats, _ = _check_categories(None, weights)
    exclude = {ex.target for ex in listed}
    # One stratified draw for both held-out sets, then a stratified split of it: validation then
    # has the test set's mix of categories and strata (two draws in a row would not, because the
    # form caps that the first draw uses up would steer the second).
    held_out = _held_out(n_test + n_valid, rng, cats, exclude, zero_heavy_share, {}, form_share, min_form_seen)
    keyed = sorted(held_out, key=lambda ex: (ex.category, ex.stratum, rng.random()))
    test, valid = [], []
    for i, ex in enumerate(keyed):  # systematic sampling: every stratum cell splits in the same ratio
        is_valid = n_valid and (i + 1) * n_valid // len(keyed) > i * n_valid // len(keyed)
        (valid if is_valid else test).append(ex)
    held = {ex.target for ex in test} | {ex.target for ex in valid}
    train = list(listed)
    while len(train) < n_train:
        batch = generate(max(1000, n_train - len(train)), rng, weights=weights, zero_heavy_share=zero_heavy_share)
        train.extend(ex for ex in batch if ex.target not in held)
    del train[n_train:]
    rng.shuffle(train)
    return Splits(train=train, valid=valid, test=test, listed=listed, seed=seed)


# ----------------------------------------------------------------------------- tokens and vocabularies

_WORD_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
_NO_SPACE_BEFORE = frozenset(",.;:!?)]}%-")
_NO_SPACE_AFTER = frozenset("([{-")


def chinese_tokens(text: str) -> list[str]:
    """Characters (whitespace is kept, and is an unknown token for the task's vocabulary)."""
    return list(text)


def english_tokens(text: str) -> list[str]:
    """Words and single punctuation marks: ``"thirty-five"`` -> ``["thirty", "-", "five"]``."""
    return _WORD_TOKEN.findall(text)


def detokenize_chinese(tokens: Iterable[str]) -> str:
    return "".join(tokens)


def detokenize_english(tokens: Iterable[str]) -> str:
    """Inverse of :func:`english_tokens` for the task's targets (and for ordinal prose
    punctuation): no space before ``, . ; : ! ? ) -`` and none after ``( -``."""
    out: list[str] = []
    for tok in tokens:
        if out and tok not in _NO_SPACE_BEFORE and out[-1] not in _NO_SPACE_AFTER:
            out.append(" ")
        out.append(tok)
    return "".join(out)


TOKENIZERS: dict[str, tuple[Callable[[str], list[str]], Callable[[Iterable[str]], str]]] = {
    "chars": (chinese_tokens, detokenize_chinese),
    "words": (english_tokens, detokenize_english),
}

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")


class Vocab:
    """Token <-> id map with fixed special ids ``PAD=0``, ``BOS=1``, ``EOS=2``.

    ``tokenizer`` is ``"chars"`` (one token per character, joined without spaces) or
    ``"words"`` (see :func:`english_tokens`). There is no unknown-token id: encoding text with
    a token outside the vocabulary raises ``ValueError``, because such input is outside the task.
    """

    PAD, BOS, EOS = PAD, BOS, EOS

    def __init__(self, tokens: Iterable[str], tokenizer: str = "chars", name: str = "vocabulary") -> None:
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {sorted(TOKENIZERS)}, got {tokenizer!r}")
        tokens = list(tokens)
        dup = {t for t in tokens if tokens.count(t) > 1} if len(set(tokens)) != len(tokens) else set()
        if dup or set(tokens) & set(SPECIALS):
            raise ValueError(f"tokens must be distinct and must not include {SPECIALS}: {sorted(dup | (set(tokens) & set(SPECIALS)))}")
        self.tokenizer = tokenizer
        self.name = name
        self.itos: list[str] = [*SPECIALS, *tokens]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        self._tokenize, self._detokenize = TOKENIZERS[tokenizer]

    @classmethod
    def build(cls, texts: Iterable[str], tokenizer: str = "chars", name: str = "vocabulary") -> "Vocab":
        """A vocabulary of every token in ``texts`` (sorted), e.g. from a TSV's sources."""
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {sorted(TOKENIZERS)}, got {tokenizer!r}")
        split = TOKENIZERS[tokenizer][0]
        found: set[str] = set()
        for text in texts:
            found.update(split(text))
        return cls(sorted(found - set(SPECIALS)), tokenizer, name)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos and self.tokenizer == other.tokenizer

    def __repr__(self) -> str:
        return f"Vocab({self.name!r}, {len(self)} tokens, tokenizer={self.tokenizer!r})"

    def tokenize(self, text: str) -> list[str]:
        return self._tokenize(text)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [BOS] if add_bos else []
        stoi = self.stoi
        for i, tok in enumerate(self._tokenize(text)):
            idx = stoi.get(tok)
            if idx is None or idx < len(SPECIALS):
                raise ValueError(
                    f"{tok!r} (token {i} of {text!r}) is not in the {self.name}: the input is outside "
                    f"the task this vocabulary was built for"
                )
            ids.append(idx)
        if add_eos:
            ids.append(EOS)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: stops at the first EOS, skips PAD and BOS (accepts a 1-D tensor)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        tokens = []
        for idx in ids:
            if idx == EOS:
                break
            if idx in (PAD, BOS):
                continue
            if not 0 <= idx < len(self.itos):
                raise ValueError(f"id {idx} is outside the {self.name} (size {len(self)})")
            tokens.append(self.itos[idx])
        return self._detokenize(tokens)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists and strings) for a checkpoint; :meth:`from_dict` restores it."""
        return {"tokens": self.itos[len(SPECIALS):], "tokenizer": self.tokenizer, "name": self.name, "specials": list(SPECIALS)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Vocab":
        missing = {"tokens", "tokenizer"} - set(data)
        if missing:
            raise ValueError(f"not a Vocab dict: missing keys {sorted(missing)}")
        if list(data.get("specials", SPECIALS)) != list(SPECIALS):
            raise ValueError(f"special tokens {data['specials']} differ from this version's {list(SPECIALS)}")
        return cls(data["tokens"], data["tokenizer"], data.get("name", "vocabulary"))


def _english_alphabet() -> list[str]:
    """Every English token the task can produce, found by converting covering expressions."""
    exprs = [Expression("cardinal", n) for n in range(1000)]
    exprs += [Expression("cardinal", 10**k) for k in (3, 6, 9, 12, 15)]
    exprs += [Expression("ordinal", n) for n in (*range(1, 1000), 1000, 10**6)]
    exprs += [Expression("fraction", (num, den)) for den in range(2, 100) for num in (1, 2)]
    exprs += [Expression("decimal", Decimal("-1.5")), Expression("percent", 5), Expression("money", 5)]
    exprs += [Expression("date", (1905, m, 1)) for m in range(1, 13)]
    tokens: set[str] = set()
    for e in exprs:
        tokens.update(english_tokens(zh.to_english(e)))
    return sorted(tokens)


def source_vocab() -> Vocab:
    """The Chinese character vocabulary of the task: 3 specials + the 26 characters of ``ZH_ALPHABET``."""
    return Vocab(zh.ZH_ALPHABET, "chars", "task's Chinese source vocabulary")


def target_vocab() -> Vocab:
    """The English token vocabulary of the task (every word, ``-`` and ``,``)."""
    return Vocab(_english_alphabet(), "words", "task's English target vocabulary")


def _max_lengths() -> tuple[int, int]:
    worst = [
        Expression("cardinal", zh.CARDINAL_MAX), Expression("money", zh.MONEY_MAX),
        Expression("ordinal", zh.ORDINAL_MAX), Expression("decimal", Decimal("-99999999.9999")),
        Expression("percent", Decimal("999.99")), Expression("fraction", (999, 99)),
        Expression("date", (1997, 9, 27)), Expression("date", (2077, 12, 27)),
    ]
    src = max(len(zh.to_chinese(e)) for e in worst)
    tgt = max(len(english_tokens(zh.to_english(e))) for e in worst)
    return src, tgt


# Longest source (characters) and target (tokens, without BOS/EOS) of the task: size
# positional tables from these (add 1 to the target for BOS or EOS).
MAX_SOURCE_LEN, MAX_TARGET_LEN = _max_lengths()


# ----------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """Padded tensors for one mini-batch (PAD = 0; masks are True at padding, PyTorch's convention).

    ``src`` (B, S): source ids, no BOS/EOS. ``tgt_in`` (B, T): BOS + target ids (decoder input).
    ``tgt_out`` (B, T): target ids + EOS (what the decoder must predict). ``categories``,
    ``strata``, ``sources``, ``targets``: the examples' fields, for evaluation.
    """

    src: Any
    tgt_in: Any
    tgt_out: Any
    src_key_padding_mask: Any
    tgt_key_padding_mask: Any
    categories: list[str] = field(default_factory=list)
    strata: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def n_target_tokens(self) -> int:
        """Non-padding target tokens (EOS included): the count a per-token loss averages over."""
        return int((~self.tgt_key_padding_mask).sum())

    def to(self, device: Any, non_blocking: bool = False) -> "Batch":
        moved = {
            k: getattr(self, k).to(device, non_blocking=non_blocking)
            for k in ("src", "tgt_in", "tgt_out", "src_key_padding_mask", "tgt_key_padding_mask")
        }
        return Batch(**moved, categories=self.categories, strata=self.strata, sources=self.sources, targets=self.targets)


def _collate(src_ids: Sequence[list[int]], tgt_ids: Sequence[list[int]], examples: Sequence[Example], device: Any) -> Batch:
    import torch

    if not examples:
        raise ValueError("cannot make a batch of zero examples")
    S = max(1, max(len(s) for s in src_ids))
    T = max(len(t) for t in tgt_ids) + 1
    src = torch.tensor([s + [PAD] * (S - len(s)) for s in src_ids], dtype=torch.long)
    tgt_in = torch.tensor([[BOS] + t + [PAD] * (T - 1 - len(t)) for t in tgt_ids], dtype=torch.long)
    tgt_out = torch.tensor([t + [EOS] + [PAD] * (T - 1 - len(t)) for t in tgt_ids], dtype=torch.long)
    batch = Batch(
        src=src, tgt_in=tgt_in, tgt_out=tgt_out,
        src_key_padding_mask=src == PAD, tgt_key_padding_mask=tgt_out == PAD,
        categories=[e.category for e in examples], strata=[e.stratum for e in examples],
        sources=[e.source for e in examples], targets=[e.target for e in examples],
    )
    return batch if device is None else batch.to(device)


def encode_batch(examples: Sequence[Example], src_vocab: Vocab, tgt_vocab: Vocab, device: Any = None) -> Batch:
    """Encode and pad a list of examples into one :class:`Batch` (on ``device`` if given)."""
    examples = list(examples)
    return _collate(
        [src_vocab.encode(e.source) for e in examples], [tgt_vocab.encode(e.target) for e in examples], examples, device
    )


class Batches:
    """Shuffled mini-batches over a fixed list of examples, encoded once.

    Each ``iter()`` is one epoch with a fresh order (seeded by ``seed`` and the epoch count,
    or set it with :meth:`set_epoch`). With ``bucket=True``, examples are sorted by length
    inside windows of 50 batches before they are cut into batches, so little compute is spent
    on padding; the batches' order is then shuffled. With ``world_size > 1`` every rank
    builds the same order and takes every ``world_size``-th batch, all ranks getting the same
    number of batches (for DistributedDataParallel). Example::

        batches = Batches(splits.train, source_vocab(), target_vocab(), batch_size=256)
        for epoch in range(3):
            for batch in batches:  # a new shuffle each epoch
                ...
    """

    def __init__(
        self,
        examples: Sequence[Example],
        src_vocab: Vocab,
        tgt_vocab: Vocab,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        bucket: bool = True,
        drop_last: bool = False,
        device: Any = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in 0 .. world_size-1 = {world_size - 1}, got {rank}")
        self.examples = list(examples)
        if not self.examples:
            raise ValueError("no examples to batch")
        self.src_ids = [src_vocab.encode(e.source) for e in self.examples]
        self.tgt_ids = [tgt_vocab.encode(e.target) for e in self.examples]
        self.batch_size, self.seed, self.shuffle, self.bucket = batch_size, seed, shuffle, bucket
        self.drop_last, self.device, self.rank, self.world_size = drop_last, device, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.examples)))
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if self.shuffle:
            rng.shuffle(order)
        if self.bucket:
            window = 50 * self.batch_size
            order = [
                i
                for start in range(0, len(order), window)
                for i in sorted(order[start : start + window], key=lambda i: (len(self.src_ids[i]), len(self.tgt_ids[i])))
            ]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle and self.bucket:
            rng.shuffle(batches)
        per_rank = len(batches) // self.world_size
        return batches[self.rank : per_rank * self.world_size : self.world_size] if self.world_size > 1 else batches

    def __len__(self) -> int:
        n = len(self.examples) // self.batch_size if self.drop_last else math.ceil(len(self.examples) / self.batch_size)
        return n // self.world_size

    def __iter__(self) -> Iterator[Batch]:
        batches = self._batches(self.epoch)
        self.epoch += 1
        for idx in batches:
            yield _collate(
                [self.src_ids[i] for i in idx], [self.tgt_ids[i] for i in idx], [self.examples[i] for i in idx], self.device
            )


def iterate_batches(examples: Sequence[Example], src_vocab: Vocab, tgt_vocab: Vocab, batch_size: int, **kwargs: Any) -> Iterator[Batch]:
    """One epoch of :class:`Batches` (for repeated epochs keep a ``Batches`` object: it encodes once)."""
    return iter(Batches(examples, src_vocab, tgt_vocab, batch_size, **kwargs))


# ----------------------------------------------------------------------------- bring your own data


def read_tsv(path: str | Path, category: str = "tsv") -> list[Example]:
    """Read sentence pairs from a UTF-8 file with one ``source<TAB>target`` pair per line.

    Blank lines are skipped; any other line must have exactly one tab and two non-empty
    fields, else ``ValueError`` names the file and line. ``stratum`` is the source's length
    bucket. Build vocabularies from the data itself::

        pairs = read_tsv("pairs.tsv")              # 我爱中国<TAB>I love China
        src_vocab = Vocab.build((p.source for p in pairs), "chars", "source vocabulary")
        tgt_vocab = Vocab.build((p.target for p in pairs), "words", "target vocabulary")
        batch = encode_batch(pairs[:32], src_vocab, tgt_vocab)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no TSV file at {path}")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(
                    f"{path}:{lineno}: expected 'source<TAB>target' (exactly one tab), found {len(fields) - 1} tabs: {line[:60]!r}"
                )
            source, target = fields
            if not source.strip() or not target.strip():
                raise ValueError(f"{path}:{lineno}: empty {'source' if not source.strip() else 'target'} in {line[:60]!r}")
            out.append(Example(source, target, category, length_bucket(source)))
    if not out:
        raise ValueError(f"{path} holds no sentence pairs")
    return out
