"""Fine-tuning and prediction as users run them, against transformers on the same CPU, in one run:

- the whole `roberta-jax finetune` command (local jsonl, sentence classification) against a
  transformers PyTorch loop (AutoModelForSequenceClassification, DataCollatorWithPadding,
  torch AdamW with the same recipe: lr, 6% warmup then linear decay, weight decay 0.1 off
  biases and LayerNorms, Adam (0.9, 0.98, 1e-6), dropout on, dev accuracy every epoch, the
  best model saved): wall time of each whole command, steady-state examples/s (the epochs
  after the first) and the best dev accuracy;
- `roberta-jax predict` against a transformers `pipeline("text-classification")` on the fine-
  tuned model and the same inputs: the whole command, and examples/s of a second pass in a
  warm process.

Both sides start from the same random weights (a transformers model saved once: 4 layers,
width 256, byte-level BPE of 8000 ids trained here) and see the same data: sentences of the
Python standard library's docstrings (median 7 words, at most 20), labelled by whether they
contain the word "the". Each side runs in its own process pinned to the same `--cpus` cores.

    python experiments/bench_finetune.py                  # the full comparison; BENCHMARKS.md
    python experiments/bench_finetune.py --train 800 --dev 200 --epochs 2 --predict 400 --no-write
"""

import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
ROOT = pathlib.Path(__file__).resolve().parent.parent

MODEL = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024,
             max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5)
VOCAB, MAX_LENGTH, BATCH, LR = 8000, 128, 32, 2e-4
KEYWORD = "the"


# ------------------------------------------------------------------------------------- data

def sentences(count: int, seed: int = 0) -> list[str]:
    """Distinct docstring sentences of 3 to 20 words, drawn so that the median is 7 words."""
    import numpy as np

    from roberta_jax import demo_corpus
    found = {}
    for doc in demo_corpus.stdlib_documents():
        for paragraph in doc.text.split("\n"):
            for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
                if 3 <= len(sentence.split()) <= 20:
                    found.setdefault(sentence, None)
    pool = list(found)
    words = np.asarray([len(s.split()) for s in pool], float)
    # Short sentences drawn more often: weight 1 / words^2.2 puts the median at 7.
    weights = words ** -2.2
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pool), size=min(count, len(pool)), replace=False,
                        p=weights / weights.sum())
    return [pool[i] for i in chosen]


def label(sentence: str) -> int:
    return int(any(w.strip(".,;:()[]'\"`*").lower() == KEYWORD for w in sentence.split()))


def setup(work: pathlib.Path, train: int, dev: int, predict: int) -> dict:
    """Data files, the tokenizer and the shared initial model under `work`."""
    import numpy as np
    import torch
    import transformers

    from roberta_jax.data.train_tokenizer import train_tokenizer
    texts = sentences(train + dev + predict)
    parts = {"train": texts[:train], "dev": texts[train:train + dev],
             "predict": texts[train + dev:]}
    for name, part in parts.items():
        with open(work / f"{name}.jsonl", "w") as f:
            for text in part:
                f.write(json.dumps({"text": text, "label": str(label(text))}) + "\n")
    (work / "corpus.txt").write_text("\n".join(parts["train"]) + "\n")
    train_tokenizer([str(work / "corpus.txt")], VOCAB, str(work / "tokenizer"), kind="bpe")
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=VOCAB, num_labels=2,
                                        id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1},
                                        **MODEL)
    transformers.RobertaForSequenceClassification(config).save_pretrained(work / "init")
    for f in (work / "tokenizer").iterdir():
        shutil.copy(f, work / "init" / f.name)
    words = [len(t.split()) for t in texts]
    return {"sentences": len(texts), "median_words": float(np.median(words)),
            "max_words": int(max(words)),
            "positive": float(np.mean([label(t) for t in parts["train"]]))}


# ----------------------------------------------------------------------------- the two sides

def _run(command: list[str], cpus: int, **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of a whole command (on the cores main() pinned this process to)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=str(cpus), JAX_PLATFORMS="cpu",
               TOKENIZERS_PARALLELISM="false")
    env.pop("XLA_FLAGS", None)
    kwargs.setdefault("stdout", subprocess.PIPE)
    start = time.perf_counter()
    out = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True, **kwargs)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"{' '.join(command[:4])}... failed (exit {out.returncode}):\n"
                           f"{out.stderr[-3000:]}")
    return seconds, out


