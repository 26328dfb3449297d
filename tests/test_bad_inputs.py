"""The bad-input catalogue: user mistakes across the commands, each answered with one line that
names the file and says what to do, a non-zero exit, no traceback, and nothing left looking
complete."""

import json
import os
import pathlib
import pickle

import pytest

from roberta_jax.cli import main

ROOT = pathlib.Path(__file__).parent.parent
TINY = str(ROOT / "configs" / "tiny.py")


class RunsCode:
    def __reduce__(self):
        return os.system, ("echo pwned",)


@pytest.fixture(scope="module")
def world(prepared_corpus, tmp_path_factory):
    """Valid inputs to spoil one at a time."""
    from conftest import make_hf_model
    train_dir, held_out, tokenizer = prepared_corpus
    w = tmp_path_factory.mktemp("world")
    make_hf_model("masked-lm").save_pretrained(w / "hf")
    (w / "bert").mkdir()
    (w / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (w / "text.txt").write_text("a sentence of text\nanother one here\n")
    (w / "empty.txt").write_text("\n \n")
    (w / "binary.bin").write_bytes(bytes(range(256)) * 64)
    (w / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 4)
    (w / "a_file").write_text("not a directory")
    (w / "full").mkdir()
    (w / "full" / "keep.txt").write_text("precious")
    make_hf_model("sequence-classification", num_labels=2).save_pretrained(w / "cls2")
    (w / "three_labels.jsonl").write_text("".join(
        json.dumps({"text": f"t {i}", "label": "abc"[i % 3]}) + "\n" for i in range(9)))
    (w / "not_squad.json").write_text(json.dumps({"version": "1.1", "articles": []}))
    (w / "train.jsonl").write_text("".join(
        json.dumps({"text": f"t {i}", "label": "x" if i % 2 else "y"}) + "\n" for i in range(8)))
    (w / "nolabel.jsonl").write_text(json.dumps({"text": "t"}) + "\n")
    truncated = w / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((w / "hf" / "config.json").read_text())
    data = (w / "hf" / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 3])
    evil = w / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((w / "hf" / "config.json").read_text())
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps({"w": RunsCode()}))
    (w / "bad_config.py").write_text("def get_config(:\n")
    from roberta_jax.data import train_tokenizer
    train_tokenizer([str(ROOT / "README.md")], 300, str(w / "tok2"))
    # a workdir started with another architecture
    (w / "old_run").mkdir()
    cfg = json.loads(
        __import__("roberta_jax.train_config", fromlist=["x"]).default_config().to_json())
    cfg["model"]["hidden_size"] = 999
    cfg["data"]["path"] = str(train_dir)
    (w / "old_run" / "config.json").write_text(json.dumps(cfg))
    return w, train_dir, tokenizer


def pretrain(w, train_dir, *extra):
    return ["pretrain", "--config", TINY, "--workdir", str(w / "run"),
            f"--config.data.path={train_dir}", "--config.train.steps=1", *extra]


