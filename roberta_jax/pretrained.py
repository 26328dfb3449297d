"""`save_pretrained` and `convert`: (model, params) or any checkpoint -> a Hugging Face
directory that `transformers` loads as is.

Reading checkpoints (`from_pretrained`, re-exported here) is weights.py's job.
"""

from __future__ import annotations

import logging
import os
import tempfile

import jax.numpy as jnp
import numpy as np

from roberta_jax import fs
from roberta_jax.config import RobertaConfig
from roberta_jax.convert import hf
from roberta_jax.convert.params import hf_state_from_params, params_from_hf_state
from roberta_jax.model import TASKS

# Reading lives in weights.py; from_pretrained is re-exported here, where users import it from.
from roberta_jax.weights import from_pretrained, read_checkpoint, resolve_task

__all__ = ["convert", "from_pretrained", "save_pretrained", "task_of"]

log = logging.getLogger("roberta_jax")


def task_of(model) -> str:
    for task, (cls, _) in TASKS.items():
        if type(model) is cls:
            return task
    raise TypeError(f"{type(model).__name__} is not a roberta_jax model")


def save_pretrained(model, params, out_dir: str | os.PathLike,
                    tokenizer_from: str | os.PathLike | dict | None = None, *,
                    tokenizer=None) -> fs.Path:
    """Write a Hugging Face directory: config.json, model.safetensors and the tokenizer files
    that `transformers` and `roberta-jax predict` read.

    `tokenizer`: what `load_tokenizer` returns, or a path it reads. `tokenizer_from`: a directory
    to copy tokenizer files from, or {name: bytes}. Without either the directory holds the model
    only (with a warning).
    """
    if tokenizer is not None:
        tokenizer_from = _tokenizer_files(tokenizer)
    elif tokenizer_from is None:
        log.warning("%s: no tokenizer given, so none is written; pass tokenizer= (e.g. "
                    "rj.load_tokenizer(...)) for a directory that predict and transformers' "
                    "AutoTokenizer can use", out_dir)
    config: RobertaConfig = model.config
    state = hf_state_from_params(params, config)
    state = {k: np.asarray(v) for k, v in state.items()}
    architecture = TASKS[task_of(model)][1]
    if config.model_type == "xlm-roberta":
        architecture = architecture.replace("Roberta", "XLMRoberta", 1)
    elif config.model_type == "camembert":
        architecture = architecture.replace("Roberta", "Camembert", 1)
    kwargs = {"tokenizer_files": tokenizer_from} if isinstance(tokenizer_from, dict) \
        else {"tokenizer_dir": tokenizer_from}
    return hf.write_hf_dir(out_dir, config, state, architecture, **kwargs)


def _tokenizer_files(tokenizer) -> dict[str, bytes]:
    """{file name: contents} of a tokenizer saved the way `load_tokenizer` reads it back."""
    from roberta_jax.data.tokenizer import Tokenizer, load_tokenizer
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = load_tokenizer(tokenizer)
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save(directory)
        return {p.name: p.read_bytes() for p in fs.as_path(directory).iterdir() if p.is_file()}


def convert(src: str | os.PathLike, dst: str | os.PathLike, task: str | None = None,
            head: str | None = None) -> fs.Path:
    """Any supported checkpoint -> a Hugging Face directory, tensors copied exactly.

    No model is built: weights are renamed and laid out as `transformers` names them, so the
    round trip Hugging Face -> here -> Hugging Face is bitwise.
    """
    config, state, saved_task, tokenizer_source = read_checkpoint(src, head=head)
    task, config = resolve_task(task or saved_task, config, None)
    model = TASKS[task][0](config)
    params = params_from_hf_state(state, config, task, source=str(src),
                                  param_dtype=_widest_dtype(state))
    return save_pretrained(model, params, dst, tokenizer_from=tokenizer_source)


def _widest_dtype(state: dict[str, np.ndarray]):
    """Keep the checkpoint's own float type (fp16 / bf16 files stay that size, fp32 stays fp32)."""
    dtypes = {v.dtype for v in state.values() if np.issubdtype(v.dtype, np.floating)
              or v.dtype.name == "bfloat16"}
    return dtypes.pop() if len(dtypes) == 1 else jnp.float32
