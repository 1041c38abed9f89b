"""Tests of resnorm.tasks: converters and parsers (round trips, edge cases, exact strings)."""

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnorm import tasks
from resnorm.tasks import Expression, parse_chinese, parse_english, to_chinese, to_english
from resnorm.tasks import zh_numbers as zh

# ----------------------------------------------------------------------------- strategies


@st.composite
def zero_heavy_ints(draw, max_digits):
    """Integers whose digits are mostly 0 (each digit kept with probability 1/4): the hard case
    of the 零 rules."""
    k = draw(st.integers(1, max_digits))
    digits = str(draw(st.integers(0, 10**k - 1))).zfill(k)
    keep = draw(st.integers(0, 2**k - 1)) & draw(st.integers(0, 2**k - 1))
    return int("".join(d if keep >> i & 1 else "0" for i, d in enumerate(digits)))


def ints(lo, hi, max_digits):
    assert hi == 10**max_digits - 1  # every range of the task is "up to max_digits digits"
    return st.one_of(st.integers(lo, hi), zero_heavy_ints(max_digits).map(lambda n: max(n, lo)))


@st.composite
def decimals(draw, int_max, max_places, allow_negative, allow_integer):
    int_part = draw(ints(0, int_max, len(str(int_max))))
    places = draw(st.integers(0, max_places))
    frac = str(draw(st.integers(0, 10**places - 1))).zfill(places).rstrip("0") if places else ""
    negative = allow_negative and draw(st.booleans())
    value = Decimal(f"{'-' if negative else ''}{int_part}{'.' + frac if frac else ''}")
    if value == 0 and negative:
        value = -value  # Decimal("-0") is negative zero, tested separately
    if not allow_integer and value >= 0 and not frac:
        value = Decimal(f"{int_part}.5")
    return value


EXPRESSIONS = {
    "cardinal": ints(0, zh.CARDINAL_MAX, 16),
    "decimal": decimals(zh.DECIMAL_INT_MAX, zh.DECIMAL_MAX_PLACES, True, False),
    "fraction": st.tuples(st.integers(1, zh.FRACTION_NUMERATOR_MAX), st.integers(2, zh.FRACTION_DENOMINATOR_MAX)),
    "percent": decimals(zh.PERCENT_INT_MAX, zh.PERCENT_MAX_PLACES, False, True),
    "ordinal": ints(1, zh.ORDINAL_MAX, 8),
    "date": st.dates(dt.date(zh.YEAR_MIN, 1, 1), dt.date(zh.YEAR_MAX, 12, 31)),
    "money": ints(0, zh.MONEY_MAX, 12),
}
expressions = st.one_of(*(s.map(lambda v, c=c: Expression(c, v)) for c, s in EXPRESSIONS.items()))


# ----------------------------------------------------------------------------- round trips


@settings(max_examples=500, deadline=None)
@given(expressions, st.booleans())
def test_round_trip_chinese(expr, liang):
    text = to_chinese(expr, liang=liang)
    assert parse_chinese(text) == expr
    assert to_chinese(parse_chinese(text), liang=liang) == text
    assert set(text) <= set(zh.ZH_ALPHABET)


@settings(max_examples=500, deadline=None)
@given(expressions)
def test_round_trip_english(expr):
    text = to_english(expr)
    assert parse_english(text) == expr
    assert tasks.detokenize_english(tasks.english_tokens(text)) == text


@pytest.mark.parametrize("category", tasks.CATEGORIES)
def test_every_category_round_trips_on_generated_examples(category):
    for ex in tasks.generate(300, 7, categories=[category]):
        e_zh, e_en = parse_chinese(ex.source), parse_english(ex.target)
        assert e_zh == e_en and e_zh.category == category == ex.category
        assert to_english(e_zh) == ex.target


# ----------------------------------------------------------------------------- exact strings

