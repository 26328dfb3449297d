"""Fine-tuning: metrics agree with scikit-learn / scipy, and GLUE tasks run end to end on
tfds mock data, as do local files."""

import json
import logging

import numpy as np
import pytest

from roberta_jax import metrics
from roberta_jax.train_config import load_config

ROOT = __import__("pathlib").Path(__file__).parent.parent


def test_metrics_match_scikit_learn_and_scipy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    y3, p3 = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert metrics.accuracy(y, p) == pytest.approx(sklearn_metrics.accuracy_score(y, p))
    assert metrics.f1_binary(y, p) == pytest.approx(sklearn_metrics.f1_score(y, p))
    assert metrics.matthews_corrcoef(y, p) == pytest.approx(sklearn_metrics.matthews_corrcoef(y, p))
    assert metrics.matthews_corrcoef(y3, p3) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(y3, p3))
    x, z = rng.normal(size=100), rng.normal(size=100)
    z[::7] = x[::7]  # some ties and correlation
    x = np.round(x, 1)
    assert metrics.pearson(x, z) == pytest.approx(stats.pearsonr(x, z)[0])
    assert metrics.spearman(x, z) == pytest.approx(stats.spearmanr(x, z)[0])



@pytest.mark.parametrize("task", ["sst2", "stsb", "mnli"])
def test_glue_task_runs_end_to_end_on_tfds_mock_data(small_model, tmp_path, task):
    tfds = pytest.importorskip("tensorflow_datasets")
    from roberta_jax.finetune import finetune
    config = load_config(str(ROOT / "configs" / "glue.py"), [
        f"--config.task={task}", f"--config.init={small_model}", "--config.seeds=(1, 2)",
        "--config.epochs=1", "--config.batch_size=8", "--config.max_length=64"])
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = finetune(config, tmp_path)
    assert summary["seeds"] == [1, 2] and "median" in summary
    files = {"sst2": ["SST-2.tsv"], "stsb": ["STS-B.tsv"], "mnli": ["MNLI-m.tsv", "MNLI-mm.tsv"]}
    for name in files[task]:
        lines = (tmp_path / "seed1" / name).read_text().splitlines()
        assert lines[0] == "index\tprediction" and len(lines) == 25
    assert (tmp_path / "seed1" / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("task", ["cola", "mrpc", "qqp", "qnli", "rte", "wnli"])
def test_the_other_glue_tasks_run_end_to_end_on_tfds_mock_data(small_model, tmp_path, task):
    tfds = pytest.importorskip("tensorflow_datasets")
    from roberta_jax import tasks
    from roberta_jax.finetune import finetune
    config = load_config(str(ROOT / "configs" / "glue.py"), [
        f"--config.task={task}", f"--config.init={small_model}", "--config.seeds=(1,)",
        "--config.epochs=1", "--config.batch_size=8", "--config.max_length=32",
        "--config.progress=False"])
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = finetune(config, tmp_path)
    metric = tasks.GLUE[task].metrics[0]
    assert f"validation_{metric}" in summary["median"]
    submission = tasks.GLUE[task].test_splits[0][1]
    lines = (tmp_path / "seed1" / submission).read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 17
    assert {line.split("\t")[1] for line in lines[1:]} <= set(tasks.GLUE[task].labels)


def test_local_files_fine_tune_and_resume(small_model, tmp_path, caplog, monkeypatch):
    from roberta_jax import finetune as finetune_module
    from roberta_jax.finetune import finetune
    rows = [{"text": f"sentence {i} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2
             else "neg"} for i in range(40)]
    for name, part in (("train", rows[:32]), ("dev", rows[32:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    overrides = ["--config.task=local", f"--config.train_file={tmp_path / 'train.jsonl'}",
                 f"--config.eval_file={tmp_path / 'dev.jsonl'}", f"--config.init={small_model}",
                 "--config.seeds=(3,)", "--config.batch_size=8", "--config.max_length=32",
                 "--config.epochs=2"]
    save = finetune_module.Checkpointer.save

    def save_then_interrupt(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint

    caplog.set_level(logging.INFO, logger="roberta_jax")
    monkeypatch.setattr(finetune_module.Checkpointer, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetune(load_config(str(ROOT / "configs" / "glue.py"), overrides), tmp_path / "w")
    monkeypatch.setattr(finetune_module.Checkpointer, "save", save)
    summary = finetune(load_config(str(ROOT / "configs" / "glue.py"), overrides), tmp_path / "w")
    assert "seed 3: resumed after epoch 1" in caplog.text
    assert [h["epoch"] for h in summary["per_seed"]["3"]["history"]] == [1, 2]
    config = json.loads((tmp_path / "w" / "seed3" / "best" / "config.json").read_text())
    assert set(config["id2label"].values()) == {"pos", "neg"}


def test_predict_writes_labels_and_scores_as_json_lines(small_model, tmp_path):
    import io

    from roberta_jax.finetune import finetune
    from roberta_jax.predict import predict
    rows = [{"text": f"item {i} looks {'fine' if i % 2 else 'broken'}",
             "label": "ok" if i % 2 else "bad"} for i in range(24)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    finetune(load_config(str(ROOT / "configs" / "glue.py"), [
        "--config.task=local", f"--config.train_file={tmp_path / 'train.jsonl'}",
        f"--config.eval_file={tmp_path / 'train.jsonl'}", f"--config.init={small_model}",
        "--config.seeds=(1,)", "--config.epochs=1", "--config.batch_size=8",
        "--config.max_length=32"]), tmp_path / "w")
    out = io.StringIO()
    predict(str(tmp_path / "w" / "seed1" / "best"), [{"text": r["text"]} for r in rows[:5]],
            out=out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == 5
    for r in records:
        assert r["label"] in ("ok", "bad") and abs(sum(r["scores"].values()) - 1) < 1e-5
        assert r["score"] == max(r["scores"].values())


# ------------------------------------------------------------- SQuAD, NER, multiple choice

CONLL_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def _conll_records(n):
    rng = np.random.default_rng(0)
    people, places = ["Anna Berg", "Peter", "Li Wei"], ["Paris", "New York", "Oslo"]
    records = []
    for i in range(n):
        person, place = people[i % 3].split(), places[rng.integers(3)].split()
        words = person + ["lives", "in"] + place + ["."]
        tags = (["B-PER"] + ["I-PER"] * (len(person) - 1) + ["O", "O"] + ["B-LOC"]
                + ["I-LOC"] * (len(place) - 1) + ["O"])
        records.append({"tokens": words, "ner": [CONLL_TAGS.index(t) for t in tags],
                        "pos": [0] * len(words), "chunks": [0] * len(words)})
    return records


def _race_records(n):
    import tensorflow as tf
    return [{"article": f"Story {i}: the cat sat on the mat while the dog ran.",
             "example_id": f"high{i}.txt", "questions": ["Where did the cat sit?", "The dog _ ."],
             "options": tf.ragged.constant([["on the mat", "in a box", "up a tree", "nowhere"],
                                            ["slept", "ran", "ate", "sang"]]),
             "answers": ["A", "B"]} for i in range(n)]


FINETUNE_SMALL = ["--config.seeds=(1,)", "--config.epochs=1", "--config.batch_size=8",
                  "--config.max_length=64", "--config.max_query_length=16", "--config.stride=16",
                  "--config.progress=False"]


@pytest.mark.parametrize("task", ["squad1", "squad2", "conll2003", "race"])
def test_qa_ner_and_choice_tasks_run_end_to_end_on_tfds_mock_data(small_model, tmp_path, task):
    tfds = pytest.importorskip("tensorflow_datasets")
    from conftest import tfds_records

    from roberta_jax.finetune import finetune
    config = load_config(str(ROOT / "configs" / "glue.py"),
                         [f"--config.task={task}", f"--config.init={small_model}"] + FINETUNE_SMALL)
    if task.startswith("squad"):
        mock = tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE)
    else:
        records = _conll_records(24) if task == "conll2003" else _race_records(8)
        mock = tfds.testing.mock_data(as_dataset_fn=tfds_records(records))
    with mock:
        summary = finetune(config, tmp_path)
    best = summary["per_seed"]["1"]["best"]
    if task.startswith("squad"):
        assert 0 <= best["validation_exact_match"] <= best["validation_f1"] <= 100
        assert ("validation_best_f1" in best) == (task == "squad2")
    elif task == "conll2003":
        assert {"validation_f1", "validation_precision", "validation_recall"} <= set(best)
        lines = (tmp_path / "seed1" / "test_predictions.conll").read_text().split("\n\n")
        assert len([s for s in lines if s.strip()]) == 24
        first = [line.split() for line in lines[0].splitlines()]
        assert [w for w, _ in first] == _conll_records(1)[0]["tokens"]
        assert all(tag in CONLL_TAGS for _, tag in first)
    else:
        assert 0 <= best["dev_accuracy"] <= 1
        rows = (tmp_path / "seed1" / "test_predictions.jsonl").read_text().splitlines()
        assert len(rows) == 32 and json.loads(rows[0])["id"] == "high0.txt/0"  # middle + high
    assert (tmp_path / "seed1" / "best" / "model.safetensors").is_file()


def _local_files(kind, directory):
    """(train, dev) files of a local task of `kind`."""
    if kind == "tokens":
        text = "".join(" ".join(f"{w} {CONLL_TAGS[t]}\n" for w, t in zip(r["tokens"], r["ner"]))
                       .replace(" \n", "\n").replace("\n ", "\n") + "\n"
                       for r in _conll_records(20))
        files = [directory / "train.conll", directory / "dev.conll"]
        for f in files:
            f.write_text("-DOCSTART- -X- -X- O\n\n" + text)
        return files
    if kind == "qa":
        paragraphs = [{"context": f"Alice was born in {city} in {year}.",
                       "qas": [{"id": f"q{i}", "question": "Where was Alice born?",
                                "answers": [{"text": city, "answer_start": 18}]},
                               {"id": f"y{i}", "question": "When was Alice born?",
                                "answers": [{"text": str(year), "answer_start": 22 + len(city)}]}]}
                      for i, (city, year) in enumerate(zip(["Oslo", "Rome", "Lima", "Kyiv"] * 3,
                                                            range(1990, 2002)))]
        data = {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}
        files = [directory / "train.json", directory / "dev.json"]
    else:
        data = None
        rows = [{"context": f"Tom has {n} apples.", "question": "How many apples has Tom?",
                 "choices": [str(n), str(n + 1), str(n + 2)], "label": 0} for n in range(20)]
        files = [directory / "train.jsonl", directory / "dev.jsonl"]
    for f in files:
        f.write_text(json.dumps(data) if data else "".join(json.dumps(r) + "\n" for r in rows))
    return files


@pytest.mark.parametrize("kind", ["tokens", "qa", "choice"])
def test_local_files_of_every_kind_fine_tune_and_export_to_transformers(small_model, tmp_path,
                                                                         kind):
    from roberta_jax import parity
    from roberta_jax.finetune import finetune
    from roberta_jax.pretrained import from_pretrained
    train, dev = _local_files(kind, tmp_path)
    summary = finetune(load_config(str(ROOT / "configs" / "glue.py"), [
        "--config.task=local", f"--config.kind={kind}", f"--config.train_file={train}",
        f"--config.eval_file={dev}", f"--config.init={small_model}"] + FINETUNE_SMALL),
        tmp_path / "w")
    assert summary["median"]
    best = tmp_path / "w" / "seed1" / "best"
    model, params = from_pretrained(best)
    head = {"tokens": "token-classification", "qa": "question-answering",
            "choice": "multiple-choice"}[kind]
    assert type(model).__name__ == parity.HF_CLASSES[head]
    transformers = pytest.importorskip("transformers")
    reference = getattr(transformers, parity.HF_CLASSES[head]).from_pretrained(best).eval()
    ids, mask = parity.padded_batch(model.config.vocab_size, length=10,
                                    choices=3 if kind == "choice" else None, seed=0)
    ours = parity.our_outputs(model, params, head, ids, mask)
    theirs = parity.hf_outputs(reference, head, ids, mask)
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-4)

    import io

    from roberta_jax.predict import predict
    inputs = {"tokens": [{"text": "Anna Berg lives in Oslo ."}, {"tokens": ["Peter", "."]}],
              "qa": [{"question": "Where was Alice born?",
                      "context": "Alice was born in Rome in 1995."}],
              "choice": [{"context": "Tom has 3 apples.", "question": "How many?",
                          "choices": ["3", "4", "5"]}]}[kind]
    out = io.StringIO()
    predict(str(best), inputs, out=out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == len(inputs)
    if kind == "tokens":
        assert records[0]["tokens"] == ["Anna", "Berg", "lives", "in", "Oslo", "."]
        assert all(t in CONLL_TAGS for r in records for t in r["tags"])
        assert len(records[1]["tags"]) == 2
        for entity in records[0]["entities"]:
            assert entity["text"] == " ".join(records[0]["tokens"][entity["start"]:entity["end"]])
    elif kind == "qa":
        answer = records[0]
        context = inputs[0]["context"]
        assert answer["answer"] and context[answer["start"]:answer["end"]] == answer["answer"]
    else:
        assert records[0]["choice"] == ["3", "4", "5"][records[0]["prediction"]]
        assert abs(sum(records[0]["scores"]) - 1) < 1e-5
