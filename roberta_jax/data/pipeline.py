"""Pretraining batches from a prepared directory.

The batch of step n is a pure function of (seed, n, data): global row g = n * batch_size + r
reads block perm_e(g mod N) of epoch e = g div N, where perm_e is a keyed pseudo-random
permutation of the N blocks, and is masked with draws keyed by g. So:
- resuming needs only the step (nothing to replay, no iterator state to save);
- each process computes only its own rows, and the global batch is the same for any number of
  processes;
- every block is seen exactly once per epoch, with a fresh mask each epoch.

tf.data runs the per-step function on background threads and prefetches; the work itself is
vectorised numpy over memory-mapped shards.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterator

import numpy as np

from roberta_jax.data.masking import UNITS, MaskingSpec, _mix, mask_batch
from roberta_jax.data.packing import PACKINGS, pack_shard
from roberta_jax.data.prepare import TOKENIZER_DIR, load_manifest
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.errors import UserError

# --------------------------------------------------------------------------- keyed permutation

def _round_function(x: np.ndarray, key: int, round_: int, bits: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        k = np.uint64((int(key) * 0x9E3779B97F4A7C15 + round_ * 0xD6E8FEB86659FD93) % (1 << 64))
        return _mix(x ^ _mix(np.asarray([k], np.uint64))) & np.uint64((1 << bits) - 1)


def keyed_permutation(index: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """perm(index) for a pseudo-random permutation of range(n) chosen by `key`.

    A balanced Feistel network on the smallest even bit width covering n, with cycle walking
    back into range: O(1) memory whatever n, computable for any index on its own.
    """
    index = np.asarray(index, np.uint64)
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    out = index.copy()
    todo = np.ones(out.shape, bool)
    while todo.any():
        x = out[todo]
        left, right = x >> np.uint64(half), x & mask
        for r in range(rounds):
            left, right = right, left ^ _round_function(right, key, r, half)
        out[todo] = (left << np.uint64(half)) | right
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


# ------------------------------------------------------------------------------------- corpus

class PackedCorpus:
    """A prepared directory, packed into blocks of at most seq_len - 1 tokens (room for <s>)."""

    def __init__(self, prepared_dir: str | os.PathLike, seq_len: int, packing: str):
        if packing not in PACKINGS:
            raise UserError(f"unknown packing {packing!r}; use one of {', '.join(PACKINGS)}")
        if seq_len < 8:
            raise UserError(f"seq_len {seq_len} is too short; use at least 8")
        self.dir = pathlib.Path(prepared_dir)
        self.manifest = load_manifest(self.dir)
        info = self.manifest["tokenizer"]
        self.bos_id, self.pad_id, self.eos_id = info["bos_id"], info["pad_id"], info["eos_id"]
        self.seq_len = seq_len
        self.tokens, shard_ids, starts, ends = [], [], [], []
        for number, shard in enumerate(self.manifest["shards"]):
            tokens = self._load(f"{shard['name']}.tokens.npy")
            if len(tokens) != shard["tokens"]:
                raise UserError(f"{self.dir / shard['name']}.tokens.npy: has {len(tokens)} tokens "
                                f"but the manifest says {shard['tokens']}; prepare it again")
            self.tokens.append(tokens)
            s, e = pack_shard(len(tokens), self._load(f"{shard['name']}.sentences.npy"),
                              self._load(f"{shard['name']}.documents.npy"), seq_len - 1, packing)
            shard_ids.append(np.full(len(s), number, np.int32))
            starts.append(s)
            ends.append(e)
        self.block_shard = np.concatenate(shard_ids)
        self.block_start = np.concatenate(starts)
        self.block_end = np.concatenate(ends)
        if len(self) == 0:
            raise UserError(f"{self.dir}: the prepared corpus has no tokens")

    def _load(self, name: str) -> np.ndarray:
        try:
            return np.load(self.dir / name, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise UserError(f"{self.dir / name}: unreadable ({e}); prepare the corpus again") \
                from None

    def __len__(self) -> int:
        return len(self.block_start)

    @property
    def num_tokens(self) -> int:
        return int(sum(len(t) for t in self.tokens))

    def rows(self, blocks: np.ndarray) -> np.ndarray:
        """`<s>` + block tokens + padding, [len(blocks), seq_len] int32."""
        out = np.full((len(blocks), self.seq_len), self.pad_id, np.int32)
        out[:, 0] = self.bos_id
        for row, block in enumerate(blocks):
            start, end = self.block_start[block], self.block_end[block]
            out[row, 1:1 + end - start] = self.tokens[self.block_shard[block]][start:end]
        return out


# ------------------------------------------------------------------------------------ batches

class PretrainingBatches:
    """The pure function step -> this process's rows of the global batch, and its iterator."""

    def __init__(self, prepared_dir, batch_size: int, seq_len: int, seed: int,
                 mask_prob: float = 0.15, packing: str = "full-sentences",
                 process_index: int = 0, process_count: int = 1, masking: str = "token"):
        if batch_size % process_count:
            raise UserError(f"batch_size {batch_size} is not divisible by the {process_count} "
                            "processes")
        if not 0 < mask_prob < 1:
            raise UserError(f"mask_prob {mask_prob} must be between 0 and 1")
        if masking not in UNITS:
            raise UserError(f"unknown masking {masking!r}; use one of {', '.join(UNITS)}")
        self.corpus = PackedCorpus(prepared_dir, seq_len, packing)
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
        self.local_rows = batch_size // process_count
        self.first_row = process_index * self.local_rows

    @property
    def steps_per_epoch(self) -> float:
        return len(self.corpus) / self.batch_size

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rows = np.arange(self.local_rows, dtype=np.int64) + self.first_row
        examples = step * self.batch_size + rows       # global example index, across epochs
        n = len(self.corpus)
        epochs, within = np.divmod(examples, n)
        blocks = np.empty_like(examples)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            blocks[chosen] = keyed_permutation(within[chosen], n, key=self.seed * 100_003 + epoch)
        ids = self.corpus.rows(blocks)
        out = mask_batch(ids, examples, self.seed, self.spec)
        out["attention_mask"] = (ids != self.corpus.pad_id).astype(np.int32)
        out["block"] = blocks
        out["epoch"] = epochs
        return out

    def iterate(self, start_step: int = 0, num_steps: int | None = None,
                prefetch: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches of start_step, start_step + 1, ... on tf.data threads, in order."""
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")  # tf.data only; the accelerators are JAX's
        example = self.batch(start_step)
        names = sorted(example)
        stop = start_step + num_steps if num_steps is not None else np.iinfo(np.int64).max

        def make(step):
            batch = self.batch(int(step))
            return tuple(batch[k] for k in names)

        def as_tensors(step):
            values = tf.numpy_function(make, [step], [tf.as_dtype(example[k].dtype)
                                                      for k in names], stateful=False)
            for value, name in zip(values, names):
                value.set_shape(example[name].shape)
            return dict(zip(names, values))

        options = tf.data.Options()
        options.deterministic = True
        dataset = (tf.data.Dataset.range(start_step, stop)
                   .map(as_tensors, num_parallel_calls=tf.data.AUTOTUNE)
                   .prefetch(prefetch or tf.data.AUTOTUNE)
                   .with_options(options))
        return dataset.as_numpy_iterator()


def pretraining_batches(prepared_dir, batch_size: int, seq_len: int, seed: int,
                        start_step: int = 0, mask_prob: float = 0.15,
                        packing: str = "full-sentences", process_index: int = 0,
                        process_count: int = 1, masking: str = "token",
                        num_steps: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of the global batches from `start_step` on (see the module doc).

    Each batch: input_ids, attention_mask, labels ([rows, seq_len]; labels -100 where nothing is
    predicted), masked_positions, masked_labels, masked_weights ([rows, P] for a gathered head),
    block and epoch ([rows]).
    """
    batches = PretrainingBatches(prepared_dir, batch_size, seq_len, seed, mask_prob, packing,
                                 process_index, process_count, masking)
    return batches.iterate(start_step, num_steps)


def check_compatible(prepared_dir, *, tokenizer=None, model_config=None,
                     seq_len: int | None = None) -> None:
    """Refuse a prepared corpus that does not fit the tokenizer or model it is about to feed."""
    manifest = load_manifest(prepared_dir)
    info = manifest["tokenizer"]
    if tokenizer is not None and tokenizer.fingerprint() != info["fingerprint"]:
        raise UserError(f"{prepared_dir}: was prepared with another tokenizer (vocabulary "
                        f"fingerprint {info['fingerprint']}, this one {tokenizer.fingerprint()}); "
                        "prepare the corpus again with this tokenizer")
    if model_config is not None:
        if model_config.vocab_size < info["vocab_size"]:
            raise UserError(f"{prepared_dir}: its tokenizer has {info['vocab_size']} ids but the "
                            f"model's vocab_size is {model_config.vocab_size}; they do not match")
        if model_config.pad_token_id != info["pad_id"]:
            raise UserError(f"{prepared_dir}: pad id {info['pad_id']} differs from the model's "
                            f"pad_token_id {model_config.pad_token_id}")
        if seq_len is not None and seq_len > model_config.max_sequence_length:
            raise UserError(f"seq_len {seq_len} is longer than the model's positions allow "
                            f"({model_config.max_sequence_length} tokens with "
                            f"max_position_embeddings={model_config.max_position_embeddings}); "
                            "lower seq_len or raise max_position_embeddings")
