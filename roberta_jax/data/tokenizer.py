"""Tokenizers behind one interface: GPT-2 byte-level BPE (roberta-base's vocab.json + merges.txt
or a tokenizer.json) and sentencepiece with fairseq's id offset (XLM-R, CamemBERT).

Special tokens and formatting are RoBERTa's: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3,
`<mask>` last; single `<s> A </s>`, pair `<s> A </s></s> B </s>`. The ids come from the files,
and are checked against that layout where the files say otherwise.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import re
import tempfile

import numpy as np

from roberta_jax import fs
from roberta_jax.data.word_cache import WordCache, adds_prefix_space
from roberta_jax.data.word_cache import usable as word_cache_usable
from roberta_jax.errors import UserError

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
SPM_FILE = "sentencepiece.bpe.model"
TRUNCATION = ("longest_first", "only_first", "only_second")


class Tokenizer:
    """Text <-> ids, plus RoBERTa's special-token formatting. Subclasses implement the pieces."""

    kind: str
    bos_id: int
    pad_id: int
    eos_id: int
    unk_id: int
    mask_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without special tokens."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_corpus_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Corpus text -> (ids of all texts concatenated, int64; ids per text). Special-token
        spellings in the text (`</s>`, `<mask>`) are ordinary text here, as fairseq treats
        them when it binarises a corpus: a document cannot forge a separator or a mask."""
        lists = self._encode_plain(texts)
        lengths = np.fromiter(map(len, lists), np.int64, count=len(lists))
        flat = np.fromiter(itertools.chain.from_iterable(lists), np.int64,
                           count=int(lengths.sum()))
        return self._plain_to_ids(flat), lengths

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _plain_to_ids(self, flat: np.ndarray) -> np.ndarray:
        return flat

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of `text` and, per id, the (start, end) characters of `text` it stands for, with
        surrounding white space left out (extractive QA maps answer spans through these)."""
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> None:
        """Write the files that `load_tokenizer` (and `transformers`) read back; `directory`
        may be on object storage (`gs://...`)."""
        if not fs.is_remote(directory):
            self._save_local(pathlib.Path(fs.as_path(directory)))
            return
        with tempfile.TemporaryDirectory() as staging:
            self._save_local(pathlib.Path(staging))
            target = fs.as_path(directory)
            target.mkdir(parents=True, exist_ok=True)
            for f in sorted(pathlib.Path(staging).iterdir()):
                (target / f.name).write_bytes(f.read_bytes())

    def _save_local(self, directory: pathlib.Path) -> None:
        raise NotImplementedError

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset((self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id))

    def with_specials(self, ids_a: list[int], ids_b: list[int] | None = None) -> list[int]:
        """`<s> A </s>` or `<s> A </s></s> B </s>`."""
        out = [self.bos_id, *ids_a, self.eos_id]
        if ids_b is not None:
            out += [self.eos_id, *ids_b, self.eos_id]
        return out

    def __call__(self, text: str, pair: str | None = None, max_length: int | None = None,
                 truncation: str = "longest_first") -> list[int]:
        """Model input ids for a sentence or a pair, truncated to `max_length` with specials."""
        ids_a = self.encode(text)
        ids_b = None if pair is None else self.encode(pair)
        if max_length is not None:
            ids_a, ids_b = truncate(ids_a, ids_b, max_length - (2 if ids_b is None else 4),
                                    truncation)
        return self.with_specials(ids_a, ids_b)

    def fingerprint(self) -> str:
        """Identifies the vocabulary, so data prepared with one tokenizer is not used with
        another."""
        import hashlib
        h = hashlib.sha256(self.kind.encode())
        for i in range(self.vocab_size):
            h.update(self.id_to_token(i).encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()[:16]

    def id_to_token(self, i: int) -> str:
        raise NotImplementedError

    word_prefix: str  # how a piece that begins a word is marked

    def word_starts(self) -> np.ndarray:
        """bool [vocab]: the token begins a word (whole-word masking); specials count as words."""
        starts = np.array([self.id_to_token(i).startswith(self.word_prefix)
                           for i in range(self.vocab_size)])
        starts[list(self.special_ids)] = True
        return starts


def truncate(ids_a, ids_b, budget: int, strategy: str):
    """Cut a sentence (pair) to `budget` content tokens; longest_first trims the longer one."""
    if strategy not in TRUNCATION:
        raise UserError(f"truncation {strategy!r}: use one of {', '.join(TRUNCATION)}")
    if budget < 0:
        raise UserError("max_length is too small to hold the special tokens")
    if ids_b is None:
        return ids_a[:budget], None
    excess = len(ids_a) + len(ids_b) - budget
    if excess <= 0:
        return ids_a, ids_b
    if strategy == "only_first":
        if excess > len(ids_a):
            raise UserError("only_first truncation cannot fit the pair: the second text is "
                            "too long")
        return ids_a[:len(ids_a) - excess], ids_b
    if strategy == "only_second":
        if excess > len(ids_b):
            raise UserError("only_second truncation cannot fit the pair: the first text is "
                            "too long")
        return ids_a, ids_b[:len(ids_b) - excess]
    a, b = len(ids_a), len(ids_b)
    for _ in range(excess):
        if a > b:
            a -= 1
        else:
            b -= 1
    return ids_a[:a], ids_b[:b]


def pad_batch(sequences: list[list[int]], length: int, pad_id: int):
    """-> (input_ids, attention_mask) int32 arrays [n, length]; longer sequences are an error."""
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        if len(seq) > length:
            raise UserError(f"sequence of {len(seq)} tokens does not fit length {length}")
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    return ids, mask


# ---------------------------------------------------------------------------- byte-level BPE

class ByteLevelBPETokenizer(Tokenizer):
    """GPT-2 byte-level BPE as roberta-base uses it, on the `tokenizers` library."""

    kind = "bpe"
    word_prefix = "\u0120"  # byte-level BPE's visible space

    def __init__(self, backend, source: str):
        self._tok = backend
        ids = {name: backend.token_to_id(name) for name in (BOS, PAD, EOS, UNK, MASK)}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise UserError(f"{source}: vocabulary lacks RoBERTa's special tokens {missing}")
        self.bos_id, self.pad_id, self.eos_id = ids[BOS], ids[PAD], ids[EOS]
        self.unk_id, self.mask_id = ids[UNK], ids[MASK]
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._word_cache: WordCache | bool | None = None  # built on first use

    @classmethod
    def from_files(cls, vocab_file, merges_file) -> ByteLevelBPETokenizer:
        import tokenizers
        from tokenizers import decoders, models, pre_tokenizers
        try:
            bpe = models.BPE.from_file(str(vocab_file), str(merges_file))
        except Exception as e:  # the library raises plain Exceptions for malformed files
            raise UserError(f"{vocab_file}: cannot read BPE vocab/merges ({e})") from None
        tok = tokenizers.Tokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        _add_roberta_specials(tok)
        return cls(tok, str(vocab_file))

    @classmethod
    def from_tokenizer_json(cls, file) -> ByteLevelBPETokenizer:
        import tokenizers
        try:
            tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:
            raise UserError(f"{file}: cannot read tokenizer.json ({e})") from None
        return cls(tok, str(file))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def encode_corpus_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # The library's own ids, through a cache of words where the tokenizer allows it
        # (data/word_cache.py): 2.5-3.9x the library alone in BENCHMARKS.md.
        if self._word_cache is None:
            self._word_cache = (WordCache(self._encode_plain,
                                          prefix_space=adds_prefix_space(self._tok))
                                if word_cache_usable(self._tok) else False)
        if self._word_cache is False:
            return super().encode_corpus_batch(texts)
        return self._word_cache.encode(texts)

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        fast = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # no offsets
        self._tok.encode_special_tokens = True
        try:
            return [e.ids for e in fast(texts, add_special_tokens=False)]
        finally:
            self._tok.encode_special_tokens = False

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = self._tok.encode(text, add_special_tokens=False)
        return encoding.ids, [_trim(text, start, end) for start, end in encoding.offsets]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(i)

    def _save_local(self, directory: pathlib.Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        vocab = self._tok.get_vocab(with_added_tokens=True)
        (directory / "vocab.json").write_text(
            json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])), ensure_ascii=False),
            encoding="utf-8")
        self._tok.model.save(str(directory), "tmp")  # writes tmp-vocab.json + tmp-merges.txt
        (directory / "tmp-merges.txt").replace(directory / "merges.txt")
        (directory / "tmp-vocab.json").unlink()
        self._tok.save(str(directory / "tokenizer.json"))
        _write_tokenizer_config(directory, "RobertaTokenizer")


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without its leading / trailing white space (unless it is nothing else)."""
    stripped = text[start:end].strip()
    if not stripped:
        return start, end
    start += len(text[start:end]) - len(text[start:end].lstrip())
    return start, start + len(stripped)


def _add_roberta_specials(tok) -> None:
    from tokenizers import AddedToken
    # <mask> swallows the space before it, so "a <mask>." tokenizes like roberta-base's.
    tok.add_special_tokens([
        AddedToken(BOS, normalized=False), AddedToken(PAD, normalized=False),
        AddedToken(EOS, normalized=False), AddedToken(UNK, normalized=False),
        AddedToken(MASK, lstrip=True, normalized=False)])


# ------------------------------------------------------------------------------ sentencepiece

_SPECIALS_RE = re.compile(r"(\s*<mask>|<s>|<pad>|</s>|<unk>)")


def _split_specials(text: str):
    """Special tokens written in the text stay whole, as in transformers; `<mask>` also takes
    the white space before it."""
    for i, part in enumerate(_SPECIALS_RE.split(text)):
        yield part.strip() if i % 2 else part, bool(i % 2)


class SentencePieceTokenizer(Tokenizer):
    """sentencepiece with fairseq's ids: specials 0-3, piece p -> p + 1, `<mask>` last."""

    kind = "sentencepiece"
    word_prefix = "\u2581"

    def __init__(self, model_file):
        import sentencepiece
        try:
            self._proto = pathlib.Path(model_file).read_bytes()
        except OSError as e:
            raise UserError(f"{model_file}: cannot read ({e.strerror})") from None
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except (OSError, RuntimeError) as e:
            raise UserError(f"{model_file}: not a sentencepiece model ({e})") from None
        self.threads = -1  # sentencepiece's batch encoding threads (-1: all cores)
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        # fairseq reserves ids 0-3 for <s> <pad> </s> <unk> and shifts every other piece by one.
        self._offset = 1
        self.mask_id = self._sp.GetPieceSize() + self._offset
        self.vocab_size = self.mask_id + 1
        self._special_to_id = {BOS: self.bos_id, PAD: self.pad_id, EOS: self.eos_id,
                               UNK: self.unk_id, MASK: self.mask_id}
        self._sp_specials = {self._sp.unk_id(): self.unk_id, self._sp.bos_id(): self.bos_id,
                             self._sp.eos_id(): self.eos_id}

    def _to_fairseq(self, piece: int) -> int:
        return self._sp_specials.get(piece, piece + self._offset)

    def encode(self, text: str) -> list[int]:
        ids = []
        for segment, is_special in _split_specials(text):
            if is_special:
                ids.append(self._special_to_id[segment])
            elif segment:
                ids += [self._to_fairseq(p) for p in self._sp.EncodeAsIds(segment)]
        return ids

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        return self._sp.Encode(texts, out_type=int, num_threads=self.threads)

    def _plain_to_ids(self, flat: np.ndarray) -> np.ndarray:
        table = np.arange(self._sp.GetPieceSize(), dtype=np.int64) + self._offset
        for piece, i in self._sp_specials.items():
            if piece >= 0:
                table[piece] = i
        return table[flat]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids, offsets, position = [], [], 0
        for segment, is_special in _split_specials(text):
            start = text.index(segment, position) if segment else position
            if is_special:
                ids.append(self._special_to_id[segment])
                offsets.append((start, start + len(segment)))
            elif segment:
                # sentencepiece reports UTF-8 byte offsets; map them back to characters.
                encoded = segment.encode("utf-8")
                char_at = {len(segment[:i].encode("utf-8")): i for i in range(len(segment) + 1)}
                for piece in self._sp.EncodeAsProto(segment).pieces:
                    begin = char_at.get(piece.begin, len(encoded[:piece.begin].decode(
                        "utf-8", "ignore")))
                    end = char_at.get(piece.end, len(encoded[:piece.end].decode(
                        "utf-8", "ignore")))
                    ids.append(self._to_fairseq(piece.id))
                    offsets.append(_trim(text, start + begin, start + end))
            position = start + len(segment)
        return ids, offsets

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        inverse = {v: k for k, v in self._sp_specials.items()}
        pieces, out = [], []
        for i in (int(i) for i in ids):
            if i in self.special_ids:
                if not skip_special_tokens:
                    out.append(self._sp.DecodeIds(pieces))
                    out.append(self.id_to_token(i))
                    pieces = []
                continue
            pieces.append(inverse.get(i, i - self._offset))
        out.append(self._sp.DecodeIds(pieces))
        return "".join(out)

    def id_to_token(self, i: int) -> str:
        names = {self.bos_id: BOS, self.pad_id: PAD, self.eos_id: EOS, self.unk_id: UNK,
                 self.mask_id: MASK}
        return names.get(i) or self._sp.IdToPiece(i - self._offset)

    def _save_local(self, directory: pathlib.Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / SPM_FILE
        if not target.is_file() or target.read_bytes() != self._proto:
            target.write_bytes(self._proto)
        _write_tokenizer_config(directory, "XLMRobertaTokenizer")


def _write_tokenizer_config(directory: pathlib.Path, tokenizer_class: str) -> None:
    # <mask> as a full AddedToken: transformers v5 no longer makes it swallow the space before it
    # by default, but roberta-base's and xlm-roberta's published tokenizers do.
    mask = {"__type": "AddedToken", "content": MASK, "lstrip": True, "rstrip": False,
            "normalized": False, "single_word": False, "special": True}
    config = {"tokenizer_class": tokenizer_class, "bos_token": BOS, "eos_token": EOS,
              "unk_token": UNK, "sep_token": EOS, "cls_token": BOS, "pad_token": PAD,
              "mask_token": mask, "model_max_length": 512}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n",
                                                      encoding="utf-8")


