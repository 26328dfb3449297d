"""Fine-tuning for sentence (pair) classification and regression: GLUE and local files.

    task and data -> model (converted checkpoint, pretraining workdir, or scratch) -> for each
    seed: epochs of AdamW steps, evaluation every epoch, best model kept, test predictions
    -> the median over seeds of the best dev score, as the RoBERTa paper reports

Run it with `roberta-jax finetune --config configs/glue.py --config.task=sst2
--config.init=PATH --workdir W`; re-running resumes each seed from its last finished epoch.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from roberta_jax import metrics as metric_fns
from roberta_jax import sharding as shd
from roberta_jax import tasks
from roberta_jax.checkpoint import Checkpointer
from roberta_jax.config import PRESETS
from roberta_jax.data import classification as cls_data
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.errors import UserError
from roberta_jax.model import RobertaForSequenceClassification
from roberta_jax.optim import make_optimizer

log = logging.getLogger("roberta_jax")


# =============================================================================== model

def load_model(init: str, num_labels: int, labels: list[str] | None, seed: int, preset: str,
               vocab_size: int, dtype):
    """(model, params) for sequence classification from a checkpoint (Hugging Face, fairseq, an
    export), a pretraining workdir (its encoder; a new head), or from scratch (`preset`)."""
    from roberta_jax.pretrained import from_pretrained
    path = pathlib.Path(init) if init else None
    encoder = None
    if path is not None and (path / "checkpoints").is_dir() and (path / "config.json").is_file():
        from roberta_jax.export import load_workdir_params
        pretrained, pretrained_params, _, step = load_workdir_params(path)
        config, encoder = pretrained.config, pretrained_params["roberta"]
        log.info("encoder from step %d of %s; new classification head", step, path)
    elif path is not None:
        model, params = from_pretrained(path, "sequence-classification", num_labels=num_labels,
                                        dtype=dtype, seed=seed)
        config = model.config.replace(labels=tuple(labels)) if labels else model.config
        return RobertaForSequenceClassification(config, dtype=dtype), params
    else:
        if preset not in PRESETS:
            raise UserError(f"unknown model preset {preset!r}; one of {', '.join(PRESETS)}")
        config = PRESETS[preset].replace(vocab_size=vocab_size)
    config = config.replace(num_labels=num_labels)
    if labels:
        config = config.replace(labels=tuple(labels))
    model = RobertaForSequenceClassification(config, dtype=dtype)
    params = nn.meta.unbox(model.init(jax.random.key(seed),
                                      jnp.zeros((1, 4), jnp.int32))["params"])
    if encoder is not None:
        params["roberta"] = jax.tree.map(jnp.asarray, encoder)
    return model, params


# =============================================================================== steps

def make_steps(model, tx, regression: bool):
    def loss_fn(params, batch, key):
        logits = model.apply({"params": params}, batch["input_ids"],
                             attention_mask=batch["attention_mask"], deterministic=key is None,
                             rngs=None if key is None else {"dropout": key}).logits
        logits = logits.astype(jnp.float32)
        w = batch["weights"]
        if regression:
            per_example = (logits[:, 0] - batch["labels"]) ** 2
        else:
            per_example = -jnp.take_along_axis(jax.nn.log_softmax(logits),
                                               batch["labels"][:, None], 1)[:, 0]
        return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0)

    def train_step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def predict_step(params, batch):
        logits = model.apply({"params": params}, batch["input_ids"],
                             attention_mask=batch["attention_mask"]).logits
        return logits.astype(jnp.float32)

    return loss_fn, train_step, predict_step


def _recipe(config, task: tasks.Task, steps: int) -> ml_collections.ConfigDict:
    """The optimizer settings in pretraining's vocabulary, so optim.py serves both."""
    lr = config.lr or task.lr
    return ml_collections.ConfigDict(dict(
        lr=lr, end_lr=0.0, steps=steps, warmup_steps=int(config.warmup_ratio * steps),
        schedule="linear", b1=0.9, b2=config.b2, eps=config.eps,
        weight_decay=config.weight_decay, weight_decay_mask=config.weight_decay_mask,
        clip_norm=config.clip_norm))


