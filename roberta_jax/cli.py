"""The `roberta-jax` command. Each subcommand parses its flags and calls the library; errors a
user can fix are printed as one line (a traceback only with --debug) with a non-zero exit."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from roberta_jax.errors import UserError
from roberta_jax.host_memory import keep_freed_memory, run_on_calling_thread
from roberta_jax.model import HEADS
from roberta_jax.progress import close_bars, print_above

EXIT_USER_ERROR = 1
DESCRIPTION = (
    "RoBERTa in JAX/Flax: train a tokenizer, prepare a corpus, pretrain, fine-tune (GLUE, SQuAD, "
    "NER, RACE or your own files), predict, export and convert to and from Hugging Face and "
    "fairseq. Mistakes you can fix are reported in one line (a traceback only with --debug) "
    "with exit status 1 (2 for usage errors).")


def _convert(args) -> None:
    from roberta_jax.pretrained import convert
    out = convert(args.src, args.dst, task=args.task, head=args.head)
    print(f"wrote {out}")


def _train_tokenizer(args) -> None:
    from roberta_jax.data.train_tokenizer import train_tokenizer
    train_tokenizer(args.input, args.vocab_size, args.output, kind=args.type,
                    doc_format=args.format, text_field=args.text_field,
                    max_sentences=args.max_sentences, spm_model_type=args.spm_model_type,
                    character_coverage=args.character_coverage, byte_fallback=args.byte_fallback,
                    tfds_data_dir=args.tfds_data_dir, tfds_split=args.tfds_split,
                    max_chars=args.max_sentence_chars, seed=args.seed, workers=args.workers)


def _prepare(args) -> None:
    from roberta_jax.data.prepare import prepare
    prepare(args.input, args.tokenizer, args.output, doc_format=args.format,
            text_field=args.text_field, tfds_data_dir=args.tfds_data_dir,
            tfds_split=args.tfds_split, workers=args.workers, seq_lens=tuple(args.seq_len),
            shard_tokens=args.shard_tokens)


def _add_input_flags(p) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB",
                   help="text, .jsonl or .gz files, globs, local or gs:// "
                   "('gs://bucket/corpus/*.jsonl.gz'), or tfds:NAME (e.g. "
                   "tfds:wikipedia/20230601.en)")
    p.add_argument("--format", choices=("lines", "paragraphs"), default="lines",
                   help="text files: one document per line, or documents separated by blank "
                   "lines (default: lines)")
    p.add_argument("--text-field", default="text", help="jsonl / tfds field holding the text")
    p.add_argument("--tfds-data-dir", help="data_dir of prepared tfds datasets (default: "
                   "tfds's own, ~/tensorflow_datasets)")
    p.add_argument("--tfds-split", default="train", help="tfds:NAME inputs: the split to read")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")


def _pretrain(args) -> None:
    from roberta_jax.train import pretrain
    from roberta_jax.train_config import load_config
    config = load_config(args.config, args.overrides)
    pretrain(config, args.workdir)


EXIT_DOES_NOT_FIT = 3


def _plan(args) -> int:
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
        import jax
        jax.config.update("jax_platforms", "cpu")   # only compiles: never take a local TPU/GPU
    import json

    from roberta_jax import plan
    from roberta_jax.train_config import load_config
    if not 0 < args.mfu <= 1:
        raise UserError(f"--mfu {args.mfu}: give a fraction of the peak, e.g. 0.4")
    config = load_config(args.config, args.overrides)
    target = plan.find_slice(args.topology, args.num_slices)
    if args.search:
        def progress(report):
            mesh = report["mesh"]
            print(f"tried data={mesh['data']} fsdp={mesh['fsdp']} tensor={mesh['tensor']} "
                  f"remat={report['remat_policy'] or 'none'} grad_accum={report['grad_accum']}: "
                  f"{'fits' if report['fits'] else 'does not fit'}"
                  + (f" ({report['compile_seconds']:.0f} s)" if report["compile_seconds"] else ""),
                  file=sys.stderr, flush=True)
        results = plan.search(config, target, mfu=args.mfu, max_compiles=args.max_compiles,
                              config_name=args.config, on_result=progress)
        if args.json:
            for report in results:
                print(json.dumps(report))
        else:
            print(f"{args.config} on {target.describe()}: {len(results)} setting(s) tried, "
                  "what fits first, fastest estimate first")
            print(plan.format_search(results))
            if results and results[0]["fits"]:
                print("\nbest:\n" + plan.format_report(results[0]))
        return 0 if results and results[0]["fits"] else EXIT_DOES_NOT_FIT
    report = plan.plan(config, target, mfu=args.mfu, config_name=args.config)
    print(json.dumps(report) if args.json else plan.format_report(report))
    return 0 if report["fits"] else EXIT_DOES_NOT_FIT


def _finetune(args) -> None:
    from roberta_jax.finetune import finetune
    from roberta_jax.train_config import load_config
    finetune(load_config(args.config, args.overrides), args.workdir)


def _demo(args) -> None:
    from roberta_jax.demo import run_demo
    run_demo(args.workdir, minutes=args.minutes, max_documents=args.max_documents,
             finetune_epochs=args.finetune_epochs)


def _predict(args) -> None:
    from roberta_jax.predict import predict, read_inputs
    predict(args.model, read_inputs(args.input), text_field=args.text_field,
            pair_field=args.pair_field, batch_size=args.batch_size, top_k=args.top_k,
            allow_no_answer=args.allow_no_answer, output=args.output)


def _export(args) -> None:
    from roberta_jax.export import export_workdir
    export_workdir(args.workdir, args.output, step=args.step, tokenizer=args.tokenizer)


def _parity(args) -> None:
    from roberta_jax.parity import check
    tolerance = 1e-5
    worst = check(seed=args.seed)
    for name, diff in worst.items():
        print(f"{name:45s} max |ours - transformers| = {diff:.2e}")
    bad = [name for name, diff in worst.items() if diff > tolerance]
    if bad:
        raise UserError(f"outputs differ from transformers by more than {tolerance}: "
                        f"{', '.join(bad)}")
    print(f"all {len(worst)} outputs match transformers within {tolerance} (fp32)")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line (with where to find help), like every other error; every
    option's default in the help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says what happens
    without it; descriptions and epilogs keep their line breaks (each line is wrapped)."""

    def _fill_text(self, text, width, indent):
        def fill(line):  # an indented line (an example command) continues further in
            lead = len(line) - len(line.lstrip())
            return textwrap.fill(line, width, initial_indent=indent,
                                 subsequent_indent=indent + " " * (lead + 4 if lead else 0))
        return "\n".join(fill(line) if line else "" for line in text.splitlines())

    def _get_help_string(self, action):
        text = action.help or ""
        shown = not (action.default is None or action.default is False
                     or action.default == argparse.SUPPRESS or action.required)
        if shown and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _config_help(example: str) -> str:
    from roberta_jax.train_config import shipped_configs
    return (f"a config shipped with the package ({', '.join(shipped_configs())}; e.g. "
            f"{example}) or the path of a config .py file")


