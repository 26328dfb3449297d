"""`roberta-jax export`: a pretraining workdir's checkpoint -> a Hugging Face directory
(the masked-LM model with the vocabulary unpadded, and the tokenizer it was trained with)."""

from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from roberta_jax import sharding as shd
from roberta_jax.checkpoint import Checkpointer
from roberta_jax.convert.params import unstack_layers
from roberta_jax.errors import UserError
from roberta_jax.model import RobertaForMaskedLM
from roberta_jax.optim import make_optimizer
from roberta_jax.pretrained import save_pretrained


def load_workdir_state(workdir, step: int | None = None):
    """-> (full train state on one device, model config, config, meta, step) from a workdir."""
    from roberta_jax.train import build_state, model_config
    workdir = pathlib.Path(workdir)
    if not (workdir / "config.json").is_file():
        raise UserError(f"{workdir}: not a pretraining workdir (no config.json)")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
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
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
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


def export_workdir(workdir, output, step: int | None = None) -> pathlib.Path:
    model, params, config, restored_step = load_workdir_params(workdir, step)
    # `prepare` saved the tokenizer there in its exportable form.
    tokenizer_dir = pathlib.Path(config.data.path) / "tokenizer"
    out = save_pretrained(model, params, output,
                          tokenizer_from=tokenizer_dir if tokenizer_dir.is_dir() else None)
    print(f"exported step {restored_step} of {workdir} -> {out}")
    return out
