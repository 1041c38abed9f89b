"""Tests of resnorm.tasks' data pipeline: generation, splits, vocabularies, batches, TSV loader."""

import json
import random
from collections import Counter

import pytest
import torch

from resnorm import tasks
from resnorm.tasks import BOS, EOS, PAD, Example, Vocab


@pytest.fixture(scope="module")
def small_splits():
    return tasks.make_splits(n_train=9000, n_test=700, seed=3)


# ----------------------------------------------------------------------------- generation


def test_generate_is_deterministic_and_covers_every_category():
    a, b = tasks.generate(2000, 11), tasks.generate(2000, 11)
    assert a == b and a != tasks.generate(2000, 12)
    assert set(e.category for e in a) == set(tasks.CATEGORIES)
    assert all(e.stratum in tasks.STRATA for e in a)
    rng = random.Random(5)
    assert tasks.generate(10, rng) != tasks.generate(10, rng)  # a Random is advanced in place


def test_generate_oversamples_zero_heavy_numbers():
    examples = tasks.generate(4000, 0, categories=["cardinal"])
    share = sum(e.stratum == "zero-heavy" for e in examples) / len(examples)
    # Uniform 1-16-digit numbers are almost never zero-heavy; the sampler makes ~30% of them so.
    assert 0.25 < share < 0.45
    assert all(tasks.is_zero_heavy(tasks.parse_chinese(e.source).value) == (e.stratum == "zero-heavy") for e in examples)


def test_generate_respects_categories_and_weights():
    examples = tasks.generate(500, 1, categories=["date", "money"], weights={"date": 1.0})
    assert {e.category for e in examples} == {"date"}
    with pytest.raises(ValueError, match="unknown categories"):
        tasks.generate(5, 0, categories=["roman"])
    with pytest.raises(ValueError, match="weights"):
        tasks.generate(5, 0, categories=["date"], weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="rng"):
        tasks.generate(5, "seed")


def test_strata_definitions():
    assert tasks.length_bucket("二分之一") == "len1-4"
    assert tasks.length_bucket("一万二千三百四十五") == "len9-16"
    assert tasks.make_example(tasks.Expression("cardinal", 100001000)).stratum == "zero-heavy"
    assert tasks.make_example(tasks.Expression("cardinal", 123456789)).stratum == "len17+"
    assert tasks.is_zero_heavy(1001) and tasks.is_zero_heavy(20050000) and not tasks.is_zero_heavy(1011)
    assert not tasks.is_zero_heavy(100)  # below four digits nothing counts as zero-heavy


def test_max_lengths_bound_generated_examples():
    src_vocab, tgt_vocab = tasks.source_vocab(), tasks.target_vocab()
    examples = tasks.generate(3000, 2) + tasks.listed_examples()
    assert max(len(e.source) for e in examples) <= tasks.MAX_SOURCE_LEN == 32
    assert max(len(tgt_vocab.encode(e.target)) for e in examples) <= tasks.MAX_TARGET_LEN == 31
    assert len(src_vocab.encode("九千九百九十九万亿九千九百九十九亿九千九百九十九万九千九百九十九")) == tasks.MAX_SOURCE_LEN


# ----------------------------------------------------------------------------- splits


def test_splits_are_held_out_by_expression(small_splits):
    s = small_splits
    train_sources = {e.source for e in s.train}
    train_targets = {e.target for e in s.train}
    for held in (s.test, s.valid):
        assert not train_sources & {e.source for e in held}
        assert not train_targets & {e.target for e in held}  # not even the 两/二 twin
    assert not {e.target for e in s.test} & {e.target for e in s.valid}
    assert len({e.source for e in s.test}) == len(s.test)