def build_parser() -> argparse.ArgumentParser:
    from roberta_jax.tasks import KINDS, LOCAL_RECIPE
    parser = _Parser(prog="roberta-jax", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "convert", help="convert a Hugging Face directory or fairseq model.pt to a Hugging Face "
        "directory (safetensors)")
    p.add_argument("src", help="Hugging Face directory, fairseq model.pt, or a directory with one")
    p.add_argument("dst", help="new output directory")
    p.add_argument("--task", choices=sorted(HEADS), help="model head to export (default: the "
                   "source's own)")
    p.add_argument("--head", help="fairseq classification head to export, when it has several "
                   "(default: its only one)")
    p.set_defaults(run=_convert)

    p = commands.add_parser(
        "demo", help="the whole product on the embedded corpus (stdlib docstrings): tokenizer, "
        "pretraining, masked words, a fine-tuned classifier, exports; re-run to resume")
    p.add_argument("--workdir", default="roberta-jax-demo",
                   help="where every stage leaves its results; re-run to resume")
    p.add_argument("--minutes", type=float, default=4.0,
                   help="pretraining time budget, in minutes")
    p.add_argument("--max-documents", type=int,
                   help="use only the first N documents of the corpus (default: all)")
    p.add_argument("--finetune-epochs", type=int, default=4,
                   help="epochs of the fine-tuned classifier")
    p.set_defaults(run=_demo)

    p = commands.add_parser("train-tokenizer", help="train a sentencepiece (XLM-R layout) or "
                            "byte-level BPE (roberta-base layout) tokenizer on a corpus")
    _add_input_flags(p)
    p.add_argument("--vocab-size", type=int, required=True,
                   help="ids in all, specials and <mask> included")
    p.add_argument("--output", required=True,
                   help="new directory for the tokenizer files (local or gs://)")
    p.add_argument("--type", choices=("sentencepiece", "bpe"), default="sentencepiece",
                   help="sentencepiece (XLM-R layout) or bpe (byte-level, roberta-base layout)")
    p.add_argument("--max-sentences", type=int, default=5_000_000,
                   help="train on at most this many sentences, drawn uniformly from the whole "
                   "input (default: 5,000,000)")
    p.add_argument("--max-sentence-chars", type=int, default=2000,
                   help="text is cut into sentences, and longer sentences into chunks of at "
                   "most this many characters (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument("--spm-model-type", choices=("unigram", "bpe"), default="unigram",
                   help="sentencepiece's own algorithm")
    p.add_argument("--character-coverage", type=float, default=0.9995,
                   help="sentencepiece: share of the corpus's characters the vocabulary covers "
                   "(the rarest others become <unk>, or bytes with --byte-fallback)")
    p.add_argument("--byte-fallback", action="store_true",
                   help="sentencepiece: spell unseen characters as bytes instead of <unk>")
    p.set_defaults(run=_train_tokenizer)

    p = commands.add_parser("prepare", help="tokenize a corpus into shards for pretraining")
    _add_input_flags(p)
    p.add_argument("--tokenizer", required=True,
                   help="sentencepiece .model, or a directory with vocab.json + merges.txt, "
                   "tokenizer.json or sentencepiece.bpe.model")
    p.add_argument("--output", required=True,
                   help="directory for the shards, local or gs:// (re-run to resume)")
    p.add_argument("--seq-len", type=int, nargs="+", default=[512], metavar="N",
                   help="sequence lengths to index blocks for up front (default: 512); other "
                   "lengths are indexed on first use. Re-run with more to add them")
    p.add_argument("--shard-tokens", type=int, default=1 << 24,
                   help="tokens per output shard, about (default: 16777216)")
    p.set_defaults(run=_prepare)

    p = commands.add_parser(
        "pretrain", help="pretrain (or resume) a RoBERTa on a prepared corpus",
        epilog="Override any config field with --config.SECTION.FIELD=VALUE, e.g. "
        "--config.train.steps=1000 --config.data.path=prepared/")
    p.add_argument("--config", required=True, help=_config_help("--config base"))
    p.add_argument("--workdir", required=True,
                   help="checkpoints, metrics and plots; re-run to resume")
    p.set_defaults(run=_pretrain, overrides_allowed=True)

    p = commands.add_parser(
        "plan", help="will a pretraining config fit a TPU slice, on which mesh, and what will a "
        "step cost? Compiles the real train step for the slice here, no TPU needed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Compile the train step `pretrain` runs (the same functions and config: mesh, batch, remat,
grad_accum, dtype, scan) ahead of time for a TPU slice that libtpu describes (pip install
'roberta_jax[tpu]'; no TPU needed), and print per chip:
  - parameters, optimizer state, temporaries (activations, gradients) and the total, from
    XLA's memory_analysis(), against the HBM XLA lets a program use: fits, and the headroom,
    or why not;
  - FLOPs per step by flops.py's count and as compiled (XLA's count, scanned layers and gradient
    accumulation counted once per trip);
  - tokens per step, step time, tokens/s and days for train.steps at --mfu of the chip's
    dense bf16 peak;
  - the bytes each kind of collective moves per step.
