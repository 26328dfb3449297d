"""A pretraining workdir works from any directory, as users call the CLI: it records its paths
resolved and keeps its tokenizer, so export and fine-tuning find it from elsewhere (or refuse
in one line, never exporting without one); a resume compares paths by place, not spelling;
exports get the usual permissions; export reads a live workdir without changing it."""

import json
import os
import shutil
import stat

import pytest
from test_pretrain import ROOT

from roberta_jax import cli
from roberta_jax.errors import UserError
from roberta_jax.train import check_workdir_config, resolve_paths
from roberta_jax.train_config import load_config

SMALL = ["--config.model.hidden_size=32", "--config.model.num_hidden_layers=2",
         "--config.model.intermediate_size=64", "--config.model.max_position_embeddings=66",
         "--config.train.seq_len=32", "--config.train.batch_size=8",
         "--config.train.warmup_steps=2", "--config.train.log_every=1",
         "--config.checkpoint.every_steps=2", "--config.eval.every_steps=100000"]


def _pretrain(workdir, data, steps):
    return cli.main(["pretrain", "--config", str(ROOT / "configs" / "tiny.py"), "--workdir",
                     str(workdir), f"--config.data.path={data}",
                     f"--config.train.steps={steps}", *SMALL])


@pytest.fixture(scope="module")
def project(prepared_corpus, tmp_path_factory):
    """A user's directory: prepared/ and runs/w, pretrained 4 steps from inside it with the
    data path typed relative (checkpoints at steps 2 and 4)."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(prepared_corpus[0], root / "prepared")
    (root / "elsewhere").mkdir()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert _pretrain("runs/w", "prepared/", 4) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def workdir(project, tmp_path):
    """A copy of the project's workdir, to change freely."""
    shutil.copytree(project / "runs" / "w", tmp_path / "w")
    return tmp_path / "w"


def test_a_workdir_records_its_data_path_resolved_and_keeps_its_tokenizer(project):
    recorded = json.loads((project / "runs" / "w" / "config.json").read_text())
    assert recorded["data"]["path"] == str(project / "prepared")
    kept = project / "runs" / "w" / "tokenizer"
    assert sorted(p.name for p in kept.iterdir()) == \
        sorted(p.name for p in (project / "prepared" / "tokenizer").iterdir())


@pytest.mark.parametrize("keeps_a_copy", [True, False], ids=["own-copy", "from-data-path"])
def test_export_from_another_directory_carries_the_tokenizer(project, workdir, keeps_a_copy,
                                                             monkeypatch):
    if not keeps_a_copy:
        shutil.rmtree(workdir / "tokenizer")    # as in workdirs from before the copy
    monkeypatch.chdir(project / "elsewhere")
    assert cli.main(["export", "--workdir", str(workdir), "--output", "ex"]) == 0
    exported = project / "elsewhere" / "ex"
    for name in ("sentencepiece.bpe.model", "tokenizer_config.json"):
        assert (exported / name).read_bytes() == \
            (project / "prepared" / "tokenizer" / name).read_bytes()
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(exported))
    ids = tokenizer("Return the current event loop.")["input_ids"]
    assert len(tokenizer) == 1000 and tokenizer.unk_token_id not in ids
    shutil.rmtree(exported)


