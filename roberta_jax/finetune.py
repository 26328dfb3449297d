"""Fine-tuning: GLUE, SQuAD, CoNLL-2003 NER, RACE, and local files of each kind.

    task and data -> model (converted checkpoint, pretraining workdir, or scratch) -> for each
    seed: epochs of AdamW steps, evaluation every epoch, best model kept, test predictions
    -> the median over seeds of the best dev score, as the RoBERTa paper reports

What differs between tasks (inputs, loss, decoding, metrics) lives in `task_kinds.py`; this is
the one loop. Run it with `roberta-jax finetune --config configs/glue.py --config.task=sst2
--config.init=PATH --workdir W`; re-running resumes each seed from its last finished epoch.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from roberta_jax import fs
from roberta_jax import sharding as shd
from roberta_jax import task_kinds, tasks
from roberta_jax.checkpoint import Checkpointer
from roberta_jax.config import PRESETS
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.errors import UserError
from roberta_jax.model import TASKS
from roberta_jax.optim import make_optimizer
from roberta_jax.progress import print_above, progress_bar
from roberta_jax.train_config import check_finetune_config

log = logging.getLogger("roberta_jax")

HEAD_PREFIXES = ("classifier.", "qa_outputs.", "lm_head.")


# =============================================================================== model

def load_model(init: str, head: str, num_labels: int | None, labels: list[str] | None,
               seed: int, preset: str, vocab_size: int, dtype, reset_head: bool = False):
    """(model, params) for `head` from a checkpoint (Hugging Face, fairseq, an export), a
    pretraining workdir (its encoder; a new head), or from scratch (`preset`).

    A checkpoint that already has this head keeps it, so a fine-tuned model can be trained
    further; if its label count differs from the task's that is an error unless `reset_head`.
    """
    from roberta_jax.convert.params import params_from_hf_state
    from roberta_jax.pretrained import read_checkpoint
    path = pathlib.Path(init) if init else None
    encoder = None
    if path is not None and (path / "checkpoints").is_dir() and (path / "config.json").is_file():
        from roberta_jax.export import load_workdir_params
        pretrained, pretrained_params, _, step = load_workdir_params(path)
        config, encoder = pretrained.config, pretrained_params["roberta"]
        log.info("encoder from step %d of %s; new %s head", step, path, head)
    elif path is not None:
        config, state, saved_task, _ = read_checkpoint(path)
        has_head = saved_task == head and any(k.startswith(HEAD_PREFIXES) for k in state)
        if has_head and reset_head:
            state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
        elif has_head and num_labels is not None and config.num_labels != num_labels:
            raise UserError(
                f"{path}: its {head} head has {config.num_labels} label(s) but this task has "
                f"{num_labels}; set --config.reset_head=True to train a new head on its encoder")
        elif has_head and labels and config.labels != tuple(labels):
            log.warning("%s: the head's labels %s are renamed to the task's %s", path,
                        list(config.labels), labels)
        if num_labels is not None:
            config = config.replace(num_labels=num_labels)
        if labels:
            config = config.replace(labels=tuple(labels))
        params = params_from_hf_state(state, config, head, source=str(path), seed=seed)
        return TASKS[head][0](config, dtype=dtype), jax.tree.map(jnp.asarray, params)
    else:
        if preset not in PRESETS:
            raise UserError(f"unknown model preset {preset!r}; one of {', '.join(PRESETS)}")
        config = PRESETS[preset].replace(vocab_size=vocab_size)
    if num_labels is not None:
        config = config.replace(num_labels=num_labels)
    if labels:
        config = config.replace(labels=tuple(labels))
    model = TASKS[head][0](config, dtype=dtype)
    shape = (1, 1, 4) if head == "multiple-choice" else (1, 4)
    params = nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros(shape, jnp.int32))["params"])
    if encoder is not None:
        params["roberta"] = _graft(params["roberta"], encoder)
    return model, params


def _graft(fresh: dict, encoder: dict) -> dict:
    """`fresh` with every weight the pretrained encoder has (a pooler it lacks stays fresh)."""
    flat = flax.traverse_util.flatten_dict(fresh)
    flat.update({k: jnp.asarray(v) for k, v in flax.traverse_util.flatten_dict(encoder).items()
                 if k in flat})
    return flax.traverse_util.unflatten_dict(flat)


# =============================================================================== steps

def make_steps(model, tx, kind):
    """(loss_fn, train_step, predict_step); the loss and outputs are the kind's."""
    def loss_fn(params, batch, key):
        output = model.apply({"params": params}, batch["input_ids"],
                             attention_mask=batch["attention_mask"], deterministic=key is None,
                             rngs=None if key is None else {"dropout": key})
        return kind.loss(output, batch)

    def train_step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def predict_step(params, batch):
        return kind.outputs(model.apply({"params": params}, batch["input_ids"],
                                        attention_mask=batch["attention_mask"]))

    return loss_fn, train_step, predict_step


