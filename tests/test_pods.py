"""Pods, on one machine: processes of one run (jax.distributed on 127.0.0.1, CPU collectives over
gloo) stop together on a preemption notice to any of them, resume on another process count with
the losses of an uninterrupted run, restore onto another mesh, and refuse to start, all of them
with the same line, when they disagree. Every launch has a hard time limit (LocalJob): a hang
fails the test instead of stalling CI."""

import pathlib
import shutil
import sys
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from roberta_jax import hosts
from roberta_jax import sharding as shd
from roberta_jax.errors import UserError
from roberta_jax.train import pretrain
from roberta_jax.train_config import load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
from bench_pods import LocalJob, losses, pretrain_args, wait_for_step  # noqa: E402

LIMIT_S = 480          # per launch: generous for a busy 2-core machine, but bounded
CHECK_EVERY = 4        # distributed.preemption_check_every in these tests
FOREVER = 100_000      # train.steps of runs that stop early (the schedule spans it)


def config_for(prepared, steps=FOREVER):
    args = pretrain_args("unused", prepared, steps)
    return load_config(str(ROOT / "configs" / "tiny.py"),
                       [a for a in args if a.startswith("--config.")])


def job(workdir, prepared, logs, **kwargs):
    return LocalJob(pretrain_args(workdir, prepared, FOREVER,
                                  "--config.checkpoint.every_steps=100000",
                                  f"--config.distributed.preemption_check_every={CHECK_EVERY}"),
                    logs, limit_s=LIMIT_S, **kwargs)


@pytest.fixture
def jobs():
    """Starts LocalJobs and kills whatever is still running when the test ends."""
    started = []

    def start(*args, **kwargs):
        started.append(job(*args, **kwargs))
        return started[-1]
    yield start
    for j in started:
        j.kill()


@pytest.fixture(scope="module")
def reference(prepared_corpus, tmp_path_factory):
    """Losses of an uninterrupted run on one process with 4 devices, as long as asked for."""
    workdir = tmp_path_factory.mktemp("reference")
    config = config_for(prepared_corpus[0])

    def first(n):
        have = len(losses(workdir))
        if have < n:
            pretrain(config, workdir, devices=jax.devices()[:4], stop_after=n - have)
        return losses(workdir)[:n]
    return first


def _saving_line(log: str) -> str:
    return next(line for line in log.splitlines() if "saving step" in line)


def test_preemption_stops_every_process_at_one_step_and_runs_resume_on_any_process_count(
        prepared_corpus, tmp_path, jobs, reference):
    prepared = prepared_corpus[0]
    workdir = tmp_path / "w"
    # One process with 4 devices saves step 3 ...
    pretrain(config_for(prepared), workdir, devices=jax.devices()[:4], stop_after=3)

    # ... 2 processes x 2 devices resume it. SIGTERM to process 1 only: both save the same
    # step and exit 0.
    one = jobs(workdir, prepared, tmp_path / "logs1")
    wait_for_step(workdir, 6, one)
    sent = time.monotonic()
    one.signal(1)
    assert one.wait() == [0, 0], one.tails()
    seconds = time.monotonic() - sent
    assert "resumed from step 3" in one.log(0)
    lines = [_saving_line(one.log(i)) for i in range(2)]
    assert lines[0].split("WARNING: ", 1)[1] == lines[1].split("WARNING: ", 1)[1]
    assert "preemption notice (SIGTERM) on process 1: saving step" in lines[0]
    step = int(lines[0].split("saving step ")[1].split()[0])
    assert step % CHECK_EVERY == 0 and step >= 6
    print(f"SIGTERM to process 1 only: both exited 0 after {seconds:.1f} s at step {step}")

    # The same command resumes; SIGTERM to both, 0.5 s apart: again one step, exit 0.
    both = jobs(workdir, prepared, tmp_path / "logs2")
    wait_for_step(workdir, step + 3, both)
    sent = time.monotonic()
    both.signal(0)
    time.sleep(0.5)
    both.signal(1)
    assert both.wait() == [0, 0], both.tails()
    seconds = time.monotonic() - sent
    lines = [_saving_line(both.log(i)) for i in range(2)]
    assert lines[0].split("WARNING: ", 1)[1] == lines[1].split("WARNING: ", 1)[1]
    later = int(lines[0].split("saving step ")[1].split()[0])
    assert later > step and f"resumed from step {step}" in both.log(0)
    print(f"SIGTERM to both 0.5 s apart: both exited 0 after {seconds:.1f} s at step {later}")

    # And back on one process with 4 devices. Every loss, before and after each change of
    # process count, is the loss of a run that never stopped.
    pretrain(config_for(prepared), workdir, devices=jax.devices()[:4], stop_after=2)
    got, want = losses(workdir), reference(later + 2)
    assert len(got) == later + 2
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    print("1 -> 2 -> 1 processes: max |loss difference| "
          f"{np.max(np.abs(np.subtract(got, want))):.1e}")


