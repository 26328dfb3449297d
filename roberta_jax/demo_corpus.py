"""The embedded default corpus: docstrings of the Python standard library.

Real, human-written English that every Python install carries, so the demo and tests need no
download. Docstrings are read by parsing the source files (`ast`), never by importing them:
nothing runs. Each docstring is one document; its label is the top-level package it comes
from (`email`, `asyncio`, ...), which gives a real classification task from the same source.
"""

from __future__ import annotations

import ast
import hashlib
import pathlib
import sysconfig
from typing import NamedTuple

# Private, test and tooling packages whose docstrings are mostly not prose for people.
_SKIP = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "site-packages",
         "dist-packages", "__pycache__", "pydoc_data", "encodings"}


class Document(NamedTuple):
    text: str        # paragraphs separated by "\n"
    package: str     # top-level standard-library package or module
    source: str      # "email/message.py:Message.get_payload"


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _paragraphs(docstring: str) -> str:
    paragraphs = [" ".join(p.split()) for p in docstring.split("\n\n")]
    return "\n".join(p for p in paragraphs if len(p) > 1)


def _docstrings(tree: ast.Module):
    module_doc = ast.get_docstring(tree)
    if module_doc:
        yield "<module>", module_doc
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield node.name, doc


def stdlib_documents(min_chars: int = 80) -> list[Document]:
    """Every distinct docstring of at least `min_chars` characters, in a fixed order."""
    root = stdlib_root()
    seen, documents = set(), []
    for file in sorted(root.rglob("*.py")):
        parts = file.relative_to(root).parts
        if any(p in _SKIP or p.startswith("_") for p in parts[:-1]) or \
                parts[-1].startswith("_") and parts[-1] != "__init__.py":
            continue
        package = parts[0][:-3] if len(parts) == 1 else parts[0]
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for name, doc in _docstrings(tree):
            text = _paragraphs(doc)
            key = hashlib.sha1(text.encode()).digest()
            if len(text) < min_chars or key in seen:
                continue
            seen.add(key)
            documents.append(Document(text, package, f"{'/'.join(parts)}:{name}"))
    return documents


def split_held_out(documents: list[Document], every: int = 10):
    """A fixed train / held-out split: every `every`-th document (by content hash) is held out."""
    train, held_out = [], []
    for doc in documents:
        h = int(hashlib.sha1(doc.text.encode()).hexdigest(), 16)
        (held_out if h % every == 0 else train).append(doc)
    return train, held_out


def write_text(documents: list[Document], path: pathlib.Path) -> pathlib.Path:
    """Documents separated by blank lines, paragraphs by newlines (`--format paragraphs`)."""
    path.write_text("\n\n".join(d.text for d in documents) + "\n", encoding="utf-8")
    return path
