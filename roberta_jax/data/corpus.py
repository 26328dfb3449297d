"""Reading raw text: files (plain, jsonl, gzip; local or `gs://`), globs, and tfds datasets, as
work units of documents.

A *unit* is a slice of the input that one worker reads on its own: a byte range of a plain file
(cut at a document boundary, so big files spread over all cores), a whole gzip file, or an even
split of a tfds dataset. Units are listed up front and numbered, so a re-run finds the same
units and can skip the ones already done. Each knows roughly how many input bytes it covers,
for progress, ETA and sampling weights.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import io
import json
import os
from collections.abc import Iterator

from roberta_jax import fs
from roberta_jax.errors import UserError

FORMATS = ("lines", "paragraphs")  # one document per line | documents separated by blank lines
TFDS_PREFIX = "tfds:"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
UNIT_BYTES = 64 << 20
_PROBE = 8192
_READ_BUFFER = 1 << 20


@dataclasses.dataclass(frozen=True)
class Unit:
    """One worker's share of the input."""
    source: str                 # file path, or "tfds:NAME"
    start: int = 0              # byte offset (files) or split index (tfds)
    end: int = -1               # byte offset, -1 for the whole file; split count for tfds
    split: str = "train"        # tfds split
    data_dir: str | None = None  # tfds data_dir
    size: int = 0               # input bytes covered (compressed for .gz; estimated for tfds)


@dataclasses.dataclass
class ReadStats:
    """What reading a unit met: skipped input counted (and the first few located), and how far
    it got, in the unit's `size` units."""
    empty_documents: int = 0
    undecodable_lines: int = 0
    lines: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)
    bytes_done: int = 0

    def undecodable(self, where: str) -> None:
        self.undecodable_lines += 1
        if len(self.examples) < 5:
            self.examples.append(where)


def process_context():
    """How to start worker processes: fork (they inherit what is loaded, at no cost) unless
    JAX has started its runtime in this process (a library user's session): forking its
    threads can deadlock the children, so then spawn."""
    import multiprocessing
    import sys
    bridge = sys.modules.get("jax._src.xla_bridge")
    started = bridge is not None and bool(getattr(bridge, "_backends", None))
    return multiprocessing.get_context("spawn" if started else "fork")


def not_utf8_message(path: str, where: str) -> str:
    return (f"{path}: not UTF-8 text ({where}); it may be Latin-1 or another legacy encoding: "
            f"convert it first, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8")


def list_units(inputs: list[str], doc_format: str = "lines", tfds_data_dir: str | None = None,
               tfds_split: str = "train", unit_bytes: int = UNIT_BYTES) -> list[Unit]:
    """Expand globs and tfds names into numbered units; missing, binary or non-UTF-8 inputs
    are errors."""
    if doc_format not in FORMATS:
        raise UserError(f"unknown --format {doc_format!r}; use one of {', '.join(FORMATS)}")
    units = []
    for spec in inputs:
        if spec.startswith(TFDS_PREFIX):
            units += _tfds_units(spec, tfds_data_dir, tfds_split, unit_bytes)
            continue
        try:
            paths = fs.glob(spec) if fs.has_magic(spec) else [spec]
        except OSError as e:
            raise UserError(f"{spec}: cannot list ({e})") from None
        if not paths:
            raise UserError(f"{spec}: no files match this pattern")
        for path in paths:
            units += _file_units(fs.as_str(path), doc_format, unit_bytes)
    return units


def _open(path: str, start: int = 0):
    """A buffered binary reader of a local or remote file, decompressed for .gz."""
    raw = fs.as_path(path).open("rb")
    if path.endswith(".gz"):
        return raw, io.BufferedReader(gzip.GzipFile(fileobj=raw), _READ_BUFFER)
    raw.seek(start)
    return raw, (raw if isinstance(raw, io.BufferedReader)
                 else io.BufferedReader(raw, _READ_BUFFER))


def _file_units(path: str, doc_format: str, unit_bytes: int) -> list[Unit]:
    p = fs.as_path(path)
    try:
        if not p.is_file():
            raise UserError(f"{path}: no such file" if not p.exists() else f"{path}: not a file")
        size = fs.size(path)
        raw, reader = _open(path)
        with raw, reader:
            head = reader.read(_PROBE)
            at_end = len(head) < _PROBE
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if b"\0" in head:
        raise UserError(f"{path}: looks like a binary file (it contains NUL bytes), not text; "
                        "give text, jsonl or .gz files")
    _check_utf8(path, head, at_end)
    if path.endswith(".gz") or size <= unit_bytes:
        return [Unit(path, size=size)]
    # Cut big plain files at document boundaries, so every unit starts on a fresh document.
    is_jsonl = path.endswith(JSONL_SUFFIXES)
    separator = b"\n\n" if doc_format == "paragraphs" and not is_jsonl else b"\n"
    cuts, position = [0], 0
    with p.open("rb") as f:
        while True:
            position += unit_bytes
            if position >= size:
                break
            f.seek(position)
            window, found = b"", -1
            while True:
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                window += chunk
                found = window.find(separator)
                if found >= 0:
                    break
            if found < 0:
                break
            position += found + len(separator)
            if position >= size:
                break
            cuts.append(position)
    cuts.append(size)
    return [Unit(path, a, b, size=b - a) for a, b in zip(cuts, cuts[1:])]


