"""The optimizer: AdamW with RoBERTa's betas and eps, a warmup + decay schedule, a weight-decay
mask and optional clipping. Built from `config.train` (fine-tuning maps its settings to the same
names: finetune.recipe). Gradient accumulation is not here: the train step sums micro-batch
gradients itself (train.make_steps), so the optimizer sees one update per step."""

from __future__ import annotations

import flax
import optax

from roberta_jax.errors import UserError

SCHEDULES = ("linear", "cosine", "constant")
DECAY_MASKS = ("hf", "all")


def learning_rate_schedule(train) -> optax.Schedule:
    """Linear warmup from 0 to train.lr, then linear (or cosine) decay to train.end_lr at
    train.steps; "constant" holds the peak after warmup."""
    warmup = optax.linear_schedule(0.0, train.lr, max(1, train.warmup_steps))
    decay_steps = max(1, train.steps - train.warmup_steps)
    if train.schedule == "linear":
        decay = optax.linear_schedule(train.lr, train.end_lr, decay_steps)
    elif train.schedule == "cosine":
        decay = optax.cosine_decay_schedule(train.lr, decay_steps,
                                            alpha=train.end_lr / train.lr if train.lr else 0.0)
    elif train.schedule == "constant":
        decay = optax.constant_schedule(train.lr)
    else:
        raise UserError(f"unknown train.schedule {train.schedule!r}; use one of {SCHEDULES}")
    return optax.join_schedules([warmup, decay], [train.warmup_steps])


def decay_mask(params, convention: str):
    """True where weight decay applies.

    "hf": everything but biases and LayerNorm parameters (Hugging Face's examples);
    "all": every parameter, as fairseq does.
    """
    if convention not in DECAY_MASKS:
        raise UserError(f"unknown train.weight_decay_mask {convention!r}; use one of "
                        f"{DECAY_MASKS}")
    flat = flax.traverse_util.flatten_dict(params)
    if convention == "all":
        mask = {path: True for path in flat}
    else:
        mask = {path: not (path[-1] == "bias"
                           or any("LayerNorm" in p or "layer_norm" in p for p in path))
                for path in flat}
    return flax.traverse_util.unflatten_dict(mask)


def make_optimizer(train) -> optax.GradientTransformation:
    chain = []
    if train.clip_norm:
        chain.append(optax.clip_by_global_norm(train.clip_norm))
    chain.append(optax.adamw(learning_rate_schedule(train), b1=train.b1, b2=train.b2,
                             eps=train.eps, weight_decay=train.weight_decay,
                             mask=lambda p: decay_mask(p, train.weight_decay_mask)))
    return optax.chain(*chain)
