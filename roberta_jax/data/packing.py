"""Packing: cut prepared token streams into blocks of at most `capacity` tokens.

- "full-sentences" (RoBERTa's default): whole sentences, contiguous, crossing document
  boundaries (the stream carries `</s>` after every document);
- "doc-sentences": whole sentences, never crossing a document boundary;
- "none": fixed-size slices of the stream, ignoring sentences and documents.

A sentence longer than a block is cut into block-sized pieces. Every token of the corpus lands
in exactly one block. Blocks never cross shard boundaries.
"""

from __future__ import annotations

import numpy as np

PACKINGS = ("full-sentences", "doc-sentences", "none")


def pack_shard(num_tokens: int, sentence_ends: np.ndarray, document_ends: np.ndarray,
               capacity: int, packing: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (starts, ends) of the blocks of one shard's stream."""
    if packing == "none":
        starts = np.arange(0, num_tokens, capacity, dtype=np.int64)
        return starts, np.minimum(starts + capacity, num_tokens)
    if packing not in PACKINGS:
        raise ValueError(packing)
    # Greedy, one block per step: the furthest sentence end within reach, found by bisection,
    # so the loop runs once per block rather than once per sentence.
    cuts = sentence_ends
    walls = document_ends if packing == "doc-sentences" else None
    starts, ends = [], []
    start = 0
    while start < num_tokens:
        limit = min(start + capacity, num_tokens)
        if walls is not None:
            wall = walls[np.searchsorted(walls, start, side="right")]
            limit = min(limit, int(wall))
        i = np.searchsorted(cuts, limit, side="right") - 1
        end = int(cuts[i]) if i >= 0 and cuts[i] > start else limit  # a sentence too long: cut
        starts.append(start)
        ends.append(end)
        start = end
    return np.asarray(starts, np.int64), np.asarray(ends, np.int64)