def test_an_old_workdir_with_a_relative_data_path_refuses_to_export_without_a_tokenizer(
        project, workdir, monkeypatch, capsys):
    config = json.loads((workdir / "config.json").read_text())
    config["data"]["path"] = "prepared/"          # recorded as typed, before this fix
    (workdir / "config.json").write_text(json.dumps(config))
    shutil.rmtree(workdir / "tokenizer")
    monkeypatch.chdir(project / "elsewhere")
    assert cli.main(["export", "--workdir", str(workdir), "--output", "ex"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "data.path=prepared/" in error[0]
    assert "--tokenizer DIR" in error[0] and "prepared/tokenizer" in error[0]
    assert not (project / "elsewhere" / "ex").exists()
    assert cli.main(["export", "--workdir", str(workdir), "--output", "ex", "--tokenizer",
                     str(project / "prepared" / "tokenizer")]) == 0
    assert (project / "elsewhere" / "ex" / "sentencepiece.bpe.model").is_file()
    shutil.rmtree(project / "elsewhere" / "ex")


def test_export_refuses_a_tokenizer_of_another_size(project, workdir, tmp_path, capsys):
    from conftest import small_bpe_tokenizer
    (tmp_path / "bpe").mkdir()
    small_bpe_tokenizer(["a few words", "and a few more"], tmp_path / "bpe")
    assert cli.main(["export", "--workdir", str(workdir), "--output", str(tmp_path / "ex"),
                     "--tokenizer", str(tmp_path / "bpe")]) == 1
    assert "trained with 1000" in capsys.readouterr().err
    assert not (tmp_path / "ex").exists()


def test_finetune_from_a_workdir_finds_its_tokenizer_from_another_directory(project, workdir,
                                                                            monkeypatch):
    shutil.rmtree(workdir / "tokenizer")          # found through the recorded data.path
    monkeypatch.chdir(project / "elsewhere")
    rows = [{"text": f"item {i} looks {'fine' if i % 2 else 'broken'}",
             "label": "ok" if i % 2 else "bad"} for i in range(16)]
    with open("train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert cli.main(["finetune", "--config", str(ROOT / "configs" / "glue.py"), "--workdir",
                     "ft", f"--config.init={workdir}", "--config.task=local",
                     "--config.train_file=train.jsonl", "--config.eval_file=train.jsonl",
                     "--config.seeds=(1,)", "--config.epochs=1", "--config.batch_size=8",
                     "--config.max_length=32", "--config.progress=False"]) == 0
    assert (project / "elsewhere" / "ft" / "seed1" / "best" / "sentencepiece.bpe.model").is_file()


def test_a_resume_compares_data_paths_by_place_not_spelling(project, workdir, monkeypatch):
    monkeypatch.chdir(project)
    base = load_config(str(ROOT / "configs" / "tiny.py"), SMALL)

    def check(data_path):
        config = base.copy_and_resolve_references()
        config.data.path = data_path
        check_workdir_config(workdir_path, resolve_paths(config))

    from roberta_jax import fs
    workdir_path = fs.as_path(workdir)
    for spelling in ("prepared", "prepared/", str(project / "prepared") + "/"):
        check(spelling)
    with pytest.raises(UserError, match=r"started with data\.path=/.*prepared; this run has "
                                        r".*elsewhere\. Pass --config\.data\.path="):
        check("elsewhere")
    # A workdir from before: its relative path is upgraded when resumed from where it ran ...
    recorded = json.loads((workdir / "config.json").read_text())
    recorded["data"]["path"] = "prepared/"
    (workdir / "config.json").write_text(json.dumps(recorded))
    check("prepared")
    assert json.loads((workdir / "config.json").read_text())["data"]["path"] == \
        str(project / "prepared")
    # ... and refused, naming where to resume from, when resumed from elsewhere.
    (workdir / "config.json").write_text(json.dumps(recorded))
    monkeypatch.chdir(project / "elsewhere")
    with pytest.raises(UserError, match="relative to the directory that run started in"):
        check(str(project / "prepared"))
    # Through the CLI, from the project, with a trailing slash: it resumes.
    monkeypatch.chdir(project)
    (workdir / "config.json").write_text(json.dumps({**recorded, "data": {
        **recorded["data"], "path": str(project / "prepared")}}))
    assert _pretrain(workdir, "prepared/", 5) == 0


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_exports_get_the_permissions_the_umask_gives(project, tmp_path, umask):
    old = os.umask(umask)
    try:
        assert cli.main(["export", "--workdir", str(project / "runs" / "w"), "--output",
                         str(tmp_path / "ex")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ex").stat().st_mode) == 0o777 & ~umask
    files = list((tmp_path / "ex").iterdir())
    assert {"model.safetensors", "config.json", "sentencepiece.bpe.model"} <= \
        {p.name for p in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_export_reads_a_live_workdir_with_a_damaged_checkpoint_without_moving_anything(
        workdir, tmp_path, capsys):
    (workdir / "checkpoints" / "4" / "state" / "_METADATA").write_text("{ not json")
    before = sorted((str(p.relative_to(workdir)), p.stat().st_mtime_ns)
                    for p in workdir.rglob("*"))
    assert cli.main(["export", "--workdir", str(workdir), "--output",
                     str(tmp_path / "ex")]) == 0
    assert "exported step 2" in capsys.readouterr().out
    after = sorted((str(p.relative_to(workdir)), p.stat().st_mtime_ns)
                   for p in workdir.rglob("*"))
    assert after == before and not (workdir / "damaged_checkpoints").exists()
