"""README.md's Python examples run as written (on a local directory built here)."""

import pathlib
import re

from conftest import make_hf_model

from roberta_jax.data.train_tokenizer import train_tokenizer

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_example_runs_offline(tmp_path, capsys):
    import argparse
    text = "\n".join(" ".join(str(getattr(o, "__doc__", "")).split())
                     for o in vars(argparse).values())
    (tmp_path / "corpus.txt").write_text(text)
    model_dir = tmp_path / "roberta-base"
    tokenizer = train_tokenizer([str(tmp_path / "corpus.txt")], 400, str(model_dir), kind="bpe")
    make_hf_model("base", vocab_size=tokenizer.vocab_size,
                  hidden_size=24).save_pretrained(model_dir)

    block = re.search(r"```python\n(import roberta_jax as rj\n.*?)```", README.read_text(), re.S)
    code = block.group(1).replace("path/to/roberta-base", str(model_dir))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "(1, 16, 24)" in capsys.readouterr().out

    # The export example that follows it writes the tokenizer too, as the README says.
    export = re.search(r"```python\n(rj\.save_pretrained\(.*?)```", README.read_text(), re.S)
    exec(compile(export.group(1).replace('"exported/"', repr(str(tmp_path / "exported"))),
                 "README.md", "exec"), namespace)
    reloaded = namespace["rj"].load_tokenizer(tmp_path / "exported")
    assert reloaded.encode("an example sentence") == tokenizer.encode("an example sentence")
