"""Fine-tuning: GLUE, SQuAD, CoNLL-2003 NER, RACE, and local files of each kind.

    task and data -> model (any source weights.py reads, or scratch) -> for each seed: epochs
    of AdamW steps, evaluation every epoch, best model kept, test predictions -> the median
    over seeds of the best dev score, as the RoBERTa paper reports

What differs between tasks (inputs, loss, decoding, metrics) lives in `task_kinds.py`, the
settings and their meaning in `finetune_config.py`; this is the one loop. Run it with
`roberta-jax finetune --config finetune --config.task=sst2 --config.init=PATH --workdir W`;
re-running resumes each seed from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from roberta_jax import fs, host_memory, task_kinds, tasks, weights
from roberta_jax import sharding as shd
from roberta_jax.checkpoint import Checkpointer
from roberta_jax.config import PRESETS
from roberta_jax.data import pack_examples as pack
from roberta_jax.data.rows import bucket_length
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.errors import UserError
from roberta_jax.finetune_config import (
    FREE_TO_CHANGE,
    PATH_SETTINGS,
    RECIPE_DEFAULTS,
    check_finetune_config,
)
from roberta_jax.model import TASKS
from roberta_jax.optim import make_optimizer
from roberta_jax.pretrained import save_pretrained
from roberta_jax.progress import print_above, progress_bar

log = logging.getLogger("roberta_jax")


# =============================================================================== steps

def model_inputs(kind, batch) -> dict:
    """The model's keyword inputs from a batch: padded (attention_mask) or packed (segment_ids,
    and segment_starts for the heads that read one vector per sequence)."""
    if "segment_ids" not in batch:
        return {"attention_mask": batch["attention_mask"]}
    if kind.pools:
        return {"segment_ids": batch["segment_ids"], "segment_starts": batch["segment_starts"]}
    return {"segment_ids": batch["segment_ids"]}


def make_loss(model, kind):
    """The kind's loss of the model on a padded or packed batch; `key` None: no dropout."""
    def loss_fn(params, batch, key):
        output = model.apply({"params": params}, batch["input_ids"],
                             **model_inputs(kind, batch), deterministic=key is None,
                             rngs=None if key is None else {"dropout": key})
        return kind.loss(output, batch)
    return loss_fn


def make_steps(model, tx, kind):
    """(train_step, predict_step) for padded or packed batches; the loss and outputs are the
    kind's."""
    loss_fn = make_loss(model, kind)

    def train_step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def predict_step(params, batch):
        return kind.outputs(model.apply({"params": params}, batch["input_ids"],
                                        **model_inputs(kind, batch)))

    return train_step, predict_step


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
    workdir = fs.as_path(workdir)
    if config.get("packing", "auto") not in PACKING:
        raise UserError(f"packing {config.packing!r}: use one of {', '.join(PACKING)}")
    task = tasks.resolve(config)
    kind = task_kinds.for_task(task, config)
    check_workdir_settings(workdir, config)
    seeds = tuple(config.seeds) or task.seeds
    from roberta_jax.convert.hf import TOKENIZER_FILES
    tokenizer = load_tokenizer(fs.local_copy(_tokenizer_path(config), TOKENIZER_FILES))

    train, label_names = kind.read("train", kind.initial_labels())
    if not kind.has_labels(train):
        raise UserError(f"{task.source}: the training data has no {task.label_field!r} labels")
    num_labels = kind.num_labels(label_names)
    evals = {split: kind.read(split, label_names)[0] for split in task.eval_splits}
    tests = {split: (kind.read(split, label_names)[0], out) for split, out in task.test_splits}
    dtype = jnp.dtype(config.dtype)

    results, run = {}, None
    for seed in seeds:
        model, params = weights.for_finetuning(
            config.init, kind.head, num_labels, None if task.regression else label_names, seed,
            config.model_preset, tokenizer.vocab_size, dtype, reset_head=config.reset_head)
        model = model.clone(config=model.config.replace(
            attention_implementation=config.get("attention_implementation", "eager")))
        if run is None:  # what every seed shares, compiled programs included
            if tokenizer.vocab_size > model.config.vocab_size:
                raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's "
                                f"vocabulary has {model.config.vocab_size}; they do not belong "
                                "together")
            max_length = min(config.max_length or task.max_length,
                             model.config.max_sequence_length)
            run = _Run.build(config, task, kind, tokenizer, model,
                             kind.encode(tokenizer, train, max_length, label_names),
                             {s: kind.encode(tokenizer, d, max_length, label_names)
                              for s, d in evals.items()}, label_names, max_length, seed)
        results[str(seed)] = _train_one_seed(run, params, tests, seed, workdir / f"seed{seed}")
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