def test_listed_spaces_are_complete_and_in_training(small_splits):
    listed = small_splits.listed
    values = Counter((tasks.parse_chinese(e.source).category, tasks.parse_chinese(e.source).value) for e in listed)
    for category in ("cardinal", "money", "percent"):
        assert {v for (c, v) in values if c == category} >= set(range(1000))
        assert values[(category, 200)] == 2  # 二百 and 两百
    assert {v for (c, v) in values if c == "ordinal"} >= set(range(1, 1000))
    assert values[("ordinal", 200)] == 1  # never 第两百
    assert len({e.source for e in listed}) == len(listed)
    assert {e.source for e in listed} <= {e.source for e in small_splits.train}
    assert set(small_splits.eval_sets()) == {"test", "listed"}
    # the small families that the first split held out whole (issue #13) are listed now
    for source in ("八亿", "八亿元", "第三百万", "第八千万", "第十万", "二分之一", "五分之一", "负三", "三点一四"):
        assert source in {e.source for e in listed}, source


def test_every_short_expression_is_listed():
    """short_examples() enumerates what the generator can draw: no source of <= 4 characters escapes it."""
    listed = {e.source for e in tasks.listed_examples()}
    drawn = tasks.generate(150_000, 21)
    short = [e for e in drawn if len(e.source) <= tasks.data.SHORT_SOURCE_MAX]
    assert len(short) > 10_000
    assert not [e.source for e in short if e.source not in listed]
    assert all(len(e.source) <= 4 for e in tasks.data.short_examples())


def test_claims_behind_the_enumeration_and_the_forms():
    import re

    drawn = tasks.generate(150_000, 22)
    digits = lambda text: len(re.findall("[一二三四五六七八九两]", text))  # noqa: E731
    # a source of <= 4 characters writes at most two non-zero digits (short_examples relies on it)
    assert max(sum(c != "0" for c in str(tasks.parse_chinese(e.source).value).lstrip("-").replace(".", ""))
               for e in drawn if len(e.source) <= 4 and e.category in ("cardinal", "ordinal", "money")) <= 2
    # a non-date source of more than 8 characters has at least two digit characters (form_of relies on it)
    assert min(digits(e.source) for e in drawn if len(e.source) > 8 and e.category != "date") >= 2


def test_forms_separate_what_the_model_must_write():
    form = lambda s: tasks.data.form_of(tasks.make_example(tasks.parse_chinese(s)))  # noqa: E731
    assert form("五分之一") != form("五分之三")  # fifth vs fifths
    assert form("第八百万") != form("八百万")  # millionth vs million
    assert form("第八百万")[1] == form("第三百万")[1] == "第D百万"
    assert form("六十") == form("七十")  # sixty and seventy differ in a digit, not in shape
    assert tasks.data.source_skeleton("二〇二六年十一月二十二日") == "D年十D月D十D日"


def test_split_sizes_and_strata_coverage(small_splits):
    s = small_splits
    assert (len(s.train), len(s.test), len(s.valid)) == (9000, 700, 70)
    per_category = Counter(e.category for e in s.test)
    assert set(per_category) == set(tasks.CATEGORIES) and all(99 <= n <= 101 for n in per_category.values())
    train_cells = {(e.category, e.stratum) for e in s.train}
    test_cells = {(e.category, e.stratum) for e in s.test}
    assert test_cells <= train_cells
    # every expression of <= 4 characters is listed, so the held-out sets have no len1-4 stratum
    assert {e.stratum for e in s.test} == set(tasks.STRATA) - {"len1-4"}
    assert {e.stratum for e in s.train} == set(tasks.STRATA)


def test_splits_are_deterministic(small_splits):
    again = tasks.make_splits(n_train=9000, n_test=700, seed=3)
    assert again.train == small_splits.train and again.test == small_splits.test and again.valid == small_splits.valid
    other = tasks.make_splits(n_train=9000, n_test=700, seed=4)
    assert other.test != small_splits.test


def test_splits_do_not_depend_on_string_hashing(small_splits):
    import hashlib
    import os
    import subprocess
    import sys

    code = (
        "import hashlib; from resnorm import tasks; s = tasks.make_splits(n_train=9000, n_test=700, seed=3); "
        "print(hashlib.sha256(repr((s.train, s.valid, s.test)).encode()).hexdigest())"
    )
    here = hashlib.sha256(repr((small_splits.train, small_splits.valid, small_splits.test)).encode()).hexdigest()
    for hash_seed in ("12345",):  # pytest itself runs with a random hash seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == here


