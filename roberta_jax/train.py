"""Pretraining: one linear loop, read top to bottom.

    setup (processes, mesh) -> input -> model and optimizer -> state (restore or init, sharded)
    -> step -> loop (metrics, evaluation, checkpoints, preemption) -> final save and report

Run it with `roberta-jax pretrain --config configs/base.py --workdir W`; re-running the same
command resumes from the newest checkpoint in W. W may be local or on object storage
(`gs://bucket/run`); on several hosts every process runs the same command (see hosts.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import pathlib
import shutil
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from roberta_jax import fs, host_memory, hosts, weights
from roberta_jax import sharding as shd
from roberta_jax.checkpoint import Checkpointer, git_revision
from roberta_jax.config import RobertaConfig
from roberta_jax.data.pipeline import PretrainingBatches, check_compatible, check_run_data
from roberta_jax.data.prepare import TOKENIZER_DIR
from roberta_jax.errors import UserError
from roberta_jax.flops import peak_flops_per_device, train_flops_per_token
from roberta_jax.losses import cross_entropy
from roberta_jax.model import RobertaForMaskedLM
from roberta_jax.optim import learning_rate_schedule, make_optimizer
from roberta_jax.progress import print_above, progress_bar
from roberta_jax.train_config import STATE_DEFINING, check_pretrain_config

# The state's layout is shared with weights.py (which restores workdirs); importable from here.
from roberta_jax.train_state import TrainState, build_state, make_model, model_config, strip_boxes  # noqa: F401

log = logging.getLogger("roberta_jax")
LN2 = math.log(2.0)


# =============================================================================== setup

# Paths a workdir records. They are stored resolved (absolute, or gs://...), so a later command
# run from any directory (export, fine-tuning from the workdir, a resume) finds the same files.
PATH_FIELDS = ("data.path", "data.eval_path", "model.init_from")


def resolve_paths(config):
    """A copy of `config` with its paths resolved."""
    config = config.copy_and_resolve_references()
    for dotted in PATH_FIELDS:
        section, field = dotted.split(".")
        if config[section][field]:
            config[section][field] = fs.as_str(config[section][field])
    return config


# What a workdir started before a field existed ran with (its config.json lacks the field).
BEFORE_THE_FIELD = {"model.document_attention": False}


def check_workdir_config(workdir, config) -> None:
    """Remember the config in the workdir, and the tokenizer beside it; refuse a later run that
    changes the state's shape. Paths are compared by the place they name, not as text."""
    saved = workdir / "config.json"
    current = json.loads(config.to_json())
    is_main = jax.process_index() == 0
    if not saved.exists():
        if is_main:
            workdir.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(current, indent=2) + "\n")
            _keep_tokenizer(workdir, config)
        return
    previous = json.loads(saved.read_text())
    for k in STATE_DEFINING:
        before, now = _dig(previous, k), _dig(current, k)
        if before == {} and k in BEFORE_THE_FIELD:  # a workdir older than the field
            before = BEFORE_THE_FIELD[k]
        if k in PATH_FIELDS and before and now and fs.same_path(before, now):
            continue
        if before == now:
            continue
        if k in PATH_FIELDS and before and not fs.is_remote(before) and \
                not os.path.isabs(before):
            raise UserError(f"{saved}: records {k}={before}, relative to the directory that "
                            "run started in, which is not this one; resume once from there "
                            "(the workdir then records the full path)")
        if k in PATH_FIELDS:
            raise UserError(f"{saved}: this workdir was started with {k}={before}; this run "
                            f"has {now}. Pass --config.{k}={before} to resume, or use a new "
                            "--workdir for other data")
        raise UserError(f"{workdir}: was started with {k}={before!r}, this config has "
                        f"{now!r}; use a new --workdir (or the same config)")
    if is_main:
        # Older workdirs recorded paths as typed: record them resolved from now on.
        upgraded = dict(previous)
        for k in PATH_FIELDS:
            section, field = k.split(".")
            if _dig(previous, k) and _dig(current, k) and \
                    fs.same_path(_dig(previous, k), _dig(current, k)):
                upgraded[section] = {**upgraded.get(section, {}), field: _dig(current, k)}
        if upgraded != previous:
            saved.write_text(json.dumps(upgraded, indent=2) + "\n")
        _keep_tokenizer(workdir, config)