def _check_utf8(path: str, head: bytes, at_end: bool) -> None:
    """Refuse a file whose first lines are mostly not UTF-8 (Latin-1, CP-1252, ...): reading on
    would skip nearly all of it. A stray bad line in a UTF-8 file is only skipped and counted."""
    lines = head.split(b"\n")
    if not at_end and len(lines) > 1:
        lines = lines[:-1]  # the probe may end inside a line (and inside a character)
    bad, first, total = 0, None, 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        total += 1
        try:
            codecs.getincrementaldecoder("utf-8")().decode(line, final=at_end or len(lines) > 1)
        except UnicodeDecodeError as e:
            bad += 1
            first = first or f"line {number}, byte {e.start}: {line[e.start:e.start + 1]!r}"
    if bad and bad * 2 >= total:
        raise UserError(not_utf8_message(path, first))


def _tfds_units(spec: str, data_dir: str | None, split: str, unit_bytes: int) -> list[Unit]:
    name = spec[len(TFDS_PREFIX):]
    splits = _tfds_builder(name, data_dir).info.splits
    if not splits:  # not prepared (or mocked): one unit, and tfds.load says what is wrong
        return [Unit(spec, 0, 1, split, data_dir)]
    if split not in splits:
        raise UserError(f"{spec}: has no split {split!r} (it has {', '.join(splits)})")
    info = splits[split]
    num_bytes = int(getattr(info, "num_bytes", 0) or 0)
    parts = max(os.cpu_count() or 1, info.num_shards or 1, -(-num_bytes // unit_bytes))
    parts = max(1, min(parts, info.num_examples or 1))
    return [Unit(spec, i, parts, split, data_dir, size=num_bytes // parts) for i in range(parts)]


def _tfds_builder(name: str, data_dir: str | None):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError("tfds inputs need tensorflow-datasets: pip install tensorflow-datasets") \
            from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several unrelated types for unknown names
        raise UserError(f"tfds:{name}: unknown dataset ({str(e).splitlines()[0]})") from None
    return builder


def read_unit(unit: Unit, doc_format: str = "lines", text_field: str = "text",
              stats: ReadStats | None = None) -> Iterator[list[str]]:
    """Documents of a unit, each a list of sentences (lines within a paragraph document; a
    one-line document is one sentence). Empty documents and undecodable lines are skipped and
    counted in `stats`."""
    stats = stats if stats is not None else ReadStats()
    if unit.source.startswith(TFDS_PREFIX):
        yield from _read_tfds(unit, text_field, stats)
        return
    is_jsonl = unit.source.endswith(JSONL_SUFFIXES)
    lines = _numbered_lines(unit, stats)
    if is_jsonl:
        yield from _jsonl_documents(unit.source, lines, text_field, stats)
    elif doc_format == "lines":
        for _, line in lines:
            text = line.strip()
            if text:
                yield [text]
            else:
                stats.empty_documents += 1
    else:
        document = []
        for _, line in lines:
            text = line.strip()
            if text:
                document.append(text)
            elif document:
                yield document
                document = []
        if document:
            yield document


def _numbered_lines(unit: Unit, stats: ReadStats) -> Iterator[tuple[int, str]]:
    path = unit.source
    compressed = path.endswith(".gz")
    try:
        raw, reader = _open(path, unit.start)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    with raw, reader:
        # Line numbers are exact for the first unit of a file; later units count from their start.
        remaining = None if unit.end < 0 else unit.end - unit.start
        try:
            for number, line in enumerate(reader, 1):
                stats.lines += 1
                if remaining is not None:
                    if remaining <= 0:
                        break
                    remaining -= len(line)
                if compressed:
                    if number % 4096 == 0:
                        stats.bytes_done = raw.tell()
                else:
                    stats.bytes_done += len(line)
                try:
                    yield number, line.decode("utf-8")
                except UnicodeDecodeError as e:
                    where = f"{path}:{number}" if unit.start == 0 else \
                        f"{path}: line {number} after byte {unit.start}"
                    stats.undecodable(f"{where} (byte {e.start}: not UTF-8)")
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise UserError(f"{path}: cannot read ({e})") from None
        if compressed:
            stats.bytes_done = unit.size


def _jsonl_documents(path, lines, text_field, stats) -> Iterator[list[str]]:
    for number, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            raise UserError(f"{path}:{number}: no {text_field!r} field; choose the text field "
                            "with --text-field")
        text = str(record[text_field]).strip()
        if text:
            yield [p.strip() for p in text.split("\n") if p.strip()]
        else:
            stats.empty_documents += 1


def _read_tfds(unit: Unit, text_field: str, stats: ReadStats) -> Iterator[list[str]]:
    import tensorflow_datasets as tfds
    name = unit.source[len(TFDS_PREFIX):]
    split = tfds.even_splits(unit.split, n=unit.end)[unit.start]
    try:
        dataset = tfds.load(name, split=split, data_dir=unit.data_dir, download=False)
    except Exception as e:  # tfds reports a missing dataset with assorted exception types
        raise UserError(f"{unit.source}: cannot load ({str(e).splitlines()[0]}); prepare it "
                        "first (tfds build) or pass --tfds-data-dir") from None
    for number, example in enumerate(tfds.as_numpy(dataset)):
        if text_field not in example:
            raise UserError(f"{unit.source}: examples have no {text_field!r} feature (they have "
                            f"{', '.join(example)}); choose one with --text-field")
        value = example[text_field]
        stats.lines += 1
        stats.bytes_done = min(stats.bytes_done + len(value), unit.size or 1 << 62)
        try:
            text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            stats.undecodable(f"{unit.source}[{unit.split}] example {number}")
            continue
        sentences = [p.strip() for p in text.split("\n") if p.strip()]
        if sentences:
            yield sentences
        else:
            stats.empty_documents += 1
