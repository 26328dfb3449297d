"""Records of a prepared tensorflow-datasets split as plain Python values (str, int, float,
nested lists and dicts), whatever the feature types: text, class labels, sequences, ragged
sequences. Nothing is downloaded: the data must already be under the tfds data directory."""

from __future__ import annotations

import numpy as np

from roberta_jax.errors import UserError


def read_tfds(name: str, split: str, data_dir: str | None) -> tuple[list[dict], dict]:
    """-> (records as plain Python values, the set's features). Reads prepared data only."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError("tfds inputs need tensorflow-datasets") from None
    try:
        dataset, info = tfds.load(name, split=split, data_dir=data_dir, download=False,
                                  with_info=True)
    except Exception as e:  # tfds raises assorted types for missing data
        raise UserError(f"tfds:{name}: cannot load split {split!r} "
                        f"({str(e).splitlines()[0][:200]})") from None
    return [_plain(record) for record in tfds.as_numpy(dataset)], info.features


def _plain(value):
    """numpy values and bytes -> Python lists, numbers and str (sequence features included)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, np.ndarray) and value.ndim:
        return [_plain(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _plain(value.item())
    if hasattr(value, "to_list"):  # ragged sequences
        return _plain(value.to_list())
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