def _keep_tokenizer(workdir, config) -> None:
    """A copy of the training data's tokenizer in the workdir: exports and fine-tuning find it
    there even after the prepared data has moved."""
    source = fs.as_path(config.data.path) / TOKENIZER_DIR
    if not (workdir / "tokenizer").exists() and source.is_dir():
        fs.copy_tree(source, workdir / "tokenizer")


def _dig(tree: dict, dotted: str):
    for name in dotted.split("."):
        tree = tree.get(name, {}) if isinstance(tree, dict) else None
    return tree


# =============================================================================== step

def make_steps(model: RobertaForMaskedLM, tx, config, real_vocab: int):
    """The jittable train and eval steps (before sharding is attached)."""
    train = config.train
    vocab = model.config.vocab_size
    # Padded vocabulary rows never win the softmax: their logits get a large negative bias.
    vocab_bias = jnp.where(jnp.arange(vocab) < real_vocab, 0.0, -1e9).astype(jnp.float32)

    def mlm_sums(params, batch, dropout_key, deterministic):
        # With document attention a packed row's documents do not see each other and count
        # their positions from the start (segment ids); otherwise the padding mask alone.
        rows = {"segment_ids": batch["segment_ids"]} if "segment_ids" in batch else \
            {"attention_mask": batch["attention_mask"]}
        out = model.apply({"params": params}, batch["input_ids"], **rows,
                          masked_positions=batch["masked_positions"],
                          deterministic=deterministic,
                          rngs=None if deterministic else {"dropout": dropout_key})
        logits = out.logits.astype(jnp.float32) + vocab_bias
        labels, weights = batch["masked_labels"], batch["masked_weights"]
        nll = cross_entropy(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return jnp.sum(nll * weights), jnp.sum(correct * weights)

    def train_step(state: TrainState, batch):
        # The loss is normalised by the predicted tokens of the whole global batch, so
        # accumulating micro-batches gives the same gradient as one big batch.
        total = jnp.maximum(jnp.sum(batch["masked_weights"]), 1.0)
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)

        def micro_loss(params, micro, key):
            loss_sum, correct = mlm_sums(params, micro, key, deterministic=False)
            return loss_sum / total, correct

        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
        if train.grad_accum == 1:
            (loss, correct), grads = grad_fn(state.params, batch, step_key)
        else:
            micros = jax.tree.map(
                lambda x: x.reshape(train.grad_accum, -1, *x.shape[1:]), batch)

            def accumulate(carry, inputs):
                index, micro = inputs
                (micro_loss, micro_correct), micro_grads = grad_fn(
                    state.params, micro, jax.random.fold_in(step_key, index))
                return jax.tree.map(jnp.add, carry, (micro_loss, micro_correct, micro_grads)), None

            zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
            (loss, correct, grads), _ = jax.lax.scan(
                accumulate, zeros, (jnp.arange(train.grad_accum), micros))

        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        std = jnp.sqrt(jnp.maximum(state.loss_sq_mean - state.loss_mean ** 2, 0.0))
        spike = ((train.spike_threshold > 0) & (state.step >= 100)
                 & (loss > state.loss_mean + train.spike_threshold * std))
        apply = finite & ~spike

        def update(_):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), opt_state

        # A skipped step leaves parameters and optimizer state untouched. lax.cond runs one
        # branch, so the guard costs no extra pass over the weights (a select would).
        params, opt_state = jax.lax.cond(apply, update,
                                         lambda _: (state.params, state.opt_state), None)
        decay = jnp.where(state.step == 0, 0.0, 0.99)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state,
            loss_mean=jnp.where(apply, decay * state.loss_mean + (1 - decay) * loss,
                                state.loss_mean),
            loss_sq_mean=jnp.where(apply, decay * state.loss_sq_mean + (1 - decay) * loss ** 2,
                                   state.loss_sq_mean))
        metrics = {"loss": loss, "accuracy": correct / total, "grad_norm": grad_norm,
                   "learning_rate": learning_rate_schedule(train)(state.step),
                   "skipped_nonfinite": (~finite).astype(jnp.int32),
                   "skipped_spike": (finite & spike).astype(jnp.int32)}
        return new_state, metrics

    def eval_step(params, batch):
        loss_sum, correct = mlm_sums(params, batch, None, deterministic=True)
        return {"loss_sum": loss_sum, "correct": correct,
                "weight": jnp.sum(batch["masked_weights"])}

    return train_step, eval_step


