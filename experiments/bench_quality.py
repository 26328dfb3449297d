"""The same budget, the same model: our `pretrain` + `export` against the same recipe built
from transformers' own parts, both scored by one PyTorch evaluation with the same fixed masks.
Writes the "quality" section of BENCHMARKS.md.

    python experiments/bench_quality.py                       # everything the section shows
    python experiments/bench_quality.py --seeds 0 --steps 60  # a quick check that it runs

Corpus: real text no one here wrote, gathered from the packages installed next to this
interpreter (nothing is downloaded): the long descriptions in every `*.dist-info/METADATA`
(the packages' READMEs and release notes) and every `.md` / `.rst` file shipped inside a
package, then module, class and function docstrings of the third-party packages in name order
until --megabytes is reached. Documents are the sections of those files (a heading starts
one) and the docstrings; fenced code, badge and image lines, and license texts are dropped,
duplicates kept once. Every tenth document (by content hash) is held out.

Recipe (both sides): byte-level BPE of 4000 ids (`train-tokenizer --type bpe`), 2 layers,
width 128, 2 heads, FFN 512, 128 tokens, batch 16, AdamW (0.9, 0.98, eps 1e-6, weight decay
0.01 off biases and LayerNorms), lr 2e-3 with 30 warmup steps and linear decay to 0, 300
steps, dropout 0.1, no clipping.

- ours: `pretrain` (FULL-SENTENCES rows: `<s>` + whole sentences up to 127 tokens with `</s>`
  between documents, padded; a fixed 15% count of the ordinary tokens per row), then `export`.
- theirs: RobertaForMaskedLM, run_mlm's `<s> doc </s>` examples concatenated and cut into
  128-token blocks (group_texts), DataCollatorForLanguageModeling, torch AdamW with Trainer's
  decay mask, get_linear_schedule_with_warmup.
Ablations, to tell which factor a difference comes from (FACTORS below): ours on stream
slices (`--config.data.packing=none`); ours trained until it has seen as many ordinary tokens
as theirs; their PyTorch loop on our exact batches (rows and masks), on our rows with the
collator's masks, and on their blocks with our masks.

Scorings (held-out, 15% masked 80/10/10 by the collator with a fixed seed, the same masks for
every model): per document (`<s> doc </s>`, truncated to 128, padded), packed blocks
(group_texts), and our FULL-SENTENCES rows.

Our sides attend across the documents of a packed row, as the paper and run_mlm's blocks do
(`--config.model.document_attention=False`); `--doc-attention` adds the side
ours-doc-attention, our `pretrain` with each document of a row attending only to itself.
"""

import argparse
import ast
import hashlib
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import numpy as np
from benchmarks_md import write_section

from roberta_jax import demo_corpus

SITE = pathlib.Path(sys.prefix) / "lib" / \
    f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
VOCAB, SEQ, BATCH, LR, WARMUP = 4000, 128, 16, 2e-3, 30
MODEL = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
             max_position_embeddings=SEQ + 2)
EVAL_SEED = 1234

# ======================================================================== corpus

_LICENSE = re.compile(r"Permission is hereby granted|THE SOFTWARE IS PROVIDED|Redistribution and "
                      r"use in source|Apache License|General Public License|WITHOUT WARRANT", re.I)
_NOISE = re.compile(r"^\s*(\[!\[|!\[|<|\.\. (image|figure|\|)|:target:|:alt:|\|[\w-]+\|\s*$)")
_RULE = re.compile(r"^([=\-~^*+#`'\"])\1{2,}\s*$")   # an RST heading's under/overline