@pytest.fixture(scope="module")
def full_data():
    """The training chapter's real held-out sets (the full preset: 20,000 test, 2,000 validation)."""
    from resnorm import train

    return train.TaskData.build(train.make_config("full"))


def test_full_size_groups_are_large_enough(full_data):
    test = full_data.test
    assert len(test) == 20_000 and len(full_data.valid) == 2_000
    by_category, by_stratum = Counter(e.category for e in test), Counter(e.stratum for e in test)
    assert set(by_category) == set(tasks.CATEGORIES) and min(by_category.values()) >= 1000
    assert set(by_stratum) == set(tasks.STRATA) - {"len1-4"} and min(by_stratum.values()) >= 1000
    zero_heavy = Counter(e.category for e in test if e.stratum == "zero-heavy")
    assert set(zero_heavy) == {"cardinal", "decimal", "ordinal", "money"}


STREAM_SAMPLE = 200_000
MIN_FORM_PER_100K = 5  # the stated minimum frequency of every held-out form in the training stream


def test_every_held_out_form_is_trained_on_and_no_held_out_target_is(full_data):
    """On the real splits and the trainer's real stream (issue #13): no held-out target is ever
    trained on, every form of the test and validation sets occurs in training at least
    MIN_FORM_PER_100K times per 100,000 examples, and this sample alone shows more distinct values
    of every held-out form than the held-out sets take from it."""
    from resnorm import train

    stream = train.TrainStream(full_data.held_out, 1024, train.rank_seed(train.make_config("full"), 0),
                               full_data.src_vocab, full_data.tgt_vocab)
    sample = []
    for batch in stream.example_batches():
        sample += batch
        if len(sample) >= STREAM_SAMPLE:
            break
    held = full_data.valid + full_data.test
    held_targets = {e.target for e in held}
    assert not held_targets & {e.target for e in sample}
    form_of = tasks.data.form_of
    counts = Counter(form_of(e) for e in sample)
    per_100k = {f: counts[f] * 100_000 / len(sample) for f in {form_of(e) for e in held}}
    rare = {f: round(v, 1) for f, v in per_100k.items() if v < MIN_FORM_PER_100K}
    assert not rare, rare
    last_words = Counter((e.category, tasks.english_tokens(e.target)[-1]) for e in sample)
    unseen_words = {(e.category, tasks.english_tokens(e.target)[-1]) for e in held} - set(last_words)
    assert not unseen_words
    trained_values: dict = {}
    for e in sample:
        trained_values.setdefault(form_of(e), set()).add(e.target)
    held_per_form = Counter(form_of(e) for e in held)
    too_much = {f: (n, len(trained_values[f])) for f, n in held_per_form.items() if n >= len(trained_values[f])}
    assert not too_much, too_much


def test_held_out_sets_take_at_most_a_quarter_of_any_form(full_data):
    """Exactly, where a category's whole space can be listed: all 97,902 fractions, by form."""
    from resnorm.tasks import zh_numbers as zh

    sizes = Counter(tasks.data.form_of(tasks.make_example(tasks.Expression("fraction", (num, den))))
                    for den in range(zh.FRACTION_DENOMINATOR_MIN, zh.FRACTION_DENOMINATOR_MAX + 1)
                    for num in range(1, zh.FRACTION_NUMERATOR_MAX + 1))
    taken = Counter(tasks.data.form_of(e) for e in full_data.test + full_data.valid if e.category == "fraction")
    assert sum(taken.values()) >= 2_800
    over = {f: (n, sizes[f]) for f, n in taken.items() if n > tasks.data.HELD_OUT_FORM_SHARE * sizes[f]}
    assert not over, over