CASES = {
    # convert
    "convert: missing path": lambda w, d, t: (["convert", f"{w}/nope", f"{w}/o"], "nope: no such"),
    "convert: BERT directory": lambda w, d, t: (["convert", f"{w}/bert", f"{w}/o"],
                                                "not a RoBERTa"),
    "convert: truncated safetensors": lambda w, d, t: (["convert", f"{w}/truncated", f"{w}/o"],
                                                       "truncated or corrupt"),
    "convert: pickle that runs code": lambda w, d, t: (["convert", f"{w}/evil", f"{w}/o"],
                                                       "could run code"),
    "convert: output exists": lambda w, d, t: (["convert", f"{w}/hf", f"{w}/full"], "not empty"),
    "convert: output under a file": lambda w, d, t: (["convert", f"{w}/hf", f"{w}/a_file/o"],
                                                     "cannot write"),
    "convert: unknown task": lambda w, d, t: (["convert", f"{w}/hf", f"{w}/o", "--task", "nope"],
                                              "invalid choice"),
    # train-tokenizer
    "train-tokenizer: missing input": lambda w, d, t: (
        ["train-tokenizer", "--input", f"{w}/nope.txt", "--vocab-size", "50", "--output", f"{w}/o"],
        "nope.txt: no such file"),
    "train-tokenizer: empty corpus": lambda w, d, t: (
        ["train-tokenizer", "--input", f"{w}/empty.txt", "--vocab-size", "50",
         "--output", f"{w}/o"],
        "empty corpus"),
    "train-tokenizer: not UTF-8": lambda w, d, t: (
        ["train-tokenizer", "--input", f"{w}/latin1.txt", "--vocab-size", "50", "--output",
         f"{w}/o"], "latin1.txt: not UTF-8"),
    "train-tokenizer: binary file": lambda w, d, t: (
        ["train-tokenizer", "--input", f"{w}/binary.bin", "--vocab-size", "50", "--output",
         f"{w}/o"], "binary"),
    "train-tokenizer: output exists": lambda w, d, t: (
        ["train-tokenizer", "--input", f"{w}/text.txt", "--vocab-size", "50", "--output",
         f"{w}/full"], "not empty"),
    # prepare
    "prepare: missing input": lambda w, d, t: (
        ["prepare", "--input", f"{w}/nope.txt", "--tokenizer", str(t), "--output", f"{w}/o"],
        "nope.txt: no such file"),
    "prepare: glob matches nothing": lambda w, d, t: (
        ["prepare", "--input", f"{w}/*.nothing", "--tokenizer", str(t), "--output", f"{w}/o"],
        "no files match"),
    "prepare: binary input": lambda w, d, t: (
        ["prepare", "--input", f"{w}/binary.bin", "--tokenizer", str(t), "--output", f"{w}/o"],
        "binary"),
    "prepare: empty corpus": lambda w, d, t: (
        ["prepare", "--input", f"{w}/empty.txt", "--tokenizer", str(t), "--output", f"{w}/o",
         "--workers", "1"], "empty corpus"),
    "prepare: not UTF-8": lambda w, d, t: (
        ["prepare", "--input", f"{w}/latin1.txt", "--tokenizer", str(t), "--output", f"{w}/o",
         "--workers", "1"], "latin1.txt: not UTF-8"),
    "prepare: tokenizer missing": lambda w, d, t: (
        ["prepare", "--input", f"{w}/text.txt", "--tokenizer", f"{w}/nothing", "--output",
         f"{w}/o"], "nothing: no such tokenizer"),
    "prepare: tokenizer is not one": lambda w, d, t: (
        ["prepare", "--input", f"{w}/text.txt", "--tokenizer", f"{w}/text.txt", "--output",
         f"{w}/o"], "not a tokenizer"),
    "prepare: output is something else": lambda w, d, t: (
        ["prepare", "--input", f"{w}/text.txt", "--tokenizer", str(t), "--output", f"{w}/full"],
        "not a prepared directory"),
    "prepare: another tokenizer into a prepared directory": lambda w, d, t: (
        ["prepare", "--input", f"{w}/text.txt", "--tokenizer", f"{w}/tok2", "--output", str(d)],
        "was prepared from other tokenizer"),
    # pretrain
    "pretrain: missing config": lambda w, d, t: (
        ["pretrain", "--config", f"{w}/nope.py", "--workdir", f"{w}/run"], "no such config"),
    "pretrain: config with a syntax error": lambda w, d, t: (
        ["pretrain", "--config", f"{w}/bad_config.py", "--workdir", f"{w}/run"],
        "not valid Python"),
    "pretrain: unknown config key": lambda w, d, t: (pretrain(w, d, "--config.train.stepz=3"),
                                                     "unknown config key train.stepz"),
    "pretrain: wrong value type": lambda w, d, t: (pretrain(w, d, "--config.train.steps=many"),
                                                   "not a valid int"),
    "pretrain: data not prepared": lambda w, d, t: (
        pretrain(w, w, "--config.data.path=" + str(w)), "not a prepared directory"),
    "pretrain: seq_len above positions": lambda w, d, t: (
        pretrain(w, d, "--config.train.seq_len=512"), "longer than the model's positions"),
    "pretrain: vocabulary smaller than tokenizer": lambda w, d, t: (
        pretrain(w, d, "--config.model.vocab_size=10"), "smaller than the data's tokenizer"),
    "pretrain: incompatible workdir": lambda w, d, t: (
        ["pretrain", "--config", TINY, "--workdir", f"{w}/old_run", f"--config.data.path={d}"],
        "was started with model."),
    # finetune
    "finetune: unknown task": lambda w, d, t: (
        ["finetune", "--config", str(ROOT / "configs" / "glue.py"), "--workdir", f"{w}/ft",
         "--config.task=nope"], "unknown task 'nope'"),
    "finetune: label column missing": lambda w, d, t: (
        ["finetune", "--config", str(ROOT / "configs" / "glue.py"), "--workdir", f"{w}/ft",
         "--config.task=local", f"--config.train_file={w}/nolabel.jsonl", f"--config.init={w}/hf",
         f"--config.tokenizer={t}"], "no 'label' column"),
    "finetune: train file missing": lambda w, d, t: (
        ["finetune", "--config", str(ROOT / "configs" / "glue.py"), "--workdir", f"{w}/ft",
         "--config.task=local", f"--config.train_file={w}/nope.jsonl", f"--config.tokenizer={t}"],
        "nope.jsonl: no such file"),
    "finetune: tokenizer larger than the model's vocabulary": lambda w, d, t: (
        ["finetune", "--config", str(ROOT / "configs" / "glue.py"), "--workdir", f"{w}/ft",
         "--config.task=local", f"--config.train_file={w}/train.jsonl", f"--config.init={w}/hf",
         f"--config.tokenizer={t}", "--config.seeds=(1,)"], "do not belong together"),
    "finetune: more labels than the checkpoint's head": lambda w, d, t: (
        ["finetune", "--config", str(ROOT / "configs" / "glue.py"), "--workdir", f"{w}/ft",
         "--config.task=local", f"--config.train_file={w}/three_labels.jsonl",
         f"--config.init={w}/cls2", f"--config.tokenizer={t}", "--config.seeds=(1,)"],
        "head has 2 label(s) but this task has 3"),
    "finetune: unknown kind of local task": lambda w, d, t: (
        ["finetune", "--config", str(ROOT / "configs" / "glue.py"), "--workdir", f"{w}/ft",
         "--config.task=local", "--config.kind=ranking", f"--config.train_file={w}/train.jsonl",
         f"--config.tokenizer={t}"], "unknown kind 'ranking'"),
    "finetune: QA file that is not SQuAD": lambda w, d, t: (
        ["finetune", "--config", str(ROOT / "configs" / "glue.py"), "--workdir", f"{w}/ft",
         "--config.task=local", "--config.kind=qa", f"--config.train_file={w}/not_squad.json",
         f"--config.tokenizer={t}"], "not_squad.json"),
    "finetune: unknown packing": lambda w, d, t: (
        ["finetune", "--config", str(ROOT / "configs" / "glue.py"), "--workdir", f"{w}/ft",
         "--config.task=local", f"--config.train_file={w}/train.jsonl",
         "--config.packing=sometimes"], "packing 'sometimes': use one of auto, on, off"),
    # export
    "export: not a workdir": lambda w, d, t: (
        ["export", "--workdir", f"{w}/full", "--output", f"{w}/o"], "not a pretraining workdir"),
    # predict
    "predict: model missing": lambda w, d, t: (
        ["predict", "--model", f"{w}/nope", "--input", f"{w}/train.jsonl"], "nope: no such"),
    "predict: model without a tokenizer": lambda w, d, t: (
        ["predict", "--model", f"{w}/hf", "--input", f"{w}/train.jsonl"], "no tokenizer files"),
    # plan
    "plan: missing config": lambda w, d, t: (
        ["plan", "--config", f"{w}/nope.py", "--topology", "v5p:2x2x1"], "no such config"),
    # demo
    "demo: workdir is a file": lambda w, d, t: (
        ["demo", "--workdir", f"{w}/a_file", "--minutes", "0.01"], "a_file"),
}

