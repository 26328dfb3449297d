"""Byte-level BPE over a corpus through a cache of words: the ids `tokenizers` gives, faster.

The `tokenizers` library encodes about 0.3M tokens/s on one core, most of it spent per word
on work whose answer repeats (the pre-tokenizing regex, the merges, building an Encoding).
Corpus text is Zipfian: most of its words have been seen before (93% in 52 MB of unrepeated
package docstrings, BENCHMARKS.md). So the text is cut at single spaces, each piece looked
up in a dictionary of the ids the library gave it, and only unseen pieces go to the library.

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
import re
from collections.abc import Callable

import numpy as np

# Distinct words (and, apart, pre-tokens) kept, ~100 bytes each with their ids: beyond this,
# new words go to the library every time they appear, so memory stays bounded whatever the
# corpus, in every prepare worker.
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


def adds_prefix_space(backend) -> bool:
    """Whether the pre-tokenizer puts a space before a text that lacks one: then a
    pre-token encoded alone is not what it is inside a word (see WordCache's cut_words)."""
    return bool((json.loads(backend.to_str()).get("pre_tokenizer") or {}).get(
        "add_prefix_space"))


class WordCache:
    """Encodes texts as the library would, keeping each distinct word's ids.

    `encode_plain(texts)` is the library's batch encode (no special tokens added, special
    spellings read as text); it is called only for words not seen yet and for texts that
    cannot be cut at spaces. With `cut_words`, an unseen ASCII word is cut into pre-tokens
    that are looked up in turn; that needs a tokenizer that does not add a prefix space.
    """

    def __init__(self, encode_plain: Callable[[list[str]], list[list[int]]],
                 max_words: int = MAX_WORDS, cut_words: bool = True):
        self._encode_plain = encode_plain
        self.max_words = max_words
        self.cut_words = cut_words
        # A word opening a text and the same word after a space have different ids (byte-level
        # BPE spells the space into the word), so each has its own table; keys are the word
        # without the space, values its row in the store.
        self._opening: dict[str, int] = {}
        self._after_space: dict[str, int] = {}
        self._pieces: dict[str, list[int]] = {}     # pre-token -> its ids (unseen words)
        self._ids = np.empty(1 << 16, np.int32)    # every stored word's ids, end to end
        self._start = np.empty(1 << 12, np.int64)  # row -> where its ids begin in _ids
        self._count = np.empty(1 << 12, np.int64)  # row -> how many ids
        self._rows = 0                             # rows kept for good
        self._used = 0                             # ids kept for good
        self.words = 0                             # words (and whole texts) encoded so far
        self.misses = 0                            # of which not in the tables

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
            number = unseen.setdefault
            for k in [k for k, row in enumerate(rows) if row is None]:
                kind = _OPENING if k in openings else _AFTER_SPACE
                rows[k] = -1 - number((kind, words_in_order[k]), len(unseen))
        rows_array = np.asarray(rows, np.int64)
        self.words += len(rows)
        self.misses += len(unseen)
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
        """Encode the unseen words and whole texts, store them, and put their rows in place
        of the placeholders. An unseen ASCII word is cut into its pre-tokens, which repeat far
        more than words do ("`foo_bar(x)`," is made of "`", "foo", "_", "bar", ...), each
        looked up in a second table; what is left goes to the library in one call."""
        keys = list(unseen)  # in number order
        to_library: dict[str, int] = {}  # text -> its place in the library call
        recipes = []                     # per key: its pre-tokens, or its library text
        for kind, key in keys:
            text = texts[key] if kind == _WHOLE_TEXT else " " + key if kind == _AFTER_SPACE \
                else key
            if self.cut_words and kind != _WHOLE_TEXT and text.isascii():
                pieces = _ASCII_PRE_TOKENS.findall(text)
                for piece in pieces:
                    if piece not in self._pieces:
                        to_library.setdefault(piece, len(to_library))
                recipes.append(pieces)
            else:
                to_library.setdefault(text, len(to_library))
                recipes.append(text)
        encoded = self._encode_plain(list(to_library)) if to_library else []
        for text, place in to_library.items():
            if (len(self._pieces) < self.max_words and text.isascii()
                    and _ASCII_PRE_TOKENS.fullmatch(text)):
                self._pieces[text] = encoded[place]
        kept, kept_ids, later, later_ids = [], [], [], []
        room = self.max_words - self._rows
        for number, ((kind, _), recipe) in enumerate(zip(keys, recipes)):
            if isinstance(recipe, str):
                ids = encoded[to_library[recipe]]
            else:
                ids = [i for piece in recipe for i in (self._pieces.get(piece)
                                                       or encoded[to_library[piece]])]
            if kind != _WHOLE_TEXT and len(kept) < room:
                kept.append(number)
                kept_ids.append(ids)
            else:
                later.append(number)
                later_ids.append(ids)
        stored = np.empty(len(keys), np.int64)
        # Kept entries first, so that they stay contiguous; the others are this batch's only.
        stored[kept] = self._store(kept_ids, keep=True)
        stored[later] = self._store(later_ids, keep=False)
        for number, row in zip(kept, stored[kept].tolist()):
            kind, key = keys[number]
            (self._after_space if kind == _AFTER_SPACE else self._opening)[key] = row
        waiting = rows < 0
        rows[waiting] = stored[-1 - rows[waiting]]

    def _store(self, entries: list[list[int]], keep: bool) -> np.ndarray:
        """Append entries (each a word's ids), returning their rows; kept ones stay for
        later batches, the others are overwritten by the next batch."""
        row, used = self._batch_rows, self._batch_used
        counts = np.fromiter(map(len, entries), np.int64, count=len(entries))
        total = int(counts.sum())
        self._start = _room(self._start, row + len(entries))
        self._count = _room(self._count, row + len(entries))
        self._ids = _room(self._ids, used + total)
        self._ids[used:used + total] = np.fromiter(itertools.chain.from_iterable(entries),
                                                   np.int32, count=total)
        rows = np.arange(row, row + len(entries))
        self._start[rows] = used + np.cumsum(counts) - counts
        self._count[rows] = counts
        self._batch_rows, self._batch_used = row + len(entries), used + total
        if keep:
            self._rows, self._used = self._batch_rows, self._batch_used
        return rows


_OPENING, _AFTER_SPACE, _WHOLE_TEXT = range(3)

# GPT-2's pre-tokenizer pattern on ASCII text, where \p{L} is [A-Za-z] and \p{N} is [0-9]
# whatever the Unicode version; the words cut with it hold no white space but a leading " ".
_ASCII_PRE_TOKENS = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def _placeholder(unseen: dict, key: tuple) -> int:
    return -1 - unseen.setdefault(key, len(unseen))


def _room(array: np.ndarray, size: int) -> np.ndarray:
    if size <= len(array):
        return array
    grown = np.empty(max(size, 2 * len(array)), array.dtype)
    grown[:len(array)] = array
    return grown