def test_make_splits_rejects_bad_sizes():
    with pytest.raises(ValueError, match="listed"):
        tasks.make_splits(n_train=100, n_test=10)
    with pytest.raises(ValueError, match="n_test"):
        tasks.make_splits(n_train=5000, n_test=-1)


# ----------------------------------------------------------------------------- vocabularies


def test_vocab_specials_and_round_trip():
    src_vocab, tgt_vocab = tasks.source_vocab(), tasks.target_vocab()
    for vocab in (src_vocab, tgt_vocab):
        assert vocab.itos[:3] == ["<pad>", "<bos>", "<eos>"] and (PAD, BOS, EOS) == (0, 1, 2)
    assert len(src_vocab) == 3 + len(tasks.zh_numbers.ZH_ALPHABET)
    for e in tasks.generate(2000, 9) + tasks.listed_examples():
        assert src_vocab.decode(src_vocab.encode(e.source)) == e.source
        ids = tgt_vocab.encode(e.target, add_bos=True, add_eos=True)
        assert ids[0] == BOS and ids[-1] == EOS and tgt_vocab.decode(ids) == e.target
    assert tgt_vocab.encode("thirty-five") == [tgt_vocab.stoi[t] for t in ("thirty", "-", "five")]
    assert tasks.english_tokens("May first, two thousand") == ["May", "first", ",", "two", "thousand"]


def test_vocab_decode_stops_at_eos_and_skips_pad_bos():
    v = tasks.target_vocab()
    ids = [BOS, *v.encode("two thirds"), EOS, *v.encode("five"), PAD]
    assert v.decode(ids) == "two thirds"
    assert v.decode(torch.tensor([PAD, BOS, *v.encode("one half")])) == "one half"
    with pytest.raises(ValueError, match="outside"):
        v.decode([len(v)])


def test_vocab_unknown_token_error():
    with pytest.raises(ValueError, match=r"'x'.*outside the task"):
        tasks.source_vocab().encode("三x")
    with pytest.raises(ValueError, match=r"'dozen'.*outside the task"):
        tasks.target_vocab().encode("two dozen")
    with pytest.raises(ValueError, match="outside the task"):
        tasks.source_vocab().encode("<eos>")  # special tokens are not text


def test_vocab_serialises():
    for vocab in (tasks.source_vocab(), tasks.target_vocab()):
        data = json.loads(json.dumps(vocab.to_dict()))
        assert Vocab.from_dict(data) == vocab and len(Vocab.from_dict(data)) == len(vocab)
    with pytest.raises(ValueError, match="missing"):
        Vocab.from_dict({"tokens": ["a"]})
    with pytest.raises(ValueError, match="tokenizer"):
        Vocab(["a"], tokenizer="bpe")


# ----------------------------------------------------------------------------- batches


def test_encode_batch_shapes_and_masks():
    examples = tasks.generate(64, 4)
    src_vocab, tgt_vocab = tasks.source_vocab(), tasks.target_vocab()
    b = tasks.encode_batch(examples, src_vocab, tgt_vocab)
    B = len(examples)
    S = max(len(e.source) for e in examples)
    T = max(len(tgt_vocab.encode(e.target)) for e in examples) + 1
    assert b.src.shape == (B, S) and b.tgt_in.shape == b.tgt_out.shape == (B, T)
    assert b.src.dtype == b.tgt_in.dtype == torch.long
    assert torch.equal(b.src_key_padding_mask, b.src == PAD) and torch.equal(b.tgt_key_padding_mask, b.tgt_out == PAD)
    assert (b.tgt_in[:, 0] == BOS).all()
    shifted = (b.tgt_out[:, :-1] != PAD) & (b.tgt_out[:, :-1] != EOS)  # teacher forcing: input = output shifted by one
    assert torch.equal(b.tgt_in[:, 1:][shifted], b.tgt_out[:, :-1][shifted])
    assert torch.equal(b.tgt_in[:, 1:] == PAD, b.tgt_out[:, :-1] <= EOS)
    lengths = (~b.tgt_key_padding_mask).sum(1)
    assert (b.tgt_out[torch.arange(B), lengths - 1] == EOS).all()
    assert b.n_target_tokens == int(lengths.sum())
    for i, e in enumerate(examples):
        assert src_vocab.decode(b.src[i]) == e.source and tgt_vocab.decode(b.tgt_out[i]) == e.target
    assert b.categories == [e.category for e in examples] and b.strata == [e.stratum for e in examples]
    assert len(b.to("cpu")) == B


