"""Every bad input to `roberta-jax convert` gets one clear line, a non-zero exit, and no output."""

import json
import os
import pickle

import pytest
from conftest import make_hf_model

from roberta_jax.cli import main


class RunsCode:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hf_dir(tmp_path):
    make_hf_model("masked-lm").save_pretrained(tmp_path / "src")
    return tmp_path / "src"


def _not_roberta(model_type):
    def make(tmp_path):
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": model_type}))
        return tmp_path / "src"
    return make


def _truncated(tmp_path):
    src = _hf_dir(tmp_path)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    return src


def _shape_mismatch(tmp_path):
    src = _hf_dir(tmp_path)
    config = json.loads((src / "config.json").read_text())
    config["intermediate_size"] += 8
    (src / "config.json").write_text(json.dumps(config))
    return src


def _code_running_pickle(tmp_path):
    src = _hf_dir(tmp_path)
    (src / "model.safetensors").unlink()
    with open(src / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": RunsCode(tmp_path / "pwned")}, f)
    return src


def _no_weights(tmp_path):
    src = _hf_dir(tmp_path)
    (src / "model.safetensors").unlink()
    return src


def _not_json(tmp_path):
    src = _hf_dir(tmp_path)
    (src / "config.json").write_bytes(b"\xff\xfe not json")
    return src


def _random_model_pt(tmp_path):
    (tmp_path / "model.pt").write_bytes(os.urandom(4096))
    return tmp_path / "model.pt"


CASES = {
    "missing path": (lambda tmp_path: tmp_path / "nope", "no such file"),
    "bert directory": (_not_roberta("bert"), "'bert', not a RoBERTa model"),
    "gpt2 directory": (_not_roberta("gpt2"), "'gpt2', not a RoBERTa model"),
    "truncated safetensors": (_truncated, "truncated or corrupt"),
    "config and weights disagree": (_shape_mismatch, "do not belong together"),
    "pickle that runs code": (_code_running_pickle, "could run code"),
    "no weights": (_no_weights, "no weights found"),
    "config not json": (_not_json, "not a valid JSON config"),
    "random bytes as model.pt": (_random_model_pt, "model.pt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_nonzero_exit_and_writes_nothing(tmp_path, capsys, case):
    make_source, expected = CASES[case]
    src = make_source(tmp_path)
    capsys.readouterr()
    before = set(tmp_path.iterdir())
    code = main(["convert", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("roberta-jax convert: error:") and expected in err[0], err[0]
    assert set(tmp_path.iterdir()) == before, "the failed command left files behind"
    assert not (tmp_path / "pwned").exists()


def test_existing_output_directory_is_not_overwritten(tmp_path, capsys):
    src = _hf_dir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    assert main(["convert", str(src), str(tmp_path / "out")]) != 0
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["precious.txt"]


def test_convert_succeeds_and_says_where(tmp_path, capsys):
    src = _hf_dir(tmp_path)
    assert main(["convert", str(src), str(tmp_path / "out"), "--task", "base"]) == 0
    assert str(tmp_path / "out") in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["RobertaModel"]
