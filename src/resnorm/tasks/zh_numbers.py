"""Chinese numerical expressions and their English readings: converters and inverse parsers.

Every expression belongs to one of seven categories. Where Chinese or English allows several
ways of writing the same thing, this module picks one and sticks to it; :func:`rules_table`
renders the choices as a Markdown table whose examples are computed by the converters
themselves, so the table cannot drift from the code.

Categories, the type of ``Expression.value``, and the range the task uses:

    cardinal  int                         0 .. 10**16 - 1
    decimal   decimal.Decimal             negative integers and decimals: |integer part| < 10**8,
                                          at most 4 decimal places, no trailing zero
    fraction  (numerator, denominator)    numerator 1 .. 999, denominator 2 .. 99
    percent   decimal.Decimal             0 .. 999.99, at most 2 decimal places
    ordinal   int                         1 .. 10**8 - 1
    date      datetime.date               1100-01-01 .. 2099-12-31
    money     int (whole yuan)            0 .. 10**12 - 1

Chinese conventions
    * Four-digit groups 个, 万 (10**4), 亿 (10**8) and 万亿 (10**12): ``万亿`` is one unit, so
      1.5 * 10**12 is 一万亿五千亿 (not the nested 一万五千亿).
    * 零 rules: one 零 for each run of zero digits *between* non-zero digits, inside a group
      (一千零一 = 1001) or across groups (一万零一 = 10001, 一亿零一千 = 100001000); zeros at the
      end of a group or of the number are silent (一千一百 = 1100, 十万 = 100000).
    * 十 at the head of a number is written without 一 (十五, 十万, 十亿), but with it elsewhere
      (一百一十五, 十万零一十).
    * 两: the generator writes 两 instead of 二 half of the time when 二 is the first digit of
      a cardinal, an amount of money or a percentage and is directly followed by 百, 千, 万 or
      亿 (两百, 两千, 两万, 两亿, 两万亿). The parser accepts 两 in any position where 二 is
      directly followed by 百, 千, 万 or 亿 (三千两百) in those three categories; never in
      decimals, fractions, ordinals or dates (第二百, 二分之一), and never as 十两 or 两十.
    * Decimals: 点 then one digit per place, 零 for zero (零点五, 负三点一四). Negative: 负.
    * Fractions: 分母 分之 分子 (三分之二 = 2/3). Percentages: 百分之 + number. Denominators stop
      at 99 because 百分之三十五 is a percentage: a denominator of 100 would give one source two
      targets ("thirty-five percent" and "thirty-five hundredths").
    * Ordinals: 第 + cardinal (第二十一).
    * Dates: year read digit by digit with 〇 for zero, then 年, month, 月, day, 日
      (二〇二六年十一月二十二日). Only real calendar dates (二月二十九日 only in leap years).
    * Money: cardinal + 元, whole yuan only (no 角/分, no 块).

English conventions
    * Short scale: thousand, million, billion, trillion (10**12), quadrillion (10**15), in
      three-digit groups; no "and" ("one hundred fifteen"); tens and units hyphenated
      ("thirty-five"); empty groups silent ("ten thousand one").
    * Decimals: "minus" for negatives, "point", then one digit word per place
      ("zero point five", "minus three point one four").
    * Fractions: numerator cardinal + denominator ordinal, plural when the numerator is not
      one ("one third", "two thirds"); 2 is "half"/"halves"; 4 is "fourth" (not "quarter").
    * Percent: number + "percent" (one word). Money: number + "yuan" (no plural).
    * Ordinals: the last word of the cardinal becomes ordinal ("twenty-first",
      "one hundred first", "ten thousand first").
    * Dates: "Month day-ordinal, year" ("November twenty-second, two thousand twenty-six").
      Years 2000-2099 are read as cardinals ("two thousand five", "two thousand twenty-six");
      years 1100-1999 in pairs ("nineteen ninety-eight", "nineteen oh five",
      "nineteen hundred", "eleven hundred").

``tests/test_tasks_reference.py`` checks the converters against independent implementations:
English cardinals and ordinals against ``num2words`` (with its British "and" and its commas
removed), Chinese cardinals against ``cn2an``, which agrees on every number below 10**8 and
differs above only by the two conventions chosen here: cn2an omits the 零 for an empty 万 group
after 亿 (一亿一千 for 100001000, which a reader takes for 110000000) and nests 万 inside 亿.

The parsers accept exactly the strings the converters write (plus the 两 variants above) and
raise :class:`ValueError` with the reason otherwise, so ``parse_chinese`` doubles as the test
"is this input inside the task?". Negative zero (负零, "minus zero", ``Decimal("-0")``) is
rejected everywhere.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

CATEGORIES = ("cardinal", "decimal", "fraction", "percent", "ordinal", "date", "money")

CARDINAL_MAX = 10**16 - 1
DECIMAL_INT_MAX = 10**8 - 1
DECIMAL_MAX_PLACES = 4
FRACTION_NUMERATOR_MAX = 999
FRACTION_DENOMINATOR_MIN, FRACTION_DENOMINATOR_MAX = 2, 99
PERCENT_INT_MAX = 999
PERCENT_MAX_PLACES = 2
ORDINAL_MAX = 10**8 - 1
MONEY_MAX = 10**12 - 1
YEAR_MIN, YEAR_MAX = 1100, 2099

# Categories in which 两 may stand for 二 (see the module docstring).
LIANG_CATEGORIES = frozenset({"cardinal", "money", "percent"})

ZH_DIGITS = "零一二三四五六七八九"
ZH_YEAR_DIGITS = "〇一二三四五六七八九"
# Every character the task's Chinese uses, in a fixed order (the source vocabulary).
ZH_ALPHABET = "零一二三四五六七八九两十百千万亿〇负点分之第年月日元"
_ZH_SET = frozenset(ZH_ALPHABET)

MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)

# ----------------------------------------------------------------------------- the value type


@dataclass(frozen=True)
class Expression:
    """One numerical expression: a category and its value (types in the module docstring).

    The constructor checks the value against the task's ranges and normalises numbers given
    loosely: an ``int``, ``str`` or ``float`` becomes a ``Decimal`` for ``decimal`` and
    ``percent``, trailing zero decimal places are dropped (``Decimal("3.10")`` -> ``3.1``), and
    a ``(year, month, day)`` tuple becomes a ``datetime.date``.
    """

    category: str
    value: Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _check_value(self.category, self.value))

    @classmethod
    def _trusted(cls, category: str, value: Any) -> "Expression":
        """Skip the checks, for values the generator built inside the ranges (tests parse them back)."""
        expr = object.__new__(cls)
        object.__setattr__(expr, "category", category)
        object.__setattr__(expr, "value", value)
        return expr


def _as_decimal(value: Any, category: str) -> Decimal:
    if isinstance(value, bool):
        raise TypeError(f"a {category} value must be a number, got a bool")
    if isinstance(value, float):
        value = repr(value)
    try:
        d = value if isinstance(value, Decimal) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise TypeError(f"a {category} value must be a Decimal, int or numeric str, got {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"a {category} value must be finite, got {value!r}")
    if d.is_zero() and d.is_signed():
        raise ValueError(f"negative zero ({value!r}) is not an expression of this task: write zero without a sign")
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return Decimal(text)


def _places(d: Decimal) -> int:
    return max(0, -d.as_tuple().exponent)


def _check_int(value: Any, category: str, lo: int, hi: int, what: str = "value") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a {category} {what} must be an int, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"a {category} {what} must lie in {lo} .. {hi} (the task's range), got {value}")
    return value


def _check_value(category: str, value: Any) -> Any:
    if category == "cardinal":
        return _check_int(value, category, 0, CARDINAL_MAX)
    if category == "ordinal":
        return _check_int(value, category, 1, ORDINAL_MAX)
    if category == "money":
        return _check_int(value, category, 0, MONEY_MAX, "amount (whole yuan)")
    if category == "decimal":
        d = _as_decimal(value, category)
        if abs(int(d)) > DECIMAL_INT_MAX:
            raise ValueError(f"a decimal's integer part must be below {DECIMAL_INT_MAX + 1}, got {value!r}")
        if _places(d) > DECIMAL_MAX_PLACES:
            raise ValueError(f"a decimal has at most {DECIMAL_MAX_PLACES} decimal places, got {value!r}")
        if d > 0 and _places(d) == 0:
            raise ValueError(f"{value!r} is a whole positive number: that is a cardinal, not a decimal")
        if d == 0:
            raise ValueError("zero is a cardinal, not a decimal")
        return d
    if category == "percent":
        d = _as_decimal(value, category)
        if d < 0:
            raise ValueError(f"percentages in this task are not negative, got {value!r}")
        if int(d) > PERCENT_INT_MAX or _places(d) > PERCENT_MAX_PLACES:
            raise ValueError(
                f"a percentage must lie in 0 .. {PERCENT_INT_MAX}.99 with at most {PERCENT_MAX_PLACES} places, got {value!r}"
            )
        return d
    if category == "fraction":
        if not (isinstance(value, tuple) and len(value) == 2):
            raise TypeError(f"a fraction value must be a (numerator, denominator) tuple, got {value!r}")
        num = _check_int(value[0], category, 1, FRACTION_NUMERATOR_MAX, "numerator")
        den = _check_int(value[1], category, FRACTION_DENOMINATOR_MIN, FRACTION_DENOMINATOR_MAX, "denominator")
        return (num, den)
    if category == "date":
        if isinstance(value, tuple) and len(value) == 3:
            try:
                value = _dt.date(*value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{value!r} is not a calendar date: {err}") from None
        if not isinstance(value, _dt.date) or isinstance(value, _dt.datetime):
            raise TypeError(f"a date value must be a datetime.date, got {value!r}")
        if not YEAR_MIN <= value.year <= YEAR_MAX:
            raise ValueError(f"a date's year must lie in {YEAR_MIN} .. {YEAR_MAX}, got {value.year}")
        return value
    raise ValueError(f"unknown category {category!r}; the categories are {', '.join(CATEGORIES)}")


# ----------------------------------------------------------------------------- Chinese writing


def _group_zh(n: int, head: bool) -> str:
    """A four-digit group 1..9999; ``head`` means it starts the number (十五, not 一十五)."""
    out = []
    started = pending_zero = False
    for d, unit in ((n // 1000, "千"), (n // 100 % 10, "百"), (n // 10 % 10, "十"), (n % 10, "")):
        if d == 0:
            pending_zero = started  # a zero run counts only between non-zero digits
            continue
        if pending_zero:
            out.append("零")
            pending_zero = False
        out.append(unit if (d == 1 and unit == "十" and head and not started) else ZH_DIGITS[d] + unit)
        started = True
    return "".join(out)


# Lookup tables make generation fast: a cardinal is at most four lookups.
_ZH_GROUP = [""] + [_group_zh(n, head=False) for n in range(1, 10000)]
_ZH_GROUP_HEAD = [""] + [_group_zh(n, head=True) for n in range(1, 10000)]
_ZH_BIG = ((10**12, "万亿"), (10**8, "亿"), (10**4, "万"), (1, ""))


def cardinal_zh(n: int, liang: bool = False) -> str:
    """Chinese for 0 <= n < 10**16 (no range check; use :func:`to_chinese` for checked input)."""
    if n == 0:
        return "零"
    out = []
    started = gap = False
    for scale, suffix in _ZH_BIG:
        g = n // scale % 10000
        if g == 0:
            gap = started
            continue
        if started and (gap or g < 1000):
            out.append("零")
        out.append((_ZH_GROUP if started else _ZH_GROUP_HEAD)[g] + suffix)
        started, gap = True, False
    s = "".join(out)
    if liang and s[0] == "二" and len(s) > 1 and s[1] in "百千万亿":
        s = "两" + s[1:]
    return s


def _decimal_zh(d: Decimal) -> str:
    text = format(abs(d), "f")
    int_part, _, frac = text.partition(".")
    s = ("负" if d < 0 else "") + cardinal_zh(int(int_part))
    if frac:
        s += "点" + "".join(ZH_DIGITS[int(c)] for c in frac)
    return s


def _date_zh(date: _dt.date) -> str:
    year = "".join(ZH_YEAR_DIGITS[int(c)] for c in f"{date.year:04d}")
    return f"{year}年{cardinal_zh(date.month)}月{cardinal_zh(date.day)}日"


def _to_chinese(expr: Expression, liang: bool) -> str:
    return _chinese_of(expr.category, expr.value, liang)


def _chinese_of(c: str, v: Any, liang: bool) -> str:
    if c == "cardinal":
        return cardinal_zh(v, liang)
    if c == "ordinal":
        return "第" + cardinal_zh(v)
    if c == "money":
        return cardinal_zh(v, liang) + "元"
    if c == "decimal":
        return _decimal_zh(v)
    if c == "percent":
        s = _decimal_zh(v)
        if liang and s[0] == "二" and len(s) > 1 and s[1] in "百千万亿":
            s = "两" + s[1:]
        return "百分之" + s
    if c == "fraction":
        return f"{cardinal_zh(v[1])}分之{cardinal_zh(v[0])}"
    return _date_zh(v)  # "date": categories were checked by Expression


# ----------------------------------------------------------------------------- English writing

_EN_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_EN_SCALES = ((10**15, "quadrillion"), (10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))


def _en_below_100(n: int) -> str:
    if n < 20:
        return _EN_ONES[n]
    tens, ones = divmod(n, 10)
    return _EN_TENS[tens] + ("-" + _EN_ONES[ones] if ones else "")


def _en_below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    head = _EN_ONES[hundreds] + " hundred" if hundreds else ""
    if not rest:
        return head
    return (head + " " if head else "") + _en_below_100(rest)


_EN_1000 = [""] + [_en_below_1000(n) for n in range(1, 1000)]


def cardinal_en(n: int) -> str:
    """English for 0 <= n < 10**18 (no range check; use :func:`to_english` for checked input)."""
    if n == 0:
        return "zero"
    parts = []
    for scale, name in _EN_SCALES:
        g = n // scale % 1000
        if g:
            parts.append(_EN_1000[g] + " " + name)
    if n % 1000:
        parts.append(_EN_1000[n % 1000])
    return " ".join(parts)


_ORDINAL_IRREGULAR = {
    "one": "first", "two": "second", "three": "third", "five": "fifth",
    "eight": "eighth", "nine": "ninth", "twelve": "twelfth",
}


def _ordinal_word(word: str) -> str:
    if word in _ORDINAL_IRREGULAR:
        return _ORDINAL_IRREGULAR[word]
    if word.endswith("y"):
        return word[:-1] + "ieth"
    return word + "th"


def _ordinal_slow(n: int) -> str:
    text = cardinal_en(n)
    cut = max(text.rfind(" "), text.rfind("-")) + 1
    return text[:cut] + _ordinal_word(text[cut:])


_EN_ORDINAL_1000 = [""] + [_ordinal_slow(n) for n in range(1, 1000)]


def ordinal_en(n: int) -> str:
    """English ordinal for n >= 1: the cardinal's last word becomes ordinal."""
    low = n % 1000
    if low == 0:
        return _ordinal_slow(n)
    return (cardinal_en(n - low) + " " if n >= 1000 else "") + _EN_ORDINAL_1000[low]