def test_batches_cover_each_epoch_and_bucket_by_length():
    examples = tasks.generate(1000, 5)
    src_vocab, tgt_vocab = tasks.source_vocab(), tasks.target_vocab()
    batches = tasks.Batches(examples, src_vocab, tgt_vocab, batch_size=32, seed=1)
    epoch1 = [s for b in batches for s in b.sources]
    epoch2 = [s for b in batches for s in b.sources]
    assert sorted(epoch1) == sorted(e.source for e in examples) == sorted(epoch2)
    assert epoch1 != epoch2 and len(batches) == 32
    again = tasks.Batches(examples, src_vocab, tgt_vocab, batch_size=32, seed=1)
    assert [s for b in again for s in b.sources] == epoch1

    def padding(bucket):
        it = tasks.Batches(examples, src_vocab, tgt_vocab, batch_size=32, seed=1, bucket=bucket)
        return sum(int(b.src_key_padding_mask.sum()) for b in it)

    assert padding(True) < 0.5 * padding(False)


def test_batches_shard_across_ranks():
    examples = list({e.source: e for e in tasks.generate(1100, 6)}.values())[:1000]
    src_vocab, tgt_vocab = tasks.source_vocab(), tasks.target_vocab()
    shards = [
        [s for b in tasks.Batches(examples, src_vocab, tgt_vocab, 50, seed=2, rank=r, world_size=3) for s in b.sources]
        for r in range(3)
    ]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == 6 * 50
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
    with pytest.raises(ValueError, match="rank"):
        tasks.Batches(examples, src_vocab, tgt_vocab, 50, rank=3, world_size=3)
    with pytest.raises(ValueError, match="batch_size"):
        tasks.Batches(examples, src_vocab, tgt_vocab, 0)


# ----------------------------------------------------------------------------- bring your own data


def test_read_tsv_round_trip(tmp_path):
    examples = tasks.generate(200, 8)
    path = tmp_path / "pairs.tsv"
    lines = [f"{e.source}\t{e.target}" for e in examples] + ["", "我爱中国\tI love China."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs = tasks.read_tsv(path)
    assert [(p.source, p.target) for p in pairs[:-1]] == [(e.source, e.target) for e in examples]
    assert {p.category for p in pairs} == {"tsv"}
    src_vocab = Vocab.build((p.source for p in pairs), "chars", "source vocabulary")
    tgt_vocab = Vocab.build((p.target for p in pairs), "words", "target vocabulary")
    assert {"我", "爱", "中", "国"} <= set(src_vocab.itos) and {"China", "."} <= set(tgt_vocab.itos)
    batch = tasks.encode_batch(pairs, src_vocab, tgt_vocab)
    assert [tgt_vocab.decode(row) for row in batch.tgt_out] == [p.target for p in pairs]
    assert tgt_vocab.decode(tgt_vocab.encode("I love China.")) == "I love China."


@pytest.mark.parametrize(
    "content, message",
    [("三\tthree\nno tab here\n", ":2: expected"), ("三\tthree\t3\n", ":1: expected"), ("\tthree\n", ":1: empty source"),
     ("三\t \n", ":1: empty target"), ("\n\n", "no sentence pairs")],
)
def test_read_tsv_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        tasks.read_tsv(path)


def test_read_tsv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TSV"):
        tasks.read_tsv(tmp_path / "missing.tsv")


def test_example_is_a_plain_tuple():
    e = Example("三分之二", "two thirds", "fraction", "len1-4")
    source, target, category, stratum = e
    assert e.source == source == "三分之二" and e.stratum == stratum