def _sections(text: str) -> list[str]:
    """Markdown / RST text -> documents (one per section), paragraphs joined by newlines."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced and not _NOISE.match(line):
            lines.append(line)
    documents, current = [], []
    for block in re.split(r"\n\s*\n", "\n".join(lines)):
        rows = [r for r in block.splitlines() if r.strip()]
        if not rows:
            continue
        heading = rows[0].lstrip().startswith("#") or (len(rows) > 1 and _RULE.match(rows[1]))
        paragraph = " ".join(" ".join(r for r in rows if not _RULE.match(r)).split()).lstrip("# ")
        if heading and current:
            documents.append("\n".join(current))
            current = []
        if paragraph:
            current.append(paragraph)
    if current:
        documents.append("\n".join(current))
    return documents


def _doc_files():
    files = [(f, True) for f in SITE.glob("**/*.dist-info/METADATA")]
    files += [(f, False) for ext in ("md", "rst") for f in SITE.glob(f"**/*.{ext}")
              if ".dist-info" not in str(f)]
    return sorted(files)


def _docstring_files():
    for top in sorted(SITE.iterdir()):
        if not top.is_dir() or top.name.startswith(("_", ".")) or "." in top.name:
            continue
        for file in sorted(top.rglob("*.py")):
            parts = file.relative_to(SITE).parts
            if not any(p in demo_corpus._SKIP or p.startswith("_") and p != "__init__.py"
                       or "vendor" in p for p in parts):
                yield file


def gather_documents(megabytes: float) -> list[demo_corpus.Document]:
    """Package documentation from this interpreter's site-packages (see the module doc)."""
    budget = int(megabytes * 1e6)
    seen, documents, size = set(), [], 0

    def add(text, package, source):
        nonlocal size
        key = hashlib.sha1(text.encode()).digest()
        if len(text) < 80 or key in seen or _LICENSE.search(text) or size >= budget:
            return
        seen.add(key)
        documents.append(demo_corpus.Document(text, package, source))
        size += len(text.encode())

    for file, is_metadata in _doc_files():
        text = file.read_text(encoding="utf-8", errors="replace")
        if is_metadata:  # mail headers, a blank line, then the long description
            text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        source = str(file.relative_to(SITE))
        for section in _sections(text):
            add(section, source.split("/")[0], source)
    for file in _docstring_files():
        if size >= budget:
            break
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        source = str(file.relative_to(SITE))
        for name, doc in demo_corpus._docstrings(tree):
            add(demo_corpus._paragraphs(doc), source.split("/")[0], f"{source}:{name}")
    return documents


def build_corpus(work: pathlib.Path, megabytes: float) -> dict:
    """Documents -> train / held-out text -> the BPE -> prepared directories (cached in work)."""
    from roberta_jax.data import prepare, train_tokenizer
    done = work / "corpus.json"
    if done.is_file():
        return json.loads(done.read_text())
    documents = gather_documents(megabytes)
    train, held_out = demo_corpus.split_held_out(documents)
    for name, part in (("train", train), ("held_out", held_out)):
        demo_corpus.write_text(part, work / f"{name}.txt")
    train_tokenizer([str(work / "train.txt")], VOCAB, str(work / "tokenizer"), kind="bpe",
                    doc_format="paragraphs")
    for name in ("train", "held_out"):
        prepare([str(work / f"{name}.txt")], str(work / "tokenizer"), str(work / name),
                doc_format="paragraphs", workers=1, progress=False)
    text = (work / "train.txt").read_bytes() + (work / "held_out.txt").read_bytes()
    info = {"documents": len(documents), "train_documents": len(train),
            "held_out_documents": len(held_out), "megabytes": len(text) / 1e6,
            "sha1": hashlib.sha1(text).hexdigest()[:12],
            "sources": len({d.source.split(":")[0] for d in documents})}
    done.write_text(json.dumps(info))
    return info


# ======================================================================== shared inputs

def documents_of(path: pathlib.Path) -> list[str]:
    """The documents of a text file written by demo_corpus.write_text, as running text."""
    return [" ".join(d.split("\n")) for d in path.read_text(encoding="utf-8").split("\n\n")
            if d.strip()]


def group_texts(tokenized: list[list[int]], block: int = SEQ) -> np.ndarray:
    """run_mlm's group_texts: concatenate the examples, drop the remainder, cut into blocks."""
    flat = np.concatenate([np.asarray(t, np.int64) for t in tokenized])
    usable = len(flat) // block * block
    return flat[:usable].reshape(-1, block)


