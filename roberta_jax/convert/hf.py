"""Hugging Face model directories: read `config.json` + weights, write the same.

Weights are read from `model.safetensors`, sharded safetensors with an index, or
`pytorch_model.bin` (single or sharded). The PyTorch files are pickles: they are read by our
restricted reader, which needs no torch and refuses anything but tensors and plain data.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import safetensors
import safetensors.numpy

from roberta_jax.config import RobertaConfig
from roberta_jax.convert.torch_pickle import load_torch_checkpoint
from roberta_jax.errors import UserError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
# Tokenizer files a Hugging Face RoBERTa / XLM-R directory may hold; copied along on export.
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "sentencepiece.bpe.model")


def is_hf_dir(path: pathlib.Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_hf_dir(path: str | os.PathLike) -> tuple[RobertaConfig, dict[str, np.ndarray], str | None]:
    """-> (config, state dict with Hugging Face names, architecture named in config.json)."""
    path = pathlib.Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"{path}: no {CONFIG_FILE}; expected a Hugging Face model directory")
    config = RobertaConfig.from_json_file(config_file)
    architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or [None]
    return config, read_hf_weights(path), architectures[0]


def read_hf_weights(path: pathlib.Path) -> dict[str, np.ndarray]:
    if (path / SAFETENSORS_FILE).is_file():
        return _read_safetensors(path / SAFETENSORS_FILE)
    if (path / SAFETENSORS_INDEX).is_file():
        return _read_sharded(path / SAFETENSORS_INDEX, _read_safetensors)
    if (path / TORCH_FILE).is_file():
        return _tensors_only(load_torch_checkpoint(path / TORCH_FILE), path / TORCH_FILE)
    if (path / TORCH_INDEX).is_file():
        return _read_sharded(path / TORCH_INDEX,
                             lambda f: _tensors_only(load_torch_checkpoint(f), f))
    raise UserError(f"{path}: no weights found (looked for {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
                    f"{TORCH_FILE}, {TORCH_INDEX})")


def _read_safetensors(file: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load_file(file)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{file}: unreadable safetensors file ({reason}); it may be truncated "
                        "or corrupt: download or export it again") from None


def _read_sharded(index_file: pathlib.Path, read_one) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{index_file}: not a valid shard index ({e})") from None
    state = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = index_file.parent / shard
        if not shard_file.is_file():
            raise UserError(f"{index_file}: lists shard {shard}, which is missing")
        state.update(read_one(shard_file))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise UserError(f"{index_file}: {len(missing)} weights listed in the index are in no "
                        f"shard, e.g. {missing[0]}")
    return state


def _tensors_only(obj, file) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise UserError(f"{file}: expected a state dict of tensors")
    return obj


# ----------------------------------------------------------------------------------- writing

def write_hf_dir(out_dir: str | os.PathLike, config: RobertaConfig, state: dict[str, np.ndarray],
                 architecture: str, tokenizer_dir: str | os.PathLike | None = None,
                 tokenizer_files: dict[str, bytes] | None = None) -> pathlib.Path:
    """Write config.json + model.safetensors (+ tokenizer files) so `transformers` loads it.

    Written into a temporary sibling and renamed at the end: an interrupted or failed export never
    leaves a directory that looks complete.
    """
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: already exists and is not empty; choose a new directory")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    except OSError as e:
        raise UserError(f"{out_dir}: cannot write here ({e.strerror})") from None
    try:
        (staging / CONFIG_FILE).write_text(
            json.dumps(config.to_hf_dict(architecture), indent=2, sort_keys=True) + "\n",
            encoding="utf-8")
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
                                    staging / SAFETENSORS_FILE, metadata={"format": "pt"})
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                if (pathlib.Path(tokenizer_dir) / name).is_file():
                    shutil.copyfile(pathlib.Path(tokenizer_dir) / name, staging / name)
        for name, data in (tokenizer_files or {}).items():
            (staging / name).write_bytes(data)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
