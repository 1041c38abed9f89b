"""resnorm.tasks' converters against implementations nobody here wrote.

English: ``num2words`` must agree on every cardinal and ordinal once its British "and" and
its group commas are dropped (the task's convention: "one hundred fifteen", no commas). Chinese: ``cn2an`` must agree below 10**8;
above, every disagreement must be one of the two documented ones: cn2an drops the 零 that
stands for an empty 万 group after 亿 (it writes 一亿一千 for 100001000, which reads as
110000000; the standard reading is 一亿零一千), and it nests 万 inside 亿 (一万五千亿) where
the task uses 万亿 as a unit (一万亿五千亿). cn2an must also read every Chinese cardinal below
10**12 that the task writes back to its value.
"""

import random

import pytest

from resnorm import tasks
from resnorm.tasks import zh_numbers as zh

num2words = pytest.importorskip("num2words", reason="pip install -r requirements.txt").num2words
cn2an = pytest.importorskip("cn2an", reason="pip install -r requirements.txt")


@pytest.fixture(scope="module")
def values():
    """Every number below 10,000, then random ones of 5..16 digits and the generator's own
    (a third of them zero-heavy). num2words is slowish, so the English tests use a subset."""
    rng = random.Random(0)
    values = list(range(0, 10_000))
    values += [rng.randrange(10 ** (k - 1), 10**k) for k in range(5, 17) for _ in range(150)]
    values += [e.value for e in (tasks.parse_chinese(x.source) for x in tasks.generate(1500, 0, ["cardinal"]))]
    return values


def english_subset(values):
    return values[:2000] + values[10_000:]


def american(text):
    """num2words' British reading without "and" and commas: the task's convention."""
    return text.replace(",", "").replace(" and ", " ")


def test_english_cardinals_match_num2words(values):
    assert num2words(1234) == "one thousand, two hundred and thirty-four"  # what american() undoes
    mismatches = [n for n in english_subset(values) if zh.cardinal_en(n) != american(num2words(n))]
    assert not mismatches, [(n, zh.cardinal_en(n)) for n in mismatches[:5]]


def test_english_ordinals_match_num2words(values):
    ordinals = [n for n in english_subset(values) if 1 <= n <= zh.ORDINAL_MAX]
    mismatches = [n for n in ordinals if zh.ordinal_en(n) != american(num2words(n, to="ordinal"))]
    assert not mismatches and len(ordinals) > 2500


def test_chinese_cardinals_match_cn2an_below_1e8(values):
    below = [n for n in values if n < 10**8]
    mismatches = [n for n in below if zh.cardinal_zh(n) != cn2an.an2cn(n, "low")]
    assert not mismatches, [(n, zh.cardinal_zh(n), cn2an.an2cn(n, "low")) for n in mismatches[:5]]


def test_chinese_cardinals_differ_from_cn2an_only_where_documented(values):
    kinds = {"empty 万 group after 亿": 0, "万亿 as a unit": 0}
    for n in (v for v in values if v >= 10**8):
        ours, theirs = zh.cardinal_zh(n), cn2an.an2cn(n, "low")
        if ours == theirs:
            continue
        if n >= 10**12:
            kinds["万亿 as a unit"] += 1  # the leading 万亿 group: a convention, both read the same value
            continue
        # Below 10**12 the only difference allowed: the 零 for an all-zero 万 group before a group >= 1000.
        assert n // 10**4 % 10**4 == 0 and n % 10**4 >= 1000, (n, ours, theirs)
        assert ours.replace("亿零", "亿", 1) == theirs, (n, ours, theirs)
        kinds["empty 万 group after 亿"] += 1
    assert zh.cardinal_zh(100001000) == "一亿零一千" and cn2an.an2cn(100001000, "low") == "一亿一千"
    assert kinds["万亿 as a unit"] > 0


def test_cn2an_reads_our_chinese_back(values):
    below = [n for n in values if n < 10**12][::3]
    wrong = [n for n in below if cn2an.cn2an(zh.cardinal_zh(n), "strict") != n]
    assert not wrong, wrong[:5]
    for text, value in [("两百", 200), ("两千", 2000), ("两万", 20000), ("两亿", 2 * 10**8)]:
        assert cn2an.cn2an(text, "smart") == value == tasks.parse_chinese(text).value
