"""Fine-tuning inputs without padding waste: several sequences share a row.

Short inputs padded to a common length are mostly padding (SST-2's sentences average about 13
tokens). Here each row holds as many whole sequences as fit, one after another, and
`segment_ids` (0 = padding, 1, 2, ... = the sequences in row order) tell the model which tokens
belong together: attention stays within a segment, positions restart for each one, and the
heads that read one vector per sequence read it at `segment_starts` (each sequence's `<s>`).

Sequences go first-fit, longest first, into rows of one `row_length` (the bucket that holds the
longest sequence), and a batch's row count is rounded up to one of a few `row_counts` chosen
from the data, so jit compiles a handful of programs. A `Placement` records where every
sequence went, so outputs map back: per-sequence outputs by (row, slot), per-token outputs by
(row, start, length).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from roberta_jax.data.rows import bucket_length
from roberta_jax.errors import UserError


@dataclasses.dataclass
class Placement:
    """Where each sequence of a packing lies; arrays over the sequences, in their given order."""
    row: np.ndarray      # row index
    start: np.ndarray    # first position in the row (its <s>)
    length: np.ndarray   # tokens
    slot: np.ndarray     # its number among the row's segments, 0-based (segment id - 1)
    rows: int            # rows used


def first_fit(lengths: np.ndarray, row_length: int, max_rows: int | None = None) -> Placement:
    """Each sequence, longest first, into the first row with room for it (first-fit
    decreasing: within 22% of the fewest rows possible, and usually much closer). With
    `max_rows`, sequences that find no room in that many rows are left out (row -1)."""
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > row_length:
        raise UserError(f"a sequence of {lengths.max()} tokens does not fit rows of {row_length}")
    n = len(lengths)
    row = np.full(n, -1, np.int64)    # -1: no row (max_rows reached)
    start, slot = np.zeros(n, np.int64), np.zeros(n, np.int64)
    free = np.empty(0, np.int64)      # room left in each open row
    used = np.empty(0, np.int64)      # segments in each open row
    for i in np.argsort(-lengths, kind="stable"):
        fits = np.flatnonzero(free >= lengths[i])
        if fits.size:
            r = fits[0]
        elif max_rows is not None and len(free) >= max_rows:
            continue
        else:
            r = len(free)
            free, used = np.append(free, row_length), np.append(used, 0)
        row[i], start[i], slot[i] = r, row_length - free[r], used[r]
        free[r] -= lengths[i]
        used[r] += 1
    return Placement(row, start, lengths, slot, len(free))


def placed(placement: Placement) -> tuple[np.ndarray, Placement]:
    """(indices of the sequences that found a row, their placement) of a `max_rows` packing."""
    kept = np.flatnonzero(placement.row >= 0)
    return kept, Placement(placement.row[kept], placement.start[kept], placement.length[kept],
                           placement.slot[kept], placement.rows)


def slots_needed(placement: Placement) -> int:
    return int(placement.slot.max()) + 1 if placement.slot.size else 1


def rows_of(sequences, placement: Placement, rows: int, row_length: int, slots: int,
            pad_id: int) -> dict[str, np.ndarray]:
    """input_ids and segment_ids [rows, row_length], segment_starts [rows, slots] (empty slots
    point at position 0; rows past placement.rows are all padding)."""
    if placement.rows > rows:
        raise ValueError(f"{placement.rows} rows of sequences do not fit {rows} rows")
    ids = np.full((rows, row_length), pad_id, np.int32)
    segments = np.zeros((rows, row_length), np.int32)
    starts = np.zeros((rows, slots), np.int32)
    for seq, r, s, k in zip(sequences, placement.row, placement.start, placement.slot):
        ids[r, s:s + len(seq)] = seq
        segments[r, s:s + len(seq)] = k + 1
        starts[r, k] = s
    return {"input_ids": ids, "segment_ids": segments, "segment_starts": starts}


def per_slot(values, placement: Placement, rows: int, slots: int, fill=0) -> np.ndarray:
    """One value per sequence laid out [rows, slots, ...] (`fill` in empty slots)."""
    values = np.asarray(values)
    out = np.full((rows, slots) + values.shape[1:], fill, values.dtype)
    out[placement.row, placement.slot] = values
    return out


def per_token(values: list, placement: Placement, rows: int, row_length: int,
              fill) -> np.ndarray:
    """One list of per-token values per sequence laid out [rows, row_length]."""
    out = np.full((rows, row_length), fill, np.int32)
    for seq, r, s in zip(values, placement.row, placement.start):
        out[r, s:s + len(seq)] = seq
    return out


def unpack_slots(result: np.ndarray, placement: Placement) -> np.ndarray:
    """[rows, slots, ...] outputs -> [sequences, ...]."""
    return result[placement.row, placement.slot]


def unpack_tokens(result: np.ndarray, placement: Placement, width: int, fill=0.0) -> np.ndarray:
    """[rows, row_length, ...] outputs -> [sequences, width, ...], each sequence's tokens first
    (where the unpacked model has them), `fill` after."""
    out = np.full((len(placement.row), width) + result.shape[2:], fill, result.dtype)
    for i, (r, s, n) in enumerate(zip(placement.row, placement.start, placement.length)):
        out[i, :n] = result[r, s:s + n]
    return out


def row_length(longest: int, buckets: tuple[int, ...]) -> int:
    """The row length for sequences of up to `longest` tokens: the smallest bucket holding it."""
    return bucket_length(longest, buckets)


def choose_row_counts(needed: list[int], multiple: int = 1, most: int = 3) -> tuple[int, ...]:
    """At most `most` row counts (multiples of `multiple`, the largest covering every count in
    `needed`) that waste the fewest padding rows over these batches, each batch running at the
    smallest count that holds it: an exact search over the distinct counts (a few dozen)."""
    if not len(needed):
        return (multiple,)
    rounded = -(-np.asarray(needed) // multiple) * multiple
    values, counts = np.unique(rounded, return_counts=True)
    before = np.concatenate([[0], np.cumsum(counts)])  # batches needing less than values[i]
    n = len(values)
    # layer j, entry i: (rows, counts) covering the batches up to values[i] with at most j + 1
    # counts, the largest being values[i].
    layer = [(int(values[i] * before[i + 1]), (int(values[i]),)) for i in range(n)]
    layers = [layer]
    for _ in range(1, most):
        previous, layer = layer, []
        for i in range(n):
            options = [(previous[h][0] + int(values[i] * (before[i + 1] - before[h + 1])),
                        previous[h][1] + (int(values[i]),)) for h in range(i)]
            layer.append(min(options + [previous[i]]))
        layers.append(layer)
    return min((layer[n - 1] for layer in layers), key=lambda c: (c[0], len(c[1])))[1]


def fit_rows(needed: int, row_counts: tuple[int, ...], multiple: int = 1) -> int:
    """The smallest of `row_counts` holding `needed` rows, or `needed` rounded up to `multiple`
    when none does (a batch larger than any planned one: one more compiled shape)."""
    for count in row_counts:
        if needed <= count:
            return count
    return -(-needed // multiple) * multiple


# ------------------------------------------------------------------ inference in a few row lengths

@dataclasses.dataclass
class RowGroup:
    """Sequences packed in rows of one length, run `step` rows at a time."""
    row_length: int
    step: int
    rows: int              # rows to run: a multiple of step
    members: np.ndarray    # the sequences' indices in the caller's list
    placement: Placement   # of the members, in that order


def short_row_length(lengths, buckets: tuple[int, ...], per_row: int = 4) -> int:
    """The row length for most of these sequences: the smallest bucket holding `per_row` of
    median length (first-fit then leaves little room unused in a row)."""
    return row_length(per_row * int(np.median(lengths)), buckets)


def inference_groups(lengths, buckets: tuple[int, ...], short_length: int,
                     tokens_per_step: int) -> list[RowGroup]:
    """Packed rows for inference when lengths vary: sequences share rows of `short_length`
    (short_row_length) or, if longer, rows of the smallest bucket holding them, whose room
    (whole steps of rows) is filled with shorter sequences first. A row of L tokens computes
    L x L attention scores of which the mask keeps only each sequence's own, so short rows for
    short inputs waste less. Steps hold about `tokens_per_step` tokens, a power of two of
    rows: the same lengths and steps from call to call, so that few programs are compiled."""
    lengths = np.asarray(lengths, np.int64)
    base = min(short_length, row_length(int(lengths.max()), buckets))
    needs = np.asarray([max(base, row_length(int(n), buckets)) for n in lengths])
    remaining, groups = np.arange(len(lengths)), []
    for length in sorted(set(needs.tolist()), reverse=True):
        needing = lengths[remaining][needs[remaining] == length]
        if not needing.size:  # all went to fill longer rows
            continue
        rows_for_all = first_fit(lengths[remaining], length).rows
        step = min(power_of_two(-(-tokens_per_step // length)), power_of_two(rows_for_all))
        rows = -(-first_fit(needing, length).rows // step) * step
        kept, placement = placed(first_fit(lengths[remaining], length, max_rows=rows))
        groups.append(RowGroup(length, step, rows, remaining[kept], placement))
        remaining = np.delete(remaining, kept)
    return groups


def power_of_two(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


# ------------------------------------------------------------------ fine-tuning with a task kind
# A kind (task_kinds.py) says which token sequences a feature is (`feature_sequences`), how its
# labels lie in packed rows (`packed_labels`), whether its outputs are per token or per
# sequence, and how per-sequence outputs regroup into per-feature ones (`from_sequences`).

# Packing is used when it computes at most this share of the tokens the padded batches would.
PAYS_BELOW = 0.9


@dataclasses.dataclass(frozen=True)
class Plan:
    """The packed layout of a fine-tuning run: every batch is [rows, row_length] for rows in
    row_counts, with `slots` sequences per row at most."""
    row_length: int
    slots: int
    row_counts: tuple[int, ...]
    multiple: int         # rows are a multiple of this (the data-parallel devices)
    eval_rows: int        # rows per evaluation step
    padded_tokens: int    # positions one epoch computes in padded batches
    packed_tokens: int    # ... and in packed rows (with row_counts)
    # (row counts, rows an epoch computes with them) with one, two, three compiled counts
    options: tuple[tuple[tuple[int, ...], int], ...] = ()

    @property
    def pays(self) -> bool:
        return self.packed_tokens <= PAYS_BELOW * self.padded_tokens

    def describe(self) -> str:
        return (f"packed rows of {self.row_length} tokens, {'/'.join(map(str, self.row_counts))} "
                f"rows a batch: {self.packed_tokens / max(self.padded_tokens, 1):.0%} of the "
                "positions padded batches compute")


def plan(kind, split, batch_size: int, order: np.ndarray, buckets: tuple[int, ...],
         padded_length, multiple: int = 1, longest_elsewhere: int = 0) -> Plan:
    """The layout for training on `split` in batches of `batch_size` features taken in `order`
    (an epoch's), rows long enough for every sequence of this split and `longest_elsewhere`
    (the evaluation splits'). `padded_length(longest)` is the length a padded batch of that
    longest sequence has, for the comparison."""
    lengths = np.asarray([len(s) for s in kind.feature_sequences(split, np.arange(split.size))])
    length = row_length(max(int(lengths.max()), longest_elsewhere), buckets)
    per_feature = len(lengths) // split.size  # sequences per feature (choices per example)
    needed, padded = [], 0
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        chosen = lengths[(index[:, None] * per_feature + np.arange(per_feature)).reshape(-1)]
        needed.append(first_fit(chosen, length).rows)
        padded += len(chosen) * padded_length(int(chosen.max()))
    options = []
    for most in (1, 2, 3):
        counts = choose_row_counts(needed, multiple, most)
        if not options or counts != options[-1][0]:
            options.append((counts, sum(fit_rows(n, counts, multiple) for n in needed)))
    counts, rows = options[-1]
    eval_rows = -(-2 * max(counts) // multiple) * multiple
    return Plan(length, max(1, length // max(1, int(lengths.min()))), counts, multiple,
                eval_rows, padded, rows * length, tuple(options))


class RowCounts:
    """Which row counts a run compiles. Each costs a compile; each more than one saves padding
    rows on every step. So the run starts with one (the largest), times its first steps (the
    first includes the compile), and then takes the plan's option that saves the most time over
    the remaining steps, net of its extra compiles: many for a long run of slow steps, one for
    a short run."""
    PROBE = 6  # steps timed (each one synced): the first, with its compile, and five more

    def __init__(self, the_plan: Plan, total_steps: int):
        self.plan, self.total_steps, self.times = the_plan, total_steps, []
        self.row_counts = the_plan.options[0][0] if the_plan.options else the_plan.row_counts

    @property
    def measuring(self) -> bool:
        return len(self.plan.options) > 1 and len(self.times) < self.PROBE

    def observe(self, seconds: float) -> None:
        self.times.append(seconds)
        if len(self.times) < self.PROBE:
            return
        step = float(np.median(self.times[1:]))
        compile_seconds = max(self.times[0] - step, 0.0)
        remaining = self.total_steps - len(self.times)
        largest_rows = self.plan.options[0][1]

        def net_saving(option):
            counts, rows = option
            return ((1 - rows / largest_rows) * remaining * step
                    - (len(counts) - 1) * compile_seconds)
        self.row_counts = max(self.plan.options, key=net_saving)[0]
        logging.getLogger("roberta_jax").info(
            "packed batches of %s rows (a compile took %.1f s, a step %.3f s)",
            "/".join(map(str, self.row_counts)), compile_seconds, step)


def train_batches(kind, split, the_plan: Plan, batch_size: int, order: np.ndarray, pad_id: int,
                  row_counts=None):
    """Packed training batches of `batch_size` features each, in `order` (a short last batch is
    dropped, as the padded batches drop it). `row_counts` (a RowCounts) may change the counts
    as the batches are drawn; the plan's otherwise."""
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        sequences = kind.feature_sequences(split, index)
        placement = first_fit([len(s) for s in sequences], the_plan.row_length)
        counts = the_plan.row_counts if row_counts is None else row_counts.row_counts
        rows = fit_rows(placement.rows, counts, the_plan.multiple)
        slots = max(the_plan.slots, slots_needed(placement))
        batch = rows_of(sequences, placement, rows, the_plan.row_length, slots, pad_id)
        batch.update(kind.packed_labels(split, index, placement, rows, slots,
                                        the_plan.row_length))
        yield batch


def predict(kind, split, run, pad_id: int, width: int, buckets: tuple[int, ...],
            the_plan: Plan | None = None, rows_per_step: int = 16, multiple: int = 1):
    """The kind's outputs for every feature of `split`, in order, from packed rows: all its
    sequences first-fit into rows (of the plan's length when they fit), `run(batch)` on
    `rows_per_step` rows at a time (one compiled shape per split), and the outputs mapped back.
    Per-token outputs come back `width` long, as the padded layout gives them."""
    sequences = kind.feature_sequences(split, np.arange(split.size))
    lengths = [len(s) for s in sequences]
    longest = max(lengths)
    length = (the_plan.row_length if the_plan and longest <= the_plan.row_length
              else row_length(longest, buckets))
    placement = first_fit(lengths, length)
    slots = max(the_plan.slots if the_plan else 1, slots_needed(placement))
    step_rows = the_plan.eval_rows if the_plan else -(-rows_per_step // multiple) * multiple
    step_rows = min(step_rows, -(-placement.rows // multiple) * multiple)
    total = -(-placement.rows // step_rows) * step_rows
    rows = rows_of(sequences, placement, total, length, slots, pad_id)
    results = [np.asarray(run({k: v[first:first + step_rows] for k, v in rows.items()}))
               for first in range(0, total, step_rows)]
    result = np.concatenate(results)
    per_sequence = (unpack_tokens(result, placement, width) if kind.per_token
                    else unpack_slots(result, placement))
    return kind.from_sequences(split, per_sequence)
