"""`from_pretrained` / `save_pretrained`: checkpoints on disk <-> (model, params).

Sources: a Hugging Face directory (this project's exports are those too), or a fairseq
`model.pt` (or a directory holding one). Destination: a Hugging Face directory that
`transformers` loads as is.
"""

from __future__ import annotations

import logging
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax import fs
from roberta_jax.config import RobertaConfig
from roberta_jax.convert import fairseq, hf
from roberta_jax.convert.params import (hf_state_from_params, params_from_hf_state,
                                        stack_layers, task_of_hf_state)
from roberta_jax.errors import UserError
from roberta_jax.model import TASKS

ARCHITECTURE_TO_TASK = {architecture: task for task, (_, architecture) in TASKS.items()}
log = logging.getLogger("roberta_jax")


def read_checkpoint(path: str | os.PathLike, head: str | None = None):
    """-> (config, Hugging Face state dict, task the checkpoint was saved for, tokenizer source).

    The tokenizer source is a directory to copy tokenizer files from, or a {name: bytes} dict.
    """
    path = fs.as_path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    from roberta_jax.export import is_pretraining_workdir
    if is_pretraining_workdir(path):
        raise UserError(f"{path}: a pretraining workdir, not a model; make a Hugging Face "
                        f"directory of it with `roberta-jax export --workdir {path} --output DIR`")
    if hf.is_hf_dir(path):
        config, state, architecture = hf.read_hf_dir(path)
        task = ARCHITECTURE_TO_TASK.get(_roberta_architecture(architecture)) \
            or task_of_hf_state(state)
        return config, state, task, path
    checkpoint = fairseq.find_checkpoint(path)
    if checkpoint is not None:
        config, state, tokenizer_files = fairseq.read_fairseq(checkpoint, head=head)
        return config, state, task_of_hf_state(state), tokenizer_files
    raise UserError(f"{path}: not a model: expected a Hugging Face directory (config.json + "
                    "weights) or a fairseq model.pt")


def _roberta_architecture(name: str | None) -> str | None:
    # XLMRobertaForMaskedLM, CamembertModel, ... are the same networks as Roberta*.
    for prefix in ("XLMRoberta", "Camembert"):
        if name and name.startswith(prefix):
            return "Roberta" + name[len(prefix):]
    return name


def from_pretrained(path: str | os.PathLike, task: str | None = None, *,
                    num_labels: int | None = None, dtype=jnp.float32, param_dtype=jnp.float32,
                    scan_layers: bool = False, remat_policy: str | None = None,
                    head: str | None = None, seed: int = 0):
    """Load a checkpoint as (model, params) for `task` (default: the task it was saved for).

    `task`: one of `roberta_jax.model.TASKS`. A head the checkpoint lacks is freshly initialised
    from `seed` (with a warning), with `num_labels` outputs (default: the checkpoint config's).
    `dtype` is the compute dtype (e.g. jnp.bfloat16), `param_dtype` the stored one.
    `head` picks one of a fairseq checkpoint's named classification heads.
    """
    config, state, saved_task, _ = read_checkpoint(path, head=head)
    task, config = _resolve_task(task or saved_task, config, num_labels)
    params = params_from_hf_state(state, config, task, source=str(path), param_dtype=param_dtype,
                                  seed=seed)
    if scan_layers:
        params = stack_layers(params)
    params = jax.tree.map(jnp.asarray, params)
    model = TASKS[task][0](config, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers,
                           remat_policy=remat_policy)
    return model, params


def _resolve_task(task: str, config: RobertaConfig, num_labels: int | None):
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "question-answering" and num_labels is None:
        num_labels = 2  # start and end logits
    return task, config.replace(num_labels=num_labels)


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
    task, config = _resolve_task(task or saved_task, config, None)
    model = TASKS[task][0](config)
    params = params_from_hf_state(state, config, task, source=str(src),
                                  param_dtype=_widest_dtype(state))
    return save_pretrained(model, params, dst, tokenizer_from=tokenizer_source)


def _widest_dtype(state: dict[str, np.ndarray]):
    """Keep the checkpoint's own float type (fp16 / bf16 files stay that size, fp32 stays fp32)."""
    dtypes = {v.dtype for v in state.values() if np.issubdtype(v.dtype, np.floating)
              or v.dtype.name == "bfloat16"}
    return dtypes.pop() if len(dtypes) == 1 else jnp.float32