class Inputs:
    """Everything both sides read: the tokenizer in both forms, their blocks, our batches."""

    def __init__(self, work: pathlib.Path):
        import transformers
        self.work = work
        self.hf_tokenizer = transformers.AutoTokenizer.from_pretrained(work / "train" / "tokenizer")
        self.train_docs = documents_of(work / "train.txt")
        self.held_out_docs = documents_of(work / "held_out.txt")
        encode = self.hf_tokenizer
        self.their_blocks = group_texts(encode(self.train_docs)["input_ids"])
        self._ours = {}
        self.spec = self.ours(0).spec
        self.pad_id = self.hf_tokenizer.pad_token_id

    def ours(self, seed, packing="full-sentences"):
        """The batches our pretraining reads with this seed (its order and its masks)."""
        from roberta_jax.data.pipeline import PretrainingBatches
        if (seed, packing) not in self._ours:
            self._ours[seed, packing] = PretrainingBatches(self.work / "train", BATCH, SEQ, seed,
                                                           packing=packing)
        return self._ours[seed, packing]

    def collator(self, seed):
        import transformers
        return transformers.DataCollatorForLanguageModeling(self.hf_tokenizer,
                                                            mlm_probability=0.15, seed=seed)

    def unpadded(self, rows):
        return [{"input_ids": row[row != self.pad_id].tolist()} for row in rows]


def format_stats(inputs: Inputs) -> dict:
    """What a training row holds in each format: the budget each side really gets."""
    ours = inputs.ours(0)
    rows = ours.corpus.rows(np.arange(len(ours.corpus)))
    specials = ours.spec.special_ids
    theirs = inputs.their_blocks
    return {"ours_rows": len(rows),
            "ours_positions_per_row": float((rows != inputs.pad_id).mean(1).mean() * SEQ),
            "ours_ordinary_per_row": float((~np.isin(rows, specials)).sum(1).mean()),
            "theirs_rows": len(theirs),
            "theirs_ordinary_per_row": float((~np.isin(theirs, specials)).sum(1).mean())}


# ======================================================================== evaluation

def eval_sets(inputs: Inputs) -> dict:
    """{scoring: list of masked torch batches}, masked once with a fixed seed."""
    collator = inputs.collator(EVAL_SEED)
    tok = inputs.hf_tokenizer
    docs = tok(inputs.held_out_docs, truncation=True, max_length=SEQ)["input_ids"]
    blocks = group_texts(tok(inputs.held_out_docs)["input_ids"])
    from roberta_jax.data.pipeline import PackedCorpus
    corpus = PackedCorpus(inputs.work / "held_out", SEQ, "full-sentences")
    rows = corpus.rows(np.arange(len(corpus)))
    examples = {"per document": [{"input_ids": d} for d in docs],
                "packed blocks": [{"input_ids": b.tolist()} for b in blocks],
                "FULL-SENTENCES rows": inputs.unpadded(rows)}
    return {name: [collator(ex[i:i + 64]) for i in range(0, len(ex), 64)]
            for name, ex in examples.items()}


def evaluate(model, sets) -> dict:
    import torch
    model.eval()
    out = {}
    with torch.no_grad():
        for name, batches in sets.items():
            total, count = 0.0, 0
            for batch in batches:
                logits = model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits
                labels = batch["labels"]
                total += float(torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                    ignore_index=-100, reduction="sum"))
                count += int((labels != -100).sum())
            out[name] = total / count
    return out


# ======================================================================== their side

def hf_config():
    import transformers
    return transformers.RobertaConfig(vocab_size=VOCAB, type_vocab_size=1, pad_token_id=1,
                                      bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
                                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                                      **MODEL)