# ------------------------------------------------------------------------------------ loading

def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A sentencepiece `.model` file, or a directory with `sentencepiece.bpe.model`,
    `tokenizer.json`, or `vocab.json` + `merges.txt` (tried in that order); local or on object
    storage (`gs://...`)."""
    if fs.is_remote(path):
        return _load_remote(fs.as_str(path))
    path = pathlib.Path(fs.as_path(path))
    if not path.exists():
        raise UserError(f"{path}: no such tokenizer file or directory")
    if path.is_file():
        if path.suffix == ".model":
            return SentencePieceTokenizer(path)
        if path.name == "tokenizer.json":
            return ByteLevelBPETokenizer.from_tokenizer_json(path)
        raise UserError(f"{path}: not a tokenizer: give a sentencepiece .model file or a "
                        "directory with vocab.json + merges.txt, tokenizer.json or "
                        f"{SPM_FILE}")
    if (path / SPM_FILE).is_file():
        return SentencePieceTokenizer(path / SPM_FILE)
    if (path / "tokenizer.json").is_file():
        return ByteLevelBPETokenizer.from_tokenizer_json(path / "tokenizer.json")
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return ByteLevelBPETokenizer.from_files(path / "vocab.json", path / "merges.txt")
    raise UserError(f"{path}: no tokenizer files in this directory (looked for {SPM_FILE}, "
                    "tokenizer.json, vocab.json + merges.txt)")


_TOKENIZER_FILES = (SPM_FILE, "tokenizer.json", "vocab.json", "merges.txt",
                    "tokenizer_config.json")


def _load_remote(path: str) -> Tokenizer:
    """Copy the tokenizer's files (a few MB at most) to a temporary folder and load them."""
    remote = fs.as_path(path)
    try:
        if remote.is_file():
            files = [remote]
        elif remote.is_dir():
            files = [remote / name for name in _TOKENIZER_FILES if (remote / name).is_file()]
        else:
            raise UserError(f"{path}: no such tokenizer file or directory")
        with tempfile.TemporaryDirectory() as local:
            for f in files:
                (pathlib.Path(local) / f.name).write_bytes(f.read_bytes())
            target = pathlib.Path(local) / remote.name if remote.is_file() else local
            try:
                return load_tokenizer(target)
            except UserError as e:
                raise UserError(str(e).replace(str(local), path)) from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the tokenizer ({e})") from None
