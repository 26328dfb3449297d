"""Document attention in pretraining: held-out MLM loss at equal steps with and without
`--config.model.document_attention`, on the demo corpus. Writes the "document-attention"
section of BENCHMARKS.md.

    python experiments/bench_document_attention.py                    # the section's figures
    python experiments/bench_document_attention.py --steps 40 --seeds 0 --no-write   # a check

Both sides run `roberta-jax pretrain` with the tiny config (2 layers, width 64, batch 16 x 128,
FULL-SENTENCES rows) on the demo's corpus (standard-library docstrings, its sentencepiece
tokenizer of 2000 ids, its held-out split), from the same seed. Each final model is scored on
every held-out row with the same masks (seed 12345), two ways:

- one document per row (`doc-sentences` rows): the inputs a fine-tuned or deployed model sees,
  and identical for both sides, so this is the fair comparison;
- FULL-SENTENCES rows, each side as it trained (packed documents attending across their
  boundaries, or not).
"""

import argparse
import json
import pathlib
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

from benchmarks_md import write_section

EVAL_SEED = 12345
SCORINGS = {"one document per row": "doc-sentences", "FULL-SENTENCES rows": "full-sentences"}


def prepare_demo_data(work: pathlib.Path) -> None:
    from roberta_jax import demo_corpus
    from roberta_jax.data import prepare, train_tokenizer
    if (work / "held_out_data" / "manifest.json").is_file():
        return
    train_docs, held_docs = demo_corpus.split_held_out(demo_corpus.stdlib_documents())
    demo_corpus.write_text(train_docs, work / "train.txt")
    demo_corpus.write_text(held_docs, work / "held_out.txt")
    train_tokenizer([str(work / "train.txt")], 2000, str(work / "tokenizer"),
                    doc_format="paragraphs")
    for name in ("train", "held_out"):
        prepare([str(work / f"{name}.txt")], str(work / "tokenizer"), str(work / f"{name}_data"),
                doc_format="paragraphs", progress=False)


def pretrain_side(work: pathlib.Path, documents: bool, seed: int, steps: int) -> pathlib.Path:
    from roberta_jax.train import pretrain
    from roberta_jax.train_config import load_config
    run = work / f"run-{'documents' if documents else 'rows'}-{seed}-{steps}"
    config = load_config("tiny", [f"--config.data.path={work / 'train_data'}",
                                  f"--config.train.steps={steps}",
                                  f"--config.train.seed={seed}",
                                  f"--config.model.document_attention={documents}",
                                  f"--config.checkpoint.every_steps={steps}"])
    pretrain(config, run)
    return run


def score(run: pathlib.Path, held_out: pathlib.Path) -> dict:
    """Mean MLM loss over every held-out row of each scoring, the same masks for every run."""
    import jax
    import numpy as np

    from roberta_jax.data.pipeline import PretrainingBatches
    from roberta_jax.export import load_workdir_state
    from roberta_jax.optim import make_optimizer
    from roberta_jax.train import make_model, make_steps, train_keys
    state, model_cfg, config, meta, _ = load_workdir_state(run)
    model = make_model(config, model_cfg)
    _, eval_step = make_steps(model, make_optimizer(config.train), config,
                              meta["real_vocab_size"])
    eval_step = jax.jit(eval_step)
    documents = config.model.document_attention
    result = {}
    for name, packing in SCORINGS.items():
        # One document per row is the same input with or without document attention.
        keys = train_keys(config) if packing == "full-sentences" else \
            [k for k in train_keys(config) if k != "segment_ids"]
        batches = PretrainingBatches(held_out, 16, config.train.seq_len, seed=EVAL_SEED,
                                     mask_prob=config.data.mask_prob, packing=packing,
                                     segment_ids=documents, progress=False)
        loss_sum = weight = 0.0
        for step in range(int(np.ceil(batches.steps_per_epoch))):
            batch = {k: v for k, v in batches.batch(step).items() if k in keys}
            out = jax.device_get(eval_step(state.params, batch))
            loss_sum, weight = loss_sum + float(out["loss_sum"]), weight + float(out["weight"])
        result[name] = loss_sum / weight
    return result


def report(args, results: dict, seconds: float) -> str:
    import jax
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = [
        f"## Document attention in pretraining (`python experiments/bench_document_attention.py"
        f"{' --steps ' + str(args.steps) if args.steps != 600 else ''}"
        f"{' --seeds ' + args.seeds if args.seeds != '0,1,2' else ''}`)",
        "",
        f"The tiny config (2 layers, width 64, batch 16 x 128, FULL-SENTENCES rows, lr 3e-3) "
        f"for {args.steps} steps on the demo corpus (standard-library docstrings, sentencepiece "
        f"of 2000 ids, the demo's held-out split), seeds {args.seeds}; each side's final model "
        "scored on every held-out row with the same masks. jax "
        f"{jax.__version__}, Python {platform.python_version()}, {seconds / 60:.0f} min.",
        "",
        "| side | " + " | ".join(f"{name}, mean (sd)" for name in SCORINGS) + " | per seed, "
        "one document per row |",
        "|---|" + "---:|" * len(SCORINGS) + "---|",
    ]
    for side, label in (("rows", "across documents (the paper's default)"),
                        ("documents", "`model.document_attention=True`")):
        cells = []
        for name in SCORINGS:
            values = [results[side][str(s)][name] for s in seeds]
            sd = f" ({statistics.stdev(values):.3f})" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{sd}")
        per_seed = " / ".join(f"{results[side][str(s)]['one document per row']:.3f}"
                              for s in seeds)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {per_seed} |")
    fair = "one document per row"
    diffs = [results["documents"][str(s)][fair] - results["rows"][str(s)][fair] for s in seeds]
    sd = f", sd {statistics.stdev(diffs):.3f}" if len(diffs) > 1 else ""
    lines += ["", f"Document attention minus attention across documents, one document per row: "
              f"{statistics.mean(diffs):+.3f} nats (mean over seeds of the same-seed "
              f"difference{sd}; negative favours document attention)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", default="", help="reuse this directory's data and runs")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="bench_document_attention_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prepare_demo_data(work)
    saved = work / f"results-{args.steps}.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for side in ("rows", "documents"):
            if str(seed) in results.get(side, {}):
                continue
            run = pretrain_side(work, side == "documents", seed, args.steps)
            results.setdefault(side, {})[str(seed)] = score(run, work / "held_out_data")
            print(f"seed {seed} {side}: {results[side][str(seed)]}", flush=True)
            saved.write_text(json.dumps(results, indent=1))
    body = report(args, results, time.perf_counter() - started)
    print(body)
    if not args.no_write:
        write_section("document-attention", body)


if __name__ == "__main__":
    main()