def _denominator_en(den: int, plural: bool) -> str:
    if den == 2:
        return "halves" if plural else "half"
    return ordinal_en(den) + ("s" if plural else "")


def _decimal_en(d: Decimal) -> str:
    text = format(abs(d), "f")
    int_part, _, frac = text.partition(".")
    s = ("minus " if d < 0 else "") + cardinal_en(int(int_part))
    if frac:
        s += " point " + " ".join(_EN_ONES[int(c)] for c in frac)
    return s


def year_en(year: int) -> str:
    """2000-2099 as a cardinal ("two thousand twenty-six"), 1100-1999 in pairs ("nineteen oh five")."""
    if year >= 2000:
        return cardinal_en(year)
    high, low = divmod(year, 100)
    if low == 0:
        tail = "hundred"
    elif low < 10:
        tail = "oh " + _EN_ONES[low]
    else:
        tail = _en_below_100(low)
    return _EN_ONES[high] + " " + tail


def _date_en(date: _dt.date) -> str:
    return f"{MONTHS[date.month - 1]} {ordinal_en(date.day)}, {year_en(date.year)}"


def _to_english(expr: Expression) -> str:
    return _english_of(expr.category, expr.value)


def _english_of(c: str, v: Any) -> str:
    if c == "cardinal":
        return cardinal_en(v)
    if c == "ordinal":
        return ordinal_en(v)
    if c == "money":
        return cardinal_en(v) + " yuan"
    if c == "decimal":
        return _decimal_en(v)
    if c == "percent":
        return _decimal_en(v) + " percent"
    if c == "fraction":
        return cardinal_en(v[0]) + " " + _denominator_en(v[1], plural=v[0] != 1)
    return _date_en(v)


