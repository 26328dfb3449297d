"""Pretraining batches from a prepared directory (local or `gs://`).

The batch of step n is a pure function of (seed, n, data): global row g = n * batch_size + r
reads block perm_e(g mod N) of epoch e = g div N, where perm_e is a keyed pseudo-random
permutation of the N blocks, and is masked with draws keyed by g. So:
- resuming needs only the step (nothing to replay, no iterator state to save);
- each process computes only its own rows, and the global batch is the same for any number of
  processes;
- every block is seen exactly once per epoch, with a fresh mask each epoch.

Start-up reads the manifest and the block counts per shard (prepared.py), whatever the corpus
size; a row reads only its own tokens. A few daemon threads run the per-step function ahead of
the consumer (numpy releases the GIL in its heavy loops); they never keep a process alive.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import numpy as np

from roberta_jax import fs
from roberta_jax.data.masking import UNITS, MaskingSpec, _mix, mask_batch
from roberta_jax.data.packing import PACKINGS
from roberta_jax.data.prepared import (
    TOKENIZER_DIR,
    Shards,
    load_manifest,
    open_block_index,
    write_json,
)
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.errors import UserError

# --------------------------------------------------------------------------- keyed permutation

def _round_keys(key: int, rounds: int) -> list[np.ndarray]:
    """Each round's mixed key (a uint64 scalar array)."""
    with np.errstate(over="ignore"):
        return [_mix(np.asarray([(int(key) * 0x9E3779B97F4A7C15 + r * 0xD6E8FEB86659FD93)
                                 % (1 << 64)], np.uint64)) for r in range(rounds)]


