"""The processes of one job (one per host): start them, make them agree, stop them together.

- `initialize`: jax.distributed from explicit flags (local multi-process runs) or from what the
  cluster tells JAX (TPU pods, SLURM).
- `Agreement`: start-up work whose outcome every process must share. A UserError on any one
  process, or a config, workdir, data manifest or code that differs from process 0's, stops
  every process with the same one line; alone, the failing process would leave the others
  waiting in a collective until a timeout.
- `Preemption`: SIGTERM (a preemption notice) or Ctrl-C to any one process, or to several at
  different moments, makes every process stop at the same step: each process's flag is
  all-reduced every `every` steps, so every process reads the same answer at the same step.

Why not JAX's own preemption sync point (`multihost_utils.reached_preemption_sync_point`): it
counts its calls, and orbax's `CheckpointManager.save` calls it too, with checkpoint steps, so
the two counts interleave; and a notice that arrives before the first call agrees on step 1,
which a resumed run never reaches. Its SIGTERM handler is switched off here (ours replaces it).
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import os
import pathlib
import signal
import threading

import jax
import numpy as np

from roberta_jax.errors import UserError

AGREEMENT_TIMEOUT_S = 1800   # a slow host may spend minutes reading its data before it meets
_exchanges = itertools.count()


# =============================================================================== start

def initialize(dist) -> None:
    """One process per host: explicit coordinator flags, or what the cluster tells JAX."""
    if jax.distributed.is_initialized():
        return
    if dist.coordinator_address or _in_multihost_cluster():
        # Our Preemption handles SIGTERM; JAX's service would install its own handler over it.
        jax.config.update("jax_enable_preemption_service", False)
    if dist.coordinator_address:
        # Only the CPU backend reads this: cross-process CPU collectives (local multi-host runs).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(dist.coordinator_address, dist.num_processes,
                                   dist.process_id)
    elif _in_multihost_cluster():
        jax.distributed.initialize()
    if jax.distributed.is_initialized():
        # Leave the coordination service in order at exit; left to the interpreter's teardown,
        # the processes wait tens of seconds on each other.
        atexit.register(jax.distributed.shutdown)
    if jax.process_count() > 1:
        # Meet once right away, while every process is at the same point: the collectives'
        # context is set up here rather than mid-setup, where one slow host (busy compiling or
        # reading data) could make the others time out waiting for it.
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("roberta_jax:start")


def _in_multihost_cluster() -> bool:
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    tpu_pod = len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    return slurm or tpu_pod or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


# =============================================================================== agree

class Agreement:
    """A block of start-up work whose outcome every process shares:

        with hosts.Agreement() as agreement:
            ...                                        # may raise UserError on one host only
            agreement.expect_same("config", flat_config, "start every process with ...")

    On leaving the block the processes exchange what they expect to share (and any error)
    through the coordination service; the first error or disagreement, in process order,
    becomes the same UserError on every process. One process: nothing is exchanged.
    """

    def __init__(self, timeout_s: float = AGREEMENT_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.facts: dict[str, dict] = {}

    def expect_same(self, what: str, value, advice: str) -> None:
        """`value` (JSON data, or a function computing it) must equal process 0's; `advice`
        says how to make it so."""
        if jax.process_count() == 1:
            return
        value = value() if callable(value) else value
        self.facts[what] = {"value": json.loads(json.dumps(value, default=str)),
                            "advice": advice}

    def __enter__(self) -> Agreement:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if jax.process_count() == 1:
            return False
        mine = {"facts": self.facts, "error": None}
        if error is not None:
            mine["error"] = str(error) if isinstance(error, UserError) \
                else f"{kind.__name__}: {error}"
        problem = first_disagreement(_exchange("start", mine, self.timeout_s))
        if problem is None or (error is not None and not isinstance(error, UserError)):
            return False            # all agree; or our own crash, whose traceback shows
        raise UserError(problem) from None


def first_disagreement(reports: list[dict]) -> str | None:
    """The line every process stops with: the first error, in process order, else the first
    fact that differs from process 0's. None when every process agrees."""
    for index, report in enumerate(reports):
        if report["error"]:
            return f"process {index}: {report['error']}"
    reference = reports[0]["facts"]
    for index, report in enumerate(reports[1:], 1):
        for what, fact in reference.items():
            theirs = report["facts"].get(what, {}).get("value")
            if theirs != fact["value"]:
                return (f"process {index} disagrees with process 0 on the {what}"
                        f"{_difference(theirs, fact['value'])}; {fact['advice']}")
    return None


