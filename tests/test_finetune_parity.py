"""Trajectory parity: from the same random weights, 20 fine-tuning steps here (dropout off, same
batches, AdamW with the same warmup + linear decay, the same weight-decay mask) give the losses
of an equivalent `transformers` PyTorch loop, for every fine-tuning head."""

import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import torch_training_losses  # noqa: E402

from roberta_jax import task_kinds, tasks  # noqa: E402
from roberta_jax.data.rows import IGNORED_LABEL  # noqa: E402
from roberta_jax.finetune import make_steps, recipe  # noqa: E402
from roberta_jax.optim import make_optimizer  # noqa: E402
from roberta_jax.weights import for_finetuning  # noqa: E402

STEPS, BATCH, LENGTH, CHOICES, VOCAB = 20, 4, 12, 3, 96
HF_CLASSES = {"classification": "RobertaForSequenceClassification",
              "tokens": "RobertaForTokenClassification",
              "qa": "RobertaForQuestionAnswering",
              "choice": "RobertaForMultipleChoice"}


def _finetune_config(**changes):
    config = ml_collections.ConfigDict(dict(
        lr=3e-4, warmup_ratio=0.1, b2=0.98, eps=1e-6, weight_decay=0.1, weight_decay_mask="hf",
        clip_norm=0.0, tfds_data_dir="", stride=4, max_query_length=4, n_best=5,
        max_answer_length=5, null_threshold=0.0))
    config.update(changes)
    return config


def _batches(kind: str, num_labels: int):
    """STEPS batches with padded rows, in both frameworks' layout: four fixed batches in turn,
    so that the losses fall as the model fits them."""
    rng = np.random.default_rng(0)
    shape = (BATCH, CHOICES, LENGTH) if kind == "choice" else (BATCH, LENGTH)
    out = []
    for _ in range(4):
        lengths = rng.integers(5, LENGTH + 1, shape[:-1])
        mask = (np.arange(LENGTH) < lengths[..., None]).astype(np.int32)
        ids = np.where(mask, rng.integers(5, VOCAB, shape), 1).astype(np.int32)
        ids[..., 0] = 0
        batch = {"input_ids": ids, "attention_mask": mask,
                 "weights": np.ones(BATCH, np.float32)}
        if kind == "classification":
            batch["labels"] = rng.integers(0, num_labels, BATCH).astype(np.int32)
        elif kind == "tokens":
            labels = rng.integers(0, num_labels, shape).astype(np.int32)
            labels[(mask == 0) | (rng.random(shape) < 0.3)] = IGNORED_LABEL  # sub-tokens
            labels[:, 0] = IGNORED_LABEL
            batch["labels"] = labels
        elif kind == "qa":
            starts = rng.integers(0, 5, BATCH).astype(np.int32)
            batch["start_positions"] = starts
            batch["end_positions"] = (starts + rng.integers(0, 3, BATCH)).astype(np.int32)
        else:
            batch["labels"] = rng.integers(0, CHOICES, BATCH).astype(np.int32)
        out.append(batch)
    return [out[i % len(out)] for i in range(STEPS)]


@pytest.mark.parametrize("kind", ["classification", "tokens", "qa", "choice"])
def test_twenty_steps_follow_the_transformers_loop(tmp_path, kind):
    import jax
    num_labels = {"classification": 3, "tokens": 5, "qa": 2, "choice": None}[kind]
    hf_config = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=LENGTH + 2, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=num_labels or 2)
    torch.manual_seed(0)
    reference = getattr(transformers, HF_CLASSES[kind])(hf_config)
    reference.save_pretrained(tmp_path)

    config = _finetune_config()
    task = tasks.Task("parity", kind, "unused")
    steps_kind = task_kinds.for_task(task, config)
    model, params = for_finetuning(str(tmp_path), steps_kind.head, num_labels, None, 0, "",
                                   VOCAB, np.float32)
    tx = make_optimizer(recipe(config, task, STEPS))
    train_step, _ = make_steps(model, tx, steps_kind)
    train_step = jax.jit(train_step)
    opt_state = tx.init(params)
    batches = _batches(kind, num_labels or CHOICES)
    ours = []
    for batch in batches:
        params, opt_state, loss = train_step(params, opt_state, batch, None)
        ours.append(float(loss))

    theirs, _ = torch_training_losses(
        reference, batches, lr=config.lr, warmup_steps=int(config.warmup_ratio * STEPS),
        steps=STEPS, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
        decay_mask=config.weight_decay_mask)
    assert theirs[-1] < theirs[0]  # the loop really trains
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