# The settings a workdir was started with (all but finetune_config.FREE_TO_CHANGE).
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
    unset = value == 0 if key in RECIPE_DEFAULTS else \
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
    if not config.init:
        raise UserError("set --config.tokenizer (or --config.init to a model with one)")
    return fs.as_str(weights.tokenizer_source(config.init))


@dataclasses.dataclass
class _Run:
    """What every seed of a run shares: the model, the encoded splits, the optimizer, the jitted
    steps (so a later seed compiles nothing) and the batch layout."""
    config: ml_collections.ConfigDict
    task: tasks.Task
    kind: object
    tokenizer: object
    label_names: list | None
    model: nn.Module
    max_length: int
    train_split: task_kinds.Split
    eval_splits: dict
    batch_size: int
    steps_per_epoch: int
    epochs: int
    tx: optax.GradientTransformation
    jit_train: object      # (params, opt_state, batch, key, step) -> (params, opt_state, loss)
    jit_predict: object    # (params, batch) -> the kind's outputs
    mesh: object
    buckets: tuple[int, ...]
    packing: pack.Plan | None
    row_counts: pack.RowCounts | None

    @classmethod
    def build(cls, config, task, kind, tokenizer, model, train_split, eval_splits, label_names,
              max_length, seed):
        batch_size = config.batch_size or task.batch_size
        steps_per_epoch = max(1, train_split.size // batch_size)
        epochs = config.epochs or task.epochs
        optimizer = recipe(config, task, steps_per_epoch * epochs, model.config.hidden_size)
        tx = make_optimizer(optimizer)
        where = ("" if config.lr or task.lr is not None else
                 f" (local files: scaled to width {model.config.hidden_size})")
        log.info("lr %.2g%s, batch %d, %d epochs of %d steps, weight decay %g", optimizer.lr,
                 where, batch_size, epochs, steps_per_epoch, optimizer.weight_decay)
        train_step, predict_step = make_steps(model, tx, kind)
        mesh = shd.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
        if batch_size % mesh.size:
            raise UserError(f"batch size {batch_size} is not divisible by the {mesh.size} "
                            "devices")

        def keyed_train_step(params, opt_state, batch, key, step):
            # The step's dropout key is folded in here, not by an eager call per step.
            return train_step(params, opt_state, batch, jax.random.fold_in(key, step))

        buckets = tuple(b for b in (32, 64, 128, 256, 512) if b < max_length) + (max_length,)
        packing = _packing_plan(config, kind, train_split, eval_splits, batch_size, buckets,
                                max_length, mesh.size,
                                np.random.default_rng([seed, 0]).permutation(train_split.size))
        row_counts = None if packing is None else pack.RowCounts(
            packing, steps_per_epoch * epochs)
        return cls(config, task, kind, tokenizer, label_names, model, max_length, train_split,
                   eval_splits, batch_size, steps_per_epoch, epochs, tx,
                   jax.jit(keyed_train_step, donate_argnums=(0, 1)), jax.jit(predict_step),
                   mesh, buckets, packing, row_counts)

    def train_batches(self, order):
        if self.packing is None:
            return self.kind.batches(self.train_split, self.batch_size, self.tokenizer.pad_id,
                                     self.buckets, order, drop_last=True)
        return pack.train_batches(self.kind, self.train_split, self.packing, self.batch_size,
                                  order, self.tokenizer.pad_id, self.row_counts)

    def outputs(self, params, split):
        return _predict(self.jit_predict, params, self.kind, split, self.batch_size,
                        self.tokenizer.pad_id, self.buckets, self.max_length, self.mesh,
                        self.packing)


def classification_train_step(sequences: list[list[int]], labels, batch_size: int = 32,
                              preset="roberta-base", dtype: str = "bfloat16",
                              packing: str = "on", attention: str = "eager",
                              attention_dropout: float | None = None, seed: int = 0,
                              pad_id: int = 1):
    """The real train step of `roberta-jax finetune` for sentence classification (the GLUE
    recipe: AdamW, 6% warmup then linear decay, weight decay 0.1, dropout on) from a fresh
    `preset` model (a PRESETS name or a RobertaConfig) computing in `dtype`, on already
    tokenized `sequences` (each `<s> ... </s>`)
    with int `labels`, for benchmarks on accelerators (experiments/gpu_packing_check.py).

    -> (step, params, opt_state, batches): `step(params, opt_state, batch, key, step_number)`
    is the run's jitted step (parameters and optimizer state donated) returning (params,
    opt_state, loss); `batches` is one epoch of device batches in the run's layout: packed rows
    (packing "on"), or padded to buckets ("off"). Batches hold `batch_size` examples each.
    The fused attention kernels have no dropout: train with `attention_dropout=0.0` to use them
    (`attention` "jax" or "cudnn"); with the preset's 0.1 training falls back to "eager"."""
    import types
    config = (PRESETS[preset] if isinstance(preset, str) else preset).replace(
        attention_implementation=attention)
    if attention_dropout is not None:
        config = config.replace(attention_probs_dropout_prob=attention_dropout)
    examples = types.SimpleNamespace(labels=np.asarray(labels, np.int32))
    split = task_kinds.Split(examples, [list(s) for s in sequences], len(sequences))
    task = tasks.Task("benchmark", "classification", "given", labels=("0", "1"),
                      batch_size=batch_size, epochs=1)
    settings = ml_collections.ConfigDict(dict(
        lr=0.0, warmup_ratio=0.06, b2=0.98, eps=1e-6, weight_decay=-1.0, weight_decay_mask="hf",
        clip_norm=0.0, batch_size=batch_size, epochs=1, packing=packing, progress=False))
    kind = task_kinds.for_task(task, settings)
    model = TASKS[kind.head][0](config.replace(num_labels=int(np.max(labels)) + 1),
                                dtype=jnp.dtype(dtype))
    params = weights.init_params(model, kind.head, seed)
    tokenizer = types.SimpleNamespace(pad_id=pad_id)
    run = _Run.build(settings, task, kind, tokenizer, model, split, {}, None,
                     config.max_sequence_length, seed)
    params = jax.device_put(params, shd.replicated(run.mesh))
    opt_state = jax.device_put(run.tx.init(params), shd.replicated(run.mesh))
    order = np.random.default_rng([seed, 0]).permutation(split.size)
    batches = [_device_batch(b, run.mesh) for b in run.train_batches(order)]
    return run.jit_train, params, opt_state, batches


def _train_one_seed(run: _Run, params, tests, seed, out) -> dict:
    """Train one seed in `out` (resuming after its last finished epoch), keep its best epoch in
    out/best, and predict (and score) the test splits with it."""
    mesh = run.mesh
    params = jax.device_put(params, shd.replicated(mesh))
    opt_state = jax.device_put(run.tx.init(params), shd.replicated(mesh))
    record_settings(out.parent, run.config)
    # Saved in the background while the next epoch trains; close() waits for the last one.
    checkpointer = Checkpointer(out / "checkpoints", keep=1, async_save=True)
    first_epoch, best, history = 0, {}, []
    restored = checkpointer.restore(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        {"params": params, "opt_state": opt_state}))
    if restored is not None:
        state, meta, first_epoch = restored
        params, opt_state = state["params"], state["opt_state"]
        best, history = meta["best"], meta["history"]
        log.info("seed %d: resumed after epoch %d", seed, first_epoch)
    host_memory.release_free_pages((params, opt_state))  # what building them freed
    primary = f"{run.task.eval_splits[0]}_{run.task.metrics[0]}" if run.task.eval_splits \
        else None
    bar = progress_bar(run.steps_per_epoch * run.epochs, first_epoch * run.steps_per_epoch,
                       "step", f"seed {seed}", enabled=run.config.progress)

    try:
        for epoch in range(first_epoch, run.epochs):
            params, opt_state, record = _train_epoch(run, params, opt_state, seed, epoch, bar)
            record.update(_evaluate(run, params))
            history.append(record)
            bar.set_postfix_str(f"epoch {epoch + 1} loss {record['train_loss']:.4f}")
            print_above(f"seed {seed} epoch {epoch + 1}/{run.epochs}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
            if primary is None or not best or record[primary] > best[primary]:
                best = record
                _save_best(run.model, params, out / "best", run.tokenizer)
            checkpointer.save(epoch + 1, {"params": params, "opt_state": opt_state},
                              {"best": best, "history": history})
    finally:
        # Also on Ctrl-C or an error: the epoch being saved in the background is written whole,
        # so the next run resumes after it (as pretraining does).
        bar.close()
        checkpointer.close()
    scores = _predict_tests(run, tests, seed, out) if tests else {}
    return {"best": best, "history": history, "test": scores}


def _train_epoch(run: _Run, params, opt_state, seed: int, epoch: int, bar):
    """One epoch of steps in the seed's order for it -> (params, opt_state, its record)."""
    order = np.random.default_rng([seed, epoch]).permutation(run.train_split.size)
    base_key = jax.random.key(seed)
    started, losses = time.perf_counter(), []
    for i, batch in enumerate(run.train_batches(order)):
        step_started = time.perf_counter()
        params, opt_state, loss = run.jit_train(params, opt_state,
                                                _device_batch(batch, run.mesh), base_key,
                                                np.int32(epoch * run.steps_per_epoch + i))
        if run.row_counts is not None and run.row_counts.measuring:
            # A few synced steps price a compile against a step (pack.RowCounts).
            loss.block_until_ready()
            run.row_counts.observe(time.perf_counter() - step_started)
        losses.append(loss)
        bar.update()
    losses = jax.device_get(losses)  # waits for the epoch's last step, then times it
    seconds = time.perf_counter() - started
    return params, opt_state, {
        "epoch": epoch + 1, "train_loss": float(np.mean(losses)),
        "examples_per_second": run.steps_per_epoch * run.batch_size / seconds}


def _evaluate(run: _Run, params) -> dict:
    """The kind's metrics on every evaluation split, named `{split}_{metric}`."""
    scores = {}
    for split, encoded in run.eval_splits.items():
        outputs = run.outputs(params, encoded)
        for name, value in run.kind.evaluate(encoded, outputs, run.label_names).items():
            scores[f"{split}_{name}"] = value
    return scores


def _predict_tests(run: _Run, tests: dict, seed: int, out) -> dict:
    """Predictions of the seed's best epoch for each test split, written to their files; the
    scores of the splits that have labels."""
    kind = run.kind
    # The best weights in the run's own model: its compiled prediction step serves them.
    _, best_params = weights.from_pretrained(out / "best", kind.head, dtype=run.model.dtype)
    best_params = jax.device_put(best_params, shd.replicated(run.mesh))
    scores = {}
    for split, (data, filename) in tests.items():
        encoded = kind.encode(run.tokenizer, data, run.max_length, run.label_names)
        outputs = run.outputs(best_params, encoded)
        path = out / (filename or f"{split}_predictions")
        kind.write_predictions(path, encoded, outputs, run.label_names)
        scored = kind.evaluate(encoded, outputs, run.label_names) if kind.has_labels(data) else {}
        scores.update({f"{split}_{k}": v for k, v in scored.items()})
        print(f"seed {seed}: wrote {encoded.size} test predictions -> {path}"
              + "".join(f"; {split} {k} {v:.4f}" for k, v in scored.items()))
    return scores


MODEL_INPUTS = ("input_ids", "attention_mask", "segment_ids", "segment_starts", "labels",
                "weights", "start_positions", "end_positions", "choice_slots")


def _device_batch(batch, mesh):
    return shd.global_batch({k: v for k, v in batch.items() if k in MODEL_INPUTS}, mesh)


PACKING = ("auto", "on", "off")


def _packing_plan(config, kind, train_split, eval_splits, batch_size, buckets, max_length,
                  devices, order) -> pack.Plan | None:
    """The packed layout for this run, or None for padded batches: "auto" packs when that
    computes at most pack.PAYS_BELOW of the positions padded batches would."""
    mode = config.get("packing", "auto")
    if mode == "off" or train_split.size < batch_size:
        return None
    longest_eval = max((len(s) for split in eval_splits.values()
                        for s in kind.feature_sequences(split, np.arange(split.size))), default=0)
    plan = pack.plan(kind, train_split, batch_size, order, buckets,
                     (lambda longest: bucket_length(longest, buckets)) if kind.bucketed
                     else (lambda _: max_length), devices, longest_eval)
    if mode == "auto" and not plan.pays:
        log.info("padded batches: packing would compute %.0f%% of their positions",
                 100 * plan.packed_tokens / max(plan.padded_tokens, 1))
        return None
    log.info("%s", plan.describe())
    return plan


def _predict(jit_predict, params, kind, split, batch_size, pad_id, buckets, max_length, mesh,
             packing=None):
    """The kind's outputs for every feature row of `split`, in order; per-token outputs
    ([batch, length, ...]) come back `max_length` long, so they stack."""
    if packing is not None:
        def run(rows):
            inputs = {k: rows[k] for k in ("input_ids", "segment_ids", "segment_starts")}
            return jax.device_get(jit_predict(params, shd.global_batch(inputs, mesh)))
        return pack.predict(kind, split, run, pad_id, max_length, buckets, packing,
                            multiple=mesh.size)
    outputs = []
    for batch in kind.batches(split, batch_size, pad_id, buckets):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        result = np.asarray(jax.device_get(jit_predict(params, shd.global_batch(inputs, mesh))))
        result = result[batch["weights"] > 0]
        if result.ndim >= 3 and result.shape[1] < max_length:
            result = np.pad(result, [(0, 0), (0, max_length - result.shape[1]), (0, 0)])
        outputs.append(result)
    return np.concatenate(outputs)


def _save_best(model, params, directory, tokenizer) -> None:
    """The best epoch so far as a Hugging Face directory with its tokenizer; the previous best
    is replaced only once this one is written whole."""
    staging = directory.parent / (directory.name + ".new")
    if staging.exists():
        staging.rmtree()
    save_pretrained(model, jax.device_get(params), staging, tokenizer=tokenizer)
    if directory.exists():
        directory.rmtree()
    fs.move(staging, directory)
