"""Input pipeline at corpus scale, every figure in one run:

    python experiments/bench_data.py                 # ~50 MB of text, 13M -> 1.2B tokens
    python experiments/bench_data.py --smoke         # tiny, for the tests; writes nothing

1. Tokenizer training on a one-document-per-line corpus (documents of 6-20k characters, as
   Wikipedia / C4 dumps come): the line saying how much text was used, how the sample spreads
   over the input, and the vocabulary reached, for sentencepiece and byte-level BPE.
2. `prepare` tokens/s per core (CPU seconds of all its processes), against the tokenizer
   library alone encoding the same text in one process. Byte-level BPE goes through a cache
   of words (data/word_cache.py); this text repeats its docstrings, so two more BPE rows
   show text the cache has not seen: the installed packages' docstrings (unrepeated) and the
   text with 5% of its words replaced by random ones; each says what share of the words the
   cache had not seen.
3. Start-up (opening the prepared corpus at seq_len 512, and the first batch) seconds and RSS
   growth, each in a fresh process, on corpora of ~13M, ~130M and ~1.2B tokens; against
   format 1's start-up, which packed every shard's blocks when opening (timed here too).
4. Steady batches tokens/s per core (the per-step function on one thread, CPU time), against
   Hugging Face's DataCollatorForLanguageModeling (torch, one thread) masking the same rows
   already in memory; and through the prefetching iterator (wall clock).
5. The same batches read from the prepared shards on a bucket (a GCS emulator on 127.0.0.1),
   tokens/s.
6. An extrapolation to RoBERTa's 40B tokens on 64 hosts.

The text is the embedded corpus (standard-library docstrings, real English, no download)
shuffled and repeated. The 13M-token corpus is prepared by `prepare`; the larger ones are
built from it by repeating its shards (hard links, a manifest and block index listing them N
times): preparing 1B tokens does not fit in the time a benchmark run gets here. Their
start-up and batch figures are real; their tokens repeat. Writes the "data" section of
BENCHMARKS.md.
"""

import argparse
import json
import math
import os
import pathlib
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the GCS emulator helper

VOCAB = 8000
SEQ_LEN = 512
EMULATOR_CONCURRENCY = 4
UNSEEN_SHARE = 0.05  # of the words, in the "bpe-unseen" prepare row


# ------------------------------------------------------------------------------------ corpus

def write_long_documents(path: pathlib.Path, megabytes: float, seed: int = 0) -> int:
    """One document per line, 6-20k characters each, from shuffled docstrings."""
    from roberta_jax.demo_corpus import stdlib_documents
    texts = [d.text.replace("\n", " ") for d in stdlib_documents()]
    rng = random.Random(seed)
    written, target = 0, int(megabytes * 1e6)
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(texts)
            line = ""
            for text in texts:
                line += (" " if line else "") + text
                if len(line) > rng.randint(6000, 20000):
                    f.write(line + "\n")
                    written += len(line) + 1
                    line = ""
                    if written >= target:
                        break
    return written


def repeat_shards(source: pathlib.Path, target: pathlib.Path, times: int) -> dict:
    """A prepared directory listing `source`'s shards `times` times (hard links)."""
    from roberta_jax.data.prepared import INDEX_FILE, MANIFEST, TOKENIZER_DIR, load_manifest
    manifest = load_manifest(source)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copytree(source / TOKENIZER_DIR, target / TOKENIZER_DIR)
    indexes = [p.name for p in source.iterdir() if p.is_dir() and p.name.startswith("blocks-")]
    for name in indexes:
        (target / name).mkdir()
    shards, infos = [], {name: json.loads((source / name / INDEX_FILE).read_text())
                         for name in indexes}
    new = {name: {**info, "shards": [], "counts": [], "sha256": []}
           for name, info in infos.items()}
    for r in range(times):
        for i, shard in enumerate(manifest["shards"]):
            name = f"rep{r:04d}-{shard['name']}"
            for kind in ("tokens", "documents", "sentences"):
                os.link(source / f"{shard['name']}.{kind}.npy", target / f"{name}.{kind}.npy")
            for index in indexes:
                os.link(source / index / f"{shard['name']}.npy", target / index / f"{name}.npy")
                new[index]["shards"].append(name)
                new[index]["counts"].append(infos[index]["counts"][i])
                new[index]["sha256"].append(infos[index]["sha256"][i])
            shards.append({**shard, "name": name})
    for index in indexes:
        (target / index / INDEX_FILE).write_text(json.dumps(new[index]))
    totals = {k: v * times for k, v in manifest["totals"].items()}
    out = {**manifest, "shards": shards, "totals": totals}
    (target / MANIFEST).write_text(json.dumps(out))
    return out


