"""Weights from anywhere: every checkpoint this project reads, as params for any head.

Sources, whatever the caller:
  - a Hugging Face directory (config.json + weights): `transformers`' own, this project's
    exports, and the best/ directory a fine-tuning seed keeps;
  - a fairseq `model.pt`, or a directory holding one;
  - a fine-tuning workdir (the best/ of the seed results.json names as the median one, or of its
    only seed) or one seed's directory;
  - a pretraining workdir (orbax checkpoints + config.json): its newest step's masked-LM model
    with the vocabulary unpadded, and the tokenizer it was trained with. Fine-tuning and
    pretraining (model.init_from) start from one; `from_pretrained` and `convert` refuse it and
    name `roberta-jax export`, which makes a model directory of it, tokenizer included.

What callers ask for:
  from_pretrained          (model, params) for a task: the public API, `predict`, test scoring
  for_finetuning           a task's head on any source's encoder, or a fresh model (`finetune`)
  for_pretraining          the masked-LM params padded to the training vocabulary
                           (`pretrain --config.model.init_from`)
  load_workdir_state       a pretraining workdir's whole train state (tests, kill test)
  load_workdir_params      its model with the real vocabulary (`export`, fine-tuning)
  tokenizer_source         where a source's tokenizer files are

A head the source lacks, or one reset on purpose, is freshly initialised from the caller's seed.
Reading changes nothing on disk, so a live run's workdir can be read. Nothing here imports the
trainer, the fine-tuner or the exporter: they depend on this module.
"""

from __future__ import annotations

import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from roberta_jax import fs
from roberta_jax import sharding as shd
from roberta_jax.checkpoint import Checkpointer
from roberta_jax.config import PRESETS, RobertaConfig
from roberta_jax.convert import fairseq, hf
from roberta_jax.convert.params import (
    hf_state_from_params,
    init_params,
    params_from_hf_state,
    stack_layers,
    task_of_hf_state,
    unstack_layers,
)
from roberta_jax.errors import UserError
from roberta_jax.model import TASKS, RobertaForMaskedLM
from roberta_jax.optim import make_optimizer
from roberta_jax.train_state import build_state, model_config

__all__ = ["from_pretrained", "for_finetuning", "for_pretraining", "init_params",
           "is_pretraining_workdir", "load_workdir_params", "load_workdir_state",
           "read_checkpoint", "read_workdir_config", "tokenizer_source", "workdir_tokenizer"]

ARCHITECTURE_TO_TASK = {architecture: task for task, (_, architecture) in TASKS.items()}
# Hugging Face names of the task heads: a checkpoint's head is kept, reset, or left unused.
HEAD_PREFIXES = ("classifier.", "qa_outputs.", "lm_head.")
# Rows indexed by token id: padded to the training vocabulary, unpadded on export.
VOCAB_ROWS = ("roberta.embeddings.word_embeddings.weight", "lm_head.bias")
log = logging.getLogger("roberta_jax")


# ====================================================================== checkpoint files

def read_checkpoint(path: str | os.PathLike, head: str | None = None):
    """-> (config, Hugging Face state dict, task the checkpoint was saved for, tokenizer source).

    The tokenizer source is a directory to copy tokenizer files from, or a {name: bytes} dict.
    `head` picks one of a fairseq checkpoint's named classification heads. A pretraining
    workdir is refused here (it is a training state, not a model: `export` makes one of it).
    """
    path = fs.as_path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if is_pretraining_workdir(path):
        raise UserError(f"{path}: a pretraining workdir, not a model; make a Hugging Face "
                        f"directory of it with `roberta-jax export --workdir {path} --output DIR`")
    path = _fine_tuned_model(path)
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
                    "weights), a fairseq model.pt, or a fine-tuning workdir")


def _roberta_architecture(name: str | None) -> str | None:
    # XLMRobertaForMaskedLM, CamembertModel, ... are the same networks as Roberta*.
    for prefix in ("XLMRoberta", "Camembert"):
        if name and name.startswith(prefix):
            return "Roberta" + name[len(prefix):]
    return name


def _fine_tuned_model(path: fs.Path) -> fs.Path:
    """A fine-tuning workdir or seed directory -> the best/ model it kept; else `path`.

    A workdir with several seeds gives the median seed's (results.json names it), the seed whose
    dev score the run reports."""
    if (path / "best").is_dir() and hf.is_hf_dir(path / "best"):
        return path / "best"   # one seed's directory
    seeds = sorted(p for p in path.glob("seed*") if hf.is_hf_dir(p / "best")) \
        if path.is_dir() and not hf.is_hf_dir(path) else []
    if not seeds:
        return path
    results = path / "results.json"
    if results.is_file():
        median = json.loads(results.read_text()).get("median_seed")
        if median is not None and hf.is_hf_dir(path / f"seed{median}" / "best"):
            return path / f"seed{median}" / "best"
    if len(seeds) == 1:
        return seeds[0] / "best"
    raise UserError(f"{path}: a fine-tuning workdir with {len(seeds)} seeds and no results.json "
                    "naming the median one yet; name one: "
                    + ", ".join(str(s / "best") for s in seeds))


def resolve_task(task: str, config: RobertaConfig, num_labels: int | None):
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "question-answering" and num_labels is None:
        num_labels = 2  # start and end logits
    return task, config.replace(num_labels=num_labels)


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
    task, config = resolve_task(task or saved_task, config, num_labels)
    params = params_from_hf_state(state, config, task, source=str(path), param_dtype=param_dtype,
                                  seed=seed)
    if scan_layers:
        params = stack_layers(params)
    params = jax.tree.map(jnp.asarray, params)
    model = TASKS[task][0](config, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers,
                           remat_policy=remat_policy)
    return model, params


