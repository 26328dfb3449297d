"""A new user's path, through `roberta-jax` as users call it: complete help, shipped
configs by name, fine-tuning workdirs that keep their settings, local-file defaults that learn on
small models, test scores on screen, exports with their tokenizer, and output that stays
readable (progress bars, messages, ETAs)."""

import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from roberta_jax.cli import DESCRIPTION, build_parser, main

ROOT = pathlib.Path(__file__).parent.parent


def run(argv) -> tuple[int, str]:
    """main(argv) with stdout and stderr in one stream, as on a terminal."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # --help and usage errors
            code = e.code
    return code, out.getvalue()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if line.startswith("roberta-jax") and ": error:" in line]


def screen_lines(text: str) -> list[str]:
    """What a terminal shows line by line: a carriage return restarts the line (cursor moves
    between several bars are dropped)."""
    text = re.sub(r"\x1b\[\d*[A-Za-z]", "", text)
    return [part for line in text.split("\n") for part in line.split("\r")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# =============================================================================== help

def test_help_gives_the_whole_description_and_every_option_its_meaning_and_default():
    code, out = run(["--help"])
    assert code == 0
    assert " ".join(DESCRIPTION.split()) in " ".join(out.split())
    assert DESCRIPTION.rstrip().endswith(".") and "--debug" in DESCRIPTION
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, command in commands.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if action.dest == "help":
                continue
            text = formatter._expand_help(action) if action.help else ""
            assert text, f"{name} {action.option_strings or action.dest}: no help"
            explained = (not action.option_strings or action.required or action.nargs == 0
                         or "default" in text)
            assert explained, f"{name} {action.option_strings}: help does not give the default"


def test_finetune_help_names_every_task_and_kind_and_the_local_recipe():
    from roberta_jax.tasks import KINDS
    code, top = run(["--help"])
    code, out = run(["finetune", "--help"])
    assert code == 0
    summary = " ".join(top.split())
    assert all(name in summary for name in ("GLUE", "SQuAD", "NER", "RACE"))
    text = " ".join(out.split())
    assert all(kind in text for kind in KINDS), text
    assert "2e-5 x (768 / hidden_size)^1.5" in text and "10 epochs" in text


# =============================================================================== configs

def test_config_names_resolve_to_the_shipped_files_and_paths_keep_working(tmp_path,
                                                                         monkeypatch):
    from roberta_jax.train_config import config_dir, resolve_config
    assert resolve_config("base") == config_dir() / "base.py"
    assert (config_dir() / "glue.py").is_file()
    # The fine-tuning config under its own name, and under the name users already type.
    assert resolve_config("finetune") == config_dir() / "finetune.py"
    from roberta_jax.train_config import load_config
    assert load_config("glue").to_json() == load_config("finetune").to_json()
    missing = tmp_path / "not_prepared"
    monkeypatch.chdir(tmp_path)  # outside the clone
    for config in ("tiny", "tiny.py", str(ROOT / "configs" / "tiny.py")):
        code, out = run(["pretrain", "--config", config, "--workdir", tmp_path / "w",
                         f"--config.data.path={missing}"])
        # The config was found and read: the run stops at the (deliberately) missing data.
        assert code == 1 and "not a prepared directory" in out, (config, out)
    code, out = run(["pretrain", "--config", "configs/tiny.py", "--workdir", tmp_path / "w"])
    assert code == 1 and "the shipped config of that name is --config tiny" in out, out
    code, out = run(["finetune", "--config", "nope", "--workdir", tmp_path / "w"])
    assert code == 1 and "base, finetune, glue, large, tiny, xlmr_base" in out, out
    monkeypatch.chdir(ROOT)
    code, out = run(["pretrain", "--config", "configs/tiny.py", "--workdir", tmp_path / "w",
                     f"--config.data.path={missing}"])
    assert code == 1 and "not a prepared directory" in out, out


def _source_copy(directory: pathlib.Path) -> pathlib.Path:
    """What `pip install .` reads, copied, so that building leaves nothing in the clone."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, directory / name)
    for name in ("roberta_jax", "configs"):
        shutil.copytree(ROOT / name, directory / name, ignore=ignore)
    return directory