# =============================================================================== state

def jit_train_step(train_step, shardings, mesh, config):
    """The train step as pretrain runs it: state sharded as built, batch split over the batch
    axes, metrics replicated, the old state's buffers donated to the new one."""
    batch_shardings = {k: shd.batch_sharding(mesh) for k in train_keys(config)}
    return jax.jit(train_step, in_shardings=(shardings, batch_shardings),
                   out_shardings=(shardings, shd.replicated(mesh)), donate_argnums=0)


def restore_or_init(checkpointer: Checkpointer, config, init_sharded, abstract, shardings,
                    model_cfg: RobertaConfig):
    """Latest checkpoint of this workdir -> weights from model.init_from -> fresh init."""
    restored = checkpointer.restore(abstract)
    if restored is not None:
        state, _, step = restored
        log.info("resumed from step %d in %s", step, checkpointer.directory)
        return state
    state = init_sharded()
    if config.model.init_from:
        state = state.replace(params=weights.for_pretraining(
            config.model.init_from, model_cfg, config.model.scan_layers, shardings.params))
        log.info("initialised weights from %s", config.model.init_from)
    return state


# =============================================================================== loop

def pretrain(config, workdir: str | os.PathLike, *, devices=None,
             stop_after: int | None = None) -> dict:
    """Train per `config` in `workdir`, resuming from its newest checkpoint. Returns the last
    logged metrics (and the final evaluation, if any).

    `devices`: the devices of the mesh (default: all). `stop_after`: leave after this many steps
    of this run, with a checkpoint, as a preemption would (the schedule still spans
    train.steps).
    """
    # From here on SIGTERM and Ctrl-C ask for a clean stop (one during start-up is kept for
    # the loop's first check), agreed by every process.
    check_pretrain_config(config)
    with hosts.Preemption(config.distributed.get("preemption_check_every", 10)) as preemption:
        return _pretrain(config, workdir, preemption, devices, stop_after)