def their_batches(inputs: Inputs, seed: int, data: str):
    """Batches for the PyTorch loop, endless:
    theirs          - group_texts blocks, reshuffled every epoch, the collator's masks;
    our-batches     - exactly the batches our pretraining reads (rows and masks);
    our-rows        - our FULL-SENTENCES rows in our order, masked by the collator;
    our-masking     - their blocks in their order, masked by our masking."""
    import torch

    from roberta_jax.data.masking import mask_batch
    if data in ("our-batches", "our-rows"):
        ours = inputs.ours(seed)
        collator = inputs.collator(seed)
        for step in range(10 ** 9):
            batch = ours.batch(step)
            if data == "our-batches":
                yield {k: torch.as_tensor(batch[k]).long()
                       for k in ("input_ids", "attention_mask", "labels")}
            else:
                yield collator(inputs.unpadded(ours.corpus.rows(batch["block"])))
        return
    blocks = inputs.their_blocks
    generator = torch.Generator().manual_seed(seed)
    collator = inputs.collator(seed)
    seen = 0
    while True:
        order = torch.randperm(len(blocks), generator=generator).numpy()
        for i in range(0, len(order) - BATCH + 1, BATCH):
            rows = blocks[order[i:i + BATCH]]
            if data == "theirs":
                yield collator([{"input_ids": r.tolist()} for r in rows])
            else:
                masked = mask_batch(rows, seen + np.arange(BATCH), seed, inputs.spec)
                yield {"input_ids": torch.as_tensor(masked["input_ids"]).long(),
                       "attention_mask": torch.ones(rows.shape, dtype=torch.long),
                       "labels": torch.as_tensor(masked["labels"]).long()}
            seen += BATCH


def initial_weights(work: pathlib.Path, seed: int) -> pathlib.Path:
    """transformers' own initialisation of the model for `seed`, saved: with --shared-init both
    sides start from these weights (ours through --config.model.init_from), so a comparison is
    not also a comparison of two random draws of the initial weights."""
    import torch
    import transformers
    path = work / "init" / f"seed{seed}"
    if not (path / "config.json").is_file():
        torch.manual_seed(seed)
        transformers.RobertaForMaskedLM(hf_config()).save_pretrained(path)
    return path


def train_theirs(inputs: Inputs, seed: int, steps: int, data: str, init: pathlib.Path | None):
    import torch
    import transformers
    torch.manual_seed(seed)   # the initial weights (unless given), then dropout's draws
    model = transformers.RobertaForMaskedLM.from_pretrained(init) if init is not None \
        else transformers.RobertaForMaskedLM(hf_config())
    decayed = set(transformers.Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if n in decayed], "weight_decay": 0.01},
         {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.98), eps=1e-6)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, WARMUP, steps)
    model.train()
    stream = their_batches(inputs, seed, data)
    for _ in range(steps):
        loss = model(**next(stream)).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return model


# ======================================================================== our side

def train_ours(inputs: Inputs, seed: int, steps: int, packing: str, extra: list[str]):
    """`pretrain` then `export`, as a user runs them; -> the exported model, in torch."""
    import transformers

    from roberta_jax.export import export_workdir
    from roberta_jax.train import pretrain
    from roberta_jax.train_config import apply_override, default_config
    c = default_config()
    for key, value in MODEL.items():
        c.model[key] = value
    c.model.dtype = "float32"
    c.data.path, c.data.packing = str(inputs.work / "train"), packing
    c.train.update(steps=steps, batch_size=BATCH, seq_len=SEQ, lr=LR, warmup_steps=WARMUP,
                   seed=seed, log_every=50)
    c.checkpoint.update(every_steps=steps, async_save=False)
    for override in extra:
        apply_override(c, override)
    tag = f"ours-{packing}-{seed}-{steps}" + "".join(f"-{hashlib.sha1(e.encode()).hexdigest()[:6]}"
                                                    for e in extra)
    workdir = inputs.work / "runs" / tag
    pretrain(c, workdir)
    exported = export_workdir(workdir, inputs.work / "runs" / f"{tag}-hf")
    return transformers.RobertaForMaskedLM.from_pretrained(exported)


# ======================================================================== the run

SIDES = {
    # name: (trainer, data or packing, what it isolates)
    "ours": ("ours", "full-sentences", "our `pretrain`, FULL-SENTENCES rows, our masking"),
    "theirs": ("theirs", "theirs", "transformers: group_texts blocks, the collator's masking"),
    "ours-slices": ("ours", "none", "our `pretrain` on `--config.data.packing=none`"),
    "theirs-our-batches": ("theirs", "our-batches", "their loop on our rows and masks"),
    "theirs-our-rows": ("theirs", "our-rows", "their loop on our rows, the collator's masks"),
    "theirs-our-masking": ("theirs", "our-masking", "their loop on their blocks, our masks"),
    "ours-same-tokens": ("ours", "full-sentences", "our `pretrain`, steps raised until it has "
                         "seen as many ordinary tokens as theirs"),
}