CARDINALS = [
    (0, "零", "zero"),
    (10, "十", "ten"),
    (11, "十一", "eleven"),
    (20, "二十", "twenty"),
    (100, "一百", "one hundred"),
    (110, "一百一十", "one hundred ten"),
    (115, "一百一十五", "one hundred fifteen"),
    (1000, "一千", "one thousand"),
    (1001, "一千零一", "one thousand one"),
    (1010, "一千零一十", "one thousand ten"),
    (1100, "一千一百", "one thousand one hundred"),
    (10000, "一万", "ten thousand"),
    (10001, "一万零一", "ten thousand one"),
    (10010, "一万零一十", "ten thousand ten"),
    (12345, "一万二千三百四十五", "twelve thousand three hundred forty-five"),
    (100000, "十万", "one hundred thousand"),
    (100010, "十万零一十", "one hundred thousand ten"),
    (1000001, "一百万零一", "one million one"),
    (10000000, "一千万", "ten million"),
    (10**8, "一亿", "one hundred million"),
    (10**8 + 1, "一亿零一", "one hundred million one"),
    (100001000, "一亿零一千", "one hundred million one thousand"),
    (100100000, "一亿零一十万", "one hundred million one hundred thousand"),
    (110000000, "一亿一千万", "one hundred ten million"),
    (10**9, "十亿", "one billion"),
    (10**12, "一万亿", "one trillion"),
    (10**12 + 5 * 10**11, "一万亿五千亿", "one trillion five hundred billion"),
    (10**13, "十万亿", "ten trillion"),
    (10**15, "一千万亿", "one quadrillion"),
    (
        10**16 - 1,
        "九千九百九十九万亿九千九百九十九亿九千九百九十九万九千九百九十九",
        "nine quadrillion nine hundred ninety-nine trillion nine hundred ninety-nine billion "
        "nine hundred ninety-nine million nine hundred ninety-nine thousand nine hundred ninety-nine",
    ),
]


@pytest.mark.parametrize("value, chinese, english", CARDINALS)
def test_cardinal_exact_strings(value, chinese, english):
    assert to_chinese(value, "cardinal") == chinese
    assert to_english(value, "cardinal") == english
    assert parse_chinese(chinese) == Expression("cardinal", value) == parse_english(english)


OTHERS = [
    ("decimal", Decimal("-3.14"), "负三点一四", "minus three point one four"),
    ("decimal", Decimal("0.5"), "零点五", "zero point five"),
    ("decimal", Decimal("-0.05"), "负零点零五", "minus zero point zero five"),
    ("decimal", -300, "负三百", "minus three hundred"),
    ("decimal", Decimal("10.01"), "十点零一", "ten point zero one"),
    ("fraction", (2, 3), "三分之二", "two thirds"),
    ("fraction", (1, 2), "二分之一", "one half"),
    ("fraction", (3, 2), "二分之三", "three halves"),
    ("fraction", (1, 3), "三分之一", "one third"),
    ("fraction", (3, 4), "四分之三", "three fourths"),
    ("fraction", (1, 10), "十分之一", "one tenth"),
    ("fraction", (5, 21), "二十一分之五", "five twenty-firsts"),
    ("fraction", (20, 99), "九十九分之二十", "twenty ninety-ninths"),
    ("fraction", (100, 3), "三分之一百", "one hundred thirds"),
    ("percent", 35, "百分之三十五", "thirty-five percent"),
    ("percent", 0, "百分之零", "zero percent"),
    ("percent", Decimal("0.5"), "百分之零点五", "zero point five percent"),
    ("percent", 100, "百分之一百", "one hundred percent"),
    ("ordinal", 1, "第一", "first"),
    ("ordinal", 2, "第二", "second"),
    ("ordinal", 3, "第三", "third"),
    ("ordinal", 10, "第十", "tenth"),
    ("ordinal", 12, "第十二", "twelfth"),
    ("ordinal", 20, "第二十", "twentieth"),
    ("ordinal", 21, "第二十一", "twenty-first"),
    ("ordinal", 100, "第一百", "one hundredth"),
    ("ordinal", 101, "第一百零一", "one hundred first"),
    ("ordinal", 1000, "第一千", "one thousandth"),
    ("ordinal", 10001, "第一万零一", "ten thousand first"),
    ("ordinal", 10**6, "第一百万", "one millionth"),
    ("date", (2026, 11, 22), "二〇二六年十一月二十二日", "November twenty-second, two thousand twenty-six"),
    ("date", (2000, 1, 1), "二〇〇〇年一月一日", "January first, two thousand"),
    ("date", (2005, 12, 31), "二〇〇五年十二月三十一日", "December thirty-first, two thousand five"),
    ("date", (1998, 10, 10), "一九九八年十月十日", "October tenth, nineteen ninety-eight"),
    ("date", (1905, 7, 4), "一九〇五年七月四日", "July fourth, nineteen oh five"),
    ("date", (1900, 3, 30), "一九〇〇年三月三十日", "March thirtieth, nineteen hundred"),
    ("date", (2024, 2, 29), "二〇二四年二月二十九日", "February twenty-ninth, two thousand twenty-four"),
    ("date", (1100, 6, 20), "一一〇〇年六月二十日", "June twentieth, eleven hundred"),
    ("money", 350, "三百五十元", "three hundred fifty yuan"),
    ("money", 1, "一元", "one yuan"),
    ("money", 0, "零元", "zero yuan"),
    ("money", 10**12 - 1, "九千九百九十九亿九千九百九十九万九千九百九十九元",
     "nine hundred ninety-nine billion nine hundred ninety-nine million nine hundred ninety-nine thousand nine hundred ninety-nine yuan"),
]


