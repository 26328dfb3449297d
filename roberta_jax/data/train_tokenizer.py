"""`roberta-jax train-tokenizer`: a sentencepiece model (XLM-R layout: fairseq ids, `<mask>` last)
or a byte-level BPE (roberta-base layout) trained on the user's corpus.

Corpora come one document per line (Wikipedia and C4 dumps) as often as one sentence per line,
and sentencepiece silently drops every "sentence" longer than its max_sentence_length. So text
is cut into sentences, and sentences longer than `max_chars` into chunks at white space, before
the trainer sees it. The trainer gets a bounded sample of those sentences drawn uniformly from
the whole input, as XLM-R and fairseq do: every unit of input is read (in parallel) and keeps
the sentences with the smallest random keys; the merged sample is the `max_sentences` smallest
keys overall, which is a uniform sample without replacement.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import pathlib
import random
import re
import tempfile

from roberta_jax import fs
from roberta_jax.data.corpus import (
    ReadStats,
    list_units,
    not_utf8_message,
    process_context,
    read_unit,
)
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

TOKENIZER_TYPES = ("sentencepiece", "bpe")
SPM_MODEL_TYPES = ("unigram", "bpe")
MAX_CHARS = 2000          # a sentence longer than this is cut into chunks at white space
_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])[\"'\u201d\u2019)\]]*\s+(?=\S)")


def split_sentences(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """`text` cut after sentence-final punctuation followed by white space; pieces still longer
    than `max_chars` are cut at the last white space before the limit (or at the limit)."""
    if len(text) <= max_chars:
        return [text]
    out = []
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", max_chars // 2, max_chars)
            cut = cut if cut > 0 else max_chars
            out.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        if sentence:
            out.append(sentence)
    return out


@dataclasses.dataclass
class Sample:
    """A uniform sample of the input's sentences, and what it was drawn from."""
    sentences: list[str]
    positions: list[float]       # where each sentence was in the input, 0 (start) to 1 (end)
    total_sentences: int
    total_chars: int
    split_documents: int         # documents longer than max_chars, cut into pieces
    files: int

    @property
    def chars(self) -> int:
        return sum(map(len, self.sentences))

    def spread(self, parts: int = 10) -> list[float]:
        """Fraction of the sample from each of `parts` equal stretches of the input."""
        counts = [0] * parts
        for p in self.positions:
            counts[min(int(p * parts), parts - 1)] += 1
        return [c / max(len(self.positions), 1) for c in counts]

    def describe(self) -> str:
        share = ("all" if len(self.sentences) == self.total_sentences
                 else "a uniform sample of")
        return (f"training on {len(self.sentences):,} sentences ({self.chars / 1e6:,.1f}M "
                f"characters): {share} the {self.total_sentences:,} sentences "
                f"({self.total_chars / 1e6:,.1f}M characters) of {self.files} input"
                f"{'s' if self.files != 1 else ''}"
                + (f"; {self.split_documents:,} long documents were cut into sentences"
                   if self.split_documents else ""))