# Ablations: (what the difference isolates, minuend, subtrahend), per document.
FACTORS = [
    ("trainer: model, init, AdamW, schedule, loss normalisation (the same batches)",
     "ours", "theirs-our-batches"),
    ("masking, on our rows: ours instead of the collator's", "theirs-our-batches",
     "theirs-our-rows"),
    ("masking, on their blocks: ours instead of the collator's", "theirs-our-masking", "theirs"),
    ("rows: FULL-SENTENCES instead of group_texts blocks (our masking)", "theirs-our-batches",
     "theirs-our-masking"),
    ("packing in our pretrain: FULL-SENTENCES instead of stream slices", "ours", "ours-slices"),
    ("ours at their token budget, against theirs", "ours-same-tokens", "theirs"),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--megabytes", type=float, default=1.6)
    parser.add_argument("--sides", default=",".join(SIDES),
                        help="comma-separated, from: " + ", ".join(SIDES))
    parser.add_argument("--work", default="",
                        help="working directory (default: a temporary one); a run with the same "
                             "--work continues where it stopped")
    parser.add_argument("--doc-attention", action="store_true",
                        help="add the side ours-doc-attention (model.document_attention=True)")
    parser.add_argument("--own-init", dest="shared_init", action="store_false",
                        help="each side draws its own initial weights (default: both start from "
                             "transformers' initialisation for the seed)")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="torch's threads (1 on a machine shared with other work)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    import jax
    import torch
    torch.set_num_threads(args.torch_threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    sides = [s.strip() for s in args.sides.split(",")]
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        parser.error(f"unknown side {unknown[0]!r}; choose from {', '.join(SIDES)}")
    extra = {name: ["--config.model.document_attention=False"] for name in sides}
    if args.doc_attention:
        name = "ours-doc-attention"
        SIDES[name] = ("ours", "full-sentences", "our `pretrain` with "
                       "`model.document_attention=True`")
        sides.append(name)
        extra[name] = ["--config.model.document_attention=True"]

    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="bench_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    # Every run of ours compiles the same step: keep the compiled programs between runs.
    jax.config.update("jax_compilation_cache_dir", str(work / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    corpus = build_corpus(work, args.megabytes)
    inputs = Inputs(work)
    formats = format_stats(inputs)
    sets = eval_sets(inputs)
    torch.manual_seed(0)
    import transformers
    untrained = evaluate(transformers.RobertaForMaskedLM(hf_config()), sets)
    print(f"corpus: {corpus}\nformats: {formats}\nuntrained: {untrained}", flush=True)

    # One entry per finished run: a run with the same --work continues where it stopped.
    saved = work / f"results-{args.steps}{'' if args.shared_init else '-own-init'}.json"
    state = json.loads(saved.read_text()) if saved.is_file() else {}
    results, run_seconds = state.get("results", {}), state.get("seconds", {})
    for seed in seeds:
        for side in sides:
            if str(seed) in results.get(side, {}):
                continue
            trainer, data, _ = SIDES[side]
            steps = args.steps if side != "ours-same-tokens" else round(
                args.steps * formats["theirs_ordinary_per_row"] / formats["ours_ordinary_per_row"])
            t0 = time.perf_counter()
            init = initial_weights(work, seed) if args.shared_init else None
            if trainer == "ours":
                overrides = extra[side] + ([f"--config.model.init_from={init}"] if init else [])
                model = train_ours(inputs, seed, steps, data, overrides)
            else:
                model = train_theirs(inputs, seed, steps, data, init)
            results.setdefault(side, {})[str(seed)] = evaluate(model, sets)
            run_seconds.setdefault(side, {})[str(seed)] = time.perf_counter() - t0
            print(f"seed {seed} {side}: {results[side][str(seed)]} "
                  f"({run_seconds[side][str(seed)]:.0f} s)", flush=True)
            saved.write_text(json.dumps({"corpus": corpus, "formats": formats,
                                         "untrained": untrained, "results": results,
                                         "seconds": run_seconds}, indent=1))
    # Runs reused from an earlier invocation count with the time they took then (when known).
    shown = [run_seconds.get(side, {}).get(str(seed)) for side in sides for seed in seeds]
    body = report(args, corpus, formats, untrained, results, sides, seeds,
                  sum(s for s in shown if s is not None), None in shown)
    print(body)
    if not args.no_write:
        write_section("quality", body)


def _mean_sd(values) -> str:
    sd = f", sd {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):+.3f}{sd}"


def report(args, corpus, formats, untrained, results, sides, seeds, seconds,
           some_untimed=False) -> str:
    import jax
    import torch
    import transformers
    scorings = list(untrained)
    init = ("for each seed both sides start from the same weights, transformers' "
            "initialisation" if args.shared_init else "each side draws its own initial weights")
    lines = [
        f"## Same budget, same model (`python experiments/bench_quality.py"
        f"{'' if args.seeds == '0,1,2' else ' --seeds ' + args.seeds}"
        f"{'' if args.steps == 300 else f' --steps {args.steps}'}"
        f"{'' if args.shared_init else ' --own-init'}`)",
        "",
        f"Corpus: {corpus['megabytes']:.2f} MB of package documentation from this machine's "
        f"site-packages ({corpus['documents']:,} documents from {corpus['sources']:,} files, "
        f"sha1 {corpus['sha1']}; {corpus['held_out_documents']:,} held out). Byte-level BPE of "
        f"{VOCAB} ids; 2 layers, width 128; batch {BATCH} x {SEQ}; lr {LR:g}, {WARMUP} warmup "
        f"steps, linear decay; {args.steps} steps; dropout 0.1; AdamW (0.9, 0.98, 1e-6), weight "
        f"decay 0.01 off biases and LayerNorms; seeds {args.seeds}, {init}. "
        f"jax {jax.__version__}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, Python "
        f"{platform.python_version()}; {seconds / 60:.0f} min of training and scoring"
        f"{' (plus runs from before times were recorded)' if some_untimed else ''}.",
        "",
        f"Ordinary tokens (not `<s>`, `</s>`, padding) per training row: ours "
        f"{formats['ours_ordinary_per_row']:.1f} ({formats['ours_positions_per_row']:.1f} of "
        f"{SEQ} positions hold tokens, the rest is padding: FULL-SENTENCES ends a row at the "
        f"last whole sentence that fits), theirs {formats['theirs_ordinary_per_row']:.1f}.",
        "",
        "Held-out MLM loss (nats; the same masked tokens for every model; untrained: "
        + ", ".join(f"{untrained[s]:.2f}" for s in scorings) + "):",
        "",
        "| side | what it is | " + " | ".join(f"{s}, mean (sd)" for s in scorings) + " |",
        "|---|---|" + "---:|" * len(scorings),
    ]
    per_doc = {}
    for side in sides:
        runs = [results[side][str(seed)] for seed in seeds if str(seed) in results.get(side, {})]
        if not runs:
            continue
        per_doc[side] = [r["per document"] for r in runs]
        cells = []
        for s in scorings:
            values = [r[s] for r in runs]
            sd = f"{statistics.stdev(values):.3f}" if len(values) > 1 else "-"
            cells.append(f"{statistics.mean(values):.3f} ({sd})")
        lines.append(f"| {side} | {SIDES[side][2]} | " + " | ".join(cells) + " |")
    lines += ["", "Per document, per seed: " + "; ".join(
        f"{side} " + " / ".join(f"{v:.3f}" for v in values)
        for side, values in per_doc.items()) + "."]
    factors = [(what, a, b) for what, a, b in FACTORS if a in per_doc and b in per_doc]
    if factors:
        lines += ["", "Factors (per document: the mean over seeds of one side's loss minus the "
                      "other's for the same seed, and its sd; + means the first side is worse):",
                  ""]
        for what, a, b in factors:
            differences = [x - y for x, y in zip(per_doc[a], per_doc[b])]
            lines.append(f"- {what} (`{a}` - `{b}`): {_mean_sd(differences)}")
    if "ours" in per_doc and "theirs" in per_doc:
        gap = statistics.mean(per_doc["ours"]) - statistics.mean(per_doc["theirs"])
        lines += ["", f"Ours minus theirs, per document: {gap:+.3f} nats (the issue's bar: "
                      f"at most +0.02)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
