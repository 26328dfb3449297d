"""Our tokenizers give the ids transformers' RobertaTokenizerFast and XLMRobertaTokenizer give on
the same vocabulary files, with RoBERTa's special tokens and single/pair formatting."""

import argparse
import collections
import json as _json
import logging
import pathlib as _pathlib
import shutil

import pytest

import roberta_jax as rj
from roberta_jax.data.train_tokenizer import train_tokenizer

transformers = pytest.importorskip("transformers")

# Real prose (standard-library documentation) plus hand-picked hard cases.
DOCS = [line for module in (argparse, collections, _json, logging, _pathlib)
        for obj in vars(module).values() if isinstance(getattr(obj, "__doc__", None), str)
        for line in obj.__doc__.splitlines() if line.strip()]

CORPUS = DOCS + [
    "The quick brown fox jumps over the lazy dog.",
    "RoBERTa is a robustly optimized BERT pretraining approach.",
    "Naïve café owners serve crème brûlée in Zürich; résumé écrit à Paris.",
    "Numbers like 3.14159 and 2,718 appear in text, as do e-mails: a.b@example.com.",
    "日本語のテキストも少し含まれています。中文也有一点。",
    "Emoji 🤗 and symbols ∑ ∫ ≤ ≥ are rare but real.",
    "  Leading and trailing spaces  ",
    "Tabs\tand\nnewlines",
] * 20

TEXTS = [
    "This is an example sentence.",
    "Hello world! How are you doing today?",
    "Naïve café, crème brûlée. 日本語 🤗",
    "The capital of France is <mask>.",
    "<mask> at the start and <mask>at the end<mask>",
    "  double  spaces   and trailing ",
    "",
    "unseen-words like zxqv and QWERTY123",
]
PAIRS = [("Is this the first sentence?", "Yes, and this is the second."),
         ("A <mask> pair.", "Naïve second part 🤗")]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bpe_dir(corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe") / "tok"
    train_tokenizer([str(corpus_file)], 1000, str(out), kind="bpe")
    return out


@pytest.fixture(scope="module")
def spm_dir(corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("spm") / "tok"
    train_tokenizer([str(corpus_file)], 1000, str(out), kind="sentencepiece",
                    character_coverage=1.0)
    return out


# transformers v5 no longer makes <mask> swallow the space before it unless told; the published
# roberta-base and xlm-roberta tokenizers tell it to.
MASK = transformers.AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)


def _both_ways(ours, theirs):
    for text in TEXTS:
        assert ours(text) == theirs(text)["input_ids"], text
    for a, b in PAIRS:
        assert ours(a, b) == theirs(a, b)["input_ids"], (a, b)


def _only(files, src, dst):
    dst.mkdir()
    for name in files:
        shutil.copyfile(src / name, dst / name)
    return dst


def test_bpe_matches_roberta_tokenizer_fast_from_vocab_and_merges(bpe_dir, tmp_path):
    vocab_only = _only(["vocab.json", "merges.txt"], bpe_dir, tmp_path / "vocab-only")
    theirs = transformers.RobertaTokenizerFast.from_pretrained(vocab_only, mask_token=MASK)
    ours = rj.load_tokenizer(vocab_only)
    _both_ways(ours, theirs)
    assert ours.mask_id == ours.vocab_size - 1 == theirs.mask_token_id
    assert (ours.bos_id, ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2, 3)


def test_bpe_from_tokenizer_json_matches_too(bpe_dir, tmp_path):
    theirs = transformers.RobertaTokenizerFast.from_pretrained(
        _only(["vocab.json", "merges.txt"], bpe_dir, tmp_path / "vocab-only"), mask_token=MASK)
    _both_ways(rj.load_tokenizer(bpe_dir / "tokenizer.json"), theirs)


def test_sentencepiece_matches_xlm_roberta_tokenizer(spm_dir, tmp_path):
    theirs = transformers.XLMRobertaTokenizer.from_pretrained(
        _only(["sentencepiece.bpe.model"], spm_dir, tmp_path / "spm-only"), mask_token=MASK)
    ours = rj.load_tokenizer(spm_dir)
    _both_ways(ours, theirs)
    assert ours.mask_id == theirs.mask_token_id == ours.vocab_size - 1
    assert ours.vocab_size == 1000 == len(theirs)


@pytest.mark.parametrize("which", ["bpe_dir", "spm_dir"])
def test_decode_inverts_encode_on_seen_text(which, request):
    tok = rj.load_tokenizer(request.getfixturevalue(which))
    for text in ["The quick brown fox jumps over the lazy dog.", "Naïve café owners"]:
        assert tok.decode(tok(text)) == text


@pytest.mark.parametrize("which", ["bpe_dir", "spm_dir"])
def test_saved_tokenizer_loads_back_identically(which, request, tmp_path):
    tok = rj.load_tokenizer(request.getfixturevalue(which))
    tok.save(tmp_path / "copy")
    again = rj.load_tokenizer(tmp_path / "copy")
    assert again.fingerprint() == tok.fingerprint()
    assert all(again(t) == tok(t) for t in TEXTS)


def test_pair_truncation_strategies():
    from roberta_jax.data.tokenizer import truncate
    a, b = list(range(10)), list(range(100, 104))
    assert truncate(a, b, 8, "longest_first") == (a[:4], b)
    assert truncate(a, b, 8, "only_first") == (a[:4], b)
    assert truncate(a, b, 12, "only_second") == (a, b[:2])
    with pytest.raises(rj.UserError):
        truncate(a, b, 3, "only_first")
