"""One filesystem layer for every path the project reads or writes: local paths and object
storage (`gs://`, `s3://`) alike, through `etils.epath` (what orbax itself uses).

epath would hand `gs://` to TensorFlow's gfile whenever TensorFlow is importable, and gfile's
own GCS client cannot be pointed at anything but Google's servers (no emulator, no private
endpoint). We pin epath to its fsspec backend (gcsfs) instead, for us and for orbax alike, so
every client honours STORAGE_EMULATOR_HOST. Listings are not cached: on a pod another host may
have written the file a moment ago.

Local paths are made absolute when they enter (`as_path`), so a path recorded in a workdir
means the same file whatever directory a later command runs from.
"""

from __future__ import annotations

import os
from typing import Union

os.environ.setdefault("EPATH_USE_TF", "false")   # read by epath at every call, orbax's too

import fsspec.config  # noqa: E402
from etils import epath  # noqa: E402

for _protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


def _forget_filesystems_after_fork() -> None:
    # epath caches one fsspec filesystem per protocol for the process's life; gcsfs's event
    # loop does not survive a fork, so a forked worker (prepare's) must make its own.
    from etils.epath import backend
    backend.fsspec_backend._get_filesystem.cache_clear()


os.register_at_fork(after_in_child=_forget_filesystems_after_fork)

Path = epath.Path
PathLike = Union[str, os.PathLike]
REMOTE_PREFIXES = ("gs://", "s3://", "az://", "hf://")


def is_remote(path: PathLike) -> bool:
    return os.fspath(path).startswith(REMOTE_PREFIXES)


def as_path(path: PathLike) -> Path:
    """The path as an epath.Path; a local one absolute, with `~` expanded (not symlink-resolved:
    a path the user gave through a link should keep reading through that link)."""
    text = os.fspath(path)
    if is_remote(text):
        return Path(text.rstrip("/") if text.count("/") > 3 else text)
    return Path(os.path.abspath(os.path.expanduser(text)))


def as_str(path: PathLike) -> str:
    """The canonical text of a path, for recording in a workdir and comparing: absolute for
    local paths, without a trailing slash."""
    return os.fspath(as_path(path))


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether two spellings name the same place (`prepared`, `prepared/`, `/abs/prepared`)."""
    a, b = as_path(a), as_path(b)
    if os.fspath(a) == os.fspath(b):
        return True
    if is_remote(a) or is_remote(b):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def glob(pattern: str) -> list[str]:
    """The paths matching a shell pattern, sorted; local or remote (`gs://b/corpus/*.txt`)."""
    if is_remote(pattern):
        fs = _fsspec(pattern)
        protocol = pattern.split("://", 1)[0]
        return sorted(f"{protocol}://{p}" if "://" not in p else p
                      for p in fs.glob(pattern) if not fs.isdir(p))
    import glob as _glob
    return sorted(p for p in _glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))


def has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def read_range(path: PathLike, start: int, length: int) -> bytes:
    """`length` bytes from offset `start`: one ranged request on object storage, a seek and
    read locally. Short only at the end of the file."""
    if length <= 0:
        return b""
    if is_remote(path):
        text = os.fspath(path)
        return _fsspec(text).cat_file(text, start=start, end=start + length)
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


# Ranged requests in flight at once per call on object storage. GCS itself takes many; the
# GCS emulator used in tests and benchmarks stalls beyond about 4.
RANGE_CONCURRENCY = int(os.environ.get("ROBERTA_JAX_RANGE_CONCURRENCY", "32"))


def read_ranges(paths: list, starts: list[int], ends: list[int]) -> list[bytes]:
    """The bytes [start, end) of each path: on object storage one ranged GET each, up to
    RANGE_CONCURRENCY in flight at once; locally seeks and reads. Short only at the end of a
    file."""
    if not paths:
        return []
    texts = [os.fspath(p) for p in paths]
    if is_remote(texts[0]):
        fs = _fsspec(texts[0])
        out = fs.cat_ranges(texts, [int(s) for s in starts], [int(e) for e in ends],
                            on_error="raise", batch_size=RANGE_CONCURRENCY)
        return [bytes(b) for b in out]
    out, handles = [], {}
    try:
        for path, start, end in zip(texts, starts, ends):
            f = handles.get(path) or handles.setdefault(path, open(path, "rb"))
            f.seek(int(start))
            out.append(f.read(max(int(end) - int(start), 0)))
    finally:
        for f in handles.values():
            f.close()
    return out


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write a whole file so that readers see the old content or the new, never a part: a
    temporary file renamed into place locally; one upload on object storage (an object appears
    only once complete)."""
    if is_remote(path):
        as_path(path).write_bytes(data)
        return
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def size(path: PathLike) -> int:
    """The size of a file in bytes."""
    if is_remote(path):
        text = os.fspath(path)
        return int(_fsspec(text).size(text))
    return os.path.getsize(path)


def _fsspec(path: str):
    from etils.epath import backend
    return backend.fsspec_backend.fs(path)