Exit status: 0 fits, 3 does not fit, 1 an error (one line).""",
        epilog="""\
Override any config field with --config.SECTION.FIELD=VALUE, e.g. --config.mesh.fsdp=8
--config.train.grad_accum=2 --config.model.remat_policy=full.

examples:
  roberta-jax plan --config configs/base.py --topology v5p-128
  roberta-jax plan --config configs/large.py --topology v5e-256 --search
  roberta-jax plan --config configs/xlmr_base.py --topology v4-128 --num-slices 2 --json
  roberta-jax plan --config configs/tiny.py --topology cpu --config.data.path=prepared/""")
    p.add_argument("--config", required=True, help=_config_help("--config base"))
    p.add_argument("--topology", required=True, metavar="NAME",
                   help="a Cloud TPU name (v4-128, v5p-128, v5e-256 = v5litepod-256, v6e-64: v4 "
                   "and v5p count TensorCores, two per chip; v5e and v6e count chips), a libtpu "
                   "topology string (v5p:4x4x4, v5e:16x16: chips per side), or cpu (this host's "
                   "own devices, to check a plan against a real run)")
    p.add_argument("--num-slices", type=int, default=1, metavar="N",
                   help="N such slices joined over the data-center network (multislice); the "
                   "mesh's data axis spans them (mesh.dcn_data; default: 1)")
    p.add_argument("--search", action="store_true",
                   help="try mesh shapes (data / fsdp / tensor), remat policies and grad_accum, "
                   "compiling each, and list what fits, fastest estimate first (fewest compiled "
                   "FLOPs, then fewest collective bytes)")
    p.add_argument("--max-compiles", type=int, default=12, metavar="N",
                   help="--search: stop after N compiles (each takes seconds to minutes; "
                        "default: 12)")
    p.add_argument("--mfu", type=float, default=0.4,
                   help="model FLOPs utilisation assumed for the step time (default 0.4)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line (per setting tried, with --search)")
    p.set_defaults(run=_plan, overrides_allowed=True)

    p = commands.add_parser(
        "finetune",
        help="fine-tune on GLUE, SQuAD, CoNLL-2003 NER, RACE, or your own files of any kind: "
        + ", ".join(KINDS), description="Fine-tune a model and keep its best epoch per seed.",
        epilog="Override fields with --config.FIELD=VALUE (every field is listed and commented "
        "in roberta_jax/finetune_config.py), e.g.\n"
        "  --config.task=rte --config.init=roberta.large/\n"
        "  --config.task=local --config.kind=KIND --config.train_file=F --config.eval_file=F\n"
        f"Kinds of local files: {', '.join(KINDS)}.\n"
        "Recipes (unset lr / batch_size / epochs / weight_decay / seeds): published tasks use "
        "their published recipe (GLUE: fairseq's, 5 seeds);\n"
        f"local files: {LOCAL_RECIPE}.")
    p.add_argument("--config", required=True, help=_config_help("--config finetune"))
    p.add_argument("--workdir", required=True, help="checkpoints, best model, predictions; "
                   "re-run to resume")
    p.set_defaults(run=_finetune, overrides_allowed=True)

    p = commands.add_parser("predict", help="JSON lines of labels and scores, tags and entities, "
                            "answer spans, choices or mask fills, whatever the model's head")
    p.add_argument("--model", required=True, help="a Hugging Face directory with a tokenizer")
    p.add_argument("--input", help="jsonl / tsv / csv file (default: stdin, one JSON object or "
                   "plain text per line)")
    p.add_argument("--output", help="file for the JSON lines, local or gs:// (default: stdout)")
    p.add_argument("--text-field", default="text", help="classifiers, taggers, masked LMs")
    p.add_argument("--pair-field", help="sentence-pair classifiers: the second text's field "
                   "(default: none, single texts)")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass")
    p.add_argument("--top-k", type=int, default=5, help="masked LM: guesses per <mask>")
    p.add_argument("--allow-no-answer", action="store_true",
                   help="QA models trained on SQuAD v2: answer \"\" when no answer wins")
    p.set_defaults(run=_predict)

    p = commands.add_parser("export", help="a pretraining workdir -> a Hugging Face directory")
    p.add_argument("--workdir", required=True, help="the pretraining workdir")
    p.add_argument("--output", required=True, help="new directory")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    p.add_argument("--tokenizer", help="the tokenizer directory the model was trained with "
                   "(default: the workdir's copy, else the prepared data's)")
    p.set_defaults(run=_export)

    p = commands.add_parser(
        "parity", help="check every head against transformers' PyTorch RoBERTa on random weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.set_defaults(run=_parity)
    return parser


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (it may be replaced, e.g. under tests), above
    any progress bar rather than onto its line."""

    def emit(self, record):
        try:
            print_above(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _log_to_stderr() -> None:
    """Our own info and warnings, one line each; other libraries stay at their defaults."""
    logger = logging.getLogger("roberta_jax")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if a.startswith("--config.")]
    unknown = [a for a in extra if not a.startswith("--config.")]
    if unknown or (overrides and not getattr(args, "overrides_allowed", False)):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    args.overrides = overrides
    _log_to_stderr()
    # XLA on CPU: no page faults on each step's fresh buffers (host_memory.py says why both)
    keep_freed_memory()
    run_on_calling_thread()
    try:
        status = args.run(args)
    except UserError as e:
        close_bars()
        if args.debug:
            raise
        print(f"roberta-jax {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        close_bars()
        print(f"roberta-jax {args.command}: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
