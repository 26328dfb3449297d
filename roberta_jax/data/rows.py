"""Rows of fine-tuning and prediction inputs: records read from local files, and fixed-shape
batches of encoded rows.

Every kind of fine-tuning input (classification, tokens, choices, SQuAD) and `predict` reads
its files and batches its rows here. A batch's ids are padded to a bucket length (the smallest
of `buckets` that fits the batch's longest row), so one compiled step serves most batches.
"""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np

from roberta_jax.data.tokenizer import pad_batch
from roberta_jax.errors import UserError

# Label of the positions a loss skips (specials, word continuations, unmasked tokens, padding).
# -100 because Hugging Face's datasets and torch's cross-entropy use it, so their encoded data
# carries over.
IGNORED_LABEL = -100


# ------------------------------------------------------------------------------------ reading

def read_utf8(path: pathlib.Path) -> str:
    """The text of a file, or one clear line saying why it cannot be had."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None


def read_rows(path: pathlib.Path) -> list[dict]:
    """Records of a jsonl file, or rows of a tsv / csv file with a header."""
    text = read_utf8(path)
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        return rows
    dialect = "excel-tab" if path.suffix in (".tsv", ".tab") else "excel"
    return list(csv.DictReader(text.splitlines(), dialect=dialect))


# ----------------------------------------------------------------------------------- batching

def bucket_length(longest: int, buckets: tuple[int, ...]) -> int:
    for b in sorted(buckets):
        if longest <= b:
            return b
    return max(buckets)


def batch_rows(order: np.ndarray, batch_size: int, drop_last: bool = False):
    """(rows, weights) per fixed-size batch of `order`: a short last batch is dropped, or filled
    up with weight-0 copies of its first row so that every batch has the same shape."""
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        if len(rows) < batch_size and drop_last:
            return
        weights = np.zeros(batch_size, np.float32)
        weights[:len(rows)] = 1
        yield np.concatenate([rows, np.full(batch_size - len(rows), rows[0])]), weights


def batches(encoded: list[list[int]], labels, batch_size: int, pad_id: int,
            buckets: tuple[int, ...], order: np.ndarray | None = None, drop_last: bool = False,
            label_pad: int | None = None):
    """Fixed-size batches (see batch_rows) padded to the bucket of their longest row. Labels are
    one per row (an array), or with `label_pad` one per token (lists, padded with it)."""
    order = np.arange(len(encoded)) if order is None else order
    for rows, weights in batch_rows(order, batch_size, drop_last):
        seqs = [encoded[i] for i in rows]
        length = bucket_length(max(len(s) for s in seqs), buckets)
        ids, mask = pad_batch(seqs, length, pad_id)
        batch = {"input_ids": ids, "attention_mask": mask, "weights": weights, "index": rows}
        if labels is not None and label_pad is not None:
            batch["labels"] = pad_batch([labels[i] for i in rows], length, label_pad)[0]
        elif labels is not None:
            batch["labels"] = labels[rows]
        yield batch
