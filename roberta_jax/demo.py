"""`roberta-jax demo`: the whole product on the embedded corpus, in a few minutes on a CPU.

    corpus (stdlib docstrings) -> sentencepiece tokenizer -> prepared shards -> pretraining
    (the same loop and configs as at scale) -> masked-word predictions on held-out text
    -> fine-tuned classifier (which package a docstring comes from) vs the majority baseline
    -> Hugging Face exports, reloaded in transformers when it is installed -> report.md

Every stage leaves its result in the workdir and is skipped when already done, so an
interrupted demo resumes where it stopped. The report is rebuilt from what the workdir holds
(pretraining's metrics.jsonl, the classifier's results.json, runs.jsonl with each run's wall
time), so it is the same however many runs it took.
"""

from __future__ import annotations

import collections
import json
import pathlib
import time

import numpy as np

from roberta_jax import demo_corpus

VOCAB_SIZE = 2000
CLASSES = 6            # the most frequent packages become the classification labels
DEV_EVERY = 10         # every 10th training docstring picks the classifier's best epoch


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(workdir: str, minutes: float = 4.0, max_documents: int | None = None,
             finetune_epochs: int = 4) -> dict:
    work = pathlib.Path(workdir)
    if work.exists() and not work.is_dir():
        from roberta_jax.errors import UserError
        raise UserError(f"{work}: is a file; give --workdir a directory (new or a demo's)")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    finished = False
    try:
        result = _run_stages(work, minutes, max_documents, finetune_epochs, started)
        finished = True
        return result
    finally:
        _record_run(work, time.perf_counter() - started, finished)