# Mistakes the commands do not yet answer with one line: each a bug, named.
KNOWN_BUGS: dict[str, str] = {}


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[c]))
    if c in KNOWN_BUGS else c for c in CASES])
def test_bad_input_one_line_nonzero_exit_nothing_left(world, capsys, case):
    w, train_dir, tokenizer = world
    argv, expected = CASES[case](w, train_dir, tokenizer)
    capsys.readouterr()
    before = sorted(p.name for p in w.iterdir())
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if line and not line.startswith(("prepare:", "WARNING", "INFO", "usage:", "W1", "I1"))]
    assert code not in (0, None), err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert expected in err[0], err[0]
    left_behind = (w / "o").exists()
    if left_behind:
        __import__("shutil").rmtree(w / "o")
    assert not left_behind, "a failed command left an output behind"
    assert (sorted(p.name for p in w.iterdir() if p.name != "run")
            == [b for b in before if b != "run"])


# Arguments that name a user's file or directory.
PATH_ARGUMENTS = {"src", "dst", "input", "output", "workdir", "config", "model", "tokenizer"}


def test_every_command_that_reads_or_writes_the_users_files_has_a_mistake_in_the_catalogue():
    import argparse

    from roberta_jax.cli import build_parser
    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    taking_paths = sorted(name for name, parser in commands.items()
                          if any(a.dest in PATH_ARGUMENTS for a in parser._actions))
    assert {"convert", "prepare", "pretrain", "finetune", "predict", "export"} <= set(taking_paths)
    covered = {case.split(":")[0] for case in CASES}
    assert [c for c in taking_paths if c not in covered] == []
