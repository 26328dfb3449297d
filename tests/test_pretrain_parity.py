"""Trajectory parity for pretraining: from the same random weights, 20 steps of our real jitted
train step (train.make_steps: the gathered MLM head, the padded vocabulary, the weight-decay
mask, the warmup + linear decay schedule, gradient accumulation) give the losses of a
`transformers` PyTorch loop (RobertaForMaskedLM, torch AdamW, get_linear_schedule_with_warmup)
fed the very same rows, masks and labels, with dropout off."""

import flax.linen as nn
import jax
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from conftest import torch_training_losses  # noqa: E402

from roberta_jax import sharding as shd  # noqa: E402
from roberta_jax.data.masking import MaskingSpec, mask_batch  # noqa: E402
from roberta_jax.model import RobertaForMaskedLM  # noqa: E402
from roberta_jax.optim import make_optimizer  # noqa: E402
from roberta_jax.train import build_state, make_steps, model_config  # noqa: E402
from roberta_jax.train_config import default_config  # noqa: E402
from roberta_jax.weights import for_pretraining  # noqa: E402

STEPS, BATCH, LENGTH, VOCAB, WARMUP = 20, 8, 24, 99, 3
BOS, PAD, EOS, MASK = 0, 1, 2, VOCAB - 1


def _rows(rng):
    """FULL-SENTENCES-like rows: <s>, then documents each closed by </s>, padding at the end."""
    rows = np.full((BATCH, LENGTH), PAD, np.int32)
    rows[:, 0] = BOS
    for row in rows:
        end = rng.integers(LENGTH // 2, LENGTH + 1)
        row[1:end] = rng.integers(4, MASK, end - 1)
        row[rng.integers(2, end, 2)] = EOS
        row[end - 1] = EOS
    return rows


def _batches():
    """STEPS batches: four fixed sets of rows in turn (so the loss falls as the model fits them),
    each masked afresh at every step by our dynamic masking (<mask>, random and kept tokens)."""
    rng = np.random.default_rng(0)
    rows = [_rows(rng) for _ in range(4)]
    spec = MaskingSpec(vocab_size=VOCAB, special_ids=(BOS, PAD, EOS, MASK), mask_id=MASK,
                       pad_id=PAD, mask_prob=0.3)
    batches = []
    for step in range(STEPS):
        ids = rows[step % 4]
        batch = mask_batch(ids, step * BATCH + np.arange(BATCH), seed=0, spec=spec)
        batch["attention_mask"] = (ids != PAD).astype(np.int32)
        batches.append(batch)
    return batches


def _config(grad_accum, decay_mask):
    c = default_config()
    m = c.model
    m.hidden_size, m.num_hidden_layers, m.num_attention_heads = 24, 2, 3
    m.intermediate_size, m.max_position_embeddings = 37, LENGTH + 2
    m.hidden_dropout_prob = m.attention_probs_dropout_prob = 0.0
    m.dtype, m.vocab_multiple = "float32", 64           # 99 real ids, 128 rows
    t = c.train
    t.steps, t.batch_size, t.seq_len, t.warmup_steps = STEPS, BATCH, LENGTH, WARMUP
    t.lr, t.weight_decay, t.grad_accum, t.weight_decay_mask = 1e-2, 0.1, grad_accum, decay_mask
    c.mesh.data = 1
    return c


@pytest.mark.parametrize("grad_accum,decay_mask", [(1, "hf"), (4, "hf"), (4, "all")])
def test_twenty_pretraining_steps_follow_the_transformers_loop(tmp_path, grad_accum,
                                                               decay_mask):
    hf_config = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=37, max_position_embeddings=LENGTH + 2, type_vocab_size=1,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    import torch
    torch.manual_seed(0)
    reference = transformers.RobertaForMaskedLM(hf_config)
    reference.save_pretrained(tmp_path)

    config = _config(grad_accum, decay_mask)
    model_cfg = model_config(config, VOCAB)
    assert model_cfg.vocab_size == 128
    model = RobertaForMaskedLM(model_cfg, scan_layers=config.model.scan_layers)
    tx = make_optimizer(config.train)
    train_step, _ = make_steps(model, tx, config, real_vocab=VOCAB)
    batches = _batches()
    ours_keys = ("input_ids", "attention_mask", "masked_positions", "masked_labels",
                 "masked_weights")
    mesh = shd.make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        example = {k: v[:1] for k, v in batches[0].items()}
        init, _, shardings = build_state(config, mesh, model, tx, example)
        # The transformers weights, padded to our vocabulary, read as pretraining reads
        # --config.model.init_from (under the mesh).
        params = for_pretraining(str(tmp_path), model_cfg, config.model.scan_layers,
                                 shardings.params)
        state = init().replace(params=params, opt_state=tx.init(params))
        step = jax.jit(train_step)
        ours, our_rates = [], []
        for batch in batches:
            state, metrics = step(state, {k: batch[k] for k in ours_keys})
            ours.append(float(metrics["loss"]))
            our_rates.append(float(metrics["learning_rate"]))
            assert int(metrics["skipped_nonfinite"]) == 0

    theirs, their_rates = torch_training_losses(
        reference, [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                     "labels": b["labels"]} for b in batches],
        lr=config.train.lr, warmup_steps=WARMUP, steps=STEPS, b2=config.train.b2,
        eps=config.train.eps, weight_decay=config.train.weight_decay, decay_mask=decay_mask,
        grad_accum=grad_accum)
    # The warmup's first step has learning rate 0 on both sides (so it moves nothing), and the
    # whole schedule agrees.
    assert our_rates[0] == their_rates[0] == 0.0
    np.testing.assert_allclose(our_rates, their_rates, rtol=1e-6, atol=1e-12)
    assert np.mean(theirs[-4:]) < np.mean(theirs[:4]) - 0.1  # the loop really trains
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
