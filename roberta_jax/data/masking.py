"""Dynamic masking with stateless randomness.

Every random draw is a hash of (seed, global example index, position, purpose): no generator
state, so any example's mask can be recomputed alone, on any host, in any order. The example
index grows across epochs, so a sequence seen again gets a new mask.

Of the maskable tokens (everything but `<s>`, `</s>`, `<pad>` and `<mask>`), `mask_prob` are
chosen (randomised rounding, as fairseq does); of those 80% become `<mask>`, 10% a random
ordinary token, 10% stay. Selection is by token (default), by whole word, or by spans.

Against the two references (measured in tests/test_masking_references.py on the same rows):
- Predicted tokens per row: like fairseq's MaskTokensDataset, a fixed count per row,
  floor(mask_prob * candidates + u); transformers' DataCollatorForLanguageModeling flips a
  coin per token, so its count is binomial. The mean is the same; ours spreads less, and a
  fixed count is what lets the MLM head gather a static number of slots.
- Candidates: never `<s>`, `</s>` or padding, as in transformers. fairseq draws from every
  position of `<s> block`, so it also predicts 15% of the `<s>` and `</s>` tokens; we do not
  spend predictions on a token whose place is given by the row's layout. `<unk>` is a
  candidate here and in fairseq (transformers never masks it).
- The 80/10/10 split: the same in all three.
- Random replacements: uniform over the ordinary ids (every id but `<s>`, `<pad>`, `</s>`,
  `<mask>`; `<unk>` is one of them). transformers draws from the whole vocabulary, specials
  included, so `<pad>` or `<mask>` can appear as a "random" token; fairseq from all but its
  first four ids (`<s> <pad> </s> <unk>`), `<mask>` included. Drawing `<mask>` would make a
  random replacement indistinguishable from a masked token, hence our exclusion.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from roberta_jax.data.rows import IGNORED_LABEL

UNITS = ("token", "word", "span")

# Purposes: independent streams of draws for one (example, position).
_COUNT, _ORDER, _ACTION, _RANDOM_TOKEN, _SPAN = range(5)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fast, well-mixed bijection of uint64."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, example: np.ndarray, position: np.ndarray, purpose: int) -> np.ndarray:
    """Uniform [0, 1) floats, a pure function of the arguments (broadcast together)."""
    with np.errstate(over="ignore"):
        key = _mix(np.asarray([(int(seed) * 0x9E3779B97F4A7C15 + purpose) % (1 << 64)], np.uint64))
        x = _mix(key ^ (np.asarray(example, np.uint64) * np.uint64(0xD1B54A32D192ED03)))
        x = _mix(x + np.asarray(position, np.uint64))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    vocab_size: int
    special_ids: tuple[int, ...]  # never masked, never drawn as random replacements
    mask_id: int
    pad_id: int
    mask_prob: float = 0.15
    replace_with_mask: float = 0.8
    replace_with_random: float = 0.1
    unit: str = "token"
    word_starts: np.ndarray | None = None  # bool [vocab]: token begins a word (for unit="word")
    span_p: float = 0.2                     # geometric span lengths (unit="span"), as SpanBERT
    max_span: int = 10

    @functools.cached_property
    def ordinary_ids(self) -> np.ndarray:
        """Ids a random replacement draws from: every id but the specials."""
        return np.setdiff1d(np.arange(self.vocab_size), np.asarray(self.special_ids))

    def max_masked(self, seq_len: int) -> int:
        """Static number of masked slots per row: room for the most a row can get."""
        return int(self.mask_prob * seq_len) + 1


def mask_batch(ids: np.ndarray, examples: np.ndarray, seed: int, spec: MaskingSpec) -> dict:
    """Mask rows `ids` [b, L] whose global example indices are `examples` [b].

    Returns input_ids, labels (-100 where nothing is predicted) and, for a head that gathers,
    masked_positions / masked_labels / masked_weights [b, P] with P = spec.max_masked(L).
    """
    batch, length = ids.shape
    examples = examples.astype(np.uint64)[:, None]
    positions = np.arange(length, dtype=np.uint64)[None, :]
    maskable = ~np.isin(ids, np.asarray(spec.special_ids), kind="table")
    slots = spec.max_masked(length)
    count = np.floor(spec.mask_prob * maskable.sum(1)
                     + hash_uniform(seed, examples[:, 0], 0, _COUNT)).astype(np.int64)
    if spec.unit == "token":
        chosen = _choose_tokens(maskable, count, hash_uniform(seed, examples, positions, _ORDER))
    elif spec.unit == "word":
        chosen = _choose_words(ids, maskable, count, examples, seed, spec, slots)
    elif spec.unit == "span":
        chosen = _choose_spans(maskable, count, examples, seed, spec)
    else:
        raise ValueError(f"unknown masking unit {spec.unit!r}; use one of {UNITS}")

    chosen = _cap(chosen, slots)
    action = hash_uniform(seed, examples, positions, _ACTION)
    ordinary = spec.ordinary_ids
    random_tokens = ordinary[(hash_uniform(seed, examples, positions, _RANDOM_TOKEN)
                              * len(ordinary)).astype(np.int64)]
    to_mask = chosen & (action < spec.replace_with_mask)
    to_random = chosen & ~to_mask & (action < spec.replace_with_mask + spec.replace_with_random)
    inputs = np.where(to_mask, spec.mask_id, np.where(to_random, random_tokens, ids))
    labels = np.where(chosen, ids, IGNORED_LABEL)

    # Gather view: chosen positions first (in order), padded with position 0 and weight 0.
    row, position = np.nonzero(chosen)                  # row-major: in order within each row
    slot = (np.cumsum(chosen, axis=1) - 1)[row, position]
    masked_positions = np.zeros((batch, slots), np.int32)
    masked_labels = np.zeros((batch, slots), np.int32)
    masked_weights = np.zeros((batch, slots), np.float32)
    masked_positions[row, slot] = position
    masked_labels[row, slot] = ids[row, position]
    masked_weights[row, slot] = 1.0
    return {
        "input_ids": inputs.astype(np.int32),
        "labels": labels.astype(np.int32),
        "masked_positions": masked_positions,
        "masked_labels": masked_labels,
        "masked_weights": masked_weights,
    }


def _choose_tokens(maskable, count, scores):
    """The `count` maskable positions of each row with the smallest scores (equal scores: the
    earlier position first)."""
    scores = np.where(maskable, scores, np.inf)
    # The count-th smallest score of each row bounds the choice: one sort, no ranks.
    bound = np.take_along_axis(np.sort(scores, axis=1),
                               np.maximum(count - 1, 0)[:, None], axis=1)
    below = scores < bound
    at = scores == bound
    room = count - below.sum(axis=1)
    chosen = below | (at & (np.cumsum(at, axis=1) <= room[:, None]))
    return maskable & chosen & (count > 0)[:, None]


def _cap(chosen, slots):
    """Whole words and spans can overshoot the static slot count: keep the first `slots`."""
    return chosen & (np.cumsum(chosen, axis=1) <= slots)


def _choose_words(ids, maskable, count, examples, seed, spec, slots):
    if spec.word_starts is None:
        raise ValueError("whole-word masking needs the tokenizer's word starts")
    starts = maskable & (spec.word_starts[ids] | ~np.roll(maskable, 1, axis=1))
    word = np.cumsum(starts, axis=1)  # word number of each token (0 before the first word)
    chosen = np.zeros_like(maskable)
    for row in range(ids.shape[0]):
        n_words = int(word[row, -1])
        if n_words == 0:
            continue
        scores = hash_uniform(seed, examples[row, 0], np.arange(1, n_words + 1, dtype=np.uint64),
                              _ORDER)
        sizes = np.bincount(word[row][maskable[row]], minlength=n_words + 1)[1:]
        # Words in score order until the token budget is reached (the last may overshoot it,
        # never the static slot count: a word is masked whole or not at all).
        order = np.argsort(scores, kind="stable")
        through = np.cumsum(sizes[order])
        picked = order[(through - sizes[order] < count[row]) & (through <= slots)] + 1
        chosen[row] = maskable[row] & np.isin(word[row], picked)
    return chosen


def _choose_spans(maskable, count, examples, seed, spec):
    batch, length = maskable.shape
    chosen = np.zeros_like(maskable)
    for row in range(batch):
        candidates = np.flatnonzero(maskable[row])
        draw = 0
        while chosen[row].sum() < count[row] and draw < 4 * length:
            u = hash_uniform(seed, examples[row, 0], np.asarray([draw, draw + 1], np.uint64),
                             _SPAN)
            span = min(spec.max_span, 1 + int(np.log1p(-u[0]) / np.log1p(-spec.span_p)))
            span = min(span, int(count[row] - chosen[row].sum()))
            first = candidates[int(u[1] * len(candidates))]
            chosen[row, first:first + span] = True
            chosen[row] &= maskable[row]
            draw += 2
    return chosen