def keyed_permutation(index: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """perm(index) for a pseudo-random permutation of range(n) chosen by `key`.

    A balanced Feistel network on the smallest even bit width covering n, with cycle walking
    back into range: O(1) memory whatever n, computable for any index on its own.
    """
    index = np.asarray(index, np.uint64)
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    keys = _round_keys(key, rounds)
    out = index.copy()
    todo = np.ones(out.shape, bool)
    with np.errstate(over="ignore"):
        while todo.any():
            x = out[todo]
            left, right = x >> shift, x & mask
            for round_key in keys:
                left, right = right, left ^ (_mix(right ^ round_key) & mask)
            out[todo] = (left << shift) | right
            todo = out >= np.uint64(n)
    return out.astype(np.int64)


# ------------------------------------------------------------------------------------- corpus

class PackedCorpus:
    """A prepared directory, packed into blocks of at most seq_len - 1 tokens (room for <s>)."""

    def __init__(self, prepared_dir: str | os.PathLike, seq_len: int, packing: str,
                 progress: bool = True):
        if packing not in PACKINGS:
            raise UserError(f"unknown packing {packing!r}; use one of {', '.join(PACKINGS)}")
        if seq_len < 8:
            raise UserError(f"seq_len {seq_len} is too short; use at least 8")
        self.dir = fs.as_path(prepared_dir)
        self.manifest = load_manifest(prepared_dir)
        info = self.manifest["tokenizer"]
        self.bos_id, self.pad_id, self.eos_id = info["bos_id"], info["pad_id"], info["eos_id"]
        self.seq_len = seq_len
        self.shards = Shards(prepared_dir, self.manifest)
        self.index = open_block_index(self.shards, seq_len - 1, packing, progress)
        if len(self) == 0:
            raise UserError(f"{fs.as_str(prepared_dir)}: the prepared corpus has no tokens")

    def __len__(self) -> int:
        return len(self.index)

    def blocks(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, start, end) of each block: where its tokens lie."""
        return self.index.locate(blocks)

    def rows(self, blocks: np.ndarray, segments: bool = False):
        """`<s>` + block tokens + padding, [len(blocks), seq_len] int32; with `segments`, also
        each position's document number within its row (1, 2, ...; 0 for padding)."""
        shard, start, end = self.index.locate(blocks)
        out = np.full((len(blocks), self.seq_len), self.pad_id, np.int32)
        out[:, 0] = self.bos_id
        for row, tokens in enumerate(self.shards.read(shard, start, end)):
            out[row, 1:1 + len(tokens)] = tokens
        if not segments:
            return out
        return out, self.segments(out, end - start)

    def segments(self, rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Document numbers of packed rows. prepare writes </s> after every document and
        nowhere else (text is encoded as text, and a tokenizer's stray </s> becomes <unk>), so
        the token after each </s> opens the next document; the leading <s> belongs to the
        first."""
        opens = np.zeros(rows.shape, np.int32)
        opens[:, 1:] = rows[:, :-1] == self.eos_id
        segments = 1 + np.cumsum(opens, axis=1, dtype=np.int32)
        segments[np.arange(self.seq_len)[None, :] > np.asarray(lengths)[:, None]] = 0
        return segments


# ------------------------------------------------------------------------------------ batches

class PretrainingBatches:
    """The pure function step -> this process's rows of the global batch, and its iterator.

    `segment_ids=True` adds `segment_ids` [rows, seq_len]: 1..k for the documents of a packed
    row in order (the leading `<s>` belongs to the first), 0 for padding.
    """

    def __init__(self, prepared_dir, batch_size: int, seq_len: int, seed: int,
                 mask_prob: float = 0.15, packing: str = "full-sentences",
                 process_index: int = 0, process_count: int = 1, masking: str = "token",
                 segment_ids: bool = False, progress: bool = True):
        if batch_size % process_count:
            raise UserError(f"batch_size {batch_size} is not divisible by the {process_count} "
                            "processes")
        if not 0 < mask_prob < 1:
            raise UserError(f"mask_prob {mask_prob} must be between 0 and 1")
        if masking not in UNITS:
            raise UserError(f"unknown masking {masking!r}; use one of {', '.join(UNITS)}")
        self.corpus = PackedCorpus(prepared_dir, seq_len, packing, progress)
        info = self.corpus.manifest["tokenizer"]
        word_starts = None
        if masking == "word":
            word_starts = load_tokenizer(self.corpus.dir / TOKENIZER_DIR).word_starts()
        self.spec = MaskingSpec(
            vocab_size=info["vocab_size"], mask_id=info["mask_id"], pad_id=info["pad_id"],
            special_ids=tuple(sorted({info[k] for k in ("bos_id", "pad_id", "eos_id",
                                                        "mask_id")})),
            mask_prob=mask_prob, unit=masking, word_starts=word_starts)
        self.batch_size, self.seed = batch_size, seed
        self.segment_ids = segment_ids
        self.local_rows = batch_size // process_count
        self.first_row = process_index * self.local_rows

    @property
    def steps_per_epoch(self) -> float:
        """Steps that read every block once (experiments/bench_document_attention.py scores a
        held-out corpus with it)."""
        return len(self.corpus) / self.batch_size

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rows = np.arange(self.local_rows, dtype=np.int64) + self.first_row
        examples = step * self.batch_size + rows       # global example index, across epochs
        n = len(self.corpus)
        epochs, within = np.divmod(examples, n)
        blocks = np.empty_like(examples)
        for epoch in range(int(epochs[0]), int(epochs[-1]) + 1):  # rows ascend: one or two
            chosen = epochs == epoch
            blocks[chosen] = keyed_permutation(within[chosen], n, key=self.seed * 100_003 + epoch)
        if self.segment_ids:
            ids, segments = self.corpus.rows(blocks, segments=True)
        else:
            ids = self.corpus.rows(blocks)
        out = mask_batch(ids, examples, self.seed, self.spec)
        out["attention_mask"] = (ids != self.corpus.pad_id).astype(np.int32)
        if self.segment_ids:
            out["segment_ids"] = segments
        out["block"] = blocks
        out["epoch"] = epochs
        return out

    def iterate(self, start_step: int = 0, num_steps: int | None = None,
                prefetch: int | None = None, threads: int | None = None) -> Batches:
        """Batches of start_step, start_step + 1, ..., computed ahead on background threads
        and yielded in order."""
        stop = start_step + num_steps if num_steps is not None else None
        threads = threads or min(4, os.cpu_count() or 1)
        return Batches(self.batch, start_step, stop, threads, prefetch or 2 * threads)


def pretraining_batches(prepared_dir, batch_size: int, seq_len: int, seed: int,
                        start_step: int = 0, mask_prob: float = 0.15,
                        packing: str = "full-sentences", process_index: int = 0,
                        process_count: int = 1, masking: str = "token",
                        num_steps: int | None = None,
                        segment_ids: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of the global batches from `start_step` on (see the module doc).

    Each batch: input_ids, attention_mask, labels ([rows, seq_len]; labels -100 where nothing is
    predicted), masked_positions, masked_labels, masked_weights ([rows, P] for a gathered head),
    block and epoch ([rows]); with `segment_ids`, also segment_ids ([rows, seq_len]).
    """
    batches = PretrainingBatches(prepared_dir, batch_size, seq_len, seed, mask_prob, packing,
                                 process_index, process_count, masking, segment_ids)
    return batches.iterate(start_step, num_steps)


# ----------------------------------------------------------------------------------- prefetch

class _Ahead:
    """State shared by a Batches iterator and its threads (the threads do not reference the
    iterator, so dropping it lets them stop)."""

    def __init__(self, fn, start, stop, depth):
        self.fn, self.stop, self.depth = fn, stop, depth
        self.next_out = self.next_in = start
        self.done: dict[int, tuple[bool, object]] = {}
        self.closed = False
        self.cond = threading.Condition()
        self.threads: list[threading.Thread] = []

    def work(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self._may_start():
                    self.cond.wait()
                if self.closed:
                    return
                step = self.next_in
                self.next_in += 1
            try:
                result = (True, self.fn(step))
            except BaseException as e:  # handed to the consumer, raised there in order
                result = (False, e)
            with self.cond:
                self.done[step] = result
                self.cond.notify_all()

    def _may_start(self) -> bool:
        return ((self.stop is None or self.next_in < self.stop)
                and self.next_in < self.next_out + self.depth)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.done.clear()
            self.cond.notify_all()


_LIVE: weakref.WeakSet[_Ahead] = weakref.WeakSet()


@atexit.register
def _stop_all(timeout: float = 5.0) -> None:
    """Stop every prefetch thread before the interpreter finalizes. A daemon thread still
    inside numpy then would be ended by the runtime in the middle of C++ code, which aborts
    the process ("terminate called without an active exception"). Each finishes the step it
    is computing (milliseconds); one stuck longer (a hung read) is left behind, not waited on."""
    deadline = time.monotonic() + timeout
    aheads = list(_LIVE)
    for ahead in aheads:
        ahead.close()
    for ahead in aheads:
        for thread in ahead.threads:
            thread.join(max(deadline - time.monotonic(), 0))


class Batches:
    """Iterator over fn(start), fn(start + 1), ... (up to `stop`), computed `depth` steps
    ahead by `threads` daemon threads. `close()` (or dropping it, or interpreter exit) stops
    the threads."""

    def __init__(self, fn: Callable[[int], dict], start: int, stop: int | None, threads: int,
                 depth: int):
        self._ahead = _Ahead(fn, start, stop, max(depth, threads))
        _LIVE.add(self._ahead)
        for i in range(threads):
            thread = threading.Thread(target=self._ahead.work, name=f"roberta_jax-batches-{i}",
                                      daemon=True)
            thread.start()
            self._ahead.threads.append(thread)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        ahead = self._ahead
        with ahead.cond:
            if ahead.stop is not None and ahead.next_out >= ahead.stop or ahead.closed:
                raise StopIteration
            while ahead.next_out not in ahead.done:
                if ahead.closed:
                    raise StopIteration
                ahead.cond.wait()
            ok, value = ahead.done.pop(ahead.next_out)
            ahead.next_out += 1
            ahead.cond.notify_all()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._ahead.close()

    def __del__(self):
        self._ahead.close()


# ------------------------------------------------------------------------------------- checks

def check_compatible(prepared_dir, *, tokenizer=None, model_config=None,
                     seq_len: int | None = None) -> None:
    """Refuse a prepared corpus that does not fit the tokenizer or model it is about to feed."""
    manifest = load_manifest(prepared_dir)
    info = manifest["tokenizer"]
    where = fs.as_str(prepared_dir)
    if tokenizer is not None and tokenizer.fingerprint() != info["fingerprint"]:
        raise UserError(f"{where}: was prepared with another tokenizer (vocabulary "
                        f"fingerprint {info['fingerprint']}, this one {tokenizer.fingerprint()}); "
                        "prepare the corpus again with this tokenizer")
    if model_config is not None:
        if model_config.vocab_size < info["vocab_size"]:
            raise UserError(f"{where}: its tokenizer has {info['vocab_size']} ids but the "
                            f"model's vocab_size is {model_config.vocab_size}; they do not match")
        if model_config.pad_token_id != info["pad_id"]:
            raise UserError(f"{where}: pad id {info['pad_id']} differs from the model's "
                            f"pad_token_id {model_config.pad_token_id}")
        if seq_len is not None and seq_len > model_config.max_sequence_length:
            raise UserError(f"seq_len {seq_len} is longer than the model's positions allow "
                            f"({model_config.max_sequence_length} tokens with "
                            f"max_position_embeddings={model_config.max_position_embeddings}); "
                            "lower seq_len or raise max_position_embeddings")


RUN_DATA = "data_tokenizer.json"


def check_run_data(workdir, data_path, eval_path=None, *, record: bool = True) -> None:
    """Refuse held-out data, or a resumed run's training data, prepared with another tokenizer
    than the training data (vocabulary fingerprints differ): its loss would mean nothing.

    The first run records its training data's tokenizer in WORKDIR/data_tokenizer.json
    (written only where `record`, i.e. by one process)."""
    train = load_manifest(data_path)["tokenizer"]["fingerprint"]
    if eval_path:
        held_out = load_manifest(eval_path)["tokenizer"]["fingerprint"]
        if held_out != train:
            raise UserError(f"{fs.as_str(eval_path)}: was prepared with another tokenizer "
                            f"(fingerprint {held_out}) than the training data "
                            f"{fs.as_str(data_path)} ({train}); prepare the held-out text with "
                            f"--tokenizer {fs.as_str(data_path)}/{TOKENIZER_DIR}")
    recorded = fs.as_path(workdir) / RUN_DATA
    if recorded.is_file():
        before = json.loads(recorded.read_text(encoding="utf-8"))
        if before["fingerprint"] != train:
            raise UserError(f"{fs.as_str(data_path)}: was prepared with another tokenizer "
                            f"(fingerprint {train}) than the data this run started on "
                            f"({before['data_path']}, {before['fingerprint']}); resume with data "
                            "prepared by that tokenizer, or use a new --workdir")
    elif record:
        recorded.parent.mkdir(parents=True, exist_ok=True)
        write_json(recorded, {"data_path": fs.as_str(data_path), "fingerprint": train})