# ----------------------------------------------------------------------------- public converters


def _expression(value: Any, category: str | None) -> Expression:
    if isinstance(value, Expression):
        if category is not None and category != value.category:
            raise ValueError(f"category {category!r} given for an Expression of category {value.category!r}")
        return value
    if category is None:
        raise TypeError("give the category, e.g. to_chinese(35, 'percent'), or pass an Expression")
    return Expression(category, value)


def to_chinese(value: Any, category: str | None = None, *, liang: bool = False) -> str:
    """Write an expression in Chinese: ``to_chinese(Expression("fraction", (2, 3)))`` or
    ``to_chinese((2, 3), "fraction")`` -> ``"三分之二"``.

    ``liang=True`` writes 两 for a leading 二 before 百/千/万/亿 where the category allows it
    (cardinal, money, percent); elsewhere it has no effect.
    """
    expr = _expression(value, category)
    return _to_chinese(expr, liang and expr.category in LIANG_CATEGORIES)


def to_english(value: Any, category: str | None = None) -> str:
    """Write an expression in English: ``to_english(35, "percent")`` -> ``"thirty-five percent"``."""
    return _to_english(_expression(value, category))


# ----------------------------------------------------------------------------- Chinese parsing

_ZH_DIGIT_VALUE = {c: i for i, c in enumerate(ZH_DIGITS)}
_ZH_DIGIT_VALUE["两"] = 2
_ZH_SMALL_UNITS = {"十": 10, "百": 100, "千": 1000}