def ours_finetune(work: pathlib.Path, epochs: int, cpus: int) -> dict:
    shutil.rmtree(work / "ours", ignore_errors=True)
    seconds, _ = _run([sys.executable, "-m", "roberta_jax.cli", "finetune",
                       "--config", str(ROOT / "configs" / "glue.py"), "--workdir",
                       str(work / "ours"), "--config.task=local",
                       f"--config.train_file={work / 'train.jsonl'}",
                       f"--config.eval_file={work / 'dev.jsonl'}",
                       f"--config.init={work / 'init'}", "--config.seeds=(1,)",
                       f"--config.epochs={epochs}", f"--config.batch_size={BATCH}",
                       f"--config.max_length={MAX_LENGTH}", f"--config.lr={LR}",
                       "--config.progress=False"], cpus)
    history = json.loads((work / "ours" / "results.json").read_text())["per_seed"]["1"]["history"]
    return {"seconds": seconds, "dev_accuracy": max(h["dev_accuracy"] for h in history),
            "epoch_examples_per_second": [h["examples_per_second"] for h in history]}


def theirs_finetune(work: pathlib.Path, epochs: int, cpus: int) -> dict:
    seconds, out = _run([sys.executable, __file__, "--torch-loop", str(work), str(epochs)], cpus)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, **result}


def torch_loop(work: pathlib.Path, epochs: int) -> None:
    """The transformers side: the loop of transformers' run_glue without the Trainer's extras."""
    import torch
    import transformers
    from torch.utils.data import DataLoader
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(work / "init")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(work / "init")

    def encoded(name):
        rows = [json.loads(line) for line in open(work / f"{name}.jsonl")]
        features = tokenizer([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH)
        return [{"input_ids": ids, "labels": int(r["label"])}
                for ids, r in zip(features["input_ids"], rows)]

    train, dev = encoded("train"), encoded("dev")
    collator = transformers.DataCollatorWithPadding(tokenizer)
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, collate_fn=collator,
                        drop_last=True)
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters()
             if not (n.endswith("bias") or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=LR, betas=(0.9, 0.98), eps=1e-6)
    steps = len(loader) * epochs
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    rates, accuracies, best = [], [], -1.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for batch in loader:
            model(**batch).loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        rates.append(len(loader) * BATCH / (time.perf_counter() - start))
        model.eval()
        correct = 0
        with torch.no_grad():
            for batch in DataLoader(dev, batch_size=BATCH, collate_fn=collator):
                labels = batch.pop("labels")
                correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        accuracies.append(correct / len(dev))
        if accuracies[-1] > best:
            best = accuracies[-1]
            model.save_pretrained(work / "theirs-best")
    print(json.dumps({"dev_accuracy": best, "epoch_examples_per_second": rates}))


def interleaved_steps(work: pathlib.Path, steps: int) -> None:
    """Both training steps in one process, alternating on the same batches of 32 training
    examples (transformers' padded by its collator, ours packed as finetune packs them, every
    planned row count compiled first): the steady state with any busy spell of the machine
    falling on both alike. Prints the median seconds of each."""
    import statistics

    import jax
    import ml_collections
    import numpy as np
    import torch
    import transformers

    from roberta_jax import sharding as shd
    from roberta_jax import task_kinds, tasks
    from roberta_jax.data import pack_examples as pack
    from roberta_jax.data.rows import bucket_length
    from roberta_jax.data.tokenizer import load_tokenizer
    from roberta_jax.finetune import _device_batch, make_steps, recipe
    from roberta_jax.host_memory import keep_freed_memory, run_on_calling_thread
    from roberta_jax.optim import make_optimizer
    from roberta_jax.weights import for_finetuning
    keep_freed_memory()  # as the roberta-jax command does (one allocator for both sides)
    run_on_calling_thread()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = [json.loads(line) for line in open(work / "train.jsonl")][:BATCH * steps]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(work / "init")
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(work / "init")
    hf_model.train()
    optimizer = torch.optim.AdamW(hf_model.parameters(), lr=LR, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=0.1)
    collator = transformers.DataCollatorWithPadding(hf_tokenizer)
    ids = hf_tokenizer([r["text"] for r in rows], truncation=True,
                       max_length=MAX_LENGTH)["input_ids"]
    theirs = [collator([{"input_ids": ids[i], "labels": int(rows[i]["label"])}
                        for i in range(start, start + BATCH)])
              for start in range(0, len(rows), BATCH)]

    def their_step(batch):
        hf_model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    settings = ml_collections.ConfigDict(dict(
        lr=LR, warmup_ratio=0.06, b2=0.98, eps=1e-6, weight_decay=0.1, weight_decay_mask="hf",
        clip_norm=0.0, tfds_data_dir=""))
    task = tasks.local_task("classification", str(work / "train.jsonl"))
    kind = task_kinds.for_task(task, settings)
    tokenizer = load_tokenizer(work / "init")
    data, names = kind.read("train", None)
    split = kind.encode(tokenizer, data, MAX_LENGTH, names)
    model, params = for_finetuning(str(work / "init"), kind.head, 2, names, 0, "",
                                   tokenizer.vocab_size, np.float32)
    tx = make_optimizer(recipe(settings, task, 1000))
    train_step = make_steps(model, tx, kind)[0]
    step = jax.jit(lambda p, o, b, k, s: train_step(p, o, b, jax.random.fold_in(k, s)),
                   donate_argnums=(0, 1))
    buckets = (32, 64, MAX_LENGTH)
    order = np.arange(len(rows))
    plan = pack.plan(kind, split, BATCH, order, buckets, lambda n: bucket_length(n, buckets))
    mesh = shd.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
    ours = [_device_batch(b, mesh)
            for b in pack.train_batches(kind, split, plan, BATCH, order, tokenizer.pad_id)]
    state = [params, tx.init(params), jax.random.key(0)]
    number = [0]  # steps taken, for the step's dropout key

    def our_step(batch):
        state[0], state[1], loss = step(state[0], state[1], batch, state[2], np.int32(number[0]))
        number[0] += 1
        loss.block_until_ready()

    shapes = {b["input_ids"].shape: b for b in ours}
    for batch in list(shapes.values()) + ours[:2]:  # every shape compiled first
        our_step(batch)
    for batch in theirs[:2]:
        their_step(batch)
    times = {"ours": [], "theirs": []}
    for ours_batch, their_batch in zip(ours, theirs):
        for side, run, batch in (("theirs", their_step, their_batch),
                                 ("ours", our_step, ours_batch)):
            started = time.perf_counter()
            run(batch)
            times[side].append(time.perf_counter() - started)
    print(json.dumps({side: statistics.median(t) for side, t in times.items()}
                     | {"row_counts": list(plan.row_counts), "row_length": plan.row_length}))