def _run_stages(work: pathlib.Path, minutes: float, max_documents: int | None,
                finetune_epochs: int, started: float) -> dict:
    from roberta_jax.data import prepare, train_tokenizer
    from roberta_jax.train import pretrain
    from roberta_jax.train_config import load_config

    _stage("1/6 corpus: docstrings of the Python standard library (parsed, not imported)")
    documents = demo_corpus.stdlib_documents()[:max_documents]
    train_docs, held_docs = demo_corpus.split_held_out(documents)
    demo_corpus.write_text(train_docs, work / "train.txt")
    demo_corpus.write_text(held_docs, work / "held_out.txt")
    size = sum(len(d.text) for d in documents) / 1e6
    print(f"{len(documents)} documents ({size:.1f} MB): {len(train_docs)} train, "
          f"{len(held_docs)} held out")

    _stage(f"2/6 tokenizer: sentencepiece, {VOCAB_SIZE} ids")
    if not (work / "tokenizer" / "sentencepiece.bpe.model").is_file():
        train_tokenizer([str(work / "train.txt")], VOCAB_SIZE, str(work / "tokenizer"),
                        doc_format="paragraphs")
    else:
        print("already trained")

    _stage("3/6 prepare: tokenize into shards")
    for name in ("train", "held_out"):
        prepare([str(work / f"{name}.txt")], str(work / "tokenizer"), str(work / f"{name}_data"),
                doc_format="paragraphs", progress=False)

    _stage(f"4/6 pretrain: the tiny config, about {minutes:g} minutes")
    config = load_config("tiny", [
        f"--config.data.path={work / 'train_data'}",
        f"--config.data.eval_path={work / 'held_out_data'}"])
    config.train.steps = _planned_steps(work, config, minutes)
    config.eval.every_steps = max(50, config.train.steps // 5)
    config.checkpoint.every_steps = max(50, config.train.steps // 10)
    pretrained = pretrain(config, work / "pretrain")
    if pretrained["step"] < config.train.steps:
        raise KeyboardInterrupt  # stopped early by a signal: the checkpoint is saved
    from roberta_jax.export import export_workdir
    if not (work / "hf_pretrained" / "config.json").is_file():
        export_workdir(work / "pretrain", work / "hf_pretrained")

    _stage("5/6 masked words on held-out sentences")
    examples = _masked_word_examples(work / "hf_pretrained", held_docs)
    for ex in examples:
        print(f"  {ex['masked']}\n      truth: {ex['truth']!r}   predicted: "
              + ", ".join(repr(p) for p in ex["predicted"]))

    _stage("6/6 fine-tune: which package does a docstring come from?")
    classification = _finetune_classifier(work, train_docs, held_docs, finetune_epochs)

    agreement = _reload_in_transformers(work)
    report = _write_report(work, examples, classification, agreement,
                           time.perf_counter() - started, config)
    print(f"\nreport: {report}")
    return {"pretrain": pretraining_figures(work / "pretrain"), "classification": classification,
            "transformers": agreement, "report": str(report)}


def _planned_steps(work: pathlib.Path, config, minutes: float) -> int:
    """Steps that fit the time budget on this machine, fixed at the first run (a resumed demo
    keeps its schedule)."""
    plan = work / "plan.json"
    if plan.is_file():
        return json.loads(plan.read_text())["steps"]
    seconds_per_step = _measure_step_seconds(config)
    steps = max(50, int(minutes * 60 / seconds_per_step) // 10 * 10)
    plan.write_text(json.dumps({"steps": steps, "seconds_per_step": seconds_per_step}) + "\n")
    print(f"{seconds_per_step * 1e3:.0f} ms per step here -> {steps} steps")
    return steps


def _measure_step_seconds(config) -> float:
    """Time a few steps of the real model and optimizer on random data (after compiling)."""
    import jax
    import jax.numpy as jnp
    import optax

    from roberta_jax.model import RobertaForMaskedLM
    from roberta_jax.train import model_config
    cfg = model_config(config, VOCAB_SIZE)
    model = RobertaForMaskedLM(cfg)
    b, length = config.train.batch_size, config.train.seq_len
    slots = int(config.data.mask_prob * length) + 1
    ids = jnp.ones((b, length), jnp.int32)
    positions = jnp.zeros((b, slots), jnp.int32)
    params = model.init(jax.random.key(0), ids, masked_positions=positions)["params"]
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            logits = model.apply({"params": p}, ids, masked_positions=positions,
                                 deterministic=False, rngs={"dropout": jax.random.key(0)}).logits
            return jnp.mean(jax.nn.logsumexp(logits, -1))
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = jax.block_until_ready(step(params, opt_state))
    start = time.perf_counter()
    for _ in range(10):
        params, opt_state = step(params, opt_state)
    jax.block_until_ready(params)
    # The real loop also feeds data and logs: allow a margin.
    return 1.2 * (time.perf_counter() - start) / 10


def _masked_word_examples(model_dir: pathlib.Path, held_docs, count: int = 6) -> list[dict]:
    """Mask one whole word in held-out sentences; the model's top 3 guesses beside the truth."""
    import roberta_jax as rj
    tokenizer = rj.load_tokenizer(model_dir)
    model, params = rj.from_pretrained(model_dir, task="masked-lm")
    rng = np.random.default_rng(0)
    examples = []
    for doc in held_docs:
        words = doc.text.split("\n")[0].split()
        if not 6 <= len(words) <= 30:
            continue
        # Words the vocabulary holds whole, so one <mask> stands for the whole word.
        candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) > 3
                      and len(tokenizer.encode(" " + w)) == 1]
        if not candidates:
            continue
        i = int(rng.choice(candidates))
        masked = " ".join(words[:i] + ["<mask>"] + words[i + 1:])
        ids = tokenizer(masked, max_length=model.config.max_sequence_length)
        position = ids.index(tokenizer.mask_id)
        logits = np.asarray(model.apply({"params": params}, np.asarray([ids], np.int32)).logits)
        scores = logits[0, position].copy()
        scores[list(tokenizer.special_ids)] = -np.inf
        top = np.argsort(-scores)[:3]
        examples.append({"masked": masked, "truth": words[i],
                         "predicted": [tokenizer.id_to_token(int(t)).replace("\u2581", " ").strip()
                                       or "(space)" for t in top]})
        if len(examples) == count:
            break
    return examples


def _finetune_classifier(work: pathlib.Path, train_docs, held_docs, epochs: int) -> dict:
    """Train on the training docstrings, pick the best epoch on every DEV_EVERY-th of them,
    and score that epoch once on the held-out docstrings (which chose nothing)."""
    from roberta_jax.finetune import finetune
    from roberta_jax.train_config import load_config
    counts = collections.Counter(d.package for d in train_docs)
    labels = [p for p, _ in counts.most_common(CLASSES)]
    splits = {"classify_train": [d for i, d in enumerate(train_docs) if i % DEV_EVERY],
              "classify_dev": train_docs[::DEV_EVERY], "classify_test": held_docs}
    for name, docs in splits.items():
        with open(work / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for d in docs:
                if d.package in labels:
                    f.write(json.dumps({"text": d.text.replace("\n", " "),
                                        "label": d.package}) + "\n")
    test_labels = [json.loads(line)["label"] for line in open(work / "classify_test.jsonl")]
    majority = collections.Counter(
        json.loads(line)["label"] for line in open(work / "classify_train.jsonl")
    ).most_common(1)[0][0]
    baseline = float(np.mean([label == majority for label in test_labels]))
    results_file = work / "classifier" / "results.json"
    summary = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if "test" not in summary:
        # The recipe is local files' default (scaled to this small model); only the number of
        # epochs is the demo's, to fit its time budget.
        config = load_config("finetune", [
            "--config.task=local", f"--config.train_file={work / 'classify_train.jsonl'}",
            f"--config.eval_file={work / 'classify_dev.jsonl'}",
            f"--config.test_file={work / 'classify_test.jsonl'}",
            f"--config.init={work / 'pretrain'}", f"--config.epochs={epochs}"])
        summary = finetune(config, work / "classifier")
    accuracy = summary["test"]["test_accuracy"]
    print(f"held-out accuracy {accuracy:.3f} (the epoch with the best dev accuracy, "
          f"{summary['median']['dev_accuracy']:.3f}) vs majority-class baseline {baseline:.3f} "
          f"('{majority}', {len(labels)} classes: {', '.join(labels)})")
    return {"accuracy": accuracy, "dev_accuracy": summary["median"]["dev_accuracy"],
            "baseline": baseline, "majority": majority, "labels": labels,
            "test_examples": len(test_labels),
            "history": summary["per_seed"][str(summary["seeds"][0])]["history"]}


def _reload_in_transformers(work: pathlib.Path) -> dict | None:
    """Load both exports in transformers and compare outputs with ours on held-out text."""
    try:
        import torch
        import transformers
    except ImportError:
        print("transformers is not installed: skipping the reload check "
              "(pip install -e '.[torch]')")
        return None
    import roberta_jax as rj
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    text = "Return a new list containing all items from the iterable in ascending order."
    result = {}
    for name, directory, task, cls in (
            ("pretrained (masked LM)", work / "hf_pretrained", "masked-lm", "AutoModelForMaskedLM"),
            ("classifier", work / "classifier" / "seed1" / "best", "sequence-classification",
             "AutoModelForSequenceClassification")):
        tokenizer = rj.load_tokenizer(directory)
        ids = np.asarray([tokenizer(text)], np.int32)
        model, params = rj.from_pretrained(directory, task=task)
        ours = np.asarray(model.apply({"params": params}, ids).logits)
        theirs_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        theirs_ids = theirs_tokenizer(text)["input_ids"]
        reference = getattr(transformers, cls).from_pretrained(directory).eval()
        with torch.no_grad():
            theirs = reference(torch.tensor(ids, dtype=torch.long)).logits.numpy()
        diff = float(np.max(np.abs(ours - theirs)))
        result[name] = {"max_abs_diff": diff, "same_token_ids": theirs_ids == ids[0].tolist()}
        print(f"transformers reloads the {name} export: max |ours - theirs| = {diff:.2e}, "
              f"tokenizers agree: {theirs_ids == ids[0].tolist()}")
    return result


def _record_run(work: pathlib.Path, seconds: float, finished: bool) -> None:
    """Append this run's wall time to runs.jsonl (an interrupted run's too)."""
    with open(work / "runs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"ended": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            "seconds": round(seconds, 1), "finished": finished}) + "\n")


def _past_runs(work: pathlib.Path) -> list[dict]:
    path = work / "runs.jsonl"
    if not path.is_file():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed process
            continue
    return runs


def pretraining_figures(pretrain_dir: pathlib.Path) -> dict:
    """The report's pretraining figures, from metrics.jsonl: the last logged window's training
    loss, the last held-out evaluation, and the median throughput of the logged windows (the
    first includes compiling)."""
    from roberta_jax.train import read_metrics
    records = read_metrics(pretrain_dir)
    train = [r for r in records if "loss" in r]
    held_out = [r for r in records if "eval_loss" in r]
    nan = float("nan")
    figures = {"step": max((r["step"] for r in records), default=0),
               "loss": train[-1]["loss"] if train else nan,
               "tokens_per_second": float(np.median([r["tokens_per_second"] for r in train]))
               if train else nan}
    for key in ("eval_loss", "eval_accuracy", "eval_perplexity"):
        figures[key] = held_out[-1][key] if held_out else nan
    return figures


def _write_report(work, examples, classification, agreement, seconds, config):
    import math

    from roberta_jax.train import _plot_losses
    _plot_losses(work / "pretrain")
    _plot_finetune(work, classification)
    ln_v = math.log(VOCAB_SIZE)
    pretrained = pretraining_figures(work / "pretrain")
    runs = _past_runs(work)
    total = sum(r["seconds"] for r in runs) + seconds
    interrupted = sum(not r["finished"] for r in runs)
    how = f" over {len(runs) + 1} runs" + (f" ({interrupted} interrupted)" if interrupted else "") \
        if runs else ""
    lines = [
        "# roberta-jax demo report", "",
        f"Wall time: {total / 60:.1f} minutes{how}. Corpus: Python standard-library "
        "docstrings.", "",
        "## Pretraining", "",
        f"The tiny config ({config.model.num_hidden_layers} layers, width "
        f"{config.model.hidden_size}), {pretrained['step']} steps of {config.train.batch_size} x "
        f"{config.train.seq_len} tokens, dynamic masking 15%.", "",
        "| | value |", "|---|---:|",
        f"| ln(V), uniform guess | {ln_v:.2f} |",
        f"| train MLM loss (last window) | {pretrained['loss']:.2f} |",
        f"| held-out MLM loss | {pretrained['eval_loss']:.2f} |",
        f"| held-out masked-token accuracy | {pretrained['eval_accuracy']:.3f} |",
        f"| held-out perplexity | {pretrained['eval_perplexity']:.1f} |",
        f"| tokens/s (median over logged windows) | {pretrained['tokens_per_second']:,.0f} |",
        "",
        "![pretraining loss](pretrain/loss.png)", "",
        "## Masked words on held-out sentences", ""]
    lines += [f"- {ex['masked']}  \n  truth **{ex['truth']}**, predicted "
              + ", ".join(f"`{p}`" for p in ex["predicted"]) for ex in examples]
    lines += ["", "## Fine-tuned classifier: which package a docstring comes from", "",
              f"{len(classification['labels'])} classes ({', '.join(classification['labels'])}), "
              f"{classification['test_examples']} held-out docstrings. The epoch is picked on "
              f"every {DEV_EVERY}th training docstring (kept out of fine-tuning), so the "
              "held-out docstrings score the model once.", "",
              "| | held-out accuracy |", "|---|---:|",
              f"| fine-tuned from the pretrained encoder | {classification['accuracy']:.3f} |",
              f"| majority class ('{classification['majority']}') | "
              f"{classification['baseline']:.3f} |", "",
              "![fine-tuning](finetune.png)", "", "## Exports", "",
              "- `hf_pretrained/`: masked LM + tokenizer (XLM-R layout)",
              "- `classifier/seed1/best/`: the classifier + tokenizer", ""]
    if agreement:
        lines += [f"- transformers reloads {name}: max |ours - theirs| = {v['max_abs_diff']:.2e}"
                  for name, v in agreement.items()]
    else:
        lines += ["- transformers not installed: reload check skipped"]
    report = work / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _plot_finetune(work, classification) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    history = classification["history"]
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(epochs, [h["dev_accuracy"] for h in history], "o-",
            label="dev accuracy (picks the epoch)")
    ax.axhline(classification["accuracy"], color="C1", label="held-out accuracy of that epoch")
    ax.axhline(classification["baseline"], color="gray", ls="--",
               label="majority baseline (held out)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(work / "finetune.png")
    plt.close(fig)