def test_processes_that_disagree_on_the_config_all_stop_at_start_up_with_one_line(
        prepared_corpus, tmp_path, jobs):
    workdir = tmp_path / "w"
    disagreeing = jobs(workdir, prepared_corpus[0], tmp_path / "logs",
                       extra={1: ["--config.train.lr=0.5"]})
    assert disagreeing.wait() == [1, 1], disagreeing.tails()
    errors = [[line for line in disagreeing.log(i).splitlines() if "error:" in line]
              for i in range(2)]
    assert errors[0] == errors[1] and len(errors[0]) == 1, errors
    assert "process 1 disagrees with process 0 on the config (train.lr = 0.5 there, 0.003 " \
           "on process 0)" in errors[0][0]
    assert not (workdir / "checkpoints").exists()


@pytest.mark.slow
def test_processes_that_run_other_code_all_stop_at_start_up_with_one_line(
        prepared_corpus, tmp_path, jobs):
    copy = tmp_path / "other_code"
    shutil.copytree(ROOT / "roberta_jax", copy / "roberta_jax")
    with open(copy / "roberta_jax" / "train.py", "a") as f:
        f.write("\n# an edit made on one host only\n")
    disagreeing = jobs(tmp_path / "w", prepared_corpus[0], tmp_path / "logs",
                       env={1: {"PYTHONPATH": str(copy)}})
    assert disagreeing.wait() == [1, 1], disagreeing.tails()
    errors = [[line for line in disagreeing.log(i).splitlines() if "error:" in line]
              for i in range(2)]
    # The copy is no git checkout, so its revision differs first (then its source digest).
    assert errors[0] == errors[1] and "process 1 disagrees with process 0 on the code (" \
        in errors[0][0], errors


# ------------------------------------------------------------------- agreement, in one process

def _report(facts, error=None):
    agreement = hosts.Agreement()
    for what, value in facts.items():
        agreement.facts[what] = {"value": value, "advice": f"make the {what} the same"}
    return {"facts": agreement.facts, "error": error}


@pytest.mark.parametrize("what,theirs,expected", [
    ("config", {"train.lr": 0.5, "train.steps": 3},
     "process 1 disagrees with process 0 on the config (train.lr = 0.5 there, 0.003 on "
     "process 0); make the config the same"),
    ("data manifest", "9f00", "process 1 disagrees with process 0 on the data manifest; make "
     "the data manifest the same"),
    ("code", {"source_sha256": "abc", "git_revision": "r1"},
     "process 1 disagrees with process 0 on the code (source_sha256 = 'abc' there, 'def' on "
     "process 0); make the code the same"),
])
def test_the_first_disagreement_is_the_line_every_process_stops_with(what, theirs, expected):
    ours = {"config": {"train.lr": 0.003, "train.steps": 3}, "data manifest": "6b1e",
            "code": {"source_sha256": "def", "git_revision": "r1"}}
    reports = [_report(ours), _report({**ours, what: theirs}), _report({**ours, what: theirs})]
    assert hosts.first_disagreement(reports) == expected
    assert hosts.first_disagreement([_report(ours)] * 3) is None
    failed = [_report(ours), _report(ours, error="prepared/: not a prepared directory")]
    assert hosts.first_disagreement(failed) == "process 1: prepared/: not a prepared directory"