def _eval_zh_integer(s: str, whole: str) -> int:
    """Value of a Chinese integer, read leniently; the caller checks the canonical spelling."""
    if not s:
        raise ValueError(f"{whole!r}: a number is missing")
    total = group = 0
    digit = None
    last_scale = None
    i = 0
    while i < len(s):
        ch = s[i]
        if ch in _ZH_DIGIT_VALUE:
            if digit is not None:
                raise ValueError(f"{whole!r}: two digits in a row ({s[i - 1]}{ch}) without a unit between them")
            if ch != "零":
                digit = _ZH_DIGIT_VALUE[ch]
        elif ch in _ZH_SMALL_UNITS:
            if digit is None and ch != "十":
                raise ValueError(f"{whole!r}: {ch} needs a digit before it")
            group += (1 if digit is None else digit) * _ZH_SMALL_UNITS[ch]
            digit = None
        elif ch in "万亿":
            scale = 10**8 if ch == "亿" else 10**4
            if ch == "万" and s[i + 1 : i + 2] == "亿":
                scale, i = 10**12, i + 1
            value = group + (digit or 0)
            if value == 0:
                raise ValueError(f"{whole!r}: {ch} needs a number before it")
            if last_scale is not None and scale >= last_scale:
                raise ValueError(f"{whole!r}: the units 万亿, 亿, 万 must come in decreasing order")
            total += value * scale
            group, digit, last_scale = 0, None, scale
        else:
            raise ValueError(f"{whole!r}: the character {ch!r} cannot appear inside a number here")
        i += 1
    return total + group + (digit or 0)


