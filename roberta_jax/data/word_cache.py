"""Byte-level BPE over a corpus through a cache of words: the ids `tokenizers` gives, faster.

The `tokenizers` library encodes about 0.3M tokens/s on one core, most of it spent per word
on work whose answer repeats (the pre-tokenizing regex, the merges, building an Encoding).
Corpus text is Zipfian: a few hundred thousand distinct words cover nearly all of it. So the
text is cut at single spaces, each piece looked up in a dictionary of the ids the library
gave it, and only unseen pieces go to the library.

Why cutting at a single space gives the library's own ids: GPT-2's pre-tokenizer pattern
(`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`) never
lets a match run on past a space, and a space standing alone between two non-spaces always
opens the match that follows it. Every word is then pre-tokenized and merged on its own, so
the ids of "a b c" are those of "a", " b" and " c" put end to end. Two spaces between words
also come out right (the first stands alone, as " " + the empty word between them). Texts that
would not cut this way go to the library whole: a run of three spaces or more, or two at the
end (`\\s+(?!\\S)` keeps such a run together), and any other white space (tabs, newlines,
non-breaking spaces). It also needs a tokenizer with nothing before the pre-tokenizer that
could join or move text (no normalizer, no non-special added tokens, no truncation); `usable`
checks the library's own description of the tokenizer, and any other keeps to the library.
tests/test_word_cache.py holds the ids to the library's on prose and on random strings.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import numpy as np

# Distinct words kept (~100 bytes each with their ids; 500k cover nearly every word of an
# English corpus): beyond this, new words go to the library every time they appear, so memory
# stays bounded whatever the corpus, in every prepare worker.
MAX_WORDS = 1 << 19


def usable(backend) -> bool:
    """Whether a `tokenizers.Tokenizer` encodes text word by word as the module doc needs."""
    config = json.loads(backend.to_str())
    pre = config.get("pre_tokenizer") or {}
    return (config.get("normalizer") is None
            and config.get("truncation") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and config.get("model", {}).get("type") == "BPE"
            and not config["model"].get("dropout")
            and all(t.get("special") for t in config.get("added_tokens", [])))


class WordCache:
    """Encodes texts as the library would, keeping each distinct word's ids.

    `encode_plain(texts)` is the library's batch encode (no special tokens added, special
    spellings read as text); it is called only for words not seen yet and for texts that
    cannot be cut at spaces.
    """

    def __init__(self, encode_plain: Callable[[list[str]], list[list[int]]],
                 max_words: int = MAX_WORDS):
        self._encode_plain = encode_plain
        self.max_words = max_words
        # A word opening a text and the same word after a space have different ids (byte-level
        # BPE spells the space into the word), so each has its own table; keys are the word
        # without the space, values its row in the store.
        self._opening: dict[str, int] = {}
        self._after_space: dict[str, int] = {}
        self._ids = np.empty(1 << 16, np.int32)    # every stored word's ids, end to end
        self._start = np.empty(1 << 12, np.int64)  # row -> where its ids begin in _ids
        self._count = np.empty(1 << 12, np.int64)  # row -> how many ids
        self._rows = 0                             # rows kept for good
        self._used = 0                             # ids kept for good
        self.words = 0                             # words (and whole texts) encoded so far
        self.library_calls = 0                     # of which the library encoded (misses)

    def __len__(self) -> int:
        return self._rows

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all texts end to end, int64; ids per text)."""
        # Entries used by this batch only (whole texts, words past max_words) go after the
        # kept ones and are overwritten by the next batch.
        self._batch_rows, self._batch_used = self._rows, self._used
        rows: list[int] = []             # each text's words, as store rows
        words_per_text = np.empty(len(texts), np.int64)
        # Not in the tables yet: (kind, word) -> number; the row list holds -1 - number until
        # all of them are encoded in one library call. Kinds: a text's opening word, a word
        # after a space, a whole text (its index: the library takes it as it is).
        unseen: dict[tuple[int, str | int], int] = {}
        opening, after_space = self._opening.get, self._after_space.get
        words_in_order: list[str | None] = []
        for i, text in enumerate(texts):
            # isprintable: no white space but " " (see the module doc for the spaces)
            if not text.isprintable() or "   " in text or text.endswith("  "):
                rows.append(_placeholder(unseen, (_WHOLE_TEXT, i)))
                words_in_order.append(None)
                words_per_text[i] = 1
                continue
            words = text.split(" ")
            rows.append(opening(words[0]))
            rows.extend(map(after_space, itertools.islice(words, 1, None)))
            words_in_order.extend(words)
            words_per_text[i] = len(words)
        if None in rows:
            openings = set((np.cumsum(words_per_text) - words_per_text).tolist())
            for k in [k for k, row in enumerate(rows) if row is None]:
                kind = _OPENING if k in openings else _AFTER_SPACE
                rows[k] = _placeholder(unseen, (kind, words_in_order[k]))
        rows_array = np.asarray(rows, np.int64)
        self.words += len(rows)
        self.library_calls += len(unseen)
        if unseen:
            self._resolve(rows_array, unseen, texts)
        counts = self._count[rows_array]
        ends = np.cumsum(counts)
        # Gather every word's ids in order: output position k reads _ids at its word's start
        # plus k's offset within the word.
        total = int(ends[-1]) if len(ends) else 0
        offset = np.repeat(self._start[rows_array] - (ends - counts), counts)
        flat = self._ids[offset + np.arange(total)].astype(np.int64)
        lengths = np.diff(ends[np.cumsum(words_per_text) - 1], prepend=0)
        return flat, lengths

    def _resolve(self, rows: np.ndarray, unseen: dict, texts: list[str]) -> None:
        """Encode the unseen words and whole texts in one library call, store them, and put
        their rows in place of the placeholders."""
        keys = list(unseen)  # in number order
        encoded = self._encode_plain([texts[key] if kind == _WHOLE_TEXT
                                      else " " + key if kind == _AFTER_SPACE else key
                                      for kind, key in keys])
        stored = np.empty(len(keys), np.int64)
        later = []
        for number, ((kind, key), ids) in enumerate(zip(keys, encoded)):
            if kind == _WHOLE_TEXT or self._rows >= self.max_words:
                later.append(number)
                continue
            stored[number] = self._store(ids, keep=True)
            (self._after_space if kind == _AFTER_SPACE else self._opening)[key] = stored[number]
        for number in later:  # after every kept entry, so that kept rows stay contiguous
            stored[number] = self._store(encoded[number], keep=False)
        waiting = rows < 0
        rows[waiting] = stored[-1 - rows[waiting]]

    def _store(self, ids: list[int], keep: bool) -> int:
        """Append a word's ids; kept ones stay for later batches, the others are overwritten
        by the next batch."""
        row, used = self._batch_rows, self._batch_used
        self._start = _room(self._start, row + 1)
        self._count = _room(self._count, row + 1)
        self._ids = _room(self._ids, used + len(ids))
        self._ids[used:used + len(ids)] = ids
        self._start[row], self._count[row] = used, len(ids)
        self._batch_rows, self._batch_used = row + 1, used + len(ids)
        if keep:
            self._rows, self._used = self._batch_rows, self._batch_used
        return row


_OPENING, _AFTER_SPACE, _WHOLE_TEXT = range(3)


def _placeholder(unseen: dict, key: tuple) -> int:
    return -1 - unseen.setdefault(key, len(unseen))


def _room(array: np.ndarray, size: int) -> np.ndarray:
    if size <= len(array):
        return array
    grown = np.empty(max(size, 2 * len(array)), array.dtype)
    grown[:len(array)] = array
    return grown
