"""Reading raw text: files (plain, jsonl, gzip), globs, and tfds datasets, as work units of
documents.

A *unit* is a slice of the input that one worker turns into one shard: a byte range of a plain
file (cut at a document boundary, so big files spread over all cores), a whole gzip file, or an
even split of a tfds dataset. Units are listed up front and numbered, so a re-run finds the same
units and can skip the ones already done.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import json
import os
import pathlib
from typing import Iterator

from roberta_jax.errors import UserError

FORMATS = ("lines", "paragraphs")  # one document per line | documents separated by blank lines
TFDS_PREFIX = "tfds:"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
UNIT_BYTES = 64 << 20
_BINARY_PROBE = 8192


@dataclasses.dataclass(frozen=True)
class Unit:
    """One shard's worth of input."""
    source: str                 # file path, or "tfds:NAME"
    start: int = 0              # byte offset (files) or split index (tfds)
    end: int = -1               # byte offset, -1 for the whole file; split count for tfds
    split: str = "train"        # tfds split
    data_dir: str | None = None  # tfds data_dir


@dataclasses.dataclass
class Problems:
    """What a unit skipped: counted, and the first few located, for the manifest and the log."""
    empty_documents: int = 0
    undecodable_lines: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def undecodable(self, where: str) -> None:
        self.undecodable_lines += 1
        if len(self.examples) < 5:
            self.examples.append(where)


def list_units(inputs: list[str], doc_format: str = "lines", tfds_data_dir: str | None = None,
               tfds_split: str = "train", unit_bytes: int = UNIT_BYTES) -> list[Unit]:
    """Expand globs and tfds names into numbered units; missing or binary inputs are errors."""
    if doc_format not in FORMATS:
        raise UserError(f"unknown --format {doc_format!r}; use one of {', '.join(FORMATS)}")
    units = []
    for spec in inputs:
        if spec.startswith(TFDS_PREFIX):
            units += _tfds_units(spec, tfds_data_dir, tfds_split)
            continue
        paths = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not paths:
            raise UserError(f"{spec}: no files match this pattern")
        for path in paths:
            units += _file_units(pathlib.Path(path), doc_format, unit_bytes)
    return units


def _file_units(path: pathlib.Path, doc_format: str, unit_bytes: int) -> list[Unit]:
    if not path.is_file():
        raise UserError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(_BINARY_PROBE)
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if b"\0" in head:
        raise UserError(f"{path}: looks like a binary file (it contains NUL bytes), not text; "
                        "give text, jsonl or .gz files")
    size = path.stat().st_size
    if path.suffix == ".gz" or size <= unit_bytes:
        return [Unit(str(path))]
    # Cut big plain files at document boundaries, so every unit starts on a fresh document.
    is_jsonl = path.name.endswith(JSONL_SUFFIXES)
    separator = b"\n\n" if doc_format == "paragraphs" and not is_jsonl else b"\n"
    cuts, position = [0], 0
    with open(path, "rb") as f:
        while True:
            position += unit_bytes
            if position >= size:
                break
            f.seek(position)
            window = b""
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
    return [Unit(str(path), a, b) for a, b in zip(cuts, cuts[1:])]


def _tfds_units(spec: str, data_dir: str | None, split: str) -> list[Unit]:
    name = spec[len(TFDS_PREFIX):]
    splits = _tfds_builder(name, data_dir).info.splits
    if not splits:  # not prepared (or mocked): one unit, and tfds.load says what is wrong
        return [Unit(spec, 0, 1, split, data_dir)]
    if split not in splits:
        raise UserError(f"{spec}: has no split {split!r} (it has {', '.join(splits)})")
    parts = max(1, min(os.cpu_count() or 1, splits[split].num_shards or 1))
    return [Unit(spec, i, parts, split, data_dir) for i in range(parts)]


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
              problems: Problems | None = None) -> Iterator[list[str]]:
    """Documents of a unit, each a list of sentences (lines within a paragraph document; a
    one-line document is one sentence). Empty documents and undecodable lines are skipped and
    counted in `problems`."""
    problems = problems if problems is not None else Problems()
    if unit.source.startswith(TFDS_PREFIX):
        yield from _read_tfds(unit, text_field, problems)
        return
    is_jsonl = unit.source.endswith(JSONL_SUFFIXES)
    lines = _numbered_lines(unit, problems)
    if is_jsonl:
        yield from _jsonl_documents(unit.source, lines, text_field, problems)
    elif doc_format == "lines":
        for _, line in lines:
            text = line.strip()
            if text:
                yield [text]
            else:
                problems.empty_documents += 1
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


def _numbered_lines(unit: Unit, problems: Problems) -> Iterator[tuple[int, str]]:
    path = unit.source
    if path.endswith(".gz"):
        raw = gzip.open(path, "rb")
    else:
        raw = open(path, "rb")
        raw.seek(unit.start)
    with raw:
        # Line numbers are exact for the first unit of a file; later units count from their start.
        remaining = None if unit.end < 0 else unit.end - unit.start
        reader = io.BufferedReader(raw) if not isinstance(raw, io.BufferedReader) else raw
        for number, line in enumerate(reader, 1):
            if remaining is not None:
                if remaining <= 0:
                    break
                remaining -= len(line)
            try:
                yield number, line.decode("utf-8")
            except UnicodeDecodeError as e:
                where = f"{path}:{number}" if unit.start == 0 else \
                    f"{path}: line {number} after byte {unit.start}"
                problems.undecodable(f"{where} (byte {e.start}: not UTF-8)")


def _jsonl_documents(path, lines, text_field, problems) -> Iterator[list[str]]:
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
            problems.empty_documents += 1


def _read_tfds(unit: Unit, text_field: str, problems: Problems) -> Iterator[list[str]]:
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
        try:
            text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            problems.undecodable(f"{unit.source}[{unit.split}] example {number}")
            continue
        sentences = [p.strip() for p in text.split("\n") if p.strip()]
        if sentences:
            yield sentences
        else:
            problems.empty_documents += 1