def _normalize_liang(s: str) -> str:
    """Replace each 两 that stands for 二 (before 百/千/万/亿, not after 十) by 二."""
    chars = list(s)
    for i, ch in enumerate(chars):
        if ch == "两" and i + 1 < len(chars) and chars[i + 1] in "百千万亿" and (i == 0 or chars[i - 1] != "十"):
            chars[i] = "二"
    return "".join(chars)


_ZH_DATE = re.compile(r"^([〇一二三四五六七八九]{4})年(.+)月(.+)日$")


def _parse_zh_decimal_text(s: str, whole: str) -> Decimal:
    negative = s.startswith("负")
    body = s[1:] if negative else s
    int_text, dot, frac_text = body.partition("点")
    if dot and not frac_text:
        raise ValueError(f"{whole!r}: 点 must be followed by digits")
    if "点" in frac_text:
        raise ValueError(f"{whole!r}: more than one 点")
    bad = [c for c in frac_text if c not in ZH_DIGITS]
    if bad:
        raise ValueError(f"{whole!r}: after 点 only the digits {ZH_DIGITS} may follow, found {bad[0]!r}")
    int_value = _eval_zh_integer(int_text, whole)
    digits = "".join(str(_ZH_DIGIT_VALUE[c]) for c in frac_text)
    return Decimal(("-" if negative else "") + str(int_value) + ("." + digits if digits else ""))


