"""Conversion: Hugging Face <-> roberta_jax is exact, fairseq checkpoints convert and match, and
the re-exported directories load in transformers with the same outputs."""

import argparse
import json
from collections import OrderedDict

import numpy as np
import pytest
from conftest import HF_CLASSES, batch_for, hf_outputs, make_hf_model, our_outputs
from safetensors.numpy import load_file

import roberta_jax as rj

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

# fairseq's RobertaModel module tree, written out from fairseq's modules (not from our
# converter, nor from docs shared with it), each entry naming the transformers module that holds
# the same tensor. fairseq/models/roberta/model.py: RobertaModel.encoder (RobertaEncoder; the
# 2019 releases call it `decoder`) has `sentence_encoder` (TransformerEncoder) and `lm_head`
# (RobertaLMHead), and RobertaModel has `classification_heads` (RobertaClassificationHead).
FAIRSEQ_EMBEDDINGS = {  # TransformerEncoder's own modules -> RobertaEmbeddings
    "embed_tokens": "word_embeddings",
    "embed_positions": "position_embeddings",    # LearnedPositionalEmbedding, padding_idx 1
    "layernorm_embedding": "LayerNorm",          # 2019 releases: "emb_layer_norm"
}
FAIRSEQ_LAYER = {  # TransformerEncoderLayer -> RobertaLayer
    "self_attn.q_proj": "attention.self.query",  # 2019 releases: one fused self_attn.in_proj_*
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "output.LayerNorm",
}
FAIRSEQ_LM_HEAD = {"dense": "dense", "layer_norm": "layer_norm"}  # RobertaLMHead -> lm_head
FAIRSEQ_CLASSIFIER = {"dense": "dense", "out_proj": "out_proj"}  # -> RobertaClassificationHead


def _module(root, dotted):
    for name in dotted.split("."):
        root = getattr(root, name)
    return root


def fairseq_state(hf_mlm, old_style=False, classifier=None,
                  head_name="sentence_classification_head"):
    """The state dict fairseq's RobertaModel would save for the weights of `hf_mlm` (a
    transformers RobertaForMaskedLM), plus `classifier`'s head (a RobertaClassificationHead)."""
    top = "decoder." if old_style else "encoder."
    se = top + "sentence_encoder."
    embeddings = hf_mlm.roberta.embeddings
    state = OrderedDict()

    def linear_or_norm(prefix, module):
        state[prefix + "weight"] = module.weight.detach().clone()
        state[prefix + "bias"] = module.bias.detach().clone()

    for fairseq_name, hf_name in FAIRSEQ_EMBEDDINGS.items():
        if old_style and fairseq_name == "layernorm_embedding":
            fairseq_name = "emb_layer_norm"
        module = getattr(embeddings, hf_name)
        if fairseq_name.startswith("embed_"):
            state[f"{se}{fairseq_name}.weight"] = module.weight.detach().clone()
        else:
            linear_or_norm(f"{se}{fairseq_name}.", module)
    for i, layer in enumerate(hf_mlm.roberta.encoder.layer):
        for fairseq_name, hf_name in FAIRSEQ_LAYER.items():
            linear_or_norm(f"{se}layers.{i}.{fairseq_name}.", _module(layer, hf_name))
        if old_style:  # MultiheadAttention before 2020: q, k, v stacked in that order
            for leaf in ("weight", "bias"):
                state[f"{se}layers.{i}.self_attn.in_proj_{leaf}"] = torch.cat(
                    [state.pop(f"{se}layers.{i}.self_attn.{n}_proj.{leaf}") for n in "qkv"])
    if not old_style:
        state[se + "version"] = torch.tensor([3.0])  # TransformerEncoder's registered buffer
    for fairseq_name, hf_name in FAIRSEQ_LM_HEAD.items():
        linear_or_norm(f"{top}lm_head.{fairseq_name}.", getattr(hf_mlm.lm_head, hf_name))
    # RobertaLMHead.weight is the embedding matrix itself (tied); its bias is its own.
    state[top + "lm_head.weight"] = embeddings.word_embeddings.weight.detach().clone()
    state[top + "lm_head.bias"] = hf_mlm.lm_head.bias.detach().clone()
    if classifier is not None:
        for fairseq_name, hf_name in FAIRSEQ_CLASSIFIER.items():
            linear_or_norm(f"classification_heads.{head_name}.{fairseq_name}.",
                           getattr(classifier, hf_name))
    return state


def test_the_fairseq_fixture_uses_every_transformers_tensor_once():
    """The table above is complete: every weight of the transformers model lands in exactly one
    fairseq entry (token types excepted: fairseq has none; the decoder is tied to embedding and
    bias)."""
    hf_model = make_hf_model("masked-lm")
    state = fairseq_state(hf_model)
    wanted = {name: value for name, value in hf_model.state_dict().items()
              if "token_type" not in name and not name.startswith("lm_head.decoder.")}
    # fairseq's extra entries: lm_head.weight (the embedding again) and the version buffer.
    assert len(state) == len(wanted) + 2
    for name, value in wanted.items():
        assert any(v.shape == value.shape and torch.equal(v, value) for v in state.values()), name


def write_fairseq(tmp_path, hf_model, old_style, with_head=False):
    fs_state = fairseq_state(hf_model, old_style)
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
    # fairseq classification checkpoints also carry the LM head: one encoder, both heads.
    hf_model = make_hf_model("sequence-classification", num_labels=3)
    hf_mlm = make_hf_model("masked-lm", seed=1)
    with torch.no_grad():
        hf_model.roberta.embeddings.token_type_embeddings.weight.zero_()
        hf_mlm.roberta.load_state_dict(hf_model.roberta.state_dict())
    fs = fairseq_state(hf_mlm, classifier=hf_model.classifier, head_name="mnli")
    torch.save({"model": fs, "args": argparse.Namespace(encoder_attention_heads=3)},
               tmp_path / "model.pt")
    model, params = rj.from_pretrained(tmp_path / "model.pt", task="sequence-classification")
    ids, mask = batch_for("sequence-classification")
    np.testing.assert_allclose(
        our_outputs(model, params, "sequence-classification", ids, mask)["logits"],
        hf_outputs(hf_model, "sequence-classification", ids, mask)["logits"], atol=1e-5, rtol=0)
    model, params = rj.from_pretrained(tmp_path / "model.pt", task="masked-lm")
    np.testing.assert_allclose(our_outputs(model, params, "masked-lm", ids, mask)["logits"],
                               hf_outputs(hf_mlm, "masked-lm", ids, mask)["logits"],
                               atol=1e-5, rtol=0)


def test_dict_txt_of_another_model_is_refused(tmp_path):
    hf_model = make_hf_model("masked-lm")
    folder, _ = write_fairseq(tmp_path, hf_model, old_style=False)
    with open(folder / "dict.txt", "a") as f:
        f.write("12345 1\n")
    with pytest.raises(rj.UserError, match="dict.txt.*belongs to another model"):
        rj.from_pretrained(folder)
