"""weights.py, the one loader: pretraining started from a Hugging Face model holds that model's
weights at step 0; fine-tuning with reset_head trains a fresh head on the checkpoint's encoder;
a fine-tuning workdir loads as its best model; and the trainer, the fine-tuner and the exporter
depend on the loader, never the other way round.

The references are `transformers` models built here from random configs (no download), read by
their own parameter names, so a wrong name map in our converter cannot pass both ways."""

import ast
import json
import pathlib

import jax
import numpy as np
import pytest
from conftest import make_hf_model

from roberta_jax import weights
from roberta_jax.errors import UserError

ROOT = pathlib.Path(__file__).parent.parent
VOCAB = 1000   # the prepared corpus's tokenizer


def _torch_params(model) -> dict[str, np.ndarray]:
    return {name: p.detach().numpy() for name, p in model.named_parameters()}


# =============================================================================== pretraining

def test_pretraining_from_a_hugging_face_model_starts_from_its_weights(prepared_corpus,
                                                                       tmp_path):
    """--config.model.init_from=HF_DIR: the checkpoint of step 0 is the Hugging Face model, its
    vocabulary padded with zero rows to the training vocabulary (and unpadded on the way out);
    init_from=WORKDIR of that run gives the same weights."""
    from roberta_jax.train import pretrain
    from roberta_jax.train_config import load_config
    reference = make_hf_model("masked-lm", vocab_size=VOCAB, hidden_size=32,
                              num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              max_position_embeddings=66)
    reference.save_pretrained(tmp_path / "hf")
    config = load_config(str(ROOT / "configs" / "tiny.py"))
    m = config.model
    m.hidden_size, m.num_hidden_layers, m.num_attention_heads = 32, 2, 4
    m.intermediate_size, m.max_position_embeddings = 64, 66
    m.vocab_multiple = 128                       # 1000 ids -> 1024 rows: 24 padded
    m.init_from = str(tmp_path / "hf")
    config.train.seq_len, config.train.batch_size = 32, 8
    config.data.path = str(prepared_corpus[0])
    pretrain(config, tmp_path / "run", stop_after=0)   # saves step 0 and stops

    state, model_cfg, _, _, step = weights.load_workdir_state(tmp_path / "run")
    assert step == 0 and model_cfg.vocab_size == 1024
    padded = np.asarray(state.params["roberta"]["embeddings"]["word_embeddings"]["embedding"])
    assert padded.shape == (1024, 32) and not padded[VOCAB:].any()

    model, params, _, _ = weights.load_workdir_params(tmp_path / "run")
    want = _torch_params(reference)
    layer = params["roberta"]["encoder"]["layer"]["1"]
    got = {
        "roberta.embeddings.word_embeddings.weight":
            params["roberta"]["embeddings"]["word_embeddings"]["embedding"],
        "roberta.embeddings.position_embeddings.weight":
            params["roberta"]["embeddings"]["position_embeddings"]["embedding"],
        "roberta.encoder.layer.1.attention.self.query.weight":
            layer["attention"]["self"]["query"]["kernel"].T,
        "roberta.encoder.layer.1.output.LayerNorm.bias": layer["output"]["LayerNorm"]["bias"],
        "lm_head.dense.weight": params["lm_head"]["dense"]["kernel"].T,
        "lm_head.bias": params["lm_head"]["bias"],
    }
    assert model.config.vocab_size == VOCAB
    for name, value in got.items():
        np.testing.assert_array_equal(np.asarray(value), want[name], err_msg=name)

    # Another run may start from this one's workdir: the same weights, again at step 0.
    config.model.init_from = str(tmp_path / "run")
    pretrain(config, tmp_path / "again", stop_after=0)
    again, *_ = weights.load_workdir_state(tmp_path / "again")
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.params),
                 jax.device_get(state.params))


# =============================================================================== fine-tuning

def _classifier(tmp_path, num_labels=3, seed=0):
    reference = make_hf_model("sequence-classification", num_labels=num_labels, seed=seed)
    reference.save_pretrained(tmp_path / f"clf{num_labels}-{seed}")
    return reference, str(tmp_path / f"clf{num_labels}-{seed}")


def _head(params):
    return {"dense": np.asarray(params["classifier"]["dense"]["kernel"]),
            "out_proj": np.asarray(params["classifier"]["out_proj"]["kernel"])}


def test_fine_tuning_a_classifier_keeps_its_head_unless_reset_head(tmp_path):
    reference, path = _classifier(tmp_path)
    want = _torch_params(reference)
    vocab = reference.config.vocab_size
    _, kept = weights.for_finetuning(path, "sequence-classification", 3, None, 0, "", vocab,
                                     np.float32)
    np.testing.assert_array_equal(_head(kept)["out_proj"],
                                  want["classifier.out_proj.weight"].T)

    for seed in (0, 1):
        model, fresh = weights.for_finetuning(path, "sequence-classification", 3, None, seed, "",
                                              vocab, np.float32, reset_head=True)
        # The head is the one a new model of this seed starts with, not the checkpoint's ...
        new = weights.init_params(model, "sequence-classification", seed)
        for part, value in _head(fresh).items():
            np.testing.assert_array_equal(value, np.asarray(new["classifier"][part]["kernel"]))
        assert not np.allclose(_head(fresh)["out_proj"], want["classifier.out_proj.weight"].T)
        # ... on the checkpoint's encoder.
        np.testing.assert_array_equal(
            np.asarray(fresh["roberta"]["encoder"]["layer"]["0"]["attention"]["self"]["key"]
                       ["kernel"]), want["roberta.encoder.layer.0.attention.self.key.weight"].T)


def test_other_label_counts_need_reset_head_and_then_get_a_fresh_head_of_that_size(tmp_path):
    reference, path = _classifier(tmp_path)
    vocab = reference.config.vocab_size
    with pytest.raises(UserError, match="reset_head"):
        weights.for_finetuning(path, "sequence-classification", 5, None, 0, "", vocab,
                               np.float32)
    model, params = weights.for_finetuning(path, "sequence-classification", 5, None, 0, "",
                                           vocab, np.float32, reset_head=True)
    assert model.config.num_labels == 5 and _head(params)["out_proj"].shape[1] == 5


# =============================================================================== sources

def test_a_fine_tuning_workdir_loads_as_its_median_seeds_best_model(tmp_path):
    workdir = tmp_path / "ft"
    for seed, labels in ((1, 2), (2, 4), (3, 3)):
        make_hf_model("sequence-classification", num_labels=labels, seed=seed) \
            .save_pretrained(workdir / f"seed{seed}" / "best")
    with pytest.raises(UserError, match="3 seeds and no results.json"):
        weights.from_pretrained(workdir)
    (workdir / "results.json").write_text(json.dumps({"median_seed": 2}))
    assert weights.from_pretrained(workdir)[0].config.num_labels == 4
    assert weights.from_pretrained(workdir / "seed3")[0].config.num_labels == 3
    assert weights.tokenizer_source(workdir) == workdir / "seed2" / "best"


def _imports(module: str) -> set[str]:
    """The roberta_jax modules `module` imports, at module level or inside functions."""
    tree = ast.parse((ROOT / "roberta_jax" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "roberta_jax":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("roberta_jax."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("roberta_jax.")}
    return found


def test_the_trainer_depends_on_the_loader_and_not_the_other_way_round():
    users = ("train", "finetune", "export", "pretrained")
    for user in users:
        assert "weights" in _imports(user), user
    assert not set(users) & _imports("weights"), _imports("weights")
    assert not set(users) & _imports("train_state"), _imports("train_state")