def test_an_error_on_another_process_stops_this_one_with_its_line(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(hosts, "_exchange", lambda name, mine, timeout: [
        mine, {"facts": mine["facts"], "error": "prepared/: not a prepared directory"}])
    with pytest.raises(UserError, match="^process 1: prepared/: not a prepared directory$"):
        with hosts.Agreement() as agreement:
            agreement.expect_same("code", hosts.code_identity, "install the same code")
    monkeypatch.setattr(hosts, "_exchange", lambda name, mine, timeout: [mine, mine])
    with hosts.Agreement() as agreement:   # nothing happens when they agree
        agreement.expect_same("config", {"a": 1}, "same config")


# ------------------------------------------------------------------------------- mesh change

def mesh_config(data, fsdp, tensor=1):
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor,
                                      "dcn_data": 1})


def test_a_checkpoint_restores_onto_a_data_x_fsdp_mesh_with_the_values_it_saved(
        prepared_corpus, tmp_path):
    from roberta_jax.checkpoint import Checkpointer
    from roberta_jax.data import PretrainingBatches
    from roberta_jax.model import RobertaForMaskedLM
    from roberta_jax.optim import make_optimizer
    from roberta_jax.train import build_state, make_steps, model_config
    config = config_for(prepared_corpus[0])
    batch = {k: v for k, v in PretrainingBatches(prepared_corpus[0], 8, 32, 0).batch(0).items()
             if k.startswith(("input", "attention", "masked"))}
    cfg = model_config(config, 1000)
    model = RobertaForMaskedLM(cfg, scan_layers=True)
    tx = make_optimizer(config.train)
    train_step, _ = make_steps(model, tx, config, 1000)

    def state_on(mesh):
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
            return build_state(config, mesh, model, tx, {k: v[:1] for k, v in batch.items()})

    before_mesh = shd.make_mesh(mesh_config(2, 4))
    init, _, shardings = state_on(before_mesh)
    with jax.set_mesh(before_mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        state = init()
        step = jax.jit(train_step, out_shardings=(shardings, shd.replicated(before_mesh)))
        for _ in range(2):   # moments and the step counter away from their initial values
            state, _ = step(state, batch)
    saved = jax.device_get(state)
    checkpointer = Checkpointer(tmp_path / "checkpoints", async_save=False)
    checkpointer.save(2, state, {"note": "data 2 x fsdp 4"})
    checkpointer.close()

    after_mesh = shd.make_mesh(mesh_config(4, 2))
    _, abstract, after = state_on(after_mesh)
    restored, _, restored_step = Checkpointer(tmp_path / "checkpoints").restore(abstract)
    assert restored_step == 2 and int(saved.step) == 2
    embedding = restored.params["roberta"]["embeddings"]["word_embeddings"]["embedding"]
    assert embedding.addressable_shards[0].data.shape == (1000, 16)   # embed split over fsdp 2
    for x, want, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(saved),
                                 jax.tree.leaves(after)):
        assert x.sharding == sharding
        np.testing.assert_array_equal(np.asarray(x), np.asarray(want))


# ---------------------------------------------------------------------- stop, in one process

def test_on_one_host_sigterm_or_ctrl_c_stops_at_the_next_step_and_a_second_ctrl_c_at_once():
    import os
    import signal
    before = signal.getsignal(signal.SIGINT)
    with hosts.Preemption(every=CHECK_EVERY) as preemption:
        preemption.started(1)
        assert not preemption.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.should_stop(2)          # one process: at the very next step
        assert preemption.reason == "preemption notice (SIGTERM)"
    with hosts.Preemption() as preemption:
        preemption.started(1)
        assert not preemption.should_stop(6)      # the loop is running
        os.kill(os.getpid(), signal.SIGINT)
        assert preemption.should_stop(7) and preemption.reason == "Ctrl-C"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with hosts.Preemption() as preemption:        # Ctrl-C while starting: nothing to save
        preemption.started(1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with hosts.Preemption() as preemption:        # several processes: kept for the first check
        preemption.started(2)
        os.kill(os.getpid(), signal.SIGINT)
        assert preemption.requested == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):    # unless a second one insists
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is before