# -------------------------------------------------------------------------------- measuring

def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_startup(directory: str) -> dict:
    """In a fresh process: open the corpus at seq_len 512 and take the first batch."""
    from roberta_jax.data import PretrainingBatches
    from roberta_jax.data.prepared import Shards, load_manifest, shard_block_starts
    before = rss_mb()
    start = time.perf_counter()
    batches = PretrainingBatches(directory, 64, SEQ_LEN, seed=0, progress=False)
    opened = time.perf_counter() - start
    after_open = rss_mb()
    batches.batch(0)
    first = time.perf_counter() - start
    after_batch = rss_mb()
    # Format 1 packed every shard's blocks at every start (pack_shard walked them in Python);
    # the same walk, timed on this corpus.
    start = time.perf_counter()
    shards = Shards(directory, load_manifest(directory))
    blocks = sum(len(shard_block_starts(shards, s, SEQ_LEN - 1, "full-sentences"))
                 for s in range(len(shards.names)))
    walk = time.perf_counter() - start
    return {"open_s": opened, "first_batch_s": first, "rss_open_mb": after_open - before,
            "rss_batch_mb": after_batch - before, "format1_open_s": walk, "blocks": blocks,
            "shards": len(shards.names), "tokens": int(shards.lengths.sum())}


def startup(directory: pathlib.Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child-startup", str(directory)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare_in_fresh_process(source, tokenizer_dir, out, unit_bytes) -> tuple[dict, float,
                                                                               float]:
    """(manifest, wall s, CPU s) of prepare run in a fresh interpreter, as the roberta-jax
    command runs it, timed around the call (interpreter start-up left out). In this
    benchmark's own long-lived process, after tokenizer training and the other rows, the same
    call measured 1.14-1.24M tokens/s per core against 1.62-1.86M in fresh processes run
    between them (the cause is not known; a user's command starts fresh)."""
    out_json = subprocess.run(
        [sys.executable, __file__, "--child-prepare",
         json.dumps([str(source), str(tokenizer_dir), str(out), unit_bytes])],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    result = json.loads(out_json.stdout.strip().splitlines()[-1])
    return result["manifest"], result["wall"], result["cpu"]


def child_prepare(spec: str) -> dict:
    from roberta_jax.data import prepare
    source, tokenizer_dir, out, unit_bytes = json.loads(spec)
    manifest, wall, cpu = cpu_of(lambda: prepare([source], tokenizer_dir, out, progress=False,
                                                 unit_bytes=unit_bytes))
    return {"manifest": manifest, "wall": wall, "cpu": cpu}


def cpu_of(fn):
    """(result, wall seconds, CPU seconds of this process and its finished children)."""
    def cpu():
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    c, w = cpu(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - w, cpu() - c


def tokenizer_alone(tokenizer_dir, text_file, limit_chars) -> float:
    """Tokens/s per core of the tokenizer library alone (one process, one thread)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from roberta_jax.data.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(tokenizer_dir)
    if hasattr(tokenizer, "threads"):
        tokenizer.threads = 1
    lines, size = [], 0
    with open(text_file, encoding="utf-8") as f:
        for line in f:
            lines.append(line.strip())
            size += len(line)
            if size > limit_chars:
                break
    backend = tokenizer._sp if tokenizer.kind == "sentencepiece" else tokenizer._tok
    start = time.process_time()  # every thread of the process: the libraries may use some
    if tokenizer.kind == "sentencepiece":
        tokens = sum(map(len, backend.Encode(lines, out_type=int, num_threads=1)))
    else:
        tokens = sum(len(e.ids) for e in backend.encode_batch_fast(lines,
                                                                   add_special_tokens=False))
    return tokens / (time.process_time() - start)


def installed_docstrings(target: pathlib.Path, megabytes: float) -> int:
    """Up to `megabytes` of the installed Python packages' docstrings, one per line, each
    once: real English with the names, numbers and markup technical text carries."""
    import site
    pattern = re.compile(r'"""(.*?)"""', re.S)
    seen, written = set(), 0
    with open(target, "w", encoding="utf-8") as out:
        for root in site.getsitepackages():
            for path in sorted(pathlib.Path(root).rglob("*.py")):
                try:
                    source = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                for found in pattern.findall(source):
                    text = " ".join(found.split())
                    if len(text) < 80 or text in seen:
                        continue
                    seen.add(text)
                    out.write(text + "\n")
                    written += len(text) + 1
                if written > megabytes * 1e6:
                    return written
    return written


def with_unseen_words(source: pathlib.Path, target: pathlib.Path, share: float) -> float:
    """`source` with `share` of its words replaced by random lowercase words (3-12 letters,
    practically never repeating); returns the share replaced."""
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz"
    replaced = total = 0
    with open(source, encoding="utf-8") as f, open(target, "w", encoding="utf-8") as g:
        for line in f:
            words = line.rstrip("\n").split(" ")
            for i in range(len(words)):
                if rng.random() < share:
                    words[i] = "".join(rng.choices(letters, k=rng.randint(3, 12)))
                    replaced += 1
            total += len(words)
            g.write(" ".join(words) + "\n")
    return replaced / max(total, 1)


def word_cache_misses(tokenizer_dir, text_file) -> float:
    """Share of the words prepare's BPE word cache had not seen, over the whole text in one
    process (each prepare worker has its own cache and misses a little more)."""
    from roberta_jax.data.corpus import ReadStats, list_units, read_unit
    from roberta_jax.data.prepare import corpus_texts
    from roberta_jax.data.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(tokenizer_dir)
    for unit in list_units([str(text_file)]):
        documents = list(read_unit(unit, "lines", "text", ReadStats()))
        for i in range(0, len(documents), 256):
            tokenizer.encode_corpus_batch(corpus_texts(documents[i:i + 256]))
    cache = tokenizer._word_cache
    return cache.misses / max(cache.words, 1)


def batches_per_core(directory, batch, steps, segment_ids=False) -> float:
    from roberta_jax.data import PretrainingBatches
    batches = PretrainingBatches(directory, batch, SEQ_LEN, seed=0, segment_ids=segment_ids,
                                 progress=False)
    batches.batch(0)
    rates = []
    for attempt in range(3):  # the median of three passes: a busy spell skews one
        start = time.process_time()
        for step in range(1, steps + 1):
            batches.batch((attempt * steps + step) * 7919)  # spread over the epoch
        rates.append(steps * batch * SEQ_LEN / (time.process_time() - start))
    return sorted(rates)[1]


def batches_through_iterator(directory, batch, steps) -> float:
    from roberta_jax.data import PretrainingBatches
    stream = PretrainingBatches(directory, batch, SEQ_LEN, seed=0,
                                progress=False).iterate(0, steps + 1)
    next(stream)
    start = time.perf_counter()
    n = sum(1 for _ in stream)
    return n * batch * SEQ_LEN / (time.perf_counter() - start)


def hf_collator_per_core(directory, tokenizer_dir, batch, steps) -> float | None:
    """Hugging Face's MLM collator masking rows already in memory, one torch thread."""
    try:
        import torch
        from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast
    except ImportError:
        return None
    from roberta_jax.data import PretrainingBatches
    torch.set_num_threads(1)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(pathlib.Path(tokenizer_dir) / "tokenizer.json"), bos_token="<s>",
        eos_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    collate = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15,
                                              return_tensors="pt")
    corpus = PretrainingBatches(directory, batch, SEQ_LEN, seed=0, progress=False).corpus
    rows = [[{"input_ids": torch.tensor(r)} for r in corpus.rows(
        __import__("numpy").arange(s * batch, (s + 1) * batch) % len(corpus))]
        for s in range(steps)]
    collate(rows[0])
    start = time.process_time()
    for examples in rows:
        collate(examples)
    return steps * batch * SEQ_LEN / (time.process_time() - start)


def bucket_batches(prepared: pathlib.Path, batch: int, steps: int, cache: pathlib.Path) -> dict:
    """Upload `prepared` to an emulated bucket and read batches from it."""
    import gcs_emulator

    from roberta_jax import fs
    from roberta_jax.data import PretrainingBatches
    os.environ["ROBERTA_JAX_CACHE"] = str(cache)
    fs.RANGE_CONCURRENCY = EMULATOR_CONCURRENCY  # the emulator stalls beyond this; GCS does not
    with gcs_emulator.running("bench-data") as bucket:
        remote = f"{bucket}/prepared"
        start = time.perf_counter()
        for path in sorted(prepared.rglob("*")):
            if path.is_file():
                target = fs.as_path(f"{remote}/{path.relative_to(prepared)}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
        upload = time.perf_counter() - start
        start = time.perf_counter()
        batches = PretrainingBatches(remote, batch, SEQ_LEN, seed=0, progress=False)
        opened = time.perf_counter() - start
        start = time.perf_counter()
        for step in range(steps):
            batches.batch(step)
        cold = steps * batch * SEQ_LEN / (time.perf_counter() - start)
        start = time.perf_counter()
        for step in range(steps):
            batches.batch(step)  # the same rows again: the small arrays are cached now
        warm = steps * batch * SEQ_LEN / (time.perf_counter() - start)
        stream = batches.iterate(steps, steps + 1, threads=1)  # the emulator's limit again
        next(stream)
        start = time.perf_counter()
        n = sum(1 for _ in stream)
        threaded = n * batch * SEQ_LEN / (time.perf_counter() - start)
    return {"upload_s": upload, "open_s": opened, "cold": cold, "warm": warm,
            "threaded": threaded}


# -------------------------------------------------------------------------------------- run

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, default=52,
                        help="text to generate and prepare (default 52: ~13M tokens)")
    parser.add_argument("--repeats", type=int, nargs=2, default=[10, 90],
                        help="the larger corpora: the prepared one repeated this many times")
    parser.add_argument("--tokenizer-sentences", type=int, default=300_000)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, to check the script works; writes nothing")
    parser.add_argument("--child-startup", help=argparse.SUPPRESS)
    parser.add_argument("--child-prepare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_prepare:
        print(json.dumps(child_prepare(args.child_prepare)))
        return
    if args.child_startup:
        print(json.dumps(child_startup(args.child_startup)))
        return
    if args.smoke:
        args.megabytes, args.repeats, args.tokenizer_sentences = 0.4, [2, 3], 5000
    vocab = 1000 if args.smoke else VOCAB
    batch_steps = 3 if args.smoke else 40
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        results = run(args, root, vocab, batch_steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = report(args, results, vocab)
    print("\n".join(lines))
    if not args.smoke:
        from benchmarks_md import write_section
        write_section("data", "\n".join(lines))


def run(args, root, vocab, batch_steps) -> dict:
    from roberta_jax.data import train_tokenizer
    from roberta_jax.data.train_tokenizer import sample_sentences
    cores = os.cpu_count() or 1
    r = {"cores": cores}
    text = root / "long.txt"
    r["text_mb"] = write_long_documents(text, args.megabytes) / 1e6
    print(f"wrote {r['text_mb']:.1f} MB of text, one document of 6-20k characters per line",
          flush=True)

    # 1. tokenizers on one document per line
    r["tokenizers"] = {}
    for kind in ("sentencepiece", "bpe"):
        sample = sample_sentences([str(text)], args.tokenizer_sentences)
        (tokenizer, wall, cpu) = cpu_of(lambda: train_tokenizer(
            [str(text)], vocab, str(root / f"tok-{kind}"), kind=kind,  # noqa: B023 (run at once)
            max_sentences=args.tokenizer_sentences))
        r["tokenizers"][kind] = {"line": sample.describe(), "spread": sample.spread(10),
                                 "vocab": tokenizer.vocab_size, "seconds": wall}
        print(f"{kind}: {tokenizer.vocab_size} ids in {wall:.0f} s", flush=True)

    # 2. prepare, all cores
    r["prepare"] = {}
    # The text repeats its docstrings, so nearly every word is one the BPE word cache has
    # seen; a real corpus keeps bringing new ones. Two more BPE rows: the docstrings of the
    # installed Python packages (real text, deduplicated, never repeated; its own tokenizer),
    # and the main text with a share of its words replaced by random letters (a worst case).
    unseen = root / "unseen.txt"
    r["unseen_share"] = with_unseen_words(text, unseen, UNSEEN_SHARE)
    packages = root / "packages.txt"
    r["packages_mb"] = installed_docstrings(packages, args.megabytes) / 1e6
    train_tokenizer([str(packages)], vocab, str(root / "tok-bpe-packages"), kind="bpe",
                    max_sentences=args.tokenizer_sentences)
    for kind, source, tokenizer_dir in (
            ("sentencepiece", text, root / "tok-sentencepiece"),
            ("bpe", text, root / "tok-bpe"),
            ("bpe-packages", packages, root / "tok-bpe-packages"),
            ("bpe-unseen", unseen, root / "tok-bpe")):
        out = root / f"prepared-{kind}"
        manifest, wall, cpu = prepare_in_fresh_process(
            source, tokenizer_dir, out, max(1 << 20, int(r["text_mb"] * 1e6 / cores / 4)))
        tokens = manifest["totals"]["tokens"]
        alone = tokenizer_alone(tokenizer_dir, source, 20e6 if not args.smoke else 1e6)
        r["prepare"][kind] = {"tokens": tokens, "wall": wall, "cpu": cpu,
                              "per_core": tokens / cpu, "alone": alone,
                              "shards": len(manifest["shards"])}
        if kind.startswith("bpe"):
            r["prepare"][kind]["misses"] = word_cache_misses(tokenizer_dir, source)
        print(f"prepare {kind}: {tokens:,} tokens, {tokens / cpu:,.0f} tokens/s per core "
              f"(tokenizer alone {alone:,.0f})", flush=True)

    # 3. start-up on three sizes
    base = root / "prepared-sentencepiece"
    corpora = {"x1": base}
    for times in args.repeats:
        corpora[f"x{times}"] = root / f"repeated-{times}"
        repeat_shards(base, corpora[f"x{times}"], times)
    r["startup"] = {name: startup(path) for name, path in corpora.items()}
    for name, s in r["startup"].items():
        print(f"start-up {name}: {s['tokens']:,} tokens: open {s['open_s']:.3f} s, first "
              f"batch {s['first_batch_s']:.3f} s, RSS +{s['rss_open_mb']:.1f} MB "
              f"(format 1: {s['format1_open_s']:.1f} s)", flush=True)

    # 4. steady batches on the largest
    largest = corpora[f"x{args.repeats[-1]}"]
    r["batches"] = {
        "per_core_64": batches_per_core(largest, 64, batch_steps),
        "per_core_256": batches_per_core(largest, 256, max(2, batch_steps // 4)),
        "per_core_64_segments": batches_per_core(largest, 64, batch_steps, segment_ids=True),
        "iterator_64": batches_through_iterator(largest, 64, 2 * batch_steps),
        "hf_collator_64": hf_collator_per_core(base, root / "tok-bpe", 64, batch_steps),
    }
    print(f"batches: {r['batches']}", flush=True)

    # 5. from a bucket
    r["bucket"] = bucket_batches(base, 64, max(2, batch_steps // 2), root / "cache")
    print(f"bucket: {r['bucket']}", flush=True)
    return r


# ------------------------------------------------------------------------------------ report

def report(args, r, vocab) -> list[str]:
    cores = r["cores"]
    p, s, b, g = r["prepare"], r["startup"], r["batches"], r["bucket"]
    small, big = s["x1"], s[f"x{args.repeats[-1]}"]
    lines = [
        "## Input pipeline at corpus scale (`python experiments/bench_data.py`)", "",
        f"Machine: {cores} CPU cores ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, a shared virtual machine whose speed "
        "varies from run to run: compare ratios within a run; CPU-time figures (per core) "
        "are steadier than wall-clock ones. Text: standard-library "
        f"docstrings shuffled into {r['text_mb']:.0f} MB of one-document-per-line text "
        "(6-20k characters per line). The corpora above the first are that prepared corpus "
        "with its shards repeated (hard links): preparing 1B tokens does not fit a benchmark "
        "run here; opening and batching them is real.", "",
        "### Tokenizer training on one document per line", "",
        "| type | vocabulary asked / reached | seconds | text used |", "|---|---|---:|---|"]
    for kind, t in r["tokenizers"].items():
        spread = " ".join(f"{100 * x:.0f}" for x in t["spread"])
        lines.append(f"| {kind} | {vocab} / {t['vocab']} | {t['seconds']:.0f} | {t['line']}; "
                     f"% of the sample from each tenth of the file: {spread} |")
    lines += ["", "### prepare (all cores, each run in a fresh process as the command runs) and "
              "batches, tokens/s per core", "",
              "| what | tokens/s per core | peer in the same run | ratio |",
              "|---|---:|---|---:|"]
    for kind, x in p.items():
        what = {"sentencepiece": "sentencepiece", "bpe": "byte-level BPE",
                "bpe-packages": f"byte-level BPE on {r['packages_mb']:.0f} MB of the installed "
                                "Python packages' docstrings (unrepeated; its own tokenizer)",
                "bpe-unseen": f"byte-level BPE, {100 * r['unseen_share']:.1f}% of the words "
                              "replaced by random unseen ones"}[kind]
        misses = (f"; {100 * x['misses']:.2f}% of the words new to the word cache"
                  if "misses" in x else "")
        lines.append(f"| prepare, {what} ({vocab} ids): {x['tokens']:,} tokens, "
                     f"{x['shards']} shards, {x['wall']:.0f} s wall on {cores} cores{misses} | "
                     f"{x['per_core']:,.0f} | the tokenizer library alone, one thread: "
                     f"{x['alone']:,.0f} | {x['per_core'] / x['alone']:.2f} |")
    hf = b["hf_collator_64"]
    lines += [
        f"| batches 64 x {SEQ_LEN} (read rows + shuffle + mask), one thread, "
        f"{big['tokens'] / 1e9:.2f}B-token corpus | {b['per_core_64']:,.0f} | "
        + (f"Hugging Face DataCollatorForLanguageModeling masking rows already in memory, one "
           f"torch thread: {hf:,.0f} | {b['per_core_64'] / hf:.2f} |" if hf else "- | - |"),
        f"| batches 256 x {SEQ_LEN}, one thread | {b['per_core_256']:,.0f} | | |",
        f"| batches 64 x {SEQ_LEN} with segment_ids, one thread | "
        f"{b['per_core_64_segments']:,.0f} | | |",
        f"| batches 64 x {SEQ_LEN} through the prefetching iterator, wall clock, all "
        f"{cores} cores | {b['iterator_64']:,.0f} (whole machine) | | |",
        f"| batches 64 x {SEQ_LEN} from a bucket (GCS emulator on 127.0.0.1), first pass, "
        f"wall clock | {g['cold']:,.0f} (whole machine) | the same, local disk: see above | |",
        f"| the same rows again (small arrays cached), wall clock | {g['warm']:,.0f} | | |",
        f"| from the bucket through the prefetching iterator (one thread), wall clock | "
        f"{g['threaded']:,.0f} | | |",
        "", f"### Start-up at seq_len {SEQ_LEN} (fresh process each)", "",
        "| corpus | shards | blocks | open s | open + first batch s | RSS growth MB (open / "
        "+ first batch) | format 1 (packed every block at open) s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, x in s.items():
        made = "prepared" if name == "x1" else f"shards repeated {name[1:]}x"
        lines.append(f"| {x['tokens'] / 1e6:,.0f}M tokens ({made}) | {x['shards']} | "
                     f"{x['blocks']:,} | {x['open_s']:.3f} | {x['first_batch_s']:.3f} | "
                     f"{x['rss_open_mb']:.1f} / {x['rss_batch_mb']:.1f} | "
                     f"{x['format1_open_s']:.1f} | {x['open_s'] / x['format1_open_s']:.4f} |")
    lines += ["", f"Bucket: opening took {g['open_s']:.2f} s (manifest and block counts); a "
              "row's tokens are one ranged GET, a shard's block starts are fetched once and "
              "kept in a local cache checked against their SHA-256. The "
              f"emulator (a Python server) stalls with more than {EMULATOR_CONCURRENCY} "
              f"requests in flight, so these runs keep {EMULATOR_CONCURRENCY} "
              "(ROBERTA_JAX_RANGE_CONCURRENCY; default 32 for GCS itself): the figures "
              "measure the emulator's request rate more than ours.", ""]
    lines += extrapolate(r, small, big)
    lines += ["", "Targets: start-up <= 2 s and RSS growth <= 100 MB from 10M to 1B+ "
              "tokens; batches >= 2M tokens/s per core; prepare >= 1.5M tokens/s per core; a "
              "tokenizer trained on 50 MB+ of one-document-per-line text uses all of it and "
              "reaches the asked size."]
    verdicts = [f"{name} {rate / 1e6:.2f}M ({'met' if rate >= 1.5e6 else 'not met'})"
                for name, rate in (("sentencepiece", p["sentencepiece"]["per_core"]),
                                   ("BPE on the repeated text", p["bpe"]["per_core"]),
                                   ("BPE on unrepeated text", p["bpe-packages"]["per_core"]))]
    lines += ["", "Against the targets in this run: start-up "
              f"{max(x['first_batch_s'] for x in s.values()):.3f} s at most and RSS growth "
              f"{max(x['rss_batch_mb'] for x in s.values()):.1f} MB at most (met); batches "
              f"{b['per_core_64'] / 1e6:.2f}M tokens/s per core at 64 x {SEQ_LEN} "
              f"({'met' if b['per_core_64'] >= 2e6 else 'not met'}); prepare per core: "
              + "; ".join(verdicts) + "."]
    return lines


def extrapolate(r, small, big) -> list[str]:
    """RoBERTa's 40B tokens on 64 hosts, from the figures above."""
    tokens = 40e9
    shard_tokens = 1 << 24
    shards = tokens / shard_tokens
    # What opening costs grows with the number of shards only (manifest entries, counts).
    per_shard_s = max(big["open_s"] - small["open_s"], 0) / max(big["shards"] - small["shards"], 1)
    per_shard_mb = max(big["rss_open_mb"] - small["rss_open_mb"], 0) / max(
        big["shards"] - small["shards"], 1)
    open_40b = small["open_s"] + per_shard_s * (shards - small["shards"])
    rss_40b = small["rss_open_mb"] + per_shard_mb * (shards - small["shards"])
    format1_40b = big["format1_open_s"] * tokens / big["tokens"]
    spm = r["prepare"]["sentencepiece"]["per_core"]
    bpe = r["prepare"]["bpe-packages"]["per_core"]  # real, unrepeated text
    per_core = r["batches"]["per_core_64"]
    # roberta-base on a v5p host (4 chips, 459 TFLOP/s bf16 each) at 50% MFU and
    # 602 MFLOP per token (flops.py, gathered head): the tokens each host must be fed.
    host_need = 4 * 0.5 * 459e12 / 602e6
    rows_per_s = host_need / SEQ_LEN
    index_gb = tokens / ((SEQ_LEN - 1) * 0.97) * 4 / 1e9
    return [
        "### Extrapolation: RoBERTa's 40B tokens on 64 hosts", "",
        f"- Prepared: {shards:,.0f} shards of ~{shard_tokens / 1e6:.1f}M tokens, "
        f"{tokens * 2 / 1e9:.0f} GB of token ids (uint16) plus ~{index_gb:.2f} GB of block "
        "starts per sequence length.",
        f"- Start-up per host: about {open_40b:.2f} s and {rss_40b:.0f} MB (what grows is "
        f"the manifest and block counts: {per_shard_s * 1e3:.3f} ms and "
        f"{per_shard_mb * 1e3:.1f} kB per shard, measured between the "
        f"{small['shards']}- and {big['shards']}-shard corpora above); format 1 would "
        f"have spent ~{format1_40b / 60:,.1f} minutes packing at every start and restart.",
        f"- prepare: {tokens / spm / 3600:,.1f} core-hours with sentencepiece "
        f"({tokens / bpe / 3600:,.1f} with byte-level BPE, at its rate on unrepeated text): "
        "on one 96-core host "
        f"{tokens / spm / 96 / 60:,.0f} minutes with sentencepiece and "
        f"{tokens / bpe / 96 / 60:,.0f} with BPE, if it can read the ~160 GB of text at "
        f"{160e3 / (tokens / spm / 96):,.0f} MB/s (else reading sets the pace).",
        f"- Batches: roberta-base at 50% MFU on a v5p host (4 chips) eats "
        f"~{host_need / 1e6:.1f}M tokens/s; at {per_core / 1e6:.2f}M tokens/s per core that "
        f"is {host_need / per_core:.1f} cores of the host's CPUs.",
        f"- From a bucket: {rows_per_s:,.0f} rows/s per host, one ranged GET each "
        f"(~{rows_per_s * 64:,.0f}/s for 64 hosts, {host_need * 2 / 1e6:.0f} MB/s per host); "
        "each host keeps only the block starts of the shards it touched (under 0.5% of the "
        "token bytes) in its local cache, never a copy of the corpus. GCS gives a new "
        "bucket about 5,000 reads/s and raises that as load persists (its guidance: doubling "
        f"about every 20 minutes): ~{20 * math.log2(max(rows_per_s * 64 / 5000, 1)):.0f} "
        "minutes to reach this rate, during which steps wait on input. A pod that must run "
        "at full speed from the first step reads the prepared directory from a disk every "
        "host sees locally instead (the same code path: local `pread`s).",
    ]


if __name__ == "__main__":
    main()
