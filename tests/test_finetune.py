"""Fine-tuning: metrics agree with scikit-learn / scipy, and GLUE tasks run end to end on
tfds mock data, as do local files."""

import json

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


@pytest.fixture(scope="module")
def small_model(prepared_corpus, tmp_path_factory):
    from conftest import make_hf_model
    import roberta_jax as rj
    tokenizer = rj.load_tokenizer(prepared_corpus[2])
    path = tmp_path_factory.mktemp("model") / "m"
    make_hf_model("masked-lm", vocab_size=tokenizer.vocab_size, max_position_embeddings=130) \
        .save_pretrained(path)
    tokenizer.save(path)
    return path


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


def test_local_files_fine_tune_and_resume(small_model, tmp_path, capsys):
    from roberta_jax.finetune import finetune
    rows = [{"text": f"sentence {i} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2
             else "neg"} for i in range(40)]
    for name, part in (("train", rows[:32]), ("dev", rows[32:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    overrides = ["--config.task=local", f"--config.train_file={tmp_path / 'train.jsonl'}",
                 f"--config.eval_file={tmp_path / 'dev.jsonl'}", f"--config.init={small_model}",
                 "--config.seeds=(3,)", "--config.batch_size=8", "--config.max_length=32"]
    finetune(load_config(str(ROOT / "configs" / "glue.py"), overrides + ["--config.epochs=1"]),
             tmp_path / "w")
    summary = finetune(load_config(str(ROOT / "configs" / "glue.py"),
                                   overrides + ["--config.epochs=2"]), tmp_path / "w")
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
    predict(str(tmp_path / "w" / "seed1" / "best"), [(r["text"], None) for r in rows[:5]],
            out=out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == 5
    for r in records:
        assert r["label"] in ("ok", "bad") and abs(sum(r["scores"].values()) - 1) < 1e-5
        assert r["score"] == max(r["scores"].values())
