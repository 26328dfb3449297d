"""Conversion: Hugging Face <-> roberta_jax is exact, fairseq checkpoints convert and match, and
the re-exported directories load in transformers with the same outputs."""

import argparse
import json
from collections import OrderedDict

import numpy as np
import pytest
from safetensors.numpy import load_file

import roberta_jax as rj
from conftest import HF_CLASSES, batch_for, hf_outputs, make_hf_model, our_outputs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def assert_same_tensors(dir_a, dir_b):
    a, b = load_file(dir_a / "model.safetensors"), load_file(dir_b / "model.safetensors")
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("task", list(HF_CLASSES))
def test_hf_round_trip_is_bitwise_and_loads_in_transformers(tmp_path, task):
    hf_model = make_hf_model(task)
    hf_model.save_pretrained(tmp_path / "hf")
    rj.convert(tmp_path / "hf", tmp_path / "ours")
    assert_same_tensors(tmp_path / "hf", tmp_path / "ours")

    reloaded = getattr(transformers, HF_CLASSES[task]).from_pretrained(tmp_path / "ours").eval()
    ids, mask = batch_for(task)
    want, got = hf_outputs(hf_model, task, ids, mask), hf_outputs(reloaded, task, ids, mask)
    for name in want:  # same tensors; torch's kernels may still differ in the last bit
        np.testing.assert_allclose(got[name], want[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("task", ["masked-lm", "multiple-choice"])
def test_save_pretrained_after_from_pretrained_gives_the_same_model(tmp_path, task):
    hf_model = make_hf_model(task)
    hf_model.save_pretrained(tmp_path / "hf")
    model, params = rj.from_pretrained(tmp_path / "hf", scan_layers=True)
    rj.save_pretrained(model, params, tmp_path / "out")
    assert_same_tensors(tmp_path / "hf", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [HF_CLASSES[task]]


def test_pytorch_bin_and_sharded_safetensors_read_like_model_safetensors(tmp_path):
    hf_model = make_hf_model("masked-lm")
    hf_model.save_pretrained(tmp_path / "single")
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    # A pytorch_model.bin directory, as older transformers wrote them.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ids, mask = batch_for("masked-lm")
    want = hf_outputs(hf_model, "masked-lm", ids, mask)["logits"]
    for name in ("single", "sharded", "bin"):
        model, params = rj.from_pretrained(tmp_path / name)
        got = our_outputs(model, params, "masked-lm", ids, mask)["logits"]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=name)


def test_a_head_the_checkpoint_lacks_is_initialised_and_the_encoder_kept(tmp_path, caplog):
    hf_model = make_hf_model("masked-lm")
    hf_model.save_pretrained(tmp_path)
    model, params = rj.from_pretrained(tmp_path, task="sequence-classification", num_labels=5)
    assert "newly initialised" in caplog.text and "classifier" in caplog.text
    assert params["classifier"]["out_proj"]["kernel"].shape == (24, 5)
    ids, mask = batch_for("base")
    hidden = model.apply({"params": params}, ids, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        want = hf_model.roberta(input_ids=torch.tensor(ids),
                                attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(hidden), want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------- fairseq

def hf_to_fairseq(state, old_style):
    """DESIGN A3 run backwards: Hugging Face names -> fairseq names (new or old style)."""
    top = "decoder." if old_style else "encoder."
    se = top + "sentence_encoder."
    out = OrderedDict()
    layer_names = {
        "attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
        "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
        "attention.output.LayerNorm": "self_attn_layer_norm", "intermediate.dense": "fc1",
        "output.dense": "fc2", "output.LayerNorm": "final_layer_norm"}
    for key, value in state.items():
        if key.startswith("roberta.encoder.layer."):
            i, rest = key[len("roberta.encoder.layer."):].split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            out[f"{se}layers.{i}.{layer_names[module]}.{leaf}"] = value
        elif key == "roberta.embeddings.word_embeddings.weight":
            out[se + "embed_tokens.weight"] = value
            out[top + "lm_head.weight"] = value
        elif key == "roberta.embeddings.position_embeddings.weight":
            out[se + "embed_positions.weight"] = value
        elif key.startswith("roberta.embeddings.LayerNorm."):
            norm = "emb_layer_norm." if old_style else "layernorm_embedding."
            out[se + norm + key.rsplit(".", 1)[1]] = value
        elif key.startswith("lm_head.") and not key.startswith("lm_head.decoder."):
            out[top + key] = value  # the decoder is tied: fairseq stores it as lm_head.weight
        elif key.startswith("classifier."):
            out["classification_heads.sentence_classification_head." + key[11:]] = value
    if old_style:  # fuse q, k, v into in_proj as fairseq did before 2020
        for i in range(100):
            p = f"{se}layers.{i}.self_attn."
            if p + "q_proj.weight" not in out:
                break
            for leaf in ("weight", "bias"):
                out[p + "in_proj_" + leaf] = torch.cat(
                    [out.pop(p + f"{n}_proj.{leaf}") for n in "qkv"])
    return out


def write_fairseq(tmp_path, hf_model, old_style, with_head=False):
    state = {k: v.clone() for k, v in hf_model.state_dict().items()}
    fs_state = hf_to_fairseq(state, old_style)
    if old_style:
        fs_state["decoder.sentence_encoder.version"] = torch.tensor([2.0])
    args = argparse.Namespace(arch="roberta_base", encoder_layers=2, encoder_embed_dim=24,
                              encoder_attention_heads=3, activation_fn="gelu", dropout=0.1,
                              attention_dropout=0.1, max_positions=38)
    folder = tmp_path / ("old" if old_style else "new")
    folder.mkdir()
    torch.save({"model": fs_state, "args": args, "extra_state": {"epoch": 3}},
               folder / "model.pt", _use_new_zipfile_serialization=not old_style)
    # A frequency-ordered dict.txt: symbols are GPT-2 token ids, not 0..n in order.
    vocab = hf_model.config.vocab_size
    gpt2_ids = np.random.default_rng(0).permutation(1000)[:vocab - 5]
    lines = [f"{g} {1000 - n}" for n, g in enumerate(gpt2_ids)]
    (folder / "dict.txt").write_text("\n".join(lines) + "\n")
    encoder = {f"tok{g}": int(g) for g in range(1000)}
    (folder / "encoder.json").write_text(json.dumps(encoder))
    (folder / "vocab.bpe").write_text("#version: 0.2\nt o\n")
    return folder, gpt2_ids


@pytest.mark.parametrize("old_style", [False, True], ids=["new-keys", "old-keys"])
def test_fairseq_checkpoint_converts_and_matches(tmp_path, old_style):
    hf_model = make_hf_model("masked-lm", max_position_embeddings=38)
    with torch.no_grad():  # fairseq has no token types: its export carries a zero row
        hf_model.roberta.embeddings.token_type_embeddings.weight.zero_()
    folder, gpt2_ids = write_fairseq(tmp_path, hf_model, old_style)

    ids, mask = batch_for("masked-lm")
    want = hf_outputs(hf_model, "masked-lm", ids, mask)["logits"]
    model, params = rj.from_pretrained(folder / "model.pt")
    assert model.config.num_attention_heads == 3
    got = our_outputs(model, params, "masked-lm", ids, mask)["logits"]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

    rj.convert(folder, tmp_path / "hf")
    reloaded = transformers.RobertaForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    np.testing.assert_allclose(hf_outputs(reloaded, "masked-lm", ids, mask)["logits"], want,
                               atol=1e-6, rtol=0)
    vocab = json.loads((tmp_path / "hf" / "vocab.json").read_text())
    assert vocab["<s>"] == 0 and vocab["<pad>"] == 1 and vocab["<mask>"] == 98
    # fairseq id 4 + n is dict.txt line n, whose symbol is a GPT-2 id.
    assert vocab[f"tok{gpt2_ids[0]}"] == 4 and vocab[f"tok{gpt2_ids[10]}"] == 14


def test_fairseq_classification_head_converts(tmp_path):
    hf_model = make_hf_model("sequence-classification", num_labels=3)
    with torch.no_grad():
        hf_model.roberta.embeddings.token_type_embeddings.weight.zero_()
    state = {k: v.clone() for k, v in hf_model.state_dict().items()}
    # fairseq classification checkpoints also carry the LM head; give them one.
    h = hf_model.config.hidden_size
    state.update({"lm_head.dense.weight": torch.randn(h, h), "lm_head.dense.bias": torch.randn(h),
                  "lm_head.layer_norm.weight": torch.randn(h),
                  "lm_head.layer_norm.bias": torch.randn(h),
                  "lm_head.bias": torch.randn(hf_model.config.vocab_size)})
    fs = hf_to_fairseq(state, old_style=False)
    torch.save({"model": fs, "args": argparse.Namespace(encoder_attention_heads=3)},
               tmp_path / "model.pt")
    model, params = rj.from_pretrained(tmp_path / "model.pt", task="sequence-classification")
    ids, mask = batch_for("sequence-classification")
    np.testing.assert_allclose(
        our_outputs(model, params, "sequence-classification", ids, mask)["logits"],
        hf_outputs(hf_model, "sequence-classification", ids, mask)["logits"], atol=1e-5, rtol=0)


def test_dict_txt_of_another_model_is_refused(tmp_path):
    hf_model = make_hf_model("masked-lm")
    folder, _ = write_fairseq(tmp_path, hf_model, old_style=False)
    with open(folder / "dict.txt", "a") as f:
        f.write("12345 1\n")
    with pytest.raises(rj.UserError, match="dict.txt.*belongs to another model"):
        rj.from_pretrained(folder)
