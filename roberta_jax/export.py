"""`roberta-jax export`: a pretraining workdir's checkpoint -> a Hugging Face directory
(the masked-LM model with the vocabulary unpadded, and the tokenizer it was trained with).

Reading a workdir changes nothing in it, so a live run's workdir can be exported from.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from roberta_jax import fs
from roberta_jax import sharding as shd
from roberta_jax.checkpoint import Checkpointer
from roberta_jax.convert.hf import TOKENIZER_FILES
from roberta_jax.convert.params import unstack_layers
from roberta_jax.errors import UserError
from roberta_jax.model import RobertaForMaskedLM
from roberta_jax.optim import make_optimizer
from roberta_jax.pretrained import save_pretrained


def read_workdir_config(workdir) -> ml_collections.ConfigDict:
    """The config a pretraining workdir was started with (its config.json)."""
    workdir = fs.as_path(workdir)
    if not (workdir / "config.json").is_file():
        raise UserError(f"{workdir}: not a pretraining workdir (no config.json)")
    return ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))


def is_pretraining_workdir(path) -> bool:
    """A `roberta-jax pretrain` workdir: checkpoints/ and our training config.json (sections
    such as "train", no model_type as a Hugging Face config has)."""
    path = fs.as_path(path)
    config = path / "config.json"
    if not ((path / "checkpoints").is_dir() and config.is_file()):
        return False
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and "model_type" not in raw and isinstance(raw.get("train"), dict)


def load_workdir_state(workdir, step: int | None = None):
    """-> (full train state on one device, model config, config, meta, step) from a workdir."""
    from roberta_jax.train import build_state, model_config
    workdir = fs.as_path(workdir)
    config = read_workdir_config(workdir)
    checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
    try:
        if checkpointer.latest_step() is None:
            raise UserError(f"{workdir}: has no checkpoint yet")
        meta = checkpointer.read_meta(step or checkpointer.latest_step())
        cfg = model_config(config, meta["tokenizer"]["vocab_size"])
        model = RobertaForMaskedLM(cfg, param_dtype=np.dtype(config.model.param_dtype),
                                   scan_layers=config.model.scan_layers)
        mesh_config = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
        mesh = shd.make_mesh(mesh_config, jax.devices()[:1])
        seq = min(8, cfg.max_sequence_length)
        example = {"input_ids": np.zeros((1, seq), np.int32),
                   "attention_mask": np.ones((1, seq), np.int32),
                   "masked_positions": np.zeros((1, 1), np.int32)}
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.logical_rules(config)):
            _, abstract, _ = build_state(config, mesh, model, make_optimizer(config.train),
                                         example)
            state, _, restored_step = checkpointer.restore(abstract, step)
    finally:
        checkpointer.close()
    return state, cfg, config, meta, restored_step


def load_workdir_params(workdir, step: int | None = None):
    """-> (model with the real vocabulary, its params as numpy, config, step) from a workdir."""
    state, cfg, config, meta, restored_step = load_workdir_state(workdir, step)
    real_vocab = meta["real_vocab_size"]
    params = jax.device_get(unstack_layers(state.params, cfg.num_hidden_layers))
    # Unpad: the rows past the tokenizer's ids were never trained.
    embeddings = params["roberta"]["embeddings"]["word_embeddings"]
    embeddings["embedding"] = np.asarray(embeddings["embedding"])[:real_vocab]
    params["lm_head"]["bias"] = np.asarray(params["lm_head"]["bias"])[:real_vocab]
    tokenizer_kind = meta["tokenizer"]["kind"]
    final = cfg.replace(vocab_size=real_vocab,
                        model_type="xlm-roberta" if tokenizer_kind == "sentencepiece" else "roberta")
    return RobertaForMaskedLM(final), params, config, restored_step


def workdir_tokenizer(workdir, config=None) -> fs.Path:
    """The tokenizer a pretraining workdir was trained with, from any directory: the copy in
    the workdir, else the prepared data's (the workdir records data.path resolved). Refuses in
    one line when neither is there: an export must never lack its tokenizer."""
    workdir = fs.as_path(workdir)
    own = workdir / "tokenizer"
    if own.is_dir():
        return own
    config = config or read_workdir_config(workdir)
    recorded = config.data.path
    if recorded and not fs.is_remote(recorded) and not os.path.isabs(recorded):
        # Workdirs written before paths were recorded resolved: the directory it is relative to
        # is unknown, and guessing could silently pick another corpus's tokenizer.
        raise UserError(f"{workdir}: its config.json records data.path={recorded}, relative to "
                        "the directory pretraining ran in; name the tokenizer: --tokenizer "
                        f"DIR (export) or --config.tokenizer=DIR (finetune), where DIR is "
                        f"{recorded.rstrip('/')}/tokenizer as seen from that directory")
    candidate = fs.as_path(recorded) / "tokenizer" if recorded else None
    if candidate is None or not candidate.is_dir():
        raise UserError(f"{workdir}: no tokenizer (looked in {own} and {candidate}); name it: "
                        "--tokenizer DIR (export) or --config.tokenizer=DIR (finetune)")
    return candidate


def _check_tokenizer(tokenizer_dir, meta: dict) -> None:
    """The tokenizer directory has files an export can carry, and the trained ids."""
    from roberta_jax.data.tokenizer import load_tokenizer
    tokenizer_dir = fs.as_path(tokenizer_dir)
    if not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{tokenizer_dir}: no tokenizer files (looked for "
                        f"{', '.join(TOKENIZER_FILES)})")
    size = load_tokenizer(fs.local_copy(tokenizer_dir, TOKENIZER_FILES)).vocab_size
    expected = meta["tokenizer"]["vocab_size"]
    if size != expected:
        raise UserError(f"{tokenizer_dir}: a tokenizer with {size} ids, but the model was "
                        f"trained with {expected}; name the one it was trained with")


def export_workdir(workdir, output, step: int | None = None,
                   tokenizer: str | os.PathLike | None = None) -> fs.Path:
    workdir = fs.as_path(workdir)
    config = read_workdir_config(workdir)
    # The tokenizer first: refuse before the (long) restore, never export without one.
    tokenizer_dir = fs.as_path(tokenizer) if tokenizer else workdir_tokenizer(workdir, config)
    checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
    try:
        meta = checkpointer.read_meta(step or checkpointer.latest_step())
    except Exception:  # no or a damaged checkpoint: the restore below says which, in one line
        meta = None
    finally:
        checkpointer.close()
    if meta is not None:
        _check_tokenizer(tokenizer_dir, meta)
    model, params, config, restored_step = load_workdir_params(workdir, step)
    out = save_pretrained(model, params, output, tokenizer_from=tokenizer_dir)
    print(f"exported step {restored_step} of {workdir} -> {out}")
    return out