def ours_predict_command(work: pathlib.Path, cpus: int) -> float:
    with open(work / "ours-predictions.jsonl", "w") as out:
        seconds, _ = _run([sys.executable, "-m", "roberta_jax.cli", "predict", "--model",
                           str(work / "ours" / "seed1" / "best"), "--input",
                           str(work / "predict.jsonl")], cpus, stdout=out)
    return seconds


def pipeline_command(work: pathlib.Path, cpus: int) -> float:
    seconds, _ = _run([sys.executable, __file__, "--pipeline", str(work), "1"], cpus)
    return seconds


def warm_rate(work: pathlib.Path, side: str, cpus: int) -> float:
    """Examples/s of a second pass over the inputs in a process that has made one already."""
    _, out = _run([sys.executable, __file__, f"--{side}", str(work), "2"], cpus)
    return json.loads(out.stdout.strip().splitlines()[-1])["examples_per_second"]


def predict_passes(work: pathlib.Path, side: str, passes: int) -> None:
    """`passes` passes over the prediction inputs; prints the examples/s of the last one."""
    texts = [json.loads(line)["text"] for line in open(work / "predict.jsonl")]
    model_dir = work / "ours" / "seed1" / "best"
    if side == "pipeline":
        import torch
        import transformers
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        pipe = transformers.pipeline("text-classification", model=str(model_dir), device=-1,
                                     batch_size=BATCH)

        def once():
            return pipe(texts)
    else:
        from roberta_jax.predict import Predictor
        predictor = Predictor(str(model_dir), batch_size=BATCH)

        def once():
            return list(predictor([{"text": t} for t in texts]))
    for _ in range(passes):
        start = time.perf_counter()
        results = once()
        seconds = time.perf_counter() - start
    assert len(results) == len(texts)
    print(json.dumps({"examples_per_second": len(texts) / seconds}))


# ----------------------------------------------------------------------------------- report

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--dev", type=int, default=500)
    parser.add_argument("--predict", type=int, default=2000, help="inputs for predict")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="cores each side is pinned to")
    parser.add_argument("--work", help="keep the files here (default: a temporary directory)")
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md")
    parser.add_argument("--torch-loop", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--ours", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--interleaved", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=40,
                        help="steps of each side in the interleaved steady state")
    args = parser.parse_args()
    if args.torch_loop:
        return torch_loop(pathlib.Path(args.torch_loop[0]), int(args.torch_loop[1]))
    if args.interleaved:
        return interleaved_steps(pathlib.Path(args.interleaved[0]), int(args.interleaved[1]))
    for side in ("pipeline", "ours"):
        if getattr(args, side):
            work, passes = getattr(args, side)
            return predict_passes(pathlib.Path(work), side, int(passes))
    # This process and every command it runs stay on the first --cpus cores.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
    with tempfile.TemporaryDirectory() as temporary:
        work = pathlib.Path(args.work or temporary)
        work.mkdir(parents=True, exist_ok=True)
        data = setup(work, args.train, args.dev, args.predict)
        print(f"data: {data}", flush=True)
        theirs = theirs_finetune(work, args.epochs, args.cpus)
        print(f"transformers loop: {theirs}", flush=True)
        ours = ours_finetune(work, args.epochs, args.cpus)
        print(f"roberta-jax finetune: {ours}", flush=True)
        _, out = _run([sys.executable, __file__, "--interleaved", str(work), str(args.steps)],
                      args.cpus)
        interleaved = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"interleaved steps: {interleaved}", flush=True)
        predict = {"ours_command": ours_predict_command(work, args.cpus),
                   "pipeline_command": pipeline_command(work, args.cpus),
                   "ours_rate": warm_rate(work, "ours", args.cpus),
                   "pipeline_rate": warm_rate(work, "pipeline", args.cpus)}
        print(f"predict: {predict}", flush=True)
    text = report(args, data, ours, theirs, predict, interleaved)
    print(text)
    if not args.no_write:
        from benchmarks_md import write_section
        write_section("finetune", text)


