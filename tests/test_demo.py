"""The demo runs end to end at a very small size, and an interrupted demo resumes."""

import json

import pytest

from roberta_jax.demo import run_demo


def test_demo_runs_end_to_end_small_and_resumes(tmp_path, capsys):
    pytest.importorskip("transformers")
    result = run_demo(str(tmp_path), minutes=0.05, max_documents=700, finetune_epochs=1)
    report = (tmp_path / "report.md").read_text()
    assert "held-out MLM loss" in report and "majority class" in report
    assert (tmp_path / "pretrain" / "loss.png").is_file() and (tmp_path / "finetune.png").is_file()
    for agreement in result["transformers"].values():
        assert agreement["max_abs_diff"] < 1e-4 and agreement["same_token_ids"]
    steps = json.loads((tmp_path / "plan.json").read_text())["steps"]
    assert result["pretrain"]["step"] == steps
    # A second run finds every stage done and redoes none of the training.
    capsys.readouterr()
    again = run_demo(str(tmp_path), minutes=0.05, max_documents=700, finetune_epochs=1)
    out = capsys.readouterr().out
    assert "already trained" in out and "resuming" in out
    assert again["classification"]["accuracy"] == result["classification"]["accuracy"]