def _parse_chinese_value(text: str) -> Expression:
    if text.startswith("第"):
        return Expression("ordinal", _eval_zh_integer(text[1:], text))
    if any(c in text for c in "年月日"):
        m = _ZH_DATE.match(text)
        if not m:
            raise ValueError(f"{text!r}: a date is written YYYY年M月D日 with the year in the digits {ZH_YEAR_DIGITS}")
        year = int("".join(str(ZH_YEAR_DIGITS.index(c)) for c in m.group(1)))
        month = _eval_zh_integer(m.group(2), text)
        day = _eval_zh_integer(m.group(3), text)
        try:
            date = _dt.date(year, month, day)
        except ValueError as err:
            raise ValueError(f"{text!r} is not a calendar date ({year}-{month}-{day}: {err})") from None
        return Expression("date", date)
    if text.endswith("元"):
        return Expression("money", _eval_zh_integer(text[:-1], text))
    if text.startswith("百分之"):
        return Expression("percent", _parse_zh_decimal_text(text[3:], text))
    if "分之" in text:
        den_text, _, num_text = text.partition("分之")
        den = _eval_zh_integer(den_text, text)
        num = _eval_zh_integer(num_text, text)
        return Expression("fraction", (num, den))
    if text.startswith("负") or "点" in text:
        return Expression("decimal", _parse_zh_decimal_text(text, text))  # rejects 负零 itself
    return Expression("cardinal", _eval_zh_integer(text, text))


