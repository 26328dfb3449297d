"""`roberta-jax prepare`: raw text -> sharded token ids with document and sentence boundaries.

Layout of a prepared directory:

    manifest.json                  totals, tokenizer fingerprint, sources, one entry per shard
    tokenizer/                     the tokenizer, so training and export find it
    shard-00000.tokens.npy         token ids; every document is followed by </s>
    shard-00000.documents.npy      end offset (exclusive) of every document, separator included
    shard-00000.sentences.npy      end offset of every sentence (a document's last sentence
                                   ends at its separator)
    shard-00000.json               the shard's counts; written last, so it marks the shard done

Tokenizing happens once, here, on every core; a re-run skips shards already done.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
import time

import numpy as np

from roberta_jax.data.corpus import Problems, Unit, list_units, read_unit
from roberta_jax.data.tokenizer import Tokenizer, load_tokenizer
from roberta_jax.errors import UserError
from roberta_jax.progress import progress_bar

FORMAT_VERSION = "roberta_jax.prepared/1"
MANIFEST = "manifest.json"
PLAN = "plan.json"
TOKENIZER_DIR = "tokenizer"
_ENCODE_BATCH = 1024


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def prepare(inputs: list[str], tokenizer_path: str, output: str, *, doc_format: str = "lines",
            text_field: str = "text", tfds_data_dir: str | None = None,
            tfds_split: str = "train", workers: int | None = None,
            unit_bytes: int | None = None, progress: bool = True) -> dict:
    """Tokenize `inputs` into `output`; returns the manifest. Resumes a partial run."""
    tokenizer = load_tokenizer(tokenizer_path)
    kwargs = {} if unit_bytes is None else {"unit_bytes": unit_bytes}
    units = list_units(inputs, doc_format, tfds_data_dir, tfds_split, **kwargs)
    out = pathlib.Path(output)
    created_here = not out.exists()
    plan = {"format": FORMAT_VERSION, "tokenizer": _tokenizer_info(tokenizer),
            "doc_format": doc_format, "text_field": text_field,
            "units": [dataclasses.asdict(u) for u in units]}
    _start_or_resume(out, plan, tokenizer)

    todo = [i for i in range(len(units)) if not (out / f"{shard_name(i)}.json").is_file()]
    if len(todo) < len(units):
        print(f"resuming: {len(units) - len(todo)} of {len(units)} shards already done")
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    jobs = [(i, units[i]) for i in todo]
    started, tokens_done = time.perf_counter(), 0
    bar = progress_bar(len(units), len(units) - len(todo), "shard", "prepare", enabled=progress)
    context = dict(tokenizer_dir=str(out / TOKENIZER_DIR), output=str(out),
                   doc_format=doc_format, text_field=text_field)
    if workers == 1:
        _worker_init(context)
        results = map(_prepare_unit, jobs)
    else:
        pool = multiprocessing.get_context("fork").Pool(workers, _worker_init, (context,))
        results = pool.imap_unordered(_prepare_unit, jobs)
    try:
        for stats in results:
            tokens_done += stats["tokens"]
            rate = tokens_done / max(time.perf_counter() - started, 1e-9)
            bar.update(1)
            bar.set_postfix_str(f"{rate / 1e3:,.0f}k tokens/s")
    finally:
        bar.close()
        if workers > 1:
            pool.terminate()
    try:
        return _write_manifest(out, units, plan, tokenizer,
                               elapsed=time.perf_counter() - started,
                               tokens_this_run=tokens_done if todo else None)
    except UserError:
        if created_here:  # nothing worth keeping (an empty corpus): leave no directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _tokenizer_info(tokenizer: Tokenizer) -> dict:
    return {"kind": tokenizer.kind, "fingerprint": tokenizer.fingerprint(),
            "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
            "pad_id": tokenizer.pad_id, "eos_id": tokenizer.eos_id, "unk_id": tokenizer.unk_id,
            "mask_id": tokenizer.mask_id}


def _start_or_resume(out: pathlib.Path, plan: dict, tokenizer: Tokenizer) -> None:
    plan_file = out / PLAN
    if plan_file.is_file():
        previous = json.loads(plan_file.read_text(encoding="utf-8"))
        if previous != plan:
            what = "tokenizer" if previous.get("tokenizer") != plan["tokenizer"] else "inputs"
            raise UserError(f"{out}: was prepared from other {what}; give a new --output "
                            "directory (or delete this one)")
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not a prepared directory; give a new --output")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create ({e.strerror})") from None
    tokenizer.save(out / TOKENIZER_DIR)
    _write_json(plan_file, plan)


# ------------------------------------------------------------------------------------ workers

_STATE: dict = {}


def _worker_init(context: dict) -> None:
    _STATE.update(context, tokenizer=load_tokenizer(context["tokenizer_dir"]))


def _prepare_unit(job: tuple[int, Unit]) -> dict:
    index, unit = job
    tokenizer: Tokenizer = _STATE["tokenizer"]
    problems = Problems()
    pieces, sentence_ends, document_ends, length = [], [], [], 0
    separator = np.array([tokenizer.eos_id], np.int64)

    def flush(documents):
        nonlocal length
        # Sentences after a document's first are encoded with a leading space, as they would be
        # inside running text (byte-level BPE marks word starts with the space).
        flat = [s if j == 0 else " " + s for doc in documents for j, s in enumerate(doc)]
        encoded = iter(tokenizer.encode_batch(flat))
        for doc in documents:
            for _ in doc:
                ids = np.asarray(next(encoded), np.int64)
                pieces.append(ids)
                length += len(ids)
                sentence_ends.append(length)
            pieces.append(separator)
            length += 1
            sentence_ends[-1] = length
            document_ends.append(length)

    batch = []
    for document in read_unit(unit, _STATE["doc_format"], _STATE["text_field"], problems):
        batch.append(document)
        if len(batch) >= _ENCODE_BATCH:
            flush(batch)
            batch = []
    flush(batch)

    out, name = pathlib.Path(_STATE["output"]), shard_name(index)
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    _save_npy(out / f"{name}.tokens.npy", tokens.astype(token_dtype(tokenizer.vocab_size)))
    _save_npy(out / f"{name}.documents.npy", np.asarray(document_ends, np.int64))
    _save_npy(out / f"{name}.sentences.npy", np.asarray(sentence_ends, np.int64))
    stats = {"name": name, "source": unit.source, "tokens": int(len(tokens)),
             "documents": len(document_ends), "sentences": len(sentence_ends),
             "empty_documents": problems.empty_documents,
             "undecodable_lines": problems.undecodable_lines,
             "undecodable_examples": problems.examples}
    _write_json(out / f"{name}.json", stats)  # last: marks the shard done
    return stats


def _save_npy(path: pathlib.Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _write_json(path: pathlib.Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_manifest(out, units, plan, tokenizer, elapsed, tokens_this_run) -> dict:
    shards = [json.loads((out / f"{shard_name(i)}.json").read_text(encoding="utf-8"))
              for i in range(len(units))]
    totals = {key: sum(s[key] for s in shards)
              for key in ("tokens", "documents", "sentences", "empty_documents",
                          "undecodable_lines")}
    problems = [e for s in shards for e in s["undecodable_examples"]]
    if totals["undecodable_lines"]:
        print(f"warning: skipped {totals['undecodable_lines']} lines that are not UTF-8, e.g. "
              + "; ".join(problems[:3]))
    if totals["empty_documents"]:
        print(f"skipped {totals['empty_documents']} empty documents")
    if totals["documents"] == 0:
        raise UserError(f"empty corpus: no text in {', '.join(sorted({u.source for u in units}))}")
    manifest = {"format": FORMAT_VERSION, "tokenizer": plan["tokenizer"],
                "doc_format": plan["doc_format"], "sources": sorted({u.source for u in units}),
                "totals": totals, "shards": [{k: s[k] for k in ("name", "source", "tokens",
                                                                 "documents", "sentences")}
                                             for s in shards]}
    _write_json(out / MANIFEST, manifest)
    this_run = "every shard was already done" if tokens_this_run is None else \
        f"{tokens_this_run / max(elapsed, 1e-9):,.0f} tokens/s this run"
    print(f"prepared {totals['tokens']:,} tokens in {totals['documents']:,} documents, "
          f"{len(shards)} shards -> {out} ({this_run})")
    return manifest


def load_manifest(prepared_dir: str | os.PathLike) -> dict:
    path = pathlib.Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{prepared_dir}: not a prepared directory (no {MANIFEST}); run "
                        "`roberta-jax prepare` first, or finish an interrupted run")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    return manifest