def _build_wheel(tmp_path) -> pathlib.Path:
    source = _source_copy(tmp_path / "src")
    # Without setuptools here, pip fetches it into an isolated build environment.
    isolation = ["--no-build-isolation"] if _has_setuptools() else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
                    "-w", str(tmp_path / "dist"), str(source)], check=True)
    return next((tmp_path / "dist").glob("roberta_jax-*.whl"))


def _has_setuptools() -> bool:
    import importlib.util
    return importlib.util.find_spec("setuptools") is not None


def test_the_wheel_ships_every_config_inside_the_package(tmp_path):
    (tmp_path / "src").mkdir()
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"roberta_jax/configs/{p.name}" for p in (ROOT / "configs").glob("*.py")}
    assert shipped and shipped <= names
    assert not any(n.startswith("configs/") for n in names)  # no stray top-level package


@pytest.mark.slow
def test_pip_install_then_the_demo_runs_from_another_directory(tmp_path):
    """`pip install .` (not editable) into a fresh venv, then the demo from elsewhere. The
    dependencies come from this environment (no download): the package and its configs come
    only from the wheel."""
    import sysconfig
    (tmp_path / "src").mkdir()
    wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                   check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    # A plain path line: this environment's packages, but not its own .pth hooks (an editable
    # install of this clone among them).
    (pathlib.Path(site.stdout.strip()) / "outer.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import roberta_jax; print(roberta_jax.__file__)"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True)
    assert str(venv) in where.stdout, where.stdout
    result = subprocess.run(
        [str(venv / "bin" / "roberta-jax"), "demo", "--minutes", "0.05", "--max-documents",
         "700", "--finetune-epochs", "1"], cwd=elsewhere, env=env, capture_output=True,
        text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (elsewhere / "roberta-jax-demo" / "report.md").read_text()
    assert "held-out MLM loss" in report and "nan" not in report


# =============================================================================== fine-tuning


FILLER = "return the value of a new list file object string name from module data".split()


def keyword_rows(n, seed):
    """Labels -1 / +1 (as some sentiment files have them) told apart by one word."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = list(rng.choice(FILLER, 6))
        positive = i % 2 == 0
        words.insert(int(rng.integers(0, 7)), "excellent" if positive else "broken")
        rows.append({"text": " ".join(words), "label": 1 if positive else -1})
    return rows


@pytest.fixture(scope="module")
def local_run(small_model, tmp_path_factory):
    """One fine-tuning run on local files with every recipe setting left at its default."""
    d = tmp_path_factory.mktemp("local")
    files = {name: write_jsonl(d / f"{name}.jsonl", keyword_rows(n, seed))
             for name, n, seed in (("train", 128, 0), ("dev", 32, 1), ("test", 32, 2))}
    argv = ["finetune", "--config", "glue", "--workdir", d / "w", "--config.task=local",
            f"--config.train_file={files['train']}", f"--config.eval_file={files['dev']}",
            f"--config.test_file={files['test']}", f"--config.init={small_model}"]
    code, out = run(argv)
    assert code == 0, out
    return d, argv, out


def test_local_files_default_recipe_learns_on_a_small_model(local_run):
    d, _, out = local_run
    summary = json.loads((d / "w" / "results.json").read_text())
    # One seed, 10 epochs, and a learning rate scaled to the width: GLUE's roberta-large recipe
    # (1e-5, 5 seeds) stays at chance (0.5) here.
    assert summary["seeds"] == [1] and len(summary["per_seed"]["1"]["history"]) == 10
    assert summary["median"]["dev_accuracy"] >= 0.9, out
    assert "lr 0.001 (local files: scaled to width 24)" in out


def test_local_recipe_scales_with_the_model_and_glue_keeps_its_own():
    import ml_collections

    from roberta_jax import tasks
    from roberta_jax.finetune import recipe
    unset = ml_collections.ConfigDict(dict(lr=0.0, warmup_ratio=0.06, b2=0.98, eps=1e-6,
                                           weight_decay=-1.0, weight_decay_mask="hf",
                                           clip_norm=0.0))
    local = tasks.local_task("classification", "train.jsonl")
    assert recipe(unset, local, 100, hidden_size=768).lr == pytest.approx(2e-5)
    assert recipe(unset, local, 100, hidden_size=64).lr == pytest.approx(8.31e-4, rel=1e-3)
    assert recipe(unset, local, 100, hidden_size=1024).lr < 2e-5
    for width in (64, 1024):
        assert recipe(unset, tasks.NAMED_TASKS["rte"], 100, hidden_size=width).lr == 2e-5
        assert recipe(unset, tasks.NAMED_TASKS["sst2"], 100, hidden_size=width).lr == 1e-5
    assert local.seeds == (1,) and tasks.NAMED_TASKS["mnli"].seeds == (1, 2, 3, 4, 5)


def test_finetune_prints_the_test_score_of_the_epoch_the_dev_set_picked(local_run):
    d, _, out = local_run
    summary = json.loads((d / "w" / "results.json").read_text())
    assert 0 <= summary["test"]["test_accuracy"] <= 1
    assert re.search(r"seed 1: wrote 32 test predictions -> .*; test accuracy \d\.\d{4}", out)
    assert f"test_accuracy {summary['test']['test_accuracy']:.4f}" in out


def test_epoch_summaries_are_printed_above_the_progress_bar_not_onto_it(local_run):
    _, _, out = local_run
    lines = screen_lines(out)
    summaries = [line for line in lines if "epoch 1/10: train_loss" in line]
    assert summaries and all(line.startswith("seed 1 epoch") for line in summaries), summaries


def test_a_finetune_workdir_refuses_other_settings(local_run):
    d, argv, _ = local_run
    code, out = run(argv + ["--config.lr=1e-5", "--config.epochs=3"])
    errors = error_lines(out)
    assert code == 1 and len(errors) == 1, out
    assert "lr 0.0 (the task's recipe) -> 1e-05" in errors[0]
    assert "epochs 0 (the task's recipe) -> 3" in errors[0]
    assert "use a new --workdir" in errors[0]
    assert json.loads((d / "w" / "results.json").read_text())["seeds"] == [1]  # untouched


def test_a_finetune_workdir_resumes_the_same_settings_spelled_from_another_directory(
        local_run, monkeypatch):
    d, argv, _ = local_run
    monkeypatch.chdir(d)
    relative = [re.sub(re.escape(str(d)) + "/", "", str(a)) for a in argv]
    code, out = run(relative + ["--config.progress=False", "--config.seeds=1"])
    assert code == 0, out
    assert "seed 1: resumed after epoch 10" in out and "epoch 1/10" not in out


def test_local_regression_file_keeps_labels_of_minus_one(small_model, tmp_path):
    rows = [{"text": f"{w} value {i}", "label": score} for i, (w, score) in
            enumerate([("low", -1.0), ("high", 1.0), ("mid", 0.0), ("low", -1.0)] * 4)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    code, out = run(["finetune", "--config", "glue", "--workdir", tmp_path / "w",
                     "--config.task=local", "--config.regression=True",
                     f"--config.train_file={train}", f"--config.eval_file={train}",
                     f"--config.init={small_model}", "--config.epochs=1",
                     "--config.progress=False"])
    assert code == 0, out
    assert "dev_pearson" in json.loads((tmp_path / "w" / "results.json").read_text())["median"]


def test_local_labels_are_all_or_none():
    import tempfile

    from roberta_jax.data.classification import read_examples
    from roberta_jax.errors import UserError
    with tempfile.TemporaryDirectory() as d:
        path = write_jsonl(pathlib.Path(d) / "f.jsonl",
                           [{"text": "a", "label": -1.0}, {"text": "b", "label": 2.5}])
        examples, _ = read_examples(str(path), "text", None, "label", regression=True)
        assert examples.labels.tolist() == [-1.0, 2.5]
        write_jsonl(path, [{"text": "a", "label": -1}, {"text": "b", "label": 1}])
        examples, names = read_examples(str(path), "text", None, "label")
        assert names == ["-1", "1"] and examples.labels.tolist() == [0, 1]
        write_jsonl(path, [{"text": "a", "label": 1}, {"text": "b"}])
        with pytest.raises(UserError, match="example 2 has no 'label' but others do"):
            read_examples(str(path), "text", None, "label")
        write_jsonl(path, [{"text": "a", "label": "high"}])
        with pytest.raises(UserError, match="example 1 has 'label' 'high', not a number"):
            read_examples(str(path), "text", None, "label", regression=True)


# =============================================================================== exports

def test_save_pretrained_writes_the_tokenizer_and_predict_reads_it(small_model, tmp_path,
                                                                  monkeypatch):
    import roberta_jax as rj
    tokenizer = rj.load_tokenizer(small_model)
    model, params = rj.from_pretrained(small_model, task="masked-lm")
    rj.save_pretrained(model, params, tmp_path / "exported", tokenizer=tokenizer)
    assert rj.load_tokenizer(tmp_path / "exported").encode("return a list") == \
        tokenizer.encode("return a list")
    monkeypatch.setattr(sys, "stdin", io.StringIO("Return the <mask> of a list.\n"))
    code, out = run(["predict", "--model", tmp_path / "exported", "--top-k", "2"])
    assert code == 0, out
    record = json.loads(out.strip().splitlines()[-1])
    assert len(record["masks"]) == 1 and len(record["masks"][0]) == 2


def test_save_pretrained_without_a_tokenizer_says_so(small_model, tmp_path, caplog):
    import logging

    import roberta_jax as rj
    caplog.set_level(logging.INFO, logger="roberta_jax")
    model, params = rj.from_pretrained(small_model, task="masked-lm")
    rj.save_pretrained(model, params, tmp_path / "bare")
    assert "no tokenizer given" in caplog.text and "tokenizer=" in caplog.text


def test_predict_refuses_a_line_that_is_broken_json(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"text": "fine"}\n{"text": "cut short\n'))
    code, out = run(["predict", "--model", tmp_path / "any"])
    errors = error_lines(out)
    assert code == 1 and len(errors) == 1 and "Traceback" not in out, out
    assert "stdin line 2: starts like a JSON object but is not valid JSON" in errors[0]


# =============================================================================== output

def test_resumed_prepare_says_the_shards_were_done_not_zero_tokens_per_second(prepared_corpus,
                                                                             tmp_path):
    _, _, tokenizer = prepared_corpus
    (tmp_path / "text.txt").write_text("Return the value of the list.\nOpen a new file.\n")
    argv = ["prepare", "--input", tmp_path / "text.txt", "--tokenizer", tokenizer, "--output",
            tmp_path / "prepared", "--workers", "1"]
    assert run(argv)[0] == 0
    code, out = run(argv)
    assert code == 0 and "every shard was already done" in out and "0 tokens/s" not in out, out


def test_pretraining_shows_the_held_out_loss_on_screen(prepared_corpus, tmp_path):
    train_dir, held_out, _ = prepared_corpus
    code, out = run([
        "pretrain", "--config", "tiny", "--workdir", tmp_path / "w",
        f"--config.data.path={train_dir}", f"--config.data.eval_path={held_out}",
        "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
        "--config.model.max_position_embeddings=34", "--config.train.seq_len=32",
        "--config.train.batch_size=8", "--config.train.steps=2", "--config.train.log_every=1",
        "--config.eval.every_steps=2", "--config.eval.batches=1", "--config.peak_flops=1e12"])
    assert code == 0, out
    record = [r for r in map(json.loads, (tmp_path / "w" / "metrics.jsonl").read_text()
                                          .splitlines()) if "eval_loss" in r][-1]
    shown = [line for line in screen_lines(out) if "held-out MLM loss" in line]
    assert shown == [f"step 2: held-out MLM loss {record['eval_loss']:.3f} (perplexity "
                     f"{record['eval_perplexity']:,.1f}), masked-token accuracy "
                     f"{record['eval_accuracy']:.3f}"], out


CONFIG_MISTAKES = {
    "remat_policy typo": ("model.remat_policy=dots_savable",
                          "model.remat_policy='dots_savable' is not one of"),
    "dtype typo": ("model.dtype=bfloat61", "model.dtype='bfloat61' is not one of"),
    "nonfinite typo": ("train.nonfinite=halt", "train.nonfinite='halt' is not one of"),
    "log_every 0": ("train.log_every=0", "train.log_every=0: must be"),
    "eval every 0": ("eval.every_steps=0", "eval.every_steps=0: must be"),
    "checkpoint every 0": ("checkpoint.every_steps=0", "checkpoint.every_steps=0: must be"),
}


@pytest.mark.parametrize("case", list(CONFIG_MISTAKES))
def test_config_mistakes_are_one_line_before_anything_starts(prepared_corpus, tmp_path, case):
    train_dir, held_out, _ = prepared_corpus
    override, expected = CONFIG_MISTAKES[case]
    code, out = run(["pretrain", "--config", "tiny", "--workdir", tmp_path / "w",
                     f"--config.data.path={train_dir}", f"--config.data.eval_path={held_out}",
                     f"--config.{override}"])
    errors = error_lines(out)
    assert code == 1 and len(errors) == 1 and "Traceback" not in out, out
    assert expected in errors[0]
    assert not (tmp_path / "w").exists()


def test_finetune_config_mistakes_are_one_line(tmp_path):
    for command, config, extra, expected in (
            ("finetune", "glue", ["--config.dtype=fp32"], "dtype='fp32' is not one of"),
            ("finetune", "glue", ["--config.seeds=one"], "not a valid tuple like (1, 2)"),
            ("finetune", "base", [], "not a fine-tuning config"),
            ("pretrain", "glue", [], "not a pretraining config")):
        code, out = run([command, "--config", config, "--workdir", tmp_path / "w", *extra])
        errors = error_lines(out)
        assert code == 1 and len(errors) == 1 and expected in errors[0], out
    assert not (tmp_path / "w").exists()


def test_convert_on_a_pretraining_workdir_points_to_export(tmp_path):
    from roberta_jax.train_config import default_config
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(default_config().to_json())
    code, out = run(["convert", workdir, tmp_path / "out"])
    errors = error_lines(out)
    assert code == 1 and len(errors) == 1, out
    assert "a pretraining workdir, not a model" in errors[0]
    assert f"roberta-jax export --workdir {workdir}" in errors[0]
    assert not (tmp_path / "out").exists()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_eta_counts_from_the_end_of_the_first_compiling_step(monkeypatch):
    import tqdm.std

    from roberta_jax.progress import progress_bar
    clock = Clock()
    monkeypatch.setattr(tqdm.std, "time", clock)
    bar = progress_bar(100, 0, "step", "pretrain", file=io.StringIO())
    clock.now += 600           # the first step: ten minutes of compiling
    bar.update()
    assert "<?" in str(bar)    # no rate known yet, rather than one that promises 16 hours
    for _ in range(4):
        clock.now += 1.0       # then a step a second
        bar.update()
    assert "<01:35," in str(bar), str(bar)   # 95 steps to go at 1 step/s
    bar.close()


def test_a_terminal_of_width_zero_still_shows_progress(monkeypatch):
    from roberta_jax.progress import progress_bar

    class Terminal(io.StringIO):
        def fileno(self):
            return 2

    monkeypatch.setattr(os, "get_terminal_size", lambda *a: os.terminal_size((0, 0)))
    screen = Terminal()
    bar = progress_bar(10, 0, "step", "pretrain", file=screen)
    for _ in range(3):
        bar.update()
    bar.close()
    assert "3/10" in screen.getvalue(), repr(screen.getvalue())


def test_log_messages_and_the_interrupt_message_start_their_own_line(monkeypatch):
    import logging

    from roberta_jax import cli
    from roberta_jax.progress import close_bars, progress_bar
    close_bars()  # none left over from other tests

    def interrupted_command(args):
        bar = progress_bar(10, 0, "shard", "prepare")
        bar.update(3)
        logging.getLogger("roberta_jax").warning("a warning while the bar runs")
        bar.update(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_prepare", interrupted_command)
    code, out = run(["prepare", "--input", "x", "--tokenizer", "t", "--output", "o"])
    assert code == 130
    lines = screen_lines(out)
    assert "WARNING: a warning while the bar runs" in lines, lines
    assert "roberta-jax prepare: interrupted; run the same command again to resume" in lines