def parse_chinese(text: str) -> Expression:
    """Parse a Chinese expression written the way this task writes it.

    >>> parse_chinese("三分之二")
    Expression(category='fraction', value=(2, 3))

    Raises ``ValueError`` naming the offending character for characters the task never uses,
    and explaining the expected spelling for strings that are not canonical (一十五, 三点一零).
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_chinese expects a str, got {type(text).__name__}")
    if not text:
        raise ValueError("empty input: expected a Chinese numerical expression")
    unknown = [(i, ch) for i, ch in enumerate(text) if ch not in _ZH_SET]
    if unknown:
        i, ch = unknown[0]
        others = sorted({c for _, c in unknown[1:]} - {ch})
        also = f" (also {', '.join(map(repr, others))})" if others else ""
        raise ValueError(
            f"character {ch!r} at position {i} of {text!r}{also} is not used by this task, so the input "
            f"is outside it (the task's characters are {ZH_ALPHABET})"
        )
    try:
        expr = _parse_chinese_value(text)
    except (TypeError, ValueError) as err:
        msg = str(err)
        raise ValueError(msg if text in msg else f"{text!r}: {msg}") from None
    liang = expr.category in LIANG_CATEGORIES
    canonical = _to_chinese(expr, liang=False)
    if (_normalize_liang(text) if liang else text) != canonical:
        raise ValueError(f"{text!r} is not written the way this task writes it: expected {canonical!r}")
    return expr


# ----------------------------------------------------------------------------- English parsing

_EN_WORD_VALUE = {w: i for i, w in enumerate(_EN_ONES)}
_EN_WORD_VALUE.update({w: 10 * i for i, w in enumerate(_EN_TENS) if w})
_EN_SCALE_VALUE = {name: scale for scale, name in _EN_SCALES}
_EN_UNORDINAL = {_ordinal_word(w): w for w in [*_EN_WORD_VALUE, "hundred", *_EN_SCALE_VALUE] if w != "zero"}
_DENOMINATORS = {}
for _d in range(FRACTION_DENOMINATOR_MIN, FRACTION_DENOMINATOR_MAX + 1):
    _DENOMINATORS[_denominator_en(_d, plural=False)] = _d
    _DENOMINATORS[_denominator_en(_d, plural=True)] = _d
_EN_DATE = re.compile(r"^(\w+) ([a-z-]+), ([a-z -]+)$")
_DAY_WORDS = {ordinal_en(d): d for d in range(1, 32)}
_YEAR_WORDS = {year_en(y): y for y in range(YEAR_MIN, YEAR_MAX + 1)}


def _eval_en_integer(words: list[str], whole: str) -> int:
    """Value of English cardinal words, read leniently; the caller checks the canonical spelling."""
    if not words:
        raise ValueError(f"{whole!r}: a number is missing")
    total = current = 0
    for word in words:
        parts = word.split("-")
        if all(p in _EN_WORD_VALUE for p in parts):
            current += sum(_EN_WORD_VALUE[p] for p in parts)
        elif word == "hundred":
            if current == 0:
                raise ValueError(f"{whole!r}: 'hundred' needs a number before it")
            current *= 100
        elif word in _EN_SCALE_VALUE:
            if current == 0:
                raise ValueError(f"{whole!r}: {word!r} needs a number before it")
            total += current * _EN_SCALE_VALUE[word]
            current = 0
        else:
            raise ValueError(f"{whole!r}: the word {word!r} cannot appear inside a number here")
    return total + current


def _parse_en_decimal_words(words: list[str], whole: str) -> Decimal:
    negative = bool(words) and words[0] == "minus"
    if negative:
        words = words[1:]
    if "point" in words:
        k = words.index("point")
        int_words, frac_words = words[:k], words[k + 1 :]
        if not frac_words:
            raise ValueError(f"{whole!r}: 'point' must be followed by digit words")
        bad = [w for w in frac_words if w not in _EN_ONES[:10]]
        if bad:
            raise ValueError(f"{whole!r}: after 'point' only the digit words zero .. nine may follow, found {bad[0]!r}")
        digits = "." + "".join(str(_EN_WORD_VALUE[w]) for w in frac_words)
    else:
        int_words, digits = words, ""
    return Decimal(("-" if negative else "") + str(_eval_en_integer(int_words, whole)) + digits)


def _parse_english_value(text: str, words: list[str]) -> Expression:
    last = words[-1]
    if last == "percent":
        return Expression("percent", _parse_en_decimal_words(words[:-1], text))
    if last == "yuan":
        return Expression("money", _eval_en_integer(words[:-1], text))
    if words[0] in MONTHS:
        m = _EN_DATE.match(text)
        if not m:
            raise ValueError(f"{text!r}: a date is written 'Month day-ordinal, year'")
        if m.group(2) not in _DAY_WORDS:
            raise ValueError(f"{text!r}: {m.group(2)!r} is not a day of the month (first .. thirty-first)")
        if m.group(3) not in _YEAR_WORDS:
            raise ValueError(f"{text!r}: {m.group(3)!r} is not a year {YEAR_MIN} .. {YEAR_MAX} as this task reads years")
        month, day, year = MONTHS.index(m.group(1)) + 1, _DAY_WORDS[m.group(2)], _YEAR_WORDS[m.group(3)]
        try:
            return Expression("date", _dt.date(year, month, day))
        except ValueError as err:
            raise ValueError(f"{text!r} is not a calendar date ({err})") from None
    if words[0] == "minus" or "point" in words:
        return Expression("decimal", _parse_en_decimal_words(words, text))  # rejects "minus zero" itself
    head, _, tail = last.rpartition("-")
    if last in _DENOMINATORS and (last.endswith("s") or last == "half" or words[:-1] == ["one"]):
        return Expression("fraction", (_eval_en_integer(words[:-1], text), _DENOMINATORS[last]))
    if tail in _EN_UNORDINAL:
        cardinal_words = words[:-1] + [(head + "-" if head else "") + _EN_UNORDINAL[tail]]
        return Expression("ordinal", _eval_en_integer(cardinal_words, text))
    return Expression("cardinal", _eval_en_integer(words, text))


def parse_english(text: str) -> Expression:
    """Parse an English reading written the way this task writes it.

    >>> parse_english("two thirds")
    Expression(category='fraction', value=(2, 3))
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_english expects a str, got {type(text).__name__}")
    if not text:
        raise ValueError("empty input: expected an English reading of a number")
    words = text.replace(",", "").split(" ")
    if "" in words:
        raise ValueError(f"{text!r}: words must be separated by exactly one space")
    try:
        expr = _parse_english_value(text, words)
    except (TypeError, ValueError) as err:
        msg = str(err)
        raise ValueError(msg if text in msg else f"{text!r}: {msg}") from None
    canonical = _to_english(expr)
    if text != canonical:
        raise ValueError(f"{text!r} is not written the way this task writes it: expected {canonical!r}")
    return expr


