"""Corpus encoding through the word cache gives exactly the ids the `tokenizers` library gives
the whole text, on real prose and on random strings built to hit the pre-tokenizer's edges
(runs of spaces, tabs, contractions, digits, marks, special-token spellings)."""

import random

import numpy as np
import pytest

from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.data.train_tokenizer import train_tokenizer
from roberta_jax.data.word_cache import WordCache, adds_prefix_space, usable
from roberta_jax.demo_corpus import stdlib_documents

tokenizers = pytest.importorskip("tokenizers")

CORPUS = [line.strip() for doc in stdlib_documents()[:300] for line in doc.text.splitlines()
          if line.strip()] + ["Naïve café, crème brûlée. 日本語 🤗 e-mails: a.b@example.com",
                              "it's 3.14159, they'll say; don't!"] \
    + ["    for  line  in   text:        yield  line   ", "\tnested\t\tcode\n  here  "] * 50
# (the last lines teach the vocabulary merged runs of spaces and tabs, which a wrong cut at
# spaces would split apart)

PIECES = [" ", "  ", "   ", "a", "bc", "The", "É", "日本", "1", "23", "'s", "'ll", "'", ".", ",",
          "!?", "\t", "\n", "\u00a0", "</s>", "<mask>", "😀", "ﬁ", "e\u0301", "-", "x'y", "\u2003"]


def random_texts(rng, n):
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("bpe") / "tok"
    train_tokenizer([str(corpus)], 1000, str(out), kind="bpe")
    return out


def reference(directory, add_prefix_space=False):
    """The library on the vocabulary files, built here: no added tokens, so `</s>` and
    `<mask>` written in text are text, as a corpus reads them."""
    from tokenizers import models, pre_tokenizers
    tok = tokenizers.Tokenizer(models.BPE.from_file(str(directory / "vocab.json"),
                                                    str(directory / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    return tok


def library_ids(tok, texts):
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def split(flat, lengths):
    return [part.tolist() for part in np.split(flat, np.cumsum(lengths)[:-1])] if len(lengths) \
        else []


@pytest.mark.parametrize("add_prefix_space", [False, True])
@pytest.mark.parametrize("max_words", [1 << 20, 5])
def test_cached_ids_equal_the_library_on_whole_texts(bpe_dir, add_prefix_space, max_words):
    ref = reference(bpe_dir, add_prefix_space)
    assert usable(ref)
    assert ref.token_to_id("ĠĠ") is not None  # a merged run of two spaces
    cache = WordCache(lambda texts: library_ids(ref, texts), max_words=max_words,
                      prefix_space=adds_prefix_space(ref))
    rng = random.Random(0)
    for batch in [CORPUS[:300], random_texts(rng, 500), CORPUS[:300], random_texts(rng, 500),
                  [], [""], ["  ", " ", "a  ", "  a", "a   b", "a  b"]]:
        flat, lengths = cache.encode(batch)
        assert flat.dtype == np.int64 and len(lengths) == len(batch)
        assert split(flat, lengths) == library_ids(ref, batch)
    assert len(cache) <= max_words
    assert cache.words > 2000, "the texts were not cut into words"


def test_the_tokenizer_uses_the_cache_and_keeps_its_ids(bpe_dir):
    ours = load_tokenizer(bpe_dir)
    texts = CORPUS + random_texts(random.Random(1), 2000)
    flat, lengths = ours.encode_corpus_batch(texts)
    assert ours._word_cache, "the word cache was not used for a plain byte-level BPE"
    assert split(flat, lengths) == library_ids(reference(bpe_dir), texts)


def test_a_tokenizer_the_cache_cannot_reproduce_keeps_to_the_library(bpe_dir):
    from tokenizers import normalizers
    ref = reference(bpe_dir)
    ref.normalizer = normalizers.Lowercase()  # could join or move text before the split
    assert not usable(ref)
    ours = load_tokenizer(bpe_dir)
    ours._tok.normalizer = normalizers.Lowercase()
    texts = ["Hello World", "ÉCOLE  normale", "A   b"]
    flat, lengths = ours.encode_corpus_batch(texts)
    assert ours._word_cache is False
    assert split(flat, lengths) == library_ids(ref, texts)