# =============================================================================== driver

def finetune(config, workdir) -> dict:
    workdir = pathlib.Path(workdir)
    task = tasks.resolve(config)
    tokenizer = load_tokenizer(_tokenizer_path(config))
    def read(split, names):
        source, within = task.where(split)
        return cls_data.read_examples(source, task.text_field, task.pair_field,
                                      task.label_field, label_names=names,
                                      regression=task.regression, split=within,
                                      tfds_data_dir=config.tfds_data_dir or None)

    train, label_names = read("train", list(task.labels) if task.labels else None)
    if train.labels is None:
        raise UserError(f"{task.source}: the training data has no {task.label_field!r} labels")
    num_labels = 1 if task.regression else len(label_names)
    evals = {split: read(split, label_names)[0] for split in task.eval_splits}
    tests = {split: (read(split, label_names)[0], out) for split, out in task.test_splits}
    dtype = jnp.dtype(config.dtype)

    results = {}
    for seed in config.seeds:
        results[str(seed)] = _train_one_seed(config, task, tokenizer, train, evals, tests,
                                        label_names, num_labels, seed, dtype,
                                        workdir / f"seed{seed}")
    primary = f"{task.eval_splits[0]}_{task.metrics[0]}" if task.eval_splits else None
    summary = {"task": task.name, "seeds": list(config.seeds), "per_seed": results}
    if primary:
        scores = [results[str(s)]["best"][primary] for s in config.seeds]
        summary["median"] = {primary: float(np.median(scores))}
        best_seed = config.seeds[int(np.argsort(scores)[len(scores) // 2])]
        summary["median_seed"] = best_seed
        print(f"{task.name}: median {primary} over {len(scores)} seed(s) = "
              f"{np.median(scores):.4f}  (per seed: "
              + ", ".join(f"{s}: {v:.4f}" for s, v in zip(config.seeds, scores)) + ")")
    (workdir / "results.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def _tokenizer_path(config) -> str:
    if config.tokenizer:
        return config.tokenizer
    init = pathlib.Path(config.init) if config.init else None
    if init is not None and (init / "config.json").is_file() and (init / "checkpoints").is_dir():
        saved = json.loads((init / "config.json").read_text())
        return str(pathlib.Path(saved["data"]["path"]) / "tokenizer")
    if init is None:
        raise UserError("set --config.tokenizer (or --config.init to a model with one)")
    return str(init.parent if init.is_file() else init)


def _train_one_seed(config, task, tokenizer, train, evals, tests, label_names, num_labels,
                    seed, dtype, out: pathlib.Path) -> dict:
    model, params = load_model(config.init, num_labels,
                               None if task.regression else label_names, seed,
                               config.model_preset, tokenizer.vocab_size, dtype)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's "
                        f"vocabulary has {model.config.vocab_size}; they do not belong together")
    max_length = min(config.max_length, model.config.max_sequence_length)
    encoded = cls_data.encode(tokenizer, train, max_length)
    batch_size = config.batch_size or task.batch_size
    steps_per_epoch = max(1, len(encoded) // batch_size)
    total_steps = steps_per_epoch * config.epochs
    tx = make_optimizer(_recipe(config, task, total_steps))
    _, train_step, predict_step = make_steps(model, tx, task.regression)

    mesh = shd.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
    if batch_size % mesh.size:
        raise UserError(f"batch size {batch_size} is not divisible by the {mesh.size} devices")
    params = jax.device_put(params, shd.replicated(mesh))
    opt_state = jax.device_put(tx.init(params), shd.replicated(mesh))
    jit_train = jax.jit(train_step, donate_argnums=(0, 1))
    jit_predict = jax.jit(predict_step)

    checkpointer = Checkpointer(out / "checkpoints", keep=1, async_save=False)
    state = {"params": params, "opt_state": opt_state}
    first_epoch, best, history = 0, {}, []
    restored = checkpointer.restore(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))
    if restored is not None:
        state, meta, first_epoch = restored
        best, history = meta["best"], meta["history"]
        log.info("seed %d: resumed after epoch %d", seed, first_epoch)
    params, opt_state = state["params"], state["opt_state"]
    primary = f"{task.eval_splits[0]}_{task.metrics[0]}" if task.eval_splits else None
    base_key = jax.random.key(seed)
    buckets = tuple(b for b in (32, 64, 128, 256, 512) if b < max_length) + (max_length,)

    for epoch in range(first_epoch, config.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(encoded))
        started, losses = time.perf_counter(), []
        for i, batch in enumerate(cls_data.batches(encoded, train.labels, batch_size,
                                                   tokenizer.pad_id, buckets, order,
                                                   drop_last=True)):
            step = epoch * steps_per_epoch + i
            device_batch = shd.global_batch(_model_inputs(batch), mesh)
            params, opt_state, loss = jit_train(params, opt_state, device_batch,
                                                jax.random.fold_in(base_key, step))
            losses.append(loss)
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(jax.device_get(losses))),
                  "examples_per_second": steps_per_epoch * batch_size / seconds}
        for split, examples in evals.items():
            predictions = _predict(jit_predict, params, tokenizer, examples, max_length,
                                   batch_size, buckets, mesh, task.regression)
            for name in task.metrics:
                record[f"{split}_{name}"] = metric_fns.METRICS[name](examples.labels, predictions)
        history.append(record)
        print(f"seed {seed} epoch {epoch + 1}/{config.epochs}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
        if primary is None or not best or record[primary] > best[primary]:
            best = record
            _save_best(model, params, out / "best", tokenizer)
        checkpointer.save(epoch + 1, {"params": params, "opt_state": opt_state},
                          {"best": best, "history": history})
    checkpointer.close()

    if tests:
        from roberta_jax.pretrained import from_pretrained
        best_model, best_params = from_pretrained(out / "best", "sequence-classification",
                                                  dtype=dtype)
        best_predict = jax.jit(make_steps(best_model, tx, task.regression)[2])
        for split, (examples, filename) in tests.items():
            predictions = _predict(best_predict, best_params, tokenizer, examples, max_length,
                                   batch_size, buckets, mesh, task.regression)
            _write_submission(out / (filename or f"{split}.tsv"), examples.ids, predictions,
                              label_names, task.regression)
    return {"best": best, "history": history}


def _model_inputs(batch):
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels",
                                                    "weights")}