def _pretrain(config, workdir, preemption: hosts.Preemption, devices, stop_after) -> dict:
    # ---------------------------------------------------------------- processes and mesh
    hosts.initialize(config.distributed)
    preemption.started(jax.process_count())
    workdir = fs.as_path(workdir)
    config = resolve_paths(config)
    is_main = jax.process_index() == 0
    train = config.train
    # Every process must reach the same decisions: an error on any one of them, or a config,
    # code or data that differs from process 0's, stops all of them here with one line.
    with hosts.Agreement() as agreement:
        shared = hosts.flat(json.loads(config.to_json()))
        shared.pop("distributed.process_id", None)
        agreement.expect_same("config", shared, "start every process with the same config "
                              "file and --config overrides")
        agreement.expect_same("workdir", fs.as_str(workdir), "give every process the same "
                              "--workdir, on storage they all reach")
        agreement.expect_same("code", hosts.code_identity, "install the same code and "
                              "libraries on every host")
        mesh = shd.make_mesh(config.mesh, devices)
        if train.batch_size % (train.grad_accum * jax.process_count()):
            raise UserError(f"train.batch_size {train.batch_size} must be divisible by "
                            f"train.grad_accum x processes = "
                            f"{train.grad_accum * jax.process_count()}")

        # ------------------------------------------------------------ input
        batches, eval_batches = _open_data(config, agreement)
        tokenizer_info = batches.corpus.manifest["tokenizer"]
        real_vocab = tokenizer_info["vocab_size"] if config.model.vocab_size == -1 \
            else config.model.vocab_size
        model_cfg = model_config(config, tokenizer_info["vocab_size"])
        check_compatible(config.data.path, model_config=model_cfg, seq_len=train.seq_len)
        check_run_data(workdir, config.data.path, config.data.eval_path, record=is_main)
        check_workdir_config(workdir, config)   # after the inputs passed: no half-started workdirs

    # ---------------------------------------------------------------- model and optimizer
    model = make_model(config, model_cfg)
    tx = make_optimizer(train)
    train_step, eval_step = make_steps(model, tx, config, real_vocab)

    # ---------------------------------------------------------------- state
    example = {k: v[:1] for k, v in batches.batch(0).items()}
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.logical_rules(config)):
        init_sharded, abstract, shardings = build_state(config, mesh, model, tx, example)
        checkpointer = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep,
                                    keep_period=config.checkpoint.keep_period,
                                    async_save=config.checkpoint.async_save)
        state = restore_or_init(checkpointer, config, init_sharded, abstract, shardings,
                                model_cfg)
        host_memory.release_free_pages(state)  # the init program's temporaries, below it
        keys = train_keys(config)
        batch_shardings = {k: shd.batch_sharding(mesh) for k in keys}
        jit_train = jit_train_step(train_step, shardings, mesh, config)
        jit_eval = jax.jit(eval_step, in_shardings=(shardings.params, batch_shardings),
                           out_shardings=shd.replicated(mesh))

    start_step = int(jax.device_get(state.step))
    meta = {"model": json.loads(json.dumps(model_cfg.to_hf_dict("RobertaForMaskedLM"))),
            "real_vocab_size": real_vocab, "tokenizer": tokenizer_info,
            "config": json.loads(config.to_json()), "mesh": dict(mesh.shape),
            "process_count": jax.process_count(), "git_revision": git_revision()}

    # ---------------------------------------------------------------- throughput accounting
    tokens_per_step = train.batch_size * train.seq_len
    flops_per_token, peak_total, peak_source = _flops_accounting(config, model_cfg, example, mesh)

    writer = _MetricsWriter(workdir, enabled=is_main)

    def evaluate(params, step):
        result = _held_out_metrics(jit_eval, params, eval_batches, config.eval.batches, keys,
                                   mesh)
        writer.write(step, result)
        if is_main:
            print_above(f"step {step}: held-out MLM loss {result['eval_loss']:.3f} (perplexity "
                           f"{result['eval_perplexity']:,.1f}), masked-token accuracy "
                           f"{result['eval_accuracy']:.3f}")
        return result

    # ---------------------------------------------------------------- the loop
    bar = progress_bar(train.steps, start_step, "step", "pretrain", enabled=is_main)
    stream = batches.iterate(start_step, max(train.steps - start_step, 0))
    pending, window_start, last = [], time.perf_counter(), {}
    last_saved = start_step if start_step else None
    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.logical_rules(config)):
            for step in range(start_step, train.steps):
                if stop_after is not None and step - start_step >= stop_after:
                    break
                if preemption.should_stop(step):
                    log.warning("%s: saving step %d and stopping; run the same command again "
                                "to resume", preemption.reason, step)
                    break
                local = {k: v for k, v in next(stream).items() if k in keys}
                state, metrics = jit_train(state, shd.global_batch(local, mesh))
                pending.append(metrics)  # device arrays: no host sync until the log point
                done = step + 1
                if done % train.log_every == 0 or done == train.steps:
                    fetched = jax.device_get(pending)
                    elapsed = time.perf_counter() - window_start
                    last = _summarise(fetched, elapsed, tokens_per_step, flops_per_token,
                                      peak_total)
                    writer.write(done, last)
                    bar.set_postfix_str(f"loss {last['loss']:.3f} | "
                                        f"{last['tokens_per_second'] / 1e3:,.1f}k tok/s | "
                                        f"MFU {100 * last['mfu']:.1f}%")
                    _check_nonfinite(fetched, config, done, last_saved)
                    pending, window_start = [], time.perf_counter()
                bar.update(1)
                if eval_batches is not None and done % config.eval.every_steps == 0:
                    last.update(evaluate(state.params, done))
                if done % config.checkpoint.every_steps == 0:
                    writer.flush()   # the metrics of every saved step are in the workdir
                    checkpointer.save(done, state, meta)
                    last_saved = done
        # ---------------------------------------------------------------- final save, report
        step = int(jax.device_get(state.step))   # where the loop stopped, or train.steps
        if last_saved != step:
            writer.flush()
            checkpointer.save(step, state, meta, force=True)
        checkpointer.wait()
        if step >= train.steps and eval_batches is not None and \
                step % config.eval.every_steps != 0:
            with jax.set_mesh(mesh), nn.logical_axis_rules(shd.logical_rules(config)):
                last.update(evaluate(state.params, step))
    finally:
        bar.close()
        checkpointer.close()
        writer.close()
    if is_main:
        _plot_losses(workdir)
        where = f"stopped early at step {step} of {train.steps}" if step < train.steps \
            else f"done at step {step}"
        print(f"{where}; checkpoint in {workdir / 'checkpoints'}"
              + (f"; peak for MFU: {peak_source}" if step > start_step else ""))
    last["step"] = step
    return last