# ----------------------------------------------------------------------------- rules table


def rules_table() -> str:
    """The task's conventions as a Markdown table; every example is computed by the converters."""
    D = Decimal
    E = Expression
    rows = [
        ("cardinal", "0 .. 10<sup>16</sup> − 1",
         "four-digit groups 万, 亿, 万亿 against three-digit thousand, million, billion, trillion, quadrillion",
         [E("cardinal", 123456789), E("cardinal", 10**12 + 5 * 10**11)]),
        ("cardinal", "", "one 零 per run of inner zeros, inside a group or across groups; trailing zeros silent",
         [E("cardinal", 1001), E("cardinal", 10001), E("cardinal", 100001000)]),
        ("cardinal", "", "十 at the head without 一, elsewhere 一十; English without 'and', tens hyphenated",
         [E("cardinal", 15), E("cardinal", 115), E("cardinal", 100010)]),
        ("cardinal", "", "两 for a leading 二 before 百/千/万/亿, in half of the generated examples (二 in the rest); both parse",
         [E("cardinal", 200), E("cardinal", 2 * 10**8)]),
        ("decimal", r"negative, or with 1-4 places; \|integer part\| < 10<sup>8</sup>",
         "负 / minus, 点 / point, then one digit per place; no trailing zeros; negative zero rejected",
         [E("decimal", D("-3.14")), E("decimal", D("0.5")), E("decimal", -300)]),
        ("fraction", "numerator 1 .. 999, denominator 2 .. 99",
         "denominator first in Chinese, numerator first in English; 2 is half, 4 is fourth; plural when the numerator is not 1",
         [E("fraction", (2, 3)), E("fraction", (1, 2)), E("fraction", (21, 4))]),
        ("percent", "0 .. 999.99, at most 2 places", "百分之 + number / number + percent",
         [E("percent", 35), E("percent", D("2.5"))]),
        ("ordinal", "1 .. 10<sup>8</sup> − 1", "第 + cardinal / the last word becomes ordinal",
         [E("ordinal", 21), E("ordinal", 101), E("ordinal", 3)]),
        ("date", "1100-01-01 .. 2099-12-31",
         "year digit by digit with 〇, then 年 月 日; English years 2000-2099 as cardinals, 1100-1999 in pairs",
         [E("date", (2026, 11, 22)), E("date", (1998, 2, 1)), E("date", (1905, 7, 4))]),
        ("money", "0 .. 10<sup>12</sup> − 1 yuan", "whole yuan (no 角/分): cardinal + 元 / cardinal + yuan",
         [E("money", 350), E("money", 2000)]),
    ]
    lines = ["| category | range | rule | Chinese | English |", "|---|---|---|---|---|"]
    for category, value_range, rule, examples in rows:
        liang = "两" in rule or category == "money"
        zh = "<br>".join(to_chinese(e, liang=liang) for e in examples)
        en = "<br>".join(to_english(e) for e in examples)
        lines.append(f"| {category} | {value_range} | {rule} | {zh} | {en} |")
    return "\n".join(lines)