@pytest.mark.parametrize("category, value, chinese, english", OTHERS)
def test_other_categories_exact_strings(category, value, chinese, english):
    expr = Expression(category, value)
    assert to_chinese(expr) == chinese
    assert to_english(expr) == english
    assert parse_chinese(chinese) == expr == parse_english(english)


# ----------------------------------------------------------------------------- 两


@pytest.mark.parametrize(
    "text, value",
    [("两百", 200), ("两千", 2000), ("两万", 20000), ("两亿", 2 * 10**8), ("两万亿", 2 * 10**12),
     ("两百零五", 205), ("三千两百", 3200), ("两千两百万", 22000000), ("二百", 200)],
)
def test_liang_parses_where_chinese_uses_it(text, value):
    assert parse_chinese(text) == Expression("cardinal", value)


def test_liang_generation_rule():
    assert to_chinese(200, "cardinal", liang=True) == "两百"
    assert to_chinese(2 * 10**12, "cardinal", liang=True) == "两万亿"
    assert to_chinese(2, "cardinal", liang=True) == "二"  # alone it is 二
    assert to_chinese(22, "cardinal", liang=True) == "二十二"  # never 两十
    assert to_chinese(220000, "cardinal", liang=True) == "二十二万"  # never 十两万
    assert to_chinese(200, "ordinal", liang=True) == "第二百"  # not in ordinals
    assert to_chinese(200, "money", liang=True) == "两百元"
    assert to_chinese(200, "percent", liang=True) == "百分之两百"
    sources = {ex.source for ex in tasks.generate(3000, 3, categories=["cardinal"])}
    assert any("两" in s for s in sources) and any(s.startswith("二百") or s.startswith("二千") for s in sources)


@pytest.mark.parametrize("text", ["两", "两十", "十两", "十两万", "第两百", "两分之一", "负两百", "两点五", "一九九八年两月一日"])
def test_liang_rejected_where_chinese_does_not_use_it(text):
    with pytest.raises(ValueError):
        parse_chinese(text)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", [Decimal("-0"), Decimal("-0.0"), "-0", -0.0])
def test_negative_zero_rejected(value):
    with pytest.raises(ValueError, match="negative zero"):
        Expression("decimal", value)
    with pytest.raises(ValueError, match="negative zero"):
        Expression("percent", value)


@pytest.mark.parametrize("text", ["负零", "负零点零", "负零点零零"])
def test_negative_zero_rejected_chinese(text):
    with pytest.raises(ValueError, match="negative zero"):
        parse_chinese(text)


@pytest.mark.parametrize("text", ["minus zero", "minus zero point zero"])
def test_negative_zero_rejected_english(text):
    with pytest.raises(ValueError, match="negative zero"):
        parse_english(text)


def test_unknown_character_named():
    with pytest.raises(ValueError, match=r"'x' at position 1"):
        parse_chinese("三x五")
    with pytest.raises(ValueError, match="'爱'"):
        parse_chinese("我爱中国")
    with pytest.raises(ValueError, match="' '"):
        parse_chinese("三 五")


@pytest.mark.parametrize(
    "text",
    ["", "一十五", "一千零零一", "零五", "三点一零", "三点", "点五", "五点五点五", "百", "一百二百", "一万一万",
     "五万亿亿", "一万一亿", "一千二百三十四万五千六百七十八亿", "十万零十", "一万零", "第零", "第", "元", "百分之",
     "分之一", "一分之一", "一百分之一", "三分之零", "二〇二三年二月二十九日", "一九〇〇年二月二十九日",
     "二〇二四年四月三十一日", "二〇二四年十三月一日", "二零二四年一月一日", "一〇九九年一月一日", "二一〇〇年一月一日",
     "二〇二四年一月", "负百分之五", "三点五元", "一万万", "百分之一千", "一亿亿元"],
)
def test_non_canonical_or_out_of_task_chinese_rejected(text):
    with pytest.raises(ValueError):
        parse_chinese(text)