def _open_data(config, agreement: hosts.Agreement):
    """-> (training batches, held-out batches or None), this process's rows of them; every
    process must have the same prepared data."""
    train = config.train
    if not config.data.path:
        raise UserError("data.path is not set: give a prepared directory, e.g. "
                        "--config.data.path=prepared/")
    batches = PretrainingBatches(
        config.data.path, train.batch_size, train.seq_len, train.seed,
        config.data.mask_prob, config.data.packing, jax.process_index(),
        jax.process_count(), config.data.masking,
        segment_ids=config.model.document_attention)
    agreement.expect_same("data manifest", _digest(batches.corpus.manifest),
                          f"give every host the same prepared data at {config.data.path}")
    eval_batches = None
    if config.data.eval_path:
        eval_batches = PretrainingBatches(
            config.data.eval_path, train.batch_size, train.seq_len, seed=12345,
            mask_prob=config.data.mask_prob, packing=config.data.packing,
            process_index=jax.process_index(), process_count=jax.process_count(),
            masking=config.data.masking, segment_ids=config.model.document_attention)
    return batches, eval_batches


def _flops_accounting(config, model_cfg: RobertaConfig, example, mesh):
    """-> (training FLOPs per token, the mesh's peak FLOP/s, where the peak figure came from),
    for the MFU the loop reports."""
    train = config.train
    slots = example["masked_positions"].shape[1]
    flops_per_token = train_flops_per_token(
        model_cfg.num_hidden_layers, model_cfg.hidden_size, model_cfg.intermediate_size,
        train.seq_len, model_cfg.vocab_size, head_fraction=slots / train.seq_len)
    peak, peak_source = (config.peak_flops, "config") if config.peak_flops else \
        peak_flops_per_device(jax.devices()[0])
    return flops_per_token, peak * mesh.size, peak_source


def _held_out_metrics(jit_eval, params, eval_batches, num_batches: int, keys, mesh) -> dict:
    """Masked-LM loss, accuracy and perplexity over the first `num_batches` held-out batches
    (summed over the predicted tokens, then normalised)."""
    sums = {"loss_sum": 0.0, "correct": 0.0, "weight": 0.0}
    for i in range(num_batches):
        local = {k: v for k, v in eval_batches.batch(i).items() if k in keys}
        out = jax.device_get(jit_eval(params, shd.global_batch(local, mesh)))
        sums = {k: sums[k] + float(out[k]) for k in sums}
    loss = sums["loss_sum"] / max(sums["weight"], 1.0)
    return {"eval_loss": loss, "eval_accuracy": sums["correct"] / max(sums["weight"], 1.0),
            "eval_perplexity": math.exp(min(loss, 50.0))}


