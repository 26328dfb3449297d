"""Packing: cut prepared token streams into blocks of at most `capacity` tokens.

- "full-sentences" (RoBERTa's default): whole sentences, contiguous, crossing document
  boundaries (the stream carries `</s>` after every document);
- "doc-sentences": whole sentences, never crossing a document boundary;
- "none": fixed-size slices of the stream, ignoring sentences and documents.

A sentence longer than a block is cut into block-sized pieces. Every token of the corpus lands
in exactly one block. Blocks never cross shard boundaries, and the blocks of a shard are
contiguous, so their starts alone describe them (a block ends where the next begins).

`prepare` runs this once per shard and stores the starts (see prepared.py); training only
looks them up.
"""

from __future__ import annotations

import bisect

import numpy as np

PACKINGS = ("full-sentences", "doc-sentences", "none")
INDEXED = ("full-sentences", "doc-sentences")  # "none" is arithmetic, it needs no index


def pack_shard(num_tokens: int, sentence_ends: np.ndarray, document_ends: np.ndarray,
               capacity: int, packing: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (starts, ends) of the blocks of one shard's stream."""
    starts = block_starts(num_tokens, sentence_ends, document_ends, capacity, packing)
    return starts, np.append(starts[1:], num_tokens).astype(np.int64)


def block_starts(num_tokens: int, sentence_ends: np.ndarray, document_ends: np.ndarray,
                 capacity: int, packing: str) -> np.ndarray:
    """Start offsets of the blocks of one shard's stream, int64."""
    if packing not in PACKINGS:
        raise ValueError(packing)
    if capacity < 1:
        raise ValueError(f"capacity {capacity}")
    if packing == "none":
        return np.arange(0, num_tokens, capacity, dtype=np.int64)
    # Greedy, one block per step: the furthest sentence end within reach, found by bisection
    # on plain lists (a numpy call per block costs several times more than the search).
    cuts = np.asarray(sentence_ends).tolist()
    walls = np.asarray(document_ends).tolist() if packing == "doc-sentences" else None
    starts = []
    start = 0
    while start < num_tokens:
        starts.append(start)
        limit = min(start + capacity, num_tokens)
        if walls is not None:
            w = bisect.bisect_right(walls, start)
            if w < len(walls):
                limit = min(limit, walls[w])
        i = bisect.bisect_right(cuts, limit) - 1
        start = cuts[i] if i >= 0 and cuts[i] > start else limit  # a sentence too long: cut
    return np.asarray(starts, np.int64)
