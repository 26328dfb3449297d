"""Sentence and sentence-pair classification / regression inputs.

Examples come from local files (jsonl, tsv, csv with a header) or tfds (`tfds:glue/sst2`), and
become fixed-shape batches (data/rows.py's `batches`).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from roberta_jax.data.rows import read_rows
from roberta_jax.data.tokenizer import Tokenizer
from roberta_jax.errors import UserError


@dataclasses.dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray | None      # int class ids, float scores (regression), or None (test)
    ids: list                      # example ids for prediction files (row index if absent)


def read_examples(source: str, text_field: str, pair_field: str | None, label_field: str | None,
                  label_names: list[str] | None = None, regression: bool = False,
                  split: str = "train", tfds_data_dir: str | None = None,
                  id_field: str = "idx") -> tuple[Examples, list[str] | None]:
    """-> (examples, label names). String labels are mapped to ids in order of first appearance
    unless `label_names` fixes them; a label outside `label_names` is an error."""
    if source.startswith("tfds:"):
        rows = _tfds_rows(source[5:], split, tfds_data_dir)
    else:
        rows = read_rows(pathlib.Path(source))
    if not rows:
        raise UserError(f"{source}: no examples")
    for field in [text_field] + [f for f in (pair_field, label_field) if f]:
        if field not in rows[0]:
            raise UserError(f"{source}: no {field!r} column (it has {', '.join(rows[0])}); "
                            "choose the columns with the text / pair / label field options")
    texts = [str(r[text_field]) for r in rows]
    pairs = [str(r[pair_field]) for r in rows] if pair_field else None
    ids = [r.get(id_field, i) for i, r in enumerate(rows)]
    labels = None
    # tfds marks unlabelled (test) examples with -1 (-1.0 for STS-B); in a local file -1 is a
    # label like any other (a score, or a class such as -1 / +1).
    unlabelled = (None, "", -1) if source.startswith("tfds:") else (None, "")
    missing = [i for i, r in enumerate(rows) if label_field and r.get(label_field) in unlabelled]
    if label_field is not None and missing and len(missing) < len(rows) \
            and not source.startswith("tfds:"):
        raise UserError(f"{source}: example {missing[0] + 1} has no {label_field!r} but others "
                        "do; label every example (or none, for a test file)")
    if label_field is not None and not missing:
        raw = [r[label_field] for r in rows]
        if regression:
            labels = _scores(raw, source, label_field)
        else:
            labels, label_names = _label_ids(raw, label_names, source)
    return Examples(texts, pairs, labels, ids), label_names


def _scores(raw, source, label_field) -> np.ndarray:
    try:
        return np.asarray([float(x) for x in raw], np.float32)
    except (TypeError, ValueError):
        bad = next(i for i, x in enumerate(raw) if not _is_number(x))
        raise UserError(f"{source}: example {bad + 1} has {label_field!r} {raw[bad]!r}, not a "
                        "number (a regression task needs scores)") from None


def _is_number(x) -> bool:
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False


def _label_ids(raw, names, source):
    as_ints = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in raw) \
        and min(raw) >= 0
    if as_ints:  # class ids already (tfds ClassLabel, or 0 / 1 / ... in a file)
        names = names or [str(i) for i in range(int(max(raw)) + 1)]
        if max(raw) >= len(names) or min(raw) < 0:
            raise UserError(f"{source}: label id {max(raw)} is outside the {len(names)} labels "
                            "of this task")
        return np.asarray(raw, np.int32), names
    strings = [str(x) for x in raw]
    if names is None:
        names = list(dict.fromkeys(strings))
    index = {name: i for i, name in enumerate(names)}
    missing = sorted(set(strings) - set(index))
    if missing:
        raise UserError(f"{source}: label {missing[0]!r} is not one of the {len(names)} labels "
                        f"the model knows ({', '.join(names[:10])})")
    return np.asarray([index[s] for s in strings], np.int32), names


def _tfds_rows(name: str, split: str, data_dir: str | None) -> list[dict]:
    from roberta_jax.data.tfds_records import read_tfds
    return read_tfds(name, split, data_dir)[0]


def encode(tokenizer: Tokenizer, examples: Examples, max_length: int,
           truncation: str = "longest_first") -> list[list[int]]:
    pairs = examples.pairs or [None] * len(examples.texts)
    return [tokenizer(t, p, max_length=max_length, truncation=truncation)
            for t, p in zip(examples.texts, pairs)]
