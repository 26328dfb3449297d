"""`roberta-jax train-tokenizer`: a sentencepiece model (XLM-R layout: fairseq ids, `<mask>` last)
or a byte-level BPE (roberta-base layout) trained on the user's corpus."""

from __future__ import annotations

import itertools
import os
import pathlib
import re
import tempfile

from roberta_jax.data.corpus import list_units, read_unit
from roberta_jax.data.tokenizer import (
    BOS,
    EOS,
    MASK,
    PAD,
    SPM_FILE,
    UNK,
    Tokenizer,
    load_tokenizer,
)
from roberta_jax.errors import UserError

KINDS = ("sentencepiece", "bpe")
SPM_MODEL_TYPES = ("unigram", "bpe")


def _sentences(inputs, doc_format, text_field, limit):
    units = list_units(inputs, doc_format)
    sentences = (s for unit in units for doc in read_unit(unit, doc_format, text_field)
                 for s in doc)
    return itertools.islice(sentences, limit)


def train_tokenizer(inputs: list[str], vocab_size: int, output: str, *,
                    kind: str = "sentencepiece", doc_format: str = "lines",
                    text_field: str = "text", max_sentences: int = 5_000_000,
                    spm_model_type: str = "unigram", character_coverage: float = 0.9995,
                    byte_fallback: bool = False) -> Tokenizer:
    """Train on up to `max_sentences` sentences of `inputs`; write to `output`; return it loaded.

    `vocab_size` is the model's vocabulary, specials and `<mask>` included.
    """
    if kind not in KINDS:
        raise UserError(f"unknown tokenizer type {kind!r}; use one of {', '.join(KINDS)}")
    if vocab_size < 16:
        raise UserError(f"--vocab-size {vocab_size} is too small")
    out = pathlib.Path(output)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty; choose a new --output")
    sentences = _sentences(inputs, doc_format, text_field, max_sentences)
    with tempfile.TemporaryDirectory(dir=_parent_of(out)) as staging:
        staging = pathlib.Path(staging)
        if kind == "sentencepiece":
            _train_sentencepiece(sentences, vocab_size, staging, spm_model_type,
                                 character_coverage, byte_fallback)
        else:
            _train_bpe(sentences, vocab_size, staging)
        out.mkdir(parents=True, exist_ok=True)
        for f in staging.iterdir():
            os.replace(f, out / f.name)
    tokenizer = load_tokenizer(out)
    print(f"trained a {kind} tokenizer with {tokenizer.vocab_size} ids -> {out}")
    return tokenizer


def _parent_of(out: pathlib.Path) -> pathlib.Path:
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create ({e.strerror})") from None
    return parent


def _train_sentencepiece(sentences, vocab_size, staging, model_type, coverage, byte_fallback):
    import sentencepiece
    if model_type not in SPM_MODEL_TYPES:
        raise UserError(f"unknown sentencepiece model type {model_type!r}")
    counted = _CountingIterator(sentences)
    try:
        # fairseq's layout adds <pad> and <mask> around the sentencepiece pieces.
        sentencepiece.SentencePieceTrainer.Train(
            sentence_iterator=counted, model_prefix=str(staging / "spm"),
            vocab_size=vocab_size - 2, model_type=model_type, character_coverage=coverage,
            byte_fallback=byte_fallback, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            input_sentence_size=0, shuffle_input_sentence=True, train_extremely_large_corpus=False,
            minloglevel=2)
    except RuntimeError as e:
        if counted.count == 0:
            raise UserError("empty corpus: no text to train a tokenizer on") from None
        limit = re.search(r"value <= (\d+)", str(e))
        if limit:
            raise UserError(f"--vocab-size {vocab_size} is too large for this corpus; it "
                            f"supports at most {int(limit.group(1)) + 2}") from None
        raise UserError(f"sentencepiece training failed: {str(e).strip().splitlines()[-1]}") \
            from None
    os.replace(staging / "spm.model", staging / SPM_FILE)
    (staging / "spm.vocab").unlink()
    load_tokenizer(staging / SPM_FILE).save(staging)


def _train_bpe(sentences, vocab_size, staging):
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1, special_tokens=[BOS, PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    counted = _CountingIterator(sentences)
    tok.train_from_iterator(counted, trainer=trainer)
    if counted.count == 0:
        raise UserError("empty corpus: no text to train a tokenizer on")
    from tokenizers import AddedToken
    # <mask> last, as in roberta-base; it swallows the space before it.
    tok.add_special_tokens([AddedToken(MASK, lstrip=True, normalized=False)])
    from roberta_jax.data.tokenizer import ByteLevelBPETokenizer
    ByteLevelBPETokenizer(tok, "trained tokenizer").save(staging)


class _CountingIterator:
    def __init__(self, iterable):
        self._it = iter(iterable)
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._it)
        self.count += 1
        return item
