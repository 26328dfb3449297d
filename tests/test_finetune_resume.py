"""A fine-tuning interrupted after an epoch and resumed ends where an uninterrupted one ends:
the same history, the same best model, the same final parameters and optimizer state."""

import json
import pathlib

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from roberta_jax.checkpoint import Checkpointer
from roberta_jax.train_config import load_config

ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def small_model(prepared_corpus, tmp_path_factory):
    from conftest import save_small_model
    return save_small_model(prepared_corpus, tmp_path_factory.mktemp("model") / "m",
                            max_position_embeddings=34)


def _saved_state(seed_dir):
    """The newest checkpoint of a seed's run, as saved (no target structure needed)."""
    checkpointer = Checkpointer(seed_dir / "checkpoints", read_only=True)
    state, meta, epoch = checkpointer.restore(None)
    checkpointer.close()
    return state, meta, epoch


# Three fine-tuning runs, each compiling its steps: 1-2 minutes on 2 cores. CI's quicker
# test_finetune.py::test_local_files_fine_tune_and_resume covers the resume path itself.
@pytest.mark.slow
def test_a_resumed_fine_tuning_equals_an_uninterrupted_one(small_model, tmp_path, monkeypatch):
    from roberta_jax import finetune as finetune_module
    from roberta_jax.finetune import finetune
    rows = [{"text": f"sentence {i} is {'good' if i % 2 else 'bad'}",
             "label": "pos" if i % 2 else "neg"} for i in range(24)]
    for name, part in (("train", rows[:16]), ("dev", rows[16:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    # Dropout on: the resumed run must also draw the dropout masks the uninterrupted one drew.
    overrides = ["--config.task=local", f"--config.train_file={tmp_path / 'train.jsonl'}",
                 f"--config.eval_file={tmp_path / 'dev.jsonl'}", f"--config.init={small_model}",
                 "--config.seeds=(5,)", "--config.batch_size=8", "--config.max_length=16",
                 "--config.epochs=3", "--config.lr=1e-3", "--config.progress=False"]

    def config():
        return load_config(str(ROOT / "configs" / "glue.py"), overrides)

    straight = finetune(config(), tmp_path / "straight")

    save = finetune_module.Checkpointer.save

    def save_then_interrupt(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        self.wait()            # the epoch's checkpoint is complete, as after a clean Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module.Checkpointer, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetune(config(), tmp_path / "resumed")
    monkeypatch.setattr(finetune_module.Checkpointer, "save", save)
    assert _saved_state(tmp_path / "resumed" / "seed5")[2] == 1   # stopped after epoch 1
    resumed = finetune(config(), tmp_path / "resumed")

    def without_timing(summary):
        history = summary["per_seed"]["5"]["history"]
        return [{k: v for k, v in h.items() if k != "examples_per_second"} for h in history]

    assert [h["epoch"] for h in without_timing(resumed)] == [1, 2, 3]
    assert without_timing(resumed) == without_timing(straight)
    assert resumed["median"] == straight["median"]
    a, meta_a, epoch_a = _saved_state(tmp_path / "straight" / "seed5")
    b, meta_b, epoch_b = _saved_state(tmp_path / "resumed" / "seed5")
    assert epoch_a == epoch_b == 3
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    best_a = load_file(tmp_path / "straight" / "seed5" / "best" / "model.safetensors")
    best_b = load_file(tmp_path / "resumed" / "seed5" / "best" / "model.safetensors")
    assert sorted(best_a) == sorted(best_b)
    for key in best_a:
        np.testing.assert_array_equal(best_b[key], best_a[key], err_msg=key)