def _steady(rates: list[float]) -> float:
    later = rates[1:] or rates
    return sum(later) / len(later)


def report(args, data, ours, theirs, predict, interleaved) -> str:
    import jax
    import torch
    import transformers
    from benchmarks_md import cpu
    ours_steady, theirs_steady = _steady(ours["epoch_examples_per_second"]), _steady(
        theirs["epoch_examples_per_second"])
    lines = [
        "## Fine-tuning and prediction against transformers on this CPU "
        "(`python experiments/bench_finetune.py`)", "",
        f"Sentence classification from local jsonl: {args.train} training and {args.dev} dev "
        f"sentences of the standard library's docstrings (median {data['median_words']:.0f} "
        f"words, at most {data['max_words']}; label: contains \"{KEYWORD}\", "
        f"{data['positive']:.0%} positive), byte-level BPE of {VOCAB} ids, 4 layers, width 256, "
        f"the same random initial weights; batch {BATCH}, max_length {MAX_LENGTH}, lr {LR:g}, "
        f"{args.epochs} epochs with dev accuracy after each, fp32, dropout on; each side pinned "
        f"to {args.cpus} cores ({os.cpu_count()} on the machine: {cpu()}). Whole command: the "
        "process's "
        "wall time (start-up, tokenizing, compiling, training, evaluating, saving). Steady "
        "state: training examples/s over the epochs after the first. transformers: "
        "AutoModelForSequenceClassification with DataCollatorWithPadding and torch AdamW. "
        f"jax {jax.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {platform.python_version()}.", "",
        "| | roberta-jax | transformers | ratio (target) |", "|---|---:|---:|---:|",
        f"| fine-tune, whole command s | {ours['seconds']:.1f} | {theirs['seconds']:.1f} | "
        f"{ours['seconds'] / theirs['seconds']:.2f}x the time (<= 0.8) |",
        f"| fine-tune, steady examples/s | {ours_steady:,.0f} | {theirs_steady:,.0f} | "
        f"{ours_steady / theirs_steady:.2f}x (>= 2) |",
        f"| fine-tune, steady examples/s, the two steps interleaved on the same batches | "
        f"{BATCH / interleaved['ours']:,.0f} | {BATCH / interleaved['theirs']:,.0f} | "
        f"{interleaved['theirs'] / interleaved['ours']:.2f}x (>= 2) |",
        f"| best dev accuracy | {ours['dev_accuracy']:.3f} | {theirs['dev_accuracy']:.3f} | "
        f"{ours['dev_accuracy'] - theirs['dev_accuracy']:+.3f} (+-0.02) |",
        f"| predict {args.predict} inputs, whole command s | {predict['ours_command']:.1f} | "
        f"{predict['pipeline_command']:.1f} | "
        f"{predict['ours_command'] / predict['pipeline_command']:.2f}x the time |",
        f"| predict, warm examples/s | {predict['ours_rate']:,.0f} | "
        f"{predict['pipeline_rate']:,.0f} | "
        f"{predict['ours_rate'] / predict['pipeline_rate']:.2f}x (>= 2) |", "",
        "Per-epoch training examples/s: roberta-jax "
        + ", ".join(f"{r:,.0f}" for r in ours["epoch_examples_per_second"])
        + "; transformers " + ", ".join(f"{r:,.0f}" for r in theirs["epoch_examples_per_second"])
        + f". Interleaved: {args.steps} steps each, alternating in one process (ours packed "
        f"in rows of {interleaved['row_length']} tokens, "
        f"{'/'.join(map(str, interleaved['row_counts']))} rows a batch, every shape compiled "
        "first), so that a busy spell of the machine falls on both alike"
        + ". transformers' side of predict: `pipeline(\"text-classification\", batch_size="
        f"{BATCH})` on the model roberta-jax fine-tuned."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
