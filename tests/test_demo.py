"""The demo runs end to end at a very small size, an interrupted demo resumes, and its report is
rebuilt from what the workdir holds, whatever the number of runs."""

import collections
import json
import re

import pytest

from roberta_jax import demo
from roberta_jax.demo import run_demo


def test_demo_runs_end_to_end_small_and_resumes(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    reload_in_transformers = demo._reload_in_transformers

    def interrupted(work):
        raise KeyboardInterrupt  # Ctrl-C after every stage that trains is done

    monkeypatch.setattr(demo, "_reload_in_transformers", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(str(tmp_path), minutes=0.05, max_documents=700, finetune_epochs=1)
    classifier_results = (tmp_path / "classifier" / "results.json").read_text()
    monkeypatch.setattr(demo, "_reload_in_transformers", reload_in_transformers)

    # The second run finds every stage done and redoes none of the training.
    capsys.readouterr()
    result = run_demo(str(tmp_path), minutes=0.05, max_documents=700, finetune_epochs=1)
    out = capsys.readouterr().out
    assert "already trained" in out and "every shard was already done" in out
    assert (tmp_path / "classifier" / "results.json").read_text() == classifier_results
    steps = json.loads((tmp_path / "plan.json").read_text())["steps"]
    assert result["pretrain"]["step"] == steps
    for agreement in result["transformers"].values():
        assert agreement["max_abs_diff"] < 1e-4 and agreement["same_token_ids"]
    assert (tmp_path / "pretrain" / "loss.png").is_file() and (tmp_path / "finetune.png").is_file()

    # The report's figures come from metrics.jsonl, not from what this run happened to do.
    report = (tmp_path / "report.md").read_text()
    assert "nan" not in report, report
    metrics = [json.loads(line) for line in
               (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    held_out = [m for m in metrics if "eval_loss" in m][-1]
    assert f"| held-out MLM loss | {held_out['eval_loss']:.2f} |" in report
    assert f"{steps} steps of" in report
    # Wall time: both runs, the interrupted one included.
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [r["finished"] for r in runs] == [False, True]
    minutes = float(re.search(r"Wall time: ([\d.]+) minutes over 2 runs \(1 interrupted\)",
                              report).group(1))
    # The report is written a few seconds before the run's record ends, and rounds to 0.1.
    assert minutes == pytest.approx(sum(r["seconds"] for r in runs) / 60, abs=0.15)

    # The held-out accuracy is recomputed here: transformers runs the exported best classifier
    # on the held-out docstrings; its labels are the run's predictions.tsv, and their accuracy
    # is the report's. The dev set (which picked the epoch) shares no docstring with them.
    dev = set((tmp_path / "classify_dev.jsonl").read_text().splitlines())
    test = [json.loads(line)
            for line in (tmp_path / "classify_test.jsonl").read_text().splitlines()]
    assert dev and test and not dev & {json.dumps(r) for r in test}
    predicted = _transformers_predictions(tmp_path / "classifier" / "seed1" / "best",
                                          [r["text"] for r in test])
    written = (tmp_path / "classifier" / "seed1" / "predictions.tsv").read_text().splitlines()
    assert written[0] == "index\tprediction"
    assert [line.split("\t")[1] for line in written[1:]] == predicted
    accuracy = sum(p == r["label"] for p, r in zip(predicted, test)) / len(test)
    assert result["classification"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert f"| fine-tuned from the pretrained encoder | {accuracy:.3f} |" in report
    majority = collections.Counter(
        json.loads(line)["label"]
        for line in (tmp_path / "classify_train.jsonl").read_text().splitlines()).most_common(1)
    baseline = sum(r["label"] == majority[0][0] for r in test) / len(test)
    assert f"| majority class ('{majority[0][0]}') | {baseline:.3f} |" in report


def _transformers_predictions(directory, texts):
    """Labels transformers' own model and tokenizer give `texts` (fine-tuning's cut: 128 tokens,
    the tiny model's positions)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(directory).eval()
    inputs = tokenizer(texts, truncation=True, max_length=model.config.max_position_embeddings - 2,
                       padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits.numpy()
    return [model.config.id2label[int(i)] for i in logits.argmax(-1)]
