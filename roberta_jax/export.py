"""`roberta-jax export`: a pretraining workdir's checkpoint -> a Hugging Face directory
(the masked-LM model with the vocabulary unpadded, and the tokenizer it was trained with).

The workdir is read by weights.py (reading changes nothing in it, so a live run's workdir can
be exported from); this module checks the tokenizer and writes the directory.
"""

from __future__ import annotations

import os

from roberta_jax import fs
from roberta_jax.checkpoint import Checkpointer
from roberta_jax.convert.hf import TOKENIZER_FILES
from roberta_jax.errors import UserError
from roberta_jax.pretrained import save_pretrained

# Reading a workdir is weights.py's job; these names were importable from here and stay so.
from roberta_jax.weights import (  # noqa: F401
    is_pretraining_workdir,
    load_workdir_params,
    load_workdir_state,
    read_workdir_config,
    workdir_tokenizer,
)


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
    """Write step `step` (default: the newest) of a pretraining workdir as a Hugging Face
    directory at `output`, with the tokenizer it was trained with (or `tokenizer`)."""
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