def sample_sentences(inputs: list[str], max_sentences: int, *, doc_format: str = "lines",
                     text_field: str = "text", tfds_data_dir: str | None = None,
                     tfds_split: str = "train", max_chars: int = MAX_CHARS, seed: int = 0,
                     workers: int | None = None, unit_bytes: int | None = None) -> Sample:
    """Up to `max_sentences` sentences drawn uniformly from all of `inputs`."""
    kwargs = {} if unit_bytes is None else {"unit_bytes": unit_bytes}
    units = list_units(inputs, doc_format, tfds_data_dir, tfds_split, **kwargs)
    total = sum(u.size for u in units) or 1
    starts, position = [], 0
    for u in units:
        starts.append(position / total)
        position += u.size
    jobs = []
    for i, unit in enumerate(units):
        # A unit can hold at most all the sample; it needs about its share (twice that, plus
        # slack, keeps the merged sample exact unless its sentences are far denser than
        # average).
        keep = max_sentences if len(units) == 1 else min(
            max_sentences, 2 * max_sentences * max(unit.size, 1) // total + 1000)
        jobs.append((unit, keep, seed * 1_000_003 + i, starts[i], unit.size / total,
                     doc_format, text_field, max_chars))
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        results = list(map(_sample_unit, jobs))
    else:
        with process_context().Pool(workers) as pool:
            results = pool.map(_sample_unit, jobs, chunksize=1)
    kept = heapq.nsmallest(max_sentences, (item for r in results for item in r[0]))
    stats = [r[1] for r in results]
    sample = Sample([text for _, text, _ in kept], [p for _, _, p in kept],
                    sum(s["sentences"] for s in stats), sum(s["chars"] for s in stats),
                    sum(s["split"] for s in stats), len({u.source for u in units}))
    if not sample.sentences:
        bad = [(u, s) for u, s in zip(units, stats) if s["undecodable"]]
        if bad:
            unit, s = bad[0]
            raise UserError(not_utf8_message(unit.source, f"{s['undecodable']} of {s['lines']} "
                                             f"lines, e.g. {s['example']}"))
        raise UserError(f"empty corpus: no text in {', '.join(sorted({u.source for u in units}))}")
    undecodable = sum(s["undecodable"] for s in stats)
    if undecodable:
        print(f"warning: skipped {undecodable} lines that are not UTF-8, e.g. "
              + next(s["example"] for s in stats if s["undecodable"]))
    return sample


def _sample_unit(job):
    """The `keep` sentences of a unit with the smallest random keys, as (key, text, position)."""
    unit, keep, seed, start, share, doc_format, text_field, max_chars = job
    rng = random.Random(seed)
    stats = ReadStats()
    heap: list[tuple[float, str, float]] = []   # (-key, text, position): a max-heap on key
    sentences = chars = split = 0
    size = max(unit.size, 1)
    for document in read_unit(unit, doc_format, text_field, stats):
        long_document = False
        for line in document:
            pieces = split_sentences(line, max_chars)
            long_document |= len(pieces) > 1
            for text in pieces:
                sentences += 1
                chars += len(text)
                key = rng.random()
                if len(heap) < keep:
                    heapq.heappush(heap, (-key, text, start + share * min(
                        stats.bytes_done / size, 1.0)))
                elif -heap[0][0] > key:
                    heapq.heapreplace(heap, (-key, text, start + share * min(
                        stats.bytes_done / size, 1.0)))
        split += long_document
    kept = [(-k, text, position) for k, text, position in heap]
    return kept, {"sentences": sentences, "chars": chars, "split": split, "lines": stats.lines,
                  "undecodable": stats.undecodable_lines,
                  "example": stats.examples[0] if stats.examples else ""}


def train_tokenizer(inputs: list[str], vocab_size: int, output: str, *,
                    kind: str = "sentencepiece", doc_format: str = "lines",
                    text_field: str = "text", max_sentences: int = 5_000_000,
                    spm_model_type: str = "unigram", character_coverage: float = 0.9995,
                    byte_fallback: bool = False, tfds_data_dir: str | None = None,
                    tfds_split: str = "train", max_chars: int = MAX_CHARS, seed: int = 0,
                    workers: int | None = None) -> Tokenizer:
    """Train on up to `max_sentences` sentences drawn uniformly from all of `inputs`; write to
    `output` (local or gs://); return it loaded.

    `vocab_size` is the model's vocabulary, specials and `<mask>` included.
    """
    if kind not in TOKENIZER_TYPES:
        raise UserError(f"unknown tokenizer type {kind!r}; use one of "
                        f"{', '.join(TOKENIZER_TYPES)}")
    if vocab_size < 16:
        raise UserError(f"--vocab-size {vocab_size} is too small")
    if max_sentences < 1:
        raise UserError(f"--max-sentences {max_sentences} must be at least 1")
    if kind == "sentencepiece" and spm_model_type not in SPM_MODEL_TYPES:
        raise UserError(f"unknown sentencepiece model type {spm_model_type!r}")
    out = fs.as_path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{fs.as_str(out)}: exists and is not empty; choose a new --output")
    sample = sample_sentences(inputs, max_sentences, doc_format=doc_format,
                              text_field=text_field, tfds_data_dir=tfds_data_dir,
                              tfds_split=tfds_split, max_chars=max_chars, seed=seed,
                              workers=workers)
    print(sample.describe())
    staging_parent = None if fs.is_remote(out) else _parent_of(out)
    with tempfile.TemporaryDirectory(dir=staging_parent) as staging:
        staging = pathlib.Path(staging)
        if kind == "sentencepiece":
            _train_sentencepiece(sample.sentences, vocab_size, staging, spm_model_type,
                                 character_coverage, byte_fallback, max_chars)
        else:
            _train_bpe(sample.sentences, vocab_size, staging)
        out.mkdir(parents=True, exist_ok=True)
        for f in staging.iterdir():
            if fs.is_remote(out):
                (out / f.name).write_bytes(f.read_bytes())
            else:
                os.replace(f, out / f.name)
    tokenizer = load_tokenizer(out)
    if tokenizer.vocab_size < vocab_size:
        print(f"warning: reached {tokenizer.vocab_size} ids of the {vocab_size} asked: the text "
              "has too few distinct pieces for more")
    print(f"trained a {kind} tokenizer with {tokenizer.vocab_size} ids -> {fs.as_str(out)}")
    return tokenizer


def _parent_of(out) -> pathlib.Path:
    parent = pathlib.Path(os.fspath(out)).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{fs.as_str(out)}: cannot create ({e.strerror})") from None
    return parent


def _train_sentencepiece(sentences, vocab_size, staging, model_type, coverage, byte_fallback,
                         max_chars):
    import sentencepiece
    try:
        # fairseq's layout adds <pad> and <mask> around the sentencepiece pieces.
        sentencepiece.SentencePieceTrainer.Train(
            sentence_iterator=iter(sentences), model_prefix=str(staging / "spm"),
            vocab_size=vocab_size - 2, model_type=model_type, character_coverage=coverage,
            byte_fallback=byte_fallback, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            input_sentence_size=0, shuffle_input_sentence=False,
            max_sentence_length=4 * max_chars + 16,  # bytes: room for any UTF-8 sentence we give
            minloglevel=2)
    except RuntimeError as e:
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
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

    from roberta_jax.data.tokenizer import ByteLevelBPETokenizer
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1, special_tokens=[BOS, PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences, trainer=trainer, length=len(sentences))
    # <mask> last, as in roberta-base; it swallows the space before it.
    tok.add_special_tokens([AddedToken(MASK, lstrip=True, normalized=False)])
    ByteLevelBPETokenizer(tok, "trained tokenizer").save(staging)

