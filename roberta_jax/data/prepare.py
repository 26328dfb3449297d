"""`roberta-jax prepare`: raw text -> sharded token ids with document and sentence boundaries,
and the block index that training looks rows up in (layout: prepared.py).

Tokenizing happens once, here, in one process per core. Each unit of input (corpus.py) is
streamed through its worker, which writes a shard every `shard_tokens` tokens, so memory stays
bounded whatever the input size. A unit's `unit-NNNNN.json`, written last, marks it done: a
re-run skips finished units and redoes only the ones cut short. The output may be a local
directory or a bucket (`gs://...`).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import queue
import time

import numpy as np

from roberta_jax import fs
from roberta_jax.data.corpus import (
    ReadStats,
    Unit,
    list_units,
    not_utf8_message,
    process_context,
    read_unit,
)
from roberta_jax.data.packing import INDEXED, block_starts
from roberta_jax.data.prepared import (
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST,
    TOKENIZER_DIR,
    Shards,
    array_file,
    index_dir,
    load_manifest,
    npy_bytes,
    offset_dtype,
    sha256,
    shard_block_starts,
    write_json,
)
from roberta_jax.data.tokenizer import Tokenizer, load_tokenizer
from roberta_jax.errors import UserError
from roberta_jax.progress import progress_bar

PLAN = "plan.json"
SHARD_TOKENS = 1 << 24      # ~16.8M tokens (32 MB as uint16): thousands of shards at 40B
SEQ_LENS = (512,)           # block indexes built up front (others are built on first use)
_ENCODE_CHARS = 1 << 20     # text per tokenizer call

__all__ = ["prepare", "load_manifest", "token_dtype", "MANIFEST", "TOKENIZER_DIR"]


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def unit_name(index: int) -> str:
    return f"unit-{index:05d}"


def prepare(inputs: list[str], tokenizer_path: str, output: str, *, doc_format: str = "lines",
            text_field: str = "text", tfds_data_dir: str | None = None,
            tfds_split: str = "train", workers: int | None = None,
            unit_bytes: int | None = None, shard_tokens: int = SHARD_TOKENS,
            seq_lens: tuple[int, ...] = SEQ_LENS, progress: bool = True) -> dict:
    """Tokenize `inputs` into `output` (local or gs://); returns the manifest. Resumes a
    partial run; a finished one only gets the block indexes of `seq_lens` it lacks."""
    for seq_len in seq_lens:
        if seq_len < 8:
            raise UserError(f"--seq-len {seq_len} is too short; use at least 8")
    tokenizer = load_tokenizer(tokenizer_path)
    kwargs = {} if unit_bytes is None else {"unit_bytes": unit_bytes}
    units = list_units(inputs, doc_format, tfds_data_dir, tfds_split, **kwargs)
    out = fs.as_path(output)
    created_here = not out.exists()
    plan = {"format": FORMAT_VERSION, "tokenizer": _tokenizer_info(tokenizer),
            "doc_format": doc_format, "text_field": text_field,
            "units": [dataclasses.asdict(u) for u in units]}
    _start_or_resume(out, plan, tokenizer)
    indexes = [(seq_len - 1, packing) for seq_len in sorted(set(seq_lens))
               for packing in INDEXED]

    todo = [i for i in range(len(units)) if not (out / f"{unit_name(i)}.json").is_file()]
    if len(todo) < len(units):
        print(f"resuming: {len(units) - len(todo)} of {len(units)} units already done")
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    context = dict(output=fs.as_str(out), doc_format=doc_format, text_field=text_field,
                   dtype=np.dtype(token_dtype(tokenizer.vocab_size)).name,
                   shard_tokens=shard_tokens, indexes=indexes, parallel=workers > 1,
                   # a token takes a character or more: batches this size overshoot a shard
                   # by at most about one shard's worth
                   batch_chars=min(_ENCODE_CHARS, shard_tokens))
    started = time.perf_counter()
    tokens_this_run = _run_units(units, todo, tokenizer, context, workers, progress)
    elapsed = time.perf_counter() - started
    try:
        manifest = _write_manifest(out, units, plan, tokenizer)
    except UserError:
        if created_here:  # nothing worth keeping (an empty corpus): leave no directory behind
            out.rmtree(missing_ok=True)
        raise
    _complete_indexes(out, manifest, indexes, progress)
    totals = manifest["totals"]
    this_run = "every shard was already done" if not todo else (
        f"{tokens_this_run / max(elapsed, 1e-9):,.0f} tokens/s this run, {workers} "
        f"worker{'s' if workers > 1 else ''}")
    print(f"prepared {totals['tokens']:,} tokens in {totals['documents']:,} documents, "
          f"{len(manifest['shards'])} shards -> {fs.as_str(out)} ({this_run})")
    return manifest


def _tokenizer_info(tokenizer: Tokenizer) -> dict:
    return {"kind": tokenizer.kind, "fingerprint": tokenizer.fingerprint(),
            "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
            "pad_id": tokenizer.pad_id, "eos_id": tokenizer.eos_id, "unk_id": tokenizer.unk_id,
            "mask_id": tokenizer.mask_id}


def _start_or_resume(out, plan: dict, tokenizer: Tokenizer) -> None:
    plan_file = out / PLAN
    if plan_file.is_file():
        previous = json.loads(plan_file.read_text(encoding="utf-8"))
        if previous != plan:
            what = ("format" if previous.get("format") != plan["format"] else "tokenizer"
                    if previous.get("tokenizer") != plan["tokenizer"] else "inputs")
            raise UserError(f"{fs.as_str(out)}: was prepared from other {what}; give a new "
                            "--output directory (or delete this one)")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{fs.as_str(out)}: exists and is not a prepared directory; give a "
                        "new --output")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{fs.as_str(out)}: cannot create ({e})") from None
    tokenizer.save(out / TOKENIZER_DIR)
    write_json(plan_file, plan)


# ------------------------------------------------------------------------------- running units

def _run_units(units, todo, tokenizer, context, workers, progress) -> int:
    """Prepare the units in `todo`; a progress bar over input bytes (ETA) with tokens/s.
    Returns the tokens written."""
    total_bytes = sum(u.size for u in units)
    done_bytes = total_bytes - sum(units[i].size for i in todo)
    bar = progress_bar(total_bytes, done_bytes, "B", "prepare", enabled=progress,
                       unit_scale=True, unit_divisor=1024)
    started = time.perf_counter()
    jobs = [(i, units[i]) for i in todo]
    tokens = 0
    if workers == 1:
        def report(delta_bytes, delta_tokens):
            nonlocal tokens
            tokens += delta_tokens
            bar.update(delta_bytes)
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f} "
                                "tokens/s")
        _worker_init(context, tokenizer, report)
        try:
            for job in jobs:
                _prepare_unit(job)
        finally:
            bar.close()
        return tokens
    # Forked workers inherit the loaded tokenizer, spawned ones load the copy prepare saved;
    # they report progress through a queue.
    mp = process_context()
    updates = mp.Queue()
    shared = tokenizer if mp.get_start_method() == "fork" else \
        fs.as_str(fs.as_path(context["output"]) / TOKENIZER_DIR)
    pool = mp.Pool(workers, _worker_init, (context, shared, updates))
    try:
        results = pool.imap_unordered(_prepare_unit, jobs)
        finished = 0
        while finished < len(jobs):
            try:
                results.next(timeout=0.5)
                finished += 1
            except multiprocessing.TimeoutError:
                pass
            while True:
                try:
                    delta_bytes, delta_tokens = updates.get_nowait()
                except queue.Empty:
                    break
                tokens += delta_tokens
                bar.update(delta_bytes)
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f} "
                                "tokens/s")
    finally:
        bar.close()
        pool.terminate()
        pool.join()
    while True:  # the last reports may arrive after the last result
        try:
            tokens += updates.get(timeout=0.1)[1]
        except queue.Empty:
            break
    return tokens


_STATE: dict = {}


def _worker_init(context: dict, tokenizer: Tokenizer | str, report) -> None:
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    if context["parallel"]:
        # One process per core already: the tokenizers' own thread pools would oversubscribe.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        if hasattr(tokenizer, "threads"):
            tokenizer.threads = 1
    if not callable(report):
        updates = report
        report = lambda b, t: updates.put((b, t))  # noqa: E731
    _STATE.update(context, tokenizer=tokenizer, report=report)


def _prepare_unit(job: tuple[int, Unit]) -> None:
    index, unit = job
    stats = ReadStats()
    writer = _ShardWriter(index, unit)
    batch, chars, reported = [], 0, 0
    for document in read_unit(unit, _STATE["doc_format"], _STATE["text_field"], stats):
        batch.append(document)
        chars += sum(map(len, document))
        if chars >= _STATE["batch_chars"]:
            new_tokens = writer.add(batch)
            _STATE["report"](stats.bytes_done - reported, new_tokens)
            reported = stats.bytes_done
            batch, chars = [], 0
    new_tokens = writer.add(batch)
    writer.close()
    _STATE["report"](max(unit.size - reported, 0), new_tokens)
    shards = writer.shards
    record = {"unit": index, "source": unit.source, "shards": shards,
              "tokens": sum(s["tokens"] for s in shards),
              "documents": sum(s["documents"] for s in shards),
              "sentences": sum(s["sentences"] for s in shards), "lines": stats.lines,
              "empty_documents": stats.empty_documents,
              "undecodable_lines": stats.undecodable_lines,
              "undecodable_examples": stats.examples}
    write_json(fs.as_path(_STATE["output"]) / f"{unit_name(index)}.json", record)  # last


def corpus_texts(documents: list[list[str]]) -> list[str]:
    """The texts encoded for documents (lists of sentences): sentences after a document's first
    get a leading space, as they would have inside running text (byte-level BPE marks word
    starts with the space)."""
    return [s if j == 0 else " " + s for doc in documents for j, s in enumerate(doc)]


class _ShardWriter:
    """Turns batches of documents into shards of at most about `shard_tokens` tokens (a shard
    ends at a document end), each with its arrays and block indexes."""

    def __init__(self, unit_index: int, unit: Unit):
        self.unit_index, self.unit = unit_index, unit
        self.tokenizer: Tokenizer = _STATE["tokenizer"]
        self.out = fs.as_path(_STATE["output"])
        self.dtype = np.dtype(_STATE["dtype"])
        self.shards: list[dict] = []
        self._reset()

    def _reset(self):
        self.length, self.tokens, self.sentence_ends, self.document_ends = 0, [], [], []

    def add(self, documents: list[list[str]]) -> int:
        """Encode and append `documents`; returns the tokens added."""
        if not documents:
            return 0
        texts = corpus_texts(documents)
        flat, lengths = self.tokenizer.encode_corpus_batch(texts)
        # </s> marks document ends in the stream and nowhere else (segment ids rely on it);
        # corpus text is encoded as text, so only a tokenizer's own quirk could emit one.
        flat[flat == self.tokenizer.eos_id] = self.tokenizer.unk_id
        per_doc = np.fromiter(map(len, documents), np.int64, count=len(documents))
        last = np.cumsum(per_doc) - 1                   # each document's last sentence
        doc_of = np.repeat(np.arange(len(documents)), per_doc)
        is_last = np.zeros(len(texts), bool)
        is_last[last] = True
        ends = np.cumsum(lengths)
        # Every document gets </s> after its last sentence; a sentence's end is counted in the
        # stream with those separators.
        stream = np.insert(flat, ends[last], self.tokenizer.eos_id)
        sentence_ends = ends + doc_of + is_last + self.length
        self.tokens.append(stream.astype(self.dtype))
        self.sentence_ends.append(sentence_ends[(lengths > 0) | is_last])
        self.document_ends.append(sentence_ends[is_last])
        self.length += len(stream)
        if self.length >= _STATE["shard_tokens"]:
            self.close()
        return len(stream)

    def close(self) -> None:
        """Write what has accumulated as a shard."""
        if not self.length:
            return
        name = f"shard-{self.unit_index:05d}.{len(self.shards):03d}"
        offsets = offset_dtype(self.length)
        tokens = np.concatenate(self.tokens)
        arrays = {"tokens": tokens,
                  "documents": np.concatenate(self.document_ends).astype(offsets),
                  "sentences": np.concatenate(self.sentence_ends).astype(offsets)}
        record = {"name": name, "unit": self.unit_index, "source": self.unit.source,
                  "tokens": int(len(tokens)), "documents": int(len(arrays["documents"])),
                  "sentences": int(len(arrays["sentences"])), "sha256": {}, "blocks": {}}
        for kind, array in arrays.items():
            data = npy_bytes(array)
            if kind == "tokens":
                record["tokens_offset"] = len(data) - array.nbytes  # the .npy header
            else:
                record["sha256"][kind] = sha256(data)
            fs.write_bytes(self.out / array_file(name, kind), data)
        for capacity, packing in _STATE["indexes"]:
            starts = block_starts(len(tokens), arrays["sentences"], arrays["documents"],
                                  capacity, packing).astype(offsets)
            record["blocks"][index_dir(capacity, packing)] = _write_index_part(
                self.out, capacity, packing, name, starts)
        self.shards.append(record)
        self._reset()


def _write_index_part(out, capacity, packing, name, starts) -> list:
    folder = out / index_dir(capacity, packing)
    folder.mkdir(parents=True, exist_ok=True)
    data = npy_bytes(starts)
    fs.write_bytes(folder / f"{name}.npy", data)
    return [int(len(starts)), sha256(data)]


# ----------------------------------------------------------------------------------- manifest

def _write_manifest(out, units, plan, tokenizer) -> dict:
    records = [json.loads((out / f"{unit_name(i)}.json").read_text(encoding="utf-8"))
               for i in range(len(units))]
    totals = {key: sum(r[key] for r in records)
              for key in ("tokens", "documents", "sentences", "empty_documents",
                          "undecodable_lines")}
    problems = [e for r in records for e in r["undecodable_examples"]]
    if totals["undecodable_lines"]:
        print(f"warning: skipped {totals['undecodable_lines']} lines that are not UTF-8, e.g. "
              + "; ".join(problems[:3]))
    if totals["empty_documents"]:
        print(f"skipped {totals['empty_documents']} empty documents")
    sources = sorted({u.source for u in units})
    if totals["documents"] == 0:
        bad = [r for r in records if r["undecodable_lines"]]
        if bad:
            raise UserError(not_utf8_message(
                bad[0]["source"], f"{sum(r['undecodable_lines'] for r in bad)} of "
                f"{sum(r['lines'] for r in records)} lines, "
                f"e.g. {bad[0]['undecodable_examples'][0]}"))
        raise UserError(f"empty corpus: no text in {', '.join(sources)}")
    shards = [s for r in records for s in r["shards"]]
    manifest = {"format": FORMAT_VERSION, "tokenizer": plan["tokenizer"],
                "doc_format": plan["doc_format"], "text_field": plan["text_field"],
                "token_dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name,
                "sources": sources, "totals": totals,
                "shards": [{k: v for k, v in s.items() if k != "blocks"} for s in shards]}
    write_json(out / MANIFEST, manifest)
    return manifest


def _complete_indexes(out, manifest, indexes, progress) -> None:
    """Write each wanted index's index.json, first building the parts that shards prepared by
    an earlier run (with other --seq-len) lack."""
    names = [s["name"] for s in manifest["shards"]]
    records = {}
    unit_ids = sorted({s["unit"] for s in manifest["shards"]})
    for u in unit_ids:
        for s in json.loads((out / f"{unit_name(u)}.json").read_text(encoding="utf-8"))["shards"]:
            records[s["name"]] = s.get("blocks", {})
    shards = Shards(out, manifest)
    for capacity, packing in indexes:
        folder = out / index_dir(capacity, packing)
        key = index_dir(capacity, packing)
        if (folder / INDEX_FILE).is_file():
            info = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
            if info.get("shards") == names:
                continue
        counts, digests = [], []
        bar = progress_bar(len(names), 0, "shard", f"index {capacity + 1}/{packing}",
                           enabled=progress, delay=1.0)
        for number, name in enumerate(names):
            if key not in records[name]:
                starts = shard_block_starts(shards, number, capacity, packing)
                records[name][key] = _write_index_part(out, capacity, packing, name, starts)
            count, digest = records[name][key]
            counts.append(count)
            digests.append(digest)
            bar.update(1)
        bar.close()
        write_json(folder / INDEX_FILE, {"capacity": capacity, "packing": packing,
                                         "shards": names, "counts": counts,
                                         "sha256": digests})
    shards.close()
