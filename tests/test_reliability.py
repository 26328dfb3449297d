"""Nothing is lost or half-used: damaged checkpoints are skipped for the newest good one, NaN/Inf
updates are skipped (or stop the run) and never reach the parameters."""

import logging
import pathlib
import shutil

import jax
import numpy as np
import pytest
from test_pretrain import tiny

from roberta_jax.errors import UserError
from roberta_jax.export import load_workdir_state
from roberta_jax.train import pretrain, read_metrics


def _truncate_the_data_files(step_dir: pathlib.Path) -> str:
    """What a copy or upload cut short leaves. Every OCDBT data file is cut: which single file
    holds live chunks (rather than a b-tree node a later flush superseded) varies from run to
    run, so cutting only one made this test depend on the file layout."""
    data_files = [p for p in (step_dir / "state").rglob("*")
                  if p.is_file() and p.parent.name == "d"]
    assert data_files, "orbax wrote no OCDBT data files: the layout this test assumes has changed"
    for data in data_files:
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return "d/"


def _remove_commit_marker(step_dir: pathlib.Path) -> str:
    """What a save interrupted before its commit leaves: on a local file system orbax commits by
    renaming a temporary directory (on GCS, by writing commit_success.txt)."""
    (step_dir / "commit_success.txt").unlink()
    step_dir.rename(step_dir.with_name(f"{step_dir.name}.orbax-checkpoint-tmp-1234567"))
    return "commit"


def _break_metadata(step_dir: pathlib.Path) -> str:
    (step_dir / "state" / "_METADATA").write_text("{ this is not json")
    return "_METADATA"


@pytest.fixture(scope="module")
def clean_run(prepared_corpus, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("clean") / "w"
    config = tiny(prepared_corpus[0], train__steps=6)
    pretrain(config, workdir)
    return config, workdir


@pytest.mark.parametrize("damage",
                         [_truncate_the_data_files, _remove_commit_marker, _break_metadata],
                         ids=["file-cut-short", "no-commit-marker", "bad-metadata"])
def test_damaged_latest_checkpoint_falls_back_to_newest_good_one(clean_run, tmp_path, caplog,
                                                                 damage):
    config, clean = clean_run
    workdir = tmp_path / "w"
    shutil.copytree(clean, workdir)
    damage(workdir / "checkpoints" / "6")
    caplog.set_level(logging.INFO, logger="roberta_jax")
    config.train.steps = 6
    pretrain(config, workdir)          # resumes from step 3, not from the damaged step 6
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "resumed from step 3" in messages
    if damage is not _remove_commit_marker:  # orbax itself never lists an uncommitted step
        assert "checkpoint 6" in messages and "unreadable" in messages
        assert "moved damaged checkpoint 6" in messages
    a, *_ = load_workdir_state(clean)
    b, *_ = load_workdir_state(workdir)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nonfinite_updates_are_skipped_counted_and_never_applied(prepared_corpus, tmp_path):
    config = tiny(prepared_corpus[0], train__steps=4, train__lr=1e38, train__warmup_steps=0)
    pretrain(config, tmp_path)
    skipped = sum(r.get("skipped_nonfinite", 0) for r in read_metrics(tmp_path))
    assert skipped >= 1
    state, *_ = load_workdir_state(tmp_path)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_nonfinite_stop_policy_stops_with_a_clear_message(prepared_corpus, tmp_path):
    config = tiny(prepared_corpus[0], train__steps=4, train__lr=1e38, train__warmup_steps=0,
                  train__nonfinite="stop")
    with pytest.raises(UserError, match="NaN/Inf.*last good checkpoint"):
        pretrain(config, tmp_path)


def test_loss_spike_guard_skips_a_step_far_above_the_running_loss(prepared_corpus):
    import jax.numpy as jnp

    from roberta_jax.data import PretrainingBatches
    from roberta_jax.model import RobertaForMaskedLM
    from roberta_jax.optim import make_optimizer
    from roberta_jax.train import TrainState, make_steps, model_config, strip_boxes
    config = tiny(prepared_corpus[0], train__spike_threshold=3.0)
    batch = {k: v for k, v in PretrainingBatches(prepared_corpus[0], 8, 32, 0).batch(0).items()
             if k.startswith(("input", "attention", "masked"))}
    model = RobertaForMaskedLM(model_config(config, 1000))
    tx = make_optimizer(config.train)
    train_step, _ = make_steps(model, tx, config, 1000)
    params = strip_boxes(model.init(jax.random.key(0), batch["input_ids"],
                                    masked_positions=batch["masked_positions"])["params"])
    # A history of losses near 1.0 +- 0.1: the random model's ~6.9 is a spike.
    state = TrainState(step=jnp.asarray(500), params=params, opt_state=tx.init(params),
                       dropout_key=jax.random.key_data(jax.random.key(1)),
                       loss_mean=jnp.asarray(1.0), loss_sq_mean=jnp.asarray(1.01))
    new, metrics = jax.jit(train_step)(state, batch)
    assert int(metrics["skipped_spike"]) == 1 and int(new.step) == 501
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    calm = state.replace(loss_mean=jnp.asarray(6.9), loss_sq_mean=jnp.asarray(6.9 ** 2 + 0.01))
    _, metrics = jax.jit(train_step)(calm, batch)
    assert int(metrics["skipped_spike"]) == 0