def _predict(jit_predict, params, tokenizer, examples, max_length, batch_size, buckets, mesh,
             regression):
    encoded = cls_data.encode(tokenizer, examples, max_length)
    outputs = []
    for batch in cls_data.batches(encoded, None, batch_size, tokenizer.pad_id, buckets):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        logits = np.asarray(jax.device_get(jit_predict(params, shd.global_batch(inputs, mesh))))
        outputs.append(logits[batch["weights"] > 0])
    logits = np.concatenate(outputs)
    return logits[:, 0] if regression else logits.argmax(-1)


def _save_best(model, params, directory: pathlib.Path, tokenizer) -> None:
    import shutil
    from roberta_jax.pretrained import save_pretrained
    staging = directory.with_name(directory.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer_files = directory.with_name(directory.name + ".tokenizer")
    tokenizer.save(tokenizer_files)
    save_pretrained(model, jax.device_get(params), staging, tokenizer_from=tokenizer_files)
    shutil.rmtree(tokenizer_files)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)


def _write_submission(path: pathlib.Path, ids, predictions, label_names, regression) -> None:
    lines = ["index\tprediction"]
    for i, p in zip(ids, predictions):
        lines.append(f"{i}\t{float(p):.3f}" if regression else f"{i}\t{label_names[int(p)]}")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(ids)} test predictions -> {path}")