def recipe(config, task: tasks.Task, steps: int, hidden_size: int = 768
           ) -> ml_collections.ConfigDict:
    """The optimizer settings in pretraining's vocabulary, so optim.py serves both; unset
    (0 / negative) values take the task's recipe (for local files, scaled to the model's
    width)."""
    return ml_collections.ConfigDict(dict(
        lr=config.lr or task.learning_rate(hidden_size), end_lr=0.0, steps=steps,
        warmup_steps=int(config.warmup_ratio * steps), schedule="linear", b1=0.9, b2=config.b2,
        eps=config.eps,
        weight_decay=task.weight_decay if config.weight_decay < 0 else config.weight_decay,
        weight_decay_mask=config.weight_decay_mask, clip_norm=config.clip_norm))


# =============================================================================== driver

def finetune(config, workdir) -> dict:
    check_finetune_config(config)
    workdir = pathlib.Path(workdir)
    task = tasks.resolve(config)
    kind = task_kinds.for_task(task, config)
    check_workdir_settings(workdir, config)
    seeds = tuple(config.seeds) or task.seeds
    tokenizer = load_tokenizer(_tokenizer_path(config))

    train, label_names = kind.read("train", kind.initial_labels())
    if not kind.has_labels(train):
        raise UserError(f"{task.source}: the training data has no {task.label_field!r} labels")
    num_labels = kind.num_labels(label_names)
    evals = {split: kind.read(split, label_names)[0] for split in task.eval_splits}
    tests = {split: (kind.read(split, label_names)[0], out) for split, out in task.test_splits}
    dtype = jnp.dtype(config.dtype)

    results = {}
    for seed in seeds:
        results[str(seed)] = _train_one_seed(config, task, kind, tokenizer, train, evals, tests,
                                             label_names, num_labels, seed, dtype,
                                             workdir / f"seed{seed}")
    primary = f"{task.eval_splits[0]}_{task.metrics[0]}" if task.eval_splits else None
    summary = {"task": task.name, "seeds": list(seeds), "per_seed": results}
    if primary:
        scores = [results[str(s)]["best"][primary] for s in seeds]
        summary["median"] = {primary: float(np.median(scores))}
        summary["median_seed"] = seeds[int(np.argsort(scores)[len(scores) // 2])]
        print(f"{task.name}: median {primary} over {len(scores)} seed(s) = "
              f"{np.median(scores):.4f}  (per seed: "
              + ", ".join(f"{s}: {v:.4f}" for s, v in zip(seeds, scores)) + ")")
    test_names = sorted({k for s in seeds for k in results[str(s)]["test"]})
    if test_names:
        # Each seed's test score is its best-on-dev epoch's: the test set chose nothing.
        summary["test"] = {k: float(np.median([results[str(s)]["test"][k] for s in seeds]))
                           for k in test_names}
        print(f"{task.name}: test scores of the best epochs, median over {len(seeds)} seed(s): "
              + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
    (workdir / "results.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


# Settings that may change between runs in one workdir: another seed list only adds or skips
# seed directories; the others change what is shown, where tfds looks, or SQuAD v2's decoding of
# the test predictions. Any other change would mix two experiments in one set of checkpoints.
FREE_TO_CHANGE = ("seeds", "progress", "tfds_data_dir", "null_threshold")
PATH_SETTINGS = ("init", "tokenizer", "train_file", "eval_file", "test_file")
SETTINGS_FILE = "finetune_config.json"


def workdir_settings(config) -> dict:
    """What a workdir records of the config: all but FREE_TO_CHANGE, paths made absolute."""
    current = {k: v for k, v in json.loads(config.to_json()).items() if k not in FREE_TO_CHANGE}
    for key in PATH_SETTINGS:
        if current.get(key):
            current[key] = fs.as_str(current[key])   # the same file from any directory
    return current


def check_workdir_settings(workdir, config) -> None:
    """Refuse other settings than those recorded once a seed has trained in the workdir
    (resuming would continue one experiment with another's settings)."""
    current = workdir_settings(config)
    saved_file = fs.as_path(workdir) / SETTINGS_FILE
    if saved_file.exists() and any(fs.as_path(workdir).glob("seed*/checkpoints")):
        saved = json.loads(saved_file.read_text())
        changed = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
        if changed:
            what = ", ".join(f"{k} {_shown(k, saved.get(k))} -> {_shown(k, current.get(k))}"
                             for k in changed)
            raise UserError(f"{workdir}: was fine-tuned with other settings ({what}); use a new "
                            "--workdir for these, or the old settings to resume")


def _shown(key: str, value) -> str:
    unset = value == 0 if key in ("lr", "batch_size", "epochs", "max_length") else \
        key == "weight_decay" and value is not None and value < 0
    return f"{value!r} (the task's recipe)" if unset else repr(value)


def record_settings(workdir, config) -> None:
    """Write the workdir's settings, once the inputs passed every check (a failed start leaves
    no workdir behind) and before anything trains."""
    saved_file = fs.as_path(workdir) / SETTINGS_FILE
    saved_file.parent.mkdir(parents=True, exist_ok=True)
    saved_file.write_text(json.dumps(workdir_settings(config), indent=2, sort_keys=True) + "\n")


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


def _train_one_seed(config, task, kind, tokenizer, train, evals, tests, label_names, num_labels,
                    seed, dtype, out: pathlib.Path) -> dict:
    model, params = load_model(config.init, kind.head, num_labels,
                               None if task.regression else label_names, seed,
                               config.model_preset, tokenizer.vocab_size, dtype,
                               reset_head=config.reset_head)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's "
                        f"vocabulary has {model.config.vocab_size}; they do not belong together")
    max_length = min(config.max_length or task.max_length, model.config.max_sequence_length)
    train_split = kind.encode(tokenizer, train, max_length, label_names)
    eval_splits = {s: kind.encode(tokenizer, d, max_length, label_names) for s, d in evals.items()}
    batch_size = config.batch_size or task.batch_size
    steps_per_epoch = max(1, train_split.size // batch_size)
    epochs = config.epochs or task.epochs
    total_steps = steps_per_epoch * epochs
    optimizer = recipe(config, task, total_steps, model.config.hidden_size)
    tx = make_optimizer(optimizer)
    where = ("" if config.lr or task.lr is not None else
             f" (local files: scaled to width {model.config.hidden_size})")
    log.info("seed %d: lr %.2g%s, batch %d, %d epochs of %d steps, weight decay %g", seed,
             optimizer.lr, where, batch_size, epochs, steps_per_epoch, optimizer.weight_decay)
    _, train_step, predict_step = make_steps(model, tx, kind)

    mesh = shd.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
    if batch_size % mesh.size:
        raise UserError(f"batch size {batch_size} is not divisible by the {mesh.size} devices")
    params = jax.device_put(params, shd.replicated(mesh))
    opt_state = jax.device_put(tx.init(params), shd.replicated(mesh))
    jit_train = jax.jit(train_step, donate_argnums=(0, 1))
    jit_predict = jax.jit(predict_step)

    record_settings(out.parent, config)
    checkpointer = Checkpointer(out / "checkpoints", keep=1, async_save=False)
    first_epoch, best, history = 0, {}, []
    restored = checkpointer.restore(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        {"params": params, "opt_state": opt_state}))
    if restored is not None:
        state, meta, first_epoch = restored
        params, opt_state = state["params"], state["opt_state"]
        best, history = meta["best"], meta["history"]
        log.info("seed %d: resumed after epoch %d", seed, first_epoch)
    primary = f"{task.eval_splits[0]}_{task.metrics[0]}" if task.eval_splits else None
    base_key = jax.random.key(seed)
    buckets = tuple(b for b in (32, 64, 128, 256, 512) if b < max_length) + (max_length,)
    bar = progress_bar(total_steps, first_epoch * steps_per_epoch, "step", f"seed {seed}",
                       enabled=config.progress)

    for epoch in range(first_epoch, epochs):
        order = np.random.default_rng([seed, epoch]).permutation(train_split.size)
        started, losses = time.perf_counter(), []
        for i, batch in enumerate(kind.batches(train_split, batch_size, tokenizer.pad_id,
                                               buckets, order, drop_last=True)):
            step = epoch * steps_per_epoch + i
            params, opt_state, loss = jit_train(params, opt_state, _device_batch(batch, mesh),
                                                jax.random.fold_in(base_key, step))
            losses.append(loss)
            bar.update()
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(jax.device_get(losses))),
                  "examples_per_second": steps_per_epoch * batch_size / seconds}
        for split, encoded in eval_splits.items():
            outputs = _predict(jit_predict, params, kind, encoded, batch_size, tokenizer.pad_id,
                               buckets, max_length, mesh)
            for name, value in kind.evaluate(encoded, outputs, label_names).items():
                record[f"{split}_{name}"] = value
        history.append(record)
        bar.set_postfix_str(f"epoch {epoch + 1} loss {record['train_loss']:.4f}")
        print_above(f"seed {seed} epoch {epoch + 1}/{epochs}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
        if primary is None or not best or record[primary] > best[primary]:
            best = record
            _save_best(model, params, out / "best", tokenizer)
        checkpointer.save(epoch + 1, {"params": params, "opt_state": opt_state},
                          {"best": best, "history": history})
    bar.close()
    checkpointer.close()

    scores = {}
    if tests:
        from roberta_jax.pretrained import from_pretrained
        best_model, best_params = from_pretrained(out / "best", kind.head, dtype=dtype)
        best_predict = jax.jit(make_steps(best_model, tx, kind)[2])
        for split, (data, filename) in tests.items():
            encoded = kind.encode(tokenizer, data, max_length, label_names)
            outputs = _predict(best_predict, best_params, kind, encoded, batch_size,
                               tokenizer.pad_id, buckets, max_length, mesh)
            path = out / (filename or f"{split}_predictions")
            kind.write_predictions(path, encoded, outputs, label_names)
            scored = kind.evaluate(encoded, outputs, label_names) if kind.has_labels(data) else {}
            scores.update({f"{split}_{k}": v for k, v in scored.items()})
            print(f"seed {seed}: wrote {encoded.size} test predictions -> {path}"
                  + "".join(f"; {split} {k} {v:.4f}" for k, v in scored.items()))
    return {"best": best, "history": history, "test": scores}


MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "weights", "start_positions",
                "end_positions")


def _device_batch(batch, mesh):
    return shd.global_batch({k: v for k, v in batch.items() if k in MODEL_INPUTS}, mesh)


def _predict(jit_predict, params, kind, split, batch_size, pad_id, buckets, max_length, mesh):
    """The kind's outputs for every feature row of `split`, in order; per-token outputs
    ([batch, length, ...]) of bucketed batches are padded back to `max_length` so they stack."""
    outputs = []
    for batch in kind.batches(split, batch_size, pad_id, buckets):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        result = np.asarray(jax.device_get(jit_predict(params, shd.global_batch(inputs, mesh))))
        result = result[batch["weights"] > 0]
        if result.ndim >= 3 and result.shape[1] < max_length:
            result = np.pad(result, [(0, 0), (0, max_length - result.shape[1]), (0, 0)])
        outputs.append(result)
    return np.concatenate(outputs)


def _save_best(model, params, directory: pathlib.Path, tokenizer) -> None:
    import shutil
    from roberta_jax.pretrained import save_pretrained
    staging = directory.with_name(directory.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    save_pretrained(model, jax.device_get(params), staging, tokenizer=tokenizer)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
