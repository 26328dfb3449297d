"""End to end on gs://, against a real GCS API (the emulator of tests/gcs_emulator.py, which
every client library is pointed at): prepare a corpus on the bucket into the bucket -> pretrain
with 2 processes into a gs:// workdir -> SIGKILL
-> resume (on one process) -> export to gs:// -> fine-tune from it (--config.init=gs://...)
into a gs:// workdir -> predict from that model into a gs:// file. Nothing becomes a local
folder."""

import json
import logging
import pathlib
import sys
import time

import jax

from roberta_jax import cli, fs
from roberta_jax.checkpoint import Checkpointer
from roberta_jax.convert.hf import TOKENIZER_FILES
from roberta_jax.data import prepare
from roberta_jax.train import pretrain, read_metrics
from roberta_jax.train_config import load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
from bench_pods import LocalJob, pretrain_args  # noqa: E402

LIMIT_S = 600
STEPS = 24


def _latest_step(workdir) -> int | None:
    if not (fs.as_path(workdir) / "checkpoints").exists():
        return None
    checkpointer = Checkpointer(fs.as_path(workdir) / "checkpoints", read_only=True)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


def test_pretrain_kill_resume_export_finetune_predict_all_on_gs(prepared_corpus, gcs_bucket,
                                                                 tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    root = f"{gcs_bucket}/end_to_end"
    workdir = f"{root}/pretrain"
    # The data on the bucket too: a slice of the corpus's text and the tokenizer uploaded,
    # then prepared from gs:// into gs:// (each host then reads only its rows, ranged GETs).
    text = (prepared_corpus[0].parent / "train.txt").read_text(encoding="utf-8")
    fs.as_path(f"{root}/corpus/train.txt").write_text(text[:text.index("\n\n", 150_000)] + "\n")
    fs.copy_tree(prepared_corpus[2], f"{root}/tokenizer")
    prepared = f"{root}/prepared"
    # (the library call: cli.main would take over the roberta_jax logger that caplog reads)
    prepare([f"{root}/corpus/*.txt"], f"{root}/tokenizer", prepared, doc_format="paragraphs",
            workers=1, seq_lens=(32,), progress=False)
    assert (fs.as_path(prepared) / "manifest.json").exists()
    args = pretrain_args(workdir, prepared, STEPS, "--config.checkpoint.every_steps=2",
                         "--config.distributed.preemption_check_every=4")

    # Two processes, killed with SIGKILL once a checkpoint is on the bucket.
    first = LocalJob(args, tmp_path / "logs1", limit_s=LIMIT_S)
    try:
        while (_latest_step(workdir) or 0) < 2:
            assert first.running() and time.monotonic() < first.deadline, first.tails()
            time.sleep(0.5)
    finally:
        first.kill()
    assert [p.returncode for p in first.procs] == [-9, -9], "the run ended before the kill"

    # It resumes from the bucket (here on one process with 4 devices) and finishes.
    caplog.set_level(logging.INFO, logger="roberta_jax")
    config = load_config(str(ROOT / "configs" / "tiny.py"),
                         [a for a in args if a.startswith("--config.")])
    config.checkpoint.every_steps = 10
    assert pretrain(config, workdir, devices=jax.devices()[:4])["step"] == STEPS
    assert "resumed from step" in caplog.text
    records = read_metrics(workdir)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    for name in ("config.json", "metrics.jsonl", "loss.png", "tokenizer"):
        assert (fs.as_path(workdir) / name).exists(), name
    assert list((fs.as_path(workdir) / "tensorboard").iterdir())
    assert _latest_step(workdir) == STEPS

    # Export to the bucket: model and tokenizer.
    export = f"{root}/export"
    assert cli.main(["export", "--workdir", workdir, "--output", export]) == 0
    files = {p.name for p in fs.as_path(export).iterdir()}
    assert {"config.json", "model.safetensors"} <= files and files & set(TOKENIZER_FILES)

    # Fine-tune from it, into the bucket (the task's files are local).
    rows = [{"text": f"item {i} looks {'fine' if i % 2 else 'broken'}",
             "label": "ok" if i % 2 else "bad"} for i in range(24)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    finetuned = f"{root}/finetune"
    assert cli.main(["finetune", "--config", str(ROOT / "configs" / "glue.py"),
                     "--workdir", finetuned, "--config.task=local",
                     f"--config.train_file={tmp_path / 'train.jsonl'}",
                     f"--config.eval_file={tmp_path / 'train.jsonl'}", f"--config.init={export}",
                     "--config.seeds=(1,)", "--config.epochs=1", "--config.batch_size=8",
                     "--config.max_length=32", "--config.lr=1e-3",
                     "--config.progress=False"]) == 0
    best = f"{finetuned}/seed1/best"
    assert (fs.as_path(best) / "config.json").exists()
    assert (fs.as_path(finetuned) / "results.json").exists()

    # Predict with that model, from a file on the bucket into another.
    fs.as_path(f"{root}/inputs.jsonl").write_text(
        "".join(json.dumps({"text": f"item {i} looks fine"}) + "\n" for i in range(5)))
    assert cli.main(["predict", "--model", best, "--input", f"{root}/inputs.jsonl",
                     "--output", f"{root}/predictions.jsonl"]) == 0
    predictions = [json.loads(line) for line in
                   fs.as_path(f"{root}/predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 5 and {p["label"] for p in predictions} <= {"ok", "bad"}

    assert not list(tmp_path.rglob("gs:")) and not (ROOT / "gs:").exists()


def test_convert_writes_to_and_reads_from_gs_bitwise(gcs_bucket, tmp_path):
    from conftest import make_hf_model

    from roberta_jax.convert.hf import read_hf_weights
    make_hf_model("masked-lm").save_pretrained(tmp_path / "hf")
    remote = f"{gcs_bucket}/convert/hf"
    assert cli.main(["convert", str(tmp_path / "hf"), remote]) == 0
    assert cli.main(["convert", remote, str(tmp_path / "back")]) == 0
    original = read_hf_weights(tmp_path / "hf")
    on_gs, back = read_hf_weights(remote), read_hf_weights(tmp_path / "back")
    assert sorted(on_gs) == sorted(back) and set(original) & set(back)
    for name in back:
        assert on_gs[name].tobytes() == back[name].tobytes(), name
        if name in original:
            assert original[name].tobytes() == back[name].tobytes(), name
