"""The encoder and every head are numerically Hugging Face's PyTorch RoBERTa."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HF_CONFIGS, batch_for, hf_outputs, make_hf_model, our_outputs

import roberta_jax as rj

TASKS = list(rj.TASKS)


@pytest.mark.parametrize("config_name", list(HF_CONFIGS))
@pytest.mark.parametrize("task", TASKS)
def test_every_head_matches_transformers_in_fp32(tmp_path, task, config_name):
    hf_model = make_hf_model(task, config_name)
    hf_model.save_pretrained(tmp_path)
    model, params = rj.from_pretrained(tmp_path, task=task)
    ids, mask = batch_for(task, config_name)
    want = hf_outputs(hf_model, task, ids, mask)
    got = our_outputs(model, params, task, ids, mask)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("task", ["masked-lm", "sequence-classification"])
def test_scanned_and_rematerialised_layers_compute_the_same(tmp_path, task):
    hf_model = make_hf_model(task)
    hf_model.save_pretrained(tmp_path)
    ids, mask = batch_for(task)
    want = hf_outputs(hf_model, task, ids, mask)
    for scan, remat in [(True, None), (True, "full"), (False, "dots_saveable")]:
        model, params = rj.from_pretrained(tmp_path, task=task, scan_layers=scan,
                                           remat_policy=remat)
        got = our_outputs(model, params, task, ids, mask)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("task", ["masked-lm", "question-answering", "multiple-choice"])
def test_attention_through_jax_dot_product_attention_matches_transformers(tmp_path, task):
    import jax
    hf_model = make_hf_model(task)
    hf_model.save_pretrained(tmp_path)
    ids, mask = batch_for(task)
    want = hf_outputs(hf_model, task, ids, mask)
    model, params = rj.from_pretrained(tmp_path, task=task)
    model = model.clone(config=model.config.replace(attention_implementation="jax"))
    got = our_outputs(model, params, task, ids, mask)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0)
    # Training with attention dropout needs the probabilities: it falls back to the eager path,
    # so with the same dropout key it drops exactly what the eager model drops.
    eager = model.clone(config=model.config.replace(attention_implementation="eager"))

    def training_outputs(m):
        out = m.apply({"params": params}, ids, attention_mask=mask, deterministic=False,
                      rngs={"dropout": jax.random.key(0)})
        return {name: np.asarray(getattr(out, name)) for name in want}

    fallback, reference = training_outputs(model), training_outputs(eager)
    for name in want:
        assert not np.allclose(fallback[name], got[name], atol=1e-3), name  # dropout is on
        np.testing.assert_allclose(fallback[name], reference[name], atol=1e-6, rtol=0,
                                   err_msg=name)


def test_explicit_position_ids_are_used_as_given(tmp_path):
    torch = pytest.importorskip("torch")
    hf_model = make_hf_model("base")
    hf_model.save_pretrained(tmp_path)
    model, params = rj.from_pretrained(tmp_path, task="base")
    ids, mask = batch_for("base")
    positions = np.tile(np.arange(ids.shape[1])[::-1] + 2, (ids.shape[0], 1))
    with torch.no_grad():
        want = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        position_ids=torch.tensor(positions)).last_hidden_state.numpy()
    got = model.apply({"params": params}, ids, attention_mask=mask, position_ids=positions)
    np.testing.assert_allclose(np.asarray(got.last_hidden_state), want, atol=1e-5, rtol=0)


def test_masked_lm_on_selected_positions_equals_full_logits_there(tmp_path):
    make_hf_model("masked-lm").save_pretrained(tmp_path)
    model, params = rj.from_pretrained(tmp_path)
    ids, mask = batch_for("masked-lm")
    positions = np.array([[1, 3], [2, 2], [0, 1]], np.int32)
    full = model.apply({"params": params}, ids, attention_mask=mask).logits
    some = model.apply({"params": params}, ids, attention_mask=mask,
                       masked_positions=positions).logits
    np.testing.assert_allclose(np.asarray(some),
                               np.take_along_axis(np.asarray(full), positions[..., None], 1),
                               atol=1e-6)


# Observed max abs difference to fp32: <= 0.033 on outputs of magnitude up to ~4.6 (about 1%).
BF16_TOLERANCE = 0.08


@pytest.mark.parametrize("task", TASKS)
def test_bf16_compute_runs_every_head_and_stays_close_to_fp32(tmp_path, task):
    make_hf_model(task).save_pretrained(tmp_path)
    ids, mask = batch_for(task)
    fp32_model, params = rj.from_pretrained(tmp_path, task=task)
    bf16_model, bf16_params = rj.from_pretrained(tmp_path, task=task, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in __import__("jax").tree.leaves(bf16_params))
    want = our_outputs(fp32_model, params, task, ids, mask)
    out = bf16_model.apply({"params": bf16_params}, ids, attention_mask=mask)
    for name, value in want.items():
        got = getattr(out, name)
        assert got.dtype == jnp.bfloat16, name
        diff = np.max(np.abs(np.asarray(got, np.float32) - value))
        assert diff < BF16_TOLERANCE, (name, diff)


def test_dropout_is_active_only_when_not_deterministic(tmp_path):
    import jax
    make_hf_model("sequence-classification").save_pretrained(tmp_path)
    model, params = rj.from_pretrained(tmp_path)
    ids, mask = batch_for("sequence-classification")
    a = model.apply({"params": params}, ids, attention_mask=mask, deterministic=False,
                    rngs={"dropout": jax.random.key(1)}).logits
    b = model.apply({"params": params}, ids, attention_mask=mask, deterministic=False,
                    rngs={"dropout": jax.random.key(2)}).logits
    c = model.apply({"params": params}, ids, attention_mask=mask).logits
    d = model.apply({"params": params}, ids, attention_mask=mask).logits
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(c, d)


def test_gelu_gradient_matches_torch_and_keeps_the_input_dtype():
    import jax
    import torch

    from roberta_jax.model import gelu
    x = np.linspace(-9.0, 9.0, 4001, dtype=np.float32)
    ours = jax.grad(lambda v: gelu(v).sum())(jnp.asarray(x))
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.gelu(t).sum().backward()
    np.testing.assert_allclose(np.asarray(ours), t.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(gelu(jnp.asarray(x))),
                               torch.nn.functional.gelu(torch.tensor(x)).numpy(), atol=1e-6)
    half = jax.grad(lambda v: gelu(v).astype(jnp.float32).sum())(jnp.asarray(x, jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), t.grad.numpy(), atol=2e-2)


def test_dropout_drops_at_its_rate_and_rescales_what_it_keeps():
    import jax

    from roberta_jax.model import Dropout
    ones = jnp.ones((16, 12, 64, 63))  # an odd last axis: two elements per random word
    out = np.asarray(Dropout(0.1).apply({}, ones, deterministic=False,
                                        rngs={"dropout": jax.random.key(3)}))
    assert out.shape == ones.shape
    assert abs((out == 0).mean() - 0.1) < 0.003
    np.testing.assert_allclose(out[out != 0], 1 / 0.9, rtol=1e-6)
    again = Dropout(0.1).apply({}, ones, deterministic=False, rngs={"dropout": jax.random.key(3)})
    other = Dropout(0.1).apply({}, ones, deterministic=False, rngs={"dropout": jax.random.key(4)})
    assert np.array_equal(out, np.asarray(again)) and not np.array_equal(out, np.asarray(other))
    # The two halves of a word are independent: neighbours are dropped together at rate^2.
    pairs = (out[..., 0:62:2] == 0) & (out[..., 1:63:2] == 0)
    assert abs(pairs.mean() - 0.01) < 0.002
    assert Dropout(0.1).apply({}, ones, deterministic=True) is ones
    assert not np.asarray(Dropout(1.0).apply({}, ones, deterministic=False)).any()


def test_dropout_bits_are_fair_and_independent_across_positions_and_keys():
    import jax

    from roberta_jax.model import _hashed_bits
    words = np.asarray(_hashed_bits(jax.random.key(0), (64, 32), 256))
    halves = words.view(np.uint16).astype(np.int64).reshape(-1)
    for byte in (halves >> 8, halves & 255):  # chi-square, 255 degrees of freedom: mean 255
        counts = np.bincount(byte, minlength=256)
        expected = halves.size / 256
        assert ((counts - expected) ** 2 / expected).sum() < 360  # p < 1e-4 if fair
    drops = (words.view(np.uint16) < 6554).reshape(64, 32, 512)  # rate 0.1
    for axis in range(3):  # the rate holds along every axis
        assert np.abs(drops.mean(axis=tuple(a for a in range(3) if a != axis)) - 0.1).max() < 0.03
    for a, b in ((drops[:, :, 1:-1:2], drops[:, :, 2::2]),    # neighbours in different words
                 (drops[:, :-1], drops[:, 1:]), (drops[:-1], drops[1:])):  # next row, next batch
        assert abs((a & b).mean() - 0.01) < 0.002
    others = [np.asarray(_hashed_bits(key, (64, 32), 256)).view(np.uint16) < 6554
              for key in (jax.random.key(1), jax.random.fold_in(jax.random.key(0), 1))]
    for other in others:  # another key, or the next one folded in (as each site's): unrelated
        assert abs((drops & other.reshape(drops.shape)).mean() - 0.01) < 0.002
