"""Checkpoints: orbax, sharded and asynchronous, restored onto whatever mesh is current.

A checkpoint holds the train state (params, optimizer state, step, dropout key) and a JSON
`meta` item (config, real vocabulary size, mesh shape, git revision). The data position is the
step itself: batches are a pure function of it. Restoring always goes through abstract targets
that carry the current shardings, so a checkpoint moves to another mesh or process count.
The directory may be local or on object storage (`gs://...`): orbax takes `etils.epath` paths.
"""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import time

import jax
import orbax.checkpoint as ocp

from roberta_jax import fs
from roberta_jax.errors import UserError

log = logging.getLogger("roberta_jax")


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=pathlib.Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Checkpointer:
    """Save / restore the train state of one workdir.

    `read_only`: for commands that only read a workdir (export, fine-tuning from it), which may
    be in use by a live run: nothing is created, deleted or moved.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3,
                 keep_period: int | None = None, async_save: bool = True,
                 read_only: bool = False):
        self.directory = fs.as_path(directory)
        self.read_only = read_only
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                   max_to_keep=None, save_interval_steps=0)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, keep_period=keep_period or None,
                enable_async_checkpointing=async_save, create=True)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_names=("state", "meta"))
        except OSError as e:
            raise UserError(f"{self.directory}: cannot use as a checkpoint directory "
                            f"({e.strerror or e})") from None

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta

    def restore(self, abstract_state, step: int | None = None):
        """-> (state, meta, step) of `step` or of the newest checkpoint that reads back whole.

        A checkpoint that fails to restore (cut short, half written, bad metadata) is skipped
        with a warning naming what was wrong; older ones are tried in turn. None if there is none.
        """
        candidates = [step] if step is not None else sorted(self.steps(), reverse=True)
        damaged = []
        for candidate in candidates:
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
            except Exception as e:  # orbax and tensorstore raise many types for damaged files
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                log.warning("checkpoint %d in %s is unreadable (%s); trying an older one",
                            candidate, self.directory, reason[:300])
                damaged.append(candidate)
                continue
            if not self.read_only:
                self._set_aside(damaged)
            return restored.state, restored.meta, candidate
        if candidates:
            raise UserError(f"{self.directory}: no checkpoint could be restored (tried steps "
                            f"{candidates}); move the directory aside to start afresh")
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Move damaged checkpoints out of the way (never deleted: a person may want them), so
        the run can save those steps again and nothing ever restores them."""
        if not steps:
            return
        if jax.process_index() == 0:
            aside = self.directory.parent / "damaged_checkpoints"
            for step in steps:
                target = aside / f"{step}-{int(time.time())}"
                fs.move(self.directory / str(step), target)
                log.warning("moved damaged checkpoint %d to %s", step, target)
        if jax.process_count() > 1:   # every process lists the checkpoints after the move
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("roberta_jax:damaged_checkpoints_moved")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree, shardings):
    """ShapeDtypeStructs carrying `shardings`: the target orbax restores into."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
