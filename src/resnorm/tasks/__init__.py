"""The translation task of the training chapter: Chinese numerical expressions -> English words.

Seven categories (cardinal, decimal, fraction, percent, ordinal, date, money); the conventions
are in :mod:`resnorm.tasks.zh_numbers` and, as a Markdown table computed from the code, in
:func:`rules_table`.

Converters and parsers (:mod:`.zh_numbers`)::

    to_chinese(value, category, liang=False) -> str    to_chinese((2, 3), "fraction") == "三分之二"
    to_english(value, category) -> str                 to_english((2, 3), "fraction") == "two thirds"
    parse_chinese(text) -> Expression                  Expression(category="fraction", value=(2, 3))
    parse_english(text) -> Expression
    Expression(category, value)                        value types: see zh_numbers' docstring

Both parsers accept exactly what the converters write (plus 两 for 二 where Chinese allows
it) and raise ``ValueError`` with the reason otherwise (an unknown character is named;
negative zero is rejected), so ``parse_chinese`` answers "is this input inside the task?".

Data (:mod:`.data`)::

    Example(source, target, category, stratum)        a NamedTuple
    generate(n, rng, categories=None, weights=None)    random examples, zero-heavy oversampled
    make_splits(n_train, n_test=20_000, seed=0)        Splits(train, valid, test, listed)
    source_vocab(), target_vocab()                     Vocab: PAD=0, BOS=1, EOS=2, encode/decode,
                                                       to_dict/from_dict, Vocab.build(texts, "chars"|"words")
    encode_batch(examples, src_vocab, tgt_vocab, device=None) -> Batch
        Batch.src (B, S), .tgt_in (B, T) = BOS + target, .tgt_out (B, T) = target + EOS,
        .src_key_padding_mask / .tgt_key_padding_mask (True at PAD), .categories, .strata
    Batches(examples, src_vocab, tgt_vocab, batch_size, seed=0, bucket=True, rank=0, world_size=1)
        iterable of shuffled, length-bucketed batches, one epoch per iter()
    read_tsv(path) -> list[Example]                    bring your own sentence pairs (category "tsv")
    MAX_SOURCE_LEN, MAX_TARGET_LEN                     longest source (chars) / target (tokens)

A minimal training-data pipeline::

    from resnorm import tasks
    splits = tasks.make_splits(n_train=200_000, n_test=20_000, seed=0)
    src_vocab, tgt_vocab = tasks.source_vocab(), tasks.target_vocab()
    for batch in tasks.Batches(splits.train, src_vocab, tgt_vocab, batch_size=256):
        ...  # model(batch.src, batch.tgt_in, ...) -> logits; loss against batch.tgt_out
    for name, examples in splits.eval_sets().items():   # "test" (held out) and "listed"
        ...
"""

from .data import (
    BOS,
    EOS,
    MAX_SOURCE_LEN,
    MAX_TARGET_LEN,
    PAD,
    SPECIALS,
    STRATA,
    Batch,
    Batches,
    Example,
    Splits,
    Vocab,
    chinese_tokens,
    detokenize_english,
    encode_batch,
    english_tokens,
    form_of,
    generate,
    is_zero_heavy,
    iterate_batches,
    length_bucket,
    listed_examples,
    make_example,
    make_splits,
    read_tsv,
    short_examples,
    source_skeleton,
    source_vocab,
    stratum_of,
    target_vocab,
)
from .zh_numbers import (
    CATEGORIES,
    Expression,
    parse_chinese,
    parse_english,
    rules_table,
    to_chinese,
    to_english,
)

__all__ = [
    "BOS", "EOS", "PAD", "SPECIALS", "STRATA", "CATEGORIES", "MAX_SOURCE_LEN", "MAX_TARGET_LEN",
    "Batch", "Batches", "Example", "Expression", "Splits", "Vocab",
    "chinese_tokens", "english_tokens", "detokenize_english", "encode_batch", "form_of", "generate",
    "is_zero_heavy", "iterate_batches", "length_bucket", "listed_examples", "make_example",
    "make_splits", "parse_chinese", "parse_english", "read_tsv", "rules_table", "short_examples",
    "source_skeleton", "source_vocab",
    "stratum_of", "target_vocab", "to_chinese", "to_english",
]