@pytest.mark.parametrize(
    "text",
    ["", "one hundred and fifteen", "thirty five", "Thirty-five", "hundred", "one  hundred", "fifteen hundred",
     "zero point", "three point one zero", "one hundred first thirds", "two third", "one thirds", "two half",
     "one hundredth thirds", "one one hundredth", "a half", "November twenty-second 2026",
     "November twenty-second, twenty twenty-six", "February thirtieth, two thousand", "nineteen oh five",
     "minus five percent", "one point five yuan", "one thousand yuan yuan", "ten quadrillion", "first first"],
)
def test_non_canonical_or_out_of_task_english_rejected(text):
    with pytest.raises(ValueError):
        parse_english(text)


def test_non_canonical_error_says_what_is_expected():
    with pytest.raises(ValueError, match="expected '十五'"):
        parse_chinese("一十五")
    with pytest.raises(ValueError, match="expected 'one hundred fifteen'"):
        parse_english("one hundred fifteen".replace("one hundred", "one hundred zero"))


@pytest.mark.parametrize(
    "category, value",
    [("cardinal", -1), ("cardinal", 10**16), ("cardinal", 1.0), ("cardinal", True), ("ordinal", 0),
     ("ordinal", 10**8), ("money", 10**12), ("decimal", 5), ("decimal", 0), ("decimal", Decimal("1.23456")),
     ("decimal", 10**8 + 0.5), ("decimal", "nan"), ("percent", -5), ("percent", 1000), ("percent", "1.234"),
     ("fraction", (0, 3)), ("fraction", (1, 1)), ("fraction", (1, 100)), ("fraction", (1000, 3)), ("fraction", 0.5),
     ("date", (1099, 12, 31)), ("date", (2100, 1, 1)), ("date", (2023, 2, 29)), ("date", "2020-01-01"),
     ("weekday", 3)],
)
def test_bad_values_rejected(category, value):
    with pytest.raises((ValueError, TypeError)):
        Expression(category, value)


def test_converter_api_errors():
    with pytest.raises(TypeError, match="category"):
        to_chinese(5)
    with pytest.raises(ValueError, match="category"):
        to_english(Expression("cardinal", 5), "money")
    assert to_english(Decimal("3.10"), "decimal") == "three point one"  # values are normalised
    assert Expression("decimal", 0.1).value == Decimal("0.1")  # floats through their repr


def test_rules_table_is_computed_from_the_converters():
    table = tasks.rules_table()
    for piece in ["三分之二", "two thirds", "一亿零一千", "one hundred million one thousand", "两百",
                  "November twenty-second, two thousand twenty-six", "nineteen oh five", "三百五十元"]:
        assert piece in table
    assert len(table.splitlines()) == 12


# ----------------------------------------------------------------------------- exhaustive small spaces


def test_every_cardinal_below_ten_thousand_round_trips():
    for n in range(10_000):
        expr = Expression("cardinal", n)
        assert parse_chinese(to_chinese(expr)) == expr == parse_chinese(to_chinese(expr, liang=True))
        assert parse_english(to_english(expr)) == expr


@pytest.mark.parametrize("year", [1100, 1900, 1999, 2000, 2023, 2024, 2099])
def test_every_day_of_boundary_years_round_trips(year):
    day, n_days = dt.date(year, 1, 1), 0
    while day.year == year:
        expr = Expression("date", day)
        assert parse_chinese(to_chinese(expr)) == expr == parse_english(to_english(expr))
        day += dt.timedelta(days=1)
        n_days += 1
    assert n_days == (366 if year in (2000, 2024) else 365)  # 1900 is not a leap year, 2000 is


def test_every_small_fraction_round_trips():
    for den in range(2, 100):
        for num in range(1, 31):
            expr = Expression("fraction", (num, den))
            assert parse_chinese(to_chinese(expr)) == expr == parse_english(to_english(expr))


def test_the_task_is_unambiguous():
    """One target per source, and the sources of one target differ only by 两 for 二: the mapping
    is a function a model can learn, and no two categories or values share a string."""
    examples = tasks.generate(10_000, 13) + tasks.listed_examples()
    target_of, sources_of = {}, {}
    for e in examples:
        assert target_of.setdefault(e.source, e.target) == e.target
        sources_of.setdefault(e.target, set()).add(e.source.replace("两", "二"))
    assert all(len(s) == 1 for s in sources_of.values())
    assert len({parse_english(t) for t in sources_of}) == len(sources_of)