def train_keys(config) -> tuple[str, ...]:
    """The batch arrays the train step takes."""
    keys = ("input_ids", "attention_mask", "masked_positions", "masked_labels", "masked_weights")
    return keys + (("segment_ids",) if config.model.document_attention else ())


def _summarise(fetched, elapsed, tokens_per_step, flops_per_token, peak_total) -> dict:
    steps = len(fetched)
    mean = {k: float(np.mean([m[k] for m in fetched])) for k in
            ("loss", "accuracy", "grad_norm", "learning_rate")}
    tokens_per_second = steps * tokens_per_step / max(elapsed, 1e-9)
    return {**mean, "loss_bits": mean["loss"] / LN2,
            "skipped_nonfinite": int(sum(m["skipped_nonfinite"] for m in fetched)),
            "skipped_spike": int(sum(m["skipped_spike"] for m in fetched)),
            "tokens_per_second": tokens_per_second,
            "mfu": tokens_per_second * flops_per_token / peak_total,
            "step_seconds": elapsed / steps}


def _check_nonfinite(fetched, config, step, last_saved):
    bad = sum(m["skipped_nonfinite"] for m in fetched)
    if bad and config.train.nonfinite == "stop":
        raise UserError(f"the loss or gradients became NaN/Inf before step {step} (updates were "
                        f"not applied); the last good checkpoint is step {last_saved}. Lower "
                        "train.lr or set train.clip_norm, or use train.nonfinite=skip")
    if bad:
        log.warning("skipped %d update(s) with NaN/Inf loss or gradients before step %d", bad,
                    step)


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class _MetricsWriter:
    """metrics.jsonl (one object per logged step) and TensorBoard event files, process 0 only.

    Object storage cannot append to a file: for a `gs://` workdir both are written to a local
    mirror and uploaded whole by `flush`, which the loop calls before every checkpoint (so the
    metrics of every saved step are in the workdir), and at most every UPLOAD_EVERY_S seconds.
    """

    UPLOAD_EVERY_S = 60.0

    def __init__(self, workdir, enabled: bool):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.workdir = workdir
        self.remote = fs.is_remote(workdir)
        if self.remote:
            self._local = pathlib.Path(tempfile.mkdtemp(prefix="roberta_jax_metrics_"))
            if (workdir / "metrics.jsonl").exists():
                (self._local / "metrics.jsonl").write_bytes(
                    (workdir / "metrics.jsonl").read_bytes())
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            self._local = pathlib.Path(workdir)
        self._jsonl = open(self._local / "metrics.jsonl", "a", encoding="utf-8")
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(self._local / "tensorboard"))
        self._uploaded = time.monotonic()

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)
        self._tb.flush()
        if self.remote and time.monotonic() - self._uploaded > self.UPLOAD_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Upload the mirror (object storage only; local files are already flushed)."""
        if self.enabled and self.remote:
            self._jsonl.flush()
            self._tb.flush()
            fs.copy_tree(self._local, self.workdir)
            self._uploaded = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
            if self.remote:
                fs.copy_tree(self._local, self.workdir)
                shutil.rmtree(self._local, ignore_errors=True)


def _plot_losses(workdir):
    """loss.png: training loss (and held-out loss) against steps, from metrics.jsonl."""
    records = read_metrics(workdir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    held_out = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(*zip(*train), label="train MLM loss")
    if held_out:
        ax.plot(*zip(*held_out), "o-", label="held-out MLM loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    out = fs.as_path(workdir) / "loss.png"
    out.write_bytes(image.getvalue())
    return out


def read_metrics(workdir) -> list[dict]:
    """metrics.jsonl of a workdir; a run resumed after a crash may repeat steps: the later
    record of a step wins."""
    path = fs.as_path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    by_key = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed process
            continue
        by_key[(record["step"], "eval_loss" in record)] = record
    return [by_key[k] for k in sorted(by_key)]
