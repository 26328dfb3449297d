"""Hugging Face model directories: read `config.json` + weights, write the same.

Weights are read from `model.safetensors`, sharded safetensors with an index, or
`pytorch_model.bin` (single or sharded). The PyTorch files are pickles: they are read by our
restricted reader, which needs no torch and refuses anything but tensors and plain data.
Directories may be local or on object storage (`gs://...`), read and written through
roberta_jax.fs.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import numpy as np
import safetensors
import safetensors.numpy

from roberta_jax import fs
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


def is_hf_dir(path: fs.PathLike) -> bool:
    path = fs.as_path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_hf_dir(path: str | os.PathLike) -> tuple[RobertaConfig, dict[str, np.ndarray], str | None]:
    """-> (config, state dict with Hugging Face names, architecture named in config.json)."""
    path = fs.as_path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"{path}: no {CONFIG_FILE}; expected a Hugging Face model directory")
    config = RobertaConfig.from_json_file(config_file)
    architectures = (json.loads(config_file.read_text(encoding="utf-8")).get("architectures")
                     or [None])
    return config, read_hf_weights(path), architectures[0]


def read_hf_weights(path: fs.PathLike) -> dict[str, np.ndarray]:
    path = fs.as_path(path)
    if (path / SAFETENSORS_FILE).is_file():
        return _read_safetensors(path / SAFETENSORS_FILE)
    if (path / SAFETENSORS_INDEX).is_file():
        return _read_sharded(path / SAFETENSORS_INDEX, _read_safetensors)
    if (path / TORCH_FILE).is_file():
        return _tensors_only(load_torch_checkpoint(path / TORCH_FILE), path / TORCH_FILE)
    if (path / TORCH_INDEX).is_file():
        return _read_sharded(path / TORCH_INDEX,
                             lambda f: _tensors_only(load_torch_checkpoint(f), f))
    raise UserError(f"{path}: no weights found (looked for {SAFETENSORS_FILE}, "
                    f"{SAFETENSORS_INDEX}, {TORCH_FILE}, {TORCH_INDEX})")


def _read_safetensors(file) -> dict[str, np.ndarray]:
    try:
        if fs.is_remote(file):
            return safetensors.numpy.load(file.read_bytes())
        return safetensors.numpy.load_file(file)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{file}: unreadable safetensors file ({reason}); it may be truncated "
                        "or corrupt: download or export it again") from None


def _read_sharded(index_file, read_one) -> dict[str, np.ndarray]:
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
                 tokenizer_files: dict[str, bytes] | None = None) -> fs.Path:
    """Write config.json + model.safetensors (+ tokenizer files) so `transformers` loads it.

    An interrupted or failed export never leaves a directory that looks complete. Locally it is
    written into a hidden sibling and renamed at the end; files and folders get the usual
    permissions (what the umask allows, as `cp` would give). On object storage, which cannot
    rename, it is written in place with config.json last (without it the directory is not a
    model) and removed again on failure.
    """
    out_dir = fs.as_path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: already exists and is not empty; choose a new directory")
    extra = {}
    if tokenizer_dir is not None:
        source = fs.as_path(tokenizer_dir)
        extra.update({name: (source / name).read_bytes() for name in TOKENIZER_FILES
                      if (source / name).is_file()})
    extra.update(tokenizer_files or {})
    config_text = json.dumps(config.to_hf_dict(architecture), indent=2, sort_keys=True) + "\n"
    tensors = {k: np.ascontiguousarray(v) for k, v in state.items()}
    if fs.is_remote(out_dir):
        try:
            (out_dir / SAFETENSORS_FILE).write_bytes(
                safetensors.numpy.save(tensors, metadata={"format": "pt"}))
            for name, data in extra.items():
                (out_dir / name).write_bytes(data)
            (out_dir / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        except BaseException:
            if out_dir.exists():
                out_dir.rmtree()
            raise
        return out_dir

    out = os.fspath(out_dir)
    staging = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        os.mkdir(staging)      # the umask's permissions (tempfile.mkdtemp would make it 0700)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot write here ({e.strerror})") from None
    try:
        with open(os.path.join(staging, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(config_text)
        weights = os.path.join(staging, SAFETENSORS_FILE)
        safetensors.numpy.save_file(tensors, weights, metadata={"format": "pt"})
        os.chmod(weights, 0o666 & ~_umask())   # safetensors creates its file 0600
        for name, data in extra.items():
            with open(os.path.join(staging, name), "wb") as f:
                f.write(data)
        if os.path.isdir(out):
            os.rmdir(out)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