def _difference(theirs, ours) -> str:
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for key in sorted(set(theirs) | set(ours)):
            if theirs.get(key) != ours.get(key):
                return f" ({key} = {theirs.get(key)!r} there, {ours.get(key)!r} on process 0)"
    return ""


def _exchange(name: str, value: dict, timeout_s: float) -> list[dict]:
    """Every process's `value`, in process order, through the coordination service's key-value
    store (host to host: no device is involved, and a missing process is a timeout, not a
    hang)."""
    from jax._src import distributed  # the client orbax uses for the same purpose
    client = distributed.global_state.client
    name = f"roberta_jax/{name}{next(_exchanges)}"
    client.key_value_set(f"{name}/{jax.process_index()}", json.dumps(value))
    try:
        client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1000))
    except Exception as e:  # jax's runtime error for a barrier that timed out or was cancelled
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"not every process reached the start-up check within "
                        f"{timeout_s:.0f} s ({first[:200]}); see the other processes' "
                        "logs") from None
    entries = {key.rsplit("/", 1)[-1]: text for key, text in client.key_value_dir_get(name)}
    return [json.loads(entries[str(i)]) for i in range(jax.process_count())]


def code_identity() -> dict:
    """What decides the computation besides the config: our source files (a digest, so edits
    not yet committed count too), the git revision, and the libraries' versions."""
    from roberta_jax.checkpoint import git_revision
    root = pathlib.Path(__file__).parent
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    import flax
    import optax
    import orbax.checkpoint
    return {"source_sha256": digest.hexdigest()[:16], "git_revision": git_revision(),
            "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "orbax": orbax.checkpoint.__version__}


def flat(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# =============================================================================== stop

class Preemption:
    """SIGTERM or Ctrl-C asks every process to save and stop at the same step.

    One process: the loop stops at its next step. Several: each process's request is
    all-reduced every `every` steps (one tiny collective, at the same steps on every process,
    so each reads the same answer): a preemption notice never makes a process leave the
    collective loop alone. A notice during start-up is kept for the loop's first check (on one
    process, Ctrl-C during start-up stops at once: nothing is trained yet). A second Ctrl-C,
    or a second signal during start-up, stops this process at once.

    Use as a context: the handlers are installed on entry and the previous ones restored on
    exit. `started(process_count)` says the processes are known (after jax.distributed).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, every: int = 10):
        self.every = max(1, int(every))
        self.requested: int | None = None    # the signal this process received
        self.reason = ""
        self._processes: int | None = None   # unknown until jax.distributed is set up
        self._looping = False
        self._previous: dict = {}

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def started(self, process_count: int) -> None:
        self._processes = process_count

    def _handle(self, signum, frame):
        # No jax calls here: before jax.distributed.initialize they would start the backend.
        again = self.requested is not None
        alone_starting = self._processes == 1 and not self._looping
        if (again and (signum == signal.SIGINT or not self._looping)) or \
                (signum == signal.SIGINT and alone_starting):
            raise KeyboardInterrupt
        if not again:
            self.requested = signum

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop before running `step`: the same answer on every process."""
        self._looping = True
        if self._processes is None:
            self._processes = jax.process_count()
        if self._processes == 1:
            signals = [self.requested or 0]
        elif step % self.every:
            return False
        else:
            from jax.experimental import multihost_utils
            signals = [int(s) for s in multihost_utils.process_allgather(
                np.int32(self.requested or 0))]
        if not any(signals):
            return False
        senders = [(i, s) for i, s in enumerate(signals) if s]
        names = sorted({"Ctrl-C" if s == signal.SIGINT else "preemption notice (SIGTERM)"
                        for _, s in senders})
        where = "" if len(signals) == 1 else \
            f" on process{'es' if len(senders) > 1 else ''} {', '.join(str(i) for i, _ in senders)}"
        self.reason = f"{' and '.join(names)}{where}"
        return True
