"""Byte-level BPE over a corpus through a cache of words: the ids `tokenizers` gives, faster.

The `tokenizers` library encodes about 0.3M tokens/s on one core, most of it spent per word
on work whose answer repeats (the pre-tokenizing regex, the merges, building an Encoding).
Corpus text is Zipfian: most of its words have been seen before (93% in 52 MB of unrepeated
package docstrings, BENCHMARKS.md). So the text is cut at single spaces, each piece looked
up in a dictionary of the ids the library gave it. An unseen word is put together from its
pre-tokens, kept in a second dictionary, and only what neither holds goes to the library:
all of a batch's in one text, so that the library's cost per input is paid once per batch.

Why cutting at a single space gives the library's own ids: GPT-2's pre-tokenizer pattern
(`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`) never
lets a match run on past a space, and a space standing alone between two non-spaces always
opens the match that follows it. Every word is then pre-tokenized and merged on its own, so
the ids of "a b c" are those of "a", " b" and " c" put end to end. Two spaces between words
also come out right (the first stands alone, as " " + the empty word between them). Texts that
would not cut this way go to the library whole: a run of three spaces or more, or two at the
end (`\\s+(?!\\S)` keeps such a run together), and any other white space (tabs, newlines,
non-breaking spaces). It also needs a tokenizer with nothing before the pre-tokenizer that
could join or move text (no normalizer, no non-special added tokens, no truncation or
padding) and a line break's byte in its vocabulary (WordCache.__init__); `usable`
checks the library's own description of the tokenizer, and any other keeps to the library.
tests/test_word_cache.py holds the ids to the library's on prose and on random strings.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable

import numpy as np

# Distinct words kept (and, apart, pre-tokens), ~100 bytes each with their ids: beyond this,
# new words are put together anew every time they appear, so memory stays bounded whatever
# the corpus, in every prepare worker.
MAX_WORDS = 1 << 19


def usable(backend) -> bool:
    """Whether a `tokenizers.Tokenizer` encodes text word by word as the module doc needs."""
    config = json.loads(backend.to_str())
    pre = config.get("pre_tokenizer") or {}
    return (config.get("normalizer") is None
            and config.get("truncation") is None and config.get("padding") is None
            and backend.token_to_id(_BYTE_LEVEL_BREAK) is not None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and config.get("model", {}).get("type") == "BPE"
            and not config["model"].get("dropout")
            and all(t.get("special") for t in config.get("added_tokens", [])))


def adds_prefix_space(backend) -> bool:
    """Whether the pre-tokenizer puts a space before a text that lacks one (WordCache's
    prefix_space)."""
    return bool((json.loads(backend.to_str()).get("pre_tokenizer") or {}).get(
        "add_prefix_space"))


class WordCache:
    """Encodes texts as the library would, keeping each distinct word's ids.

    `encode_plain(texts)` is the library's batch encode (no special tokens added, special
    spellings read as text). It is called once per batch with unseen words, on what the
    tables lack joined into one text, and on the texts that cannot be cut at spaces.
    `prefix_space`: the tokenizer puts a space before a text that lacks one, so a text's
    opening word is encoded as if a space preceded it.
    """

    def __init__(self, encode_plain: Callable[[list[str]], list[list[int]]],
                 max_words: int = MAX_WORDS, prefix_space: bool = False):
        self._encode_plain = encode_plain
        self.max_words = max_words
        self._opening_prefix = " " if prefix_space else ""
        x_ids, x_break_ids, space_ids, empty_ids = encode_plain([" x", " x" + _BREAK, " ", ""])
        # What the tables lack is encoded in one text, a line break between each two parts:
        # the break stands alone as a pre-token between parts that hold no white space, and
        # its id (one byte's, which no part without that byte can hold) marks where each ends.
        self.joinable = x_break_ids[:-1] == x_ids and len(x_break_ids) == len(x_ids) + 1
        self._break_id = x_break_ids[-1]
        # A word opening a text and the same word after a space have different ids (byte-level
        # BPE spells the space into the word): keys are the word without the space, an
        # opening word marked with _OPENING before it; values are rows in the store.
        self._words = _Table(_WORD)
        self._pieces = _Table(_PIECE)              # pre-token -> row (see _resolve)
        self._ids = np.empty(1 << 16, np.int32)    # every stored entry's ids, end to end
        self._start = np.empty(1 << 12, np.int64)  # row -> where its ids begin in _ids
        self._count = np.empty(1 << 12, np.int64)  # row -> how many ids
        self._rows = 0                             # rows kept for good
        self._used = 0                             # ids kept for good
        self._batch_rows, self._batch_used = 0, 0  # and those used by this batch only
        self.words = 0                             # words (and whole texts) encoded so far
        self.misses = 0                            # of which not in the table
        # The empty word (a text opening with a space, two spaces in a row) cannot be joined
        # with others; its ids are known from the start.
        nothing, space = self._store(np.asarray(empty_ids + space_ids, np.int32),
                                     np.asarray([len(empty_ids), len(space_ids)]),
                                     keep=True).tolist()
        self._words[_OPENING], self._words[""] = nothing, space
        self._pieces[_BREAK] = nothing  # where one word's pre-tokens end

    def __len__(self) -> int:
        return len(self._words)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all texts end to end, int64; ids per text)."""
        # Entries used by this batch only (whole texts, words past max_words) go after the
        # kept ones and are overwritten by the next batch.
        self._batch_rows, self._batch_used = self._rows, self._used
        # Not in the tables yet: (kind, key) -> number; the rows hold -1 - number until all
        # of them are encoded. Kinds: a word, a whole text (its index: the library takes it
        # as it is), and in _resolve a pre-token.
        unseen: dict[tuple[int, str | int], int] = {}
        self._words.unseen = unseen
        # isprintable: no white space but " " (see the module doc for the spaces)
        whole = [i for i, text in enumerate(texts) if not text.isprintable() or "   " in text
                 or text.endswith("  ") or not self.joinable]
        cut = list(texts) if not whole else \
            [texts[i] for i in sorted(set(range(len(texts))) - set(whole))]
        words_per_text = np.ones(len(texts), np.int64)
        rows = np.empty(0, np.int64)
        if cut:
            # All texts' words in one split and one pass over the table; opening words are
            # the ones marked.
            words = (_OPENING + (" " + _OPENING).join(cut)).split(" ")
            rows = np.fromiter(map(self._words.__getitem__, words), np.int64, count=len(words))
            cut_words = np.fromiter(map(str.count, cut, itertools.repeat(" ")), np.int64,
                                    count=len(cut)) + 1
            if whole:
                is_cut = np.ones(len(texts), bool)
                is_cut[whole] = False
                words_per_text[is_cut] = cut_words
            else:
                words_per_text = cut_words
        if whole:
            # Each whole text is one entry, in its place among the words.
            places = np.cumsum(words_per_text)[whole] - 1
            numbers = [unseen.setdefault((_WHOLE_TEXT, i), len(unseen)) for i in whole]
            rows = np.insert(rows, places - np.arange(len(whole)), -1 - np.asarray(numbers))
        self.words += len(rows)
        self.misses += len(unseen)
        if unseen:
            self._resolve(rows, unseen, texts)
        flat, counts = self._gather(rows)
        ends = np.cumsum(counts)
        lengths = np.diff(ends[np.cumsum(words_per_text) - 1], prepend=0)
        return flat.astype(np.int64), lengths

    def _resolve(self, rows: np.ndarray, unseen: dict, texts: list[str]) -> None:
        """Encode the batch's unseen words and whole texts, store them, and put their rows in
        place of the placeholders. An unseen ASCII word is cut into its pre-tokens, which
        repeat far more than words do ("`foo_bar(x)`," is made of "`", "foo", "_", "bar",
        ...), each looked up in a second table; what is left goes to the library in one call."""
        keys = list(unseen)  # in number order
        cut, cut_numbers, other, other_numbers, whole, whole_numbers = [], [], [], [], [], []
        for number, (kind, key) in enumerate(keys):
            if kind == _WHOLE_TEXT:
                whole.append(texts[key])
                whole_numbers.append(number)
                continue
            word = self._opening_prefix + key[1:] if key[:1] == _OPENING else " " + key
            if word.isascii():
                cut.append(word)
                cut_numbers.append(number)
            else:
                other.append(word)
                other_numbers.append(number)
        # All cut words' pre-tokens in one pass, a line break standing alone between words.
        pieces = _ASCII_PRE_TOKENS.findall(_BREAK.join(cut))
        new_pieces: dict = {}
        self._pieces.unseen = new_pieces
        piece_rows = np.fromiter(map(self._pieces.__getitem__, pieces), np.int64,
                                 count=len(pieces))
        word_of_piece = np.cumsum(piece_rows == self._pieces[_BREAK])
        # The library: unseen pre-tokens and non-ASCII words in one text, then whole texts.
        # The text opens with a word that has its own space, so that a tokenizer adding a
        # prefix space adds none; its ids are dropped with it.
        new_pieces_text = [piece for _, piece in new_pieces]  # keys are (kind, pre-token)
        parts = new_pieces_text + other
        encoded = self._encode_plain([_BREAK.join([" x", *parts])] + whole)
        ids = np.asarray(encoded[0], np.int32)
        is_break = ids == self._break_id
        part_of_id = np.cumsum(is_break)
        counts = np.bincount(part_of_id[~is_break], minlength=len(parts) + 1)[1:]
        ids = ids[(part_of_id > 0) & ~is_break]
        pieces_end = int(counts[:len(new_pieces)].sum())
        # Unseen pre-tokens: kept in their table while there is room, else stored for this
        # batch only, and dropped once the words are put together from them.
        kept = min(len(new_pieces), max(self.max_words - len(self._pieces), 0))
        split = int(counts[:kept].sum())
        new_rows = self._store(ids[:split], counts[:kept], keep=True)
        self._pieces.update(zip(new_pieces_text, new_rows.tolist()))
        batch_only = self._batch_rows, self._batch_used
        new_rows = np.concatenate([new_rows, self._store(ids[split:pieces_end],
                                                         counts[kept:len(new_pieces)],
                                                         keep=False)])
        waiting = piece_rows < 0
        piece_rows[waiting] = new_rows[-1 - piece_rows[waiting]]
        cut_ids, per_piece = self._gather(piece_rows)
        self._batch_rows, self._batch_used = batch_only
        # Words: the cut ones, then the others; kept in the table while there is room.
        word_ids = np.concatenate([cut_ids, ids[pieces_end:]])
        word_counts = np.concatenate([
            np.bincount(word_of_piece, weights=per_piece, minlength=len(cut)).astype(np.int64),
            counts[len(new_pieces):]])
        numbers = np.asarray(cut_numbers + other_numbers, np.int64)
        stored = np.empty(len(keys), np.int64)
        kept = min(len(numbers), max(self.max_words - len(self), 0))
        split = int(word_counts[:kept].sum())
        stored[numbers[:kept]] = self._store(word_ids[:split], word_counts[:kept], keep=True)
        stored[numbers[kept:]] = self._store(word_ids[split:], word_counts[kept:], keep=False)
        self._words.update((keys[number][1], row) for number, row in
                           zip(numbers[:kept].tolist(), stored[numbers[:kept]].tolist()))
        if whole:
            lists = encoded[1:]
            stored[whole_numbers] = self._store(
                np.fromiter(itertools.chain.from_iterable(lists), np.int32,
                            count=sum(map(len, lists))),
                np.fromiter(map(len, lists), np.int64, count=len(lists)), keep=False)
        waiting = rows < 0
        rows[waiting] = stored[-1 - rows[waiting]]

    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the ids of the entries at `rows`, end to end; how many each has)."""
        counts = self._count[rows]
        ends = np.cumsum(counts)
        total = int(ends[-1]) if len(ends) else 0
        # Output position k reads _ids at its entry's start plus k's offset within the entry.
        offset = np.repeat(self._start[rows] - (ends - counts), counts)
        return self._ids[offset + np.arange(total)], counts

    def _store(self, ids: np.ndarray, counts: np.ndarray, keep: bool) -> np.ndarray:
        """Append entries (`counts[k]` ids each, end to end in `ids`), returning their rows;
        kept ones stay for later batches, the others are overwritten by the next batch."""
        row, used = self._batch_rows, self._batch_used
        self._start = _room(self._start, row + len(counts))
        self._count = _room(self._count, row + len(counts))
        self._ids = _room(self._ids, used + len(ids))
        self._ids[used:used + len(ids)] = ids
        rows = np.arange(row, row + len(counts))
        self._start[rows] = used + np.cumsum(counts) - counts
        self._count[rows] = counts
        self._batch_rows, self._batch_used = row + len(counts), used + len(ids)
        if keep:
            self._rows, self._used = self._batch_rows, self._batch_used
        return rows


class _Table(dict):
    """word -> its row in the store; a word not in it is given a placeholder, numbered in the
    batch's `unseen` dict (see WordCache.encode)."""

    def __init__(self, kind: int):
        super().__init__()
        self.kind = kind
        self.unseen: dict = {}

    def __missing__(self, word: str) -> int:
        return -1 - self.unseen.setdefault((self.kind, word), len(self.unseen))


_WORD, _WHOLE_TEXT, _PIECE = range(3)
_OPENING = "\x01"  # before a text's opening word in the table (no cut text holds it)

_BREAK = "\n"
_BYTE_LEVEL_BREAK = "\u010a"  # the line break as byte-level BPE spells it

# GPT-2's pre-tokenizer pattern on ASCII text, where \p{L} is [A-Za-z] and \p{N} is [0-9]
# whatever the Unicode version; the words cut with it hold no white space but a leading " ".
_ASCII_PRE_TOKENS = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def _room(array: np.ndarray, size: int) -> np.ndarray:
    if size <= len(array):
        return array
    grown = np.empty(max(size, 2 * len(array)), array.dtype)
    grown[:len(array)] = array
    return grown