# ====================================================================== pretraining workdirs

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


def read_workdir_config(workdir) -> ml_collections.ConfigDict:
    """The config a pretraining workdir was started with (its config.json)."""
    workdir = fs.as_path(workdir)
    if not (workdir / "config.json").is_file():
        raise UserError(f"{workdir}: not a pretraining workdir (no config.json)")
    return ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))


def load_workdir_state(workdir, step: int | None = None):
    """-> (full train state on one device, model config, config, meta, step) from a workdir."""
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
    # On the host first: slicing the layers on the device would run under the caller's mesh
    # (pretraining's, when another run starts from this workdir), which this state is not on.
    params = unstack_layers(jax.device_get(state.params), cfg.num_hidden_layers)
    # Unpad: the rows past the tokenizer's ids were never trained.
    embeddings = params["roberta"]["embeddings"]["word_embeddings"]
    embeddings["embedding"] = np.asarray(embeddings["embedding"])[:real_vocab]
    params["lm_head"]["bias"] = np.asarray(params["lm_head"]["bias"])[:real_vocab]
    tokenizer_kind = meta["tokenizer"]["kind"]
    final = cfg.replace(vocab_size=real_vocab, model_type="xlm-roberta"
                        if tokenizer_kind == "sentencepiece" else "roberta")
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


def tokenizer_source(path) -> fs.Path:
    """The directory holding the tokenizer of any source a fine-tuning run starts from."""
    path = fs.as_path(path)
    if is_pretraining_workdir(path):
        return workdir_tokenizer(path)
    if path.is_file():
        return path.parent   # fairseq's model.pt beside its dict.txt / bpe files
    return _fine_tuned_model(path) if path.exists() else path


# ====================================================================== what callers ask for

def for_finetuning(init: str, head: str, num_labels: int | None, labels: list[str] | None,
                   seed: int, preset: str, vocab_size: int, dtype, reset_head: bool = False):
    """(model, params) for `head` from any source (`init`), or from scratch (`preset`, with the
    tokenizer's `vocab_size`) when `init` is "".

    A source that already has this head keeps it, so a fine-tuned model can be trained further;
    if its label count differs from the task's that is an error unless `reset_head`, which
    trains a fresh head (from `seed`) on the source's encoder. A pretraining workdir gives its
    encoder at its newest step, with a fresh head.
    """
    if not init:
        if preset not in PRESETS:
            raise UserError(f"unknown model preset {preset!r}; one of {', '.join(PRESETS)}")
        config = _with_labels(PRESETS[preset].replace(vocab_size=vocab_size), num_labels, labels)
        model = TASKS[head][0](config, dtype=dtype)
        return model, init_params(model, head, seed)
    path = fs.as_path(init)
    config, state, saved_task = _read_weights(path)
    has_head = saved_task == head and any(k.startswith(HEAD_PREFIXES) for k in state)
    if has_head and reset_head:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    elif has_head and num_labels is not None and config.num_labels != num_labels:
        raise UserError(
            f"{path}: its {head} head has {config.num_labels} label(s) but this task has "
            f"{num_labels}; set --config.reset_head=True to train a new head on its encoder")
    elif has_head and labels and config.labels != tuple(labels):
        log.warning("%s: the head's labels %s are renamed to the task's %s", path,
                    list(config.labels), labels)
    config = _with_labels(config, num_labels, labels)
    params = params_from_hf_state(state, config, head, source=str(path), seed=seed)
    return TASKS[head][0](config, dtype=dtype), jax.tree.map(jnp.asarray, params)


def _read_weights(path: fs.Path):
    """-> (config, Hugging Face state dict, task) of any source, a pretraining workdir too (its
    newest step's masked-LM model, vocabulary unpadded)."""
    if not is_pretraining_workdir(path):
        return read_checkpoint(path)[:3]
    model, params, _, step = load_workdir_params(path)
    log.info("weights of step %d of %s", step, path)
    return model.config, hf_state_from_params(params, model.config), "masked-lm"


def _with_labels(config: RobertaConfig, num_labels: int | None, labels) -> RobertaConfig:
    if num_labels is not None:
        config = config.replace(num_labels=num_labels)
    if labels:
        config = config.replace(labels=tuple(labels))
    return config


def for_pretraining(path, model_cfg: RobertaConfig, scan_layers: bool, param_shardings):
    """Encoder and LM head from any source (another pretraining run's workdir too), padded to
    the training vocabulary (`model_cfg.vocab_size`) and laid out as the trainer holds them
    (stacked layers when `scan_layers`, placed by `param_shardings`)."""
    _, state, _ = _read_weights(fs.as_path(path))
    rows = state.get(VOCAB_ROWS[0])
    if rows is None or rows.shape[0] > model_cfg.vocab_size:
        raise UserError(f"{path}: its vocabulary does not fit this model's "
                        f"({model_cfg.vocab_size})")
    for key in VOCAB_ROWS:
        if key in state:
            extra_rows = model_cfg.vocab_size - state[key].shape[0]
            state[key] = np.pad(state[key], [(0, extra_rows)] + [(0, 0)] * (state[key].ndim - 1))
    params = params_from_hf_state(state, model_cfg, "masked-lm", source=str(path))
    if scan_layers:
        params = stack_layers(params)
    return jax.device_put(params, param_shardings)
