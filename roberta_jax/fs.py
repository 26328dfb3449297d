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

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("EPATH_USE_TF", "false")   # read by epath at every call, orbax's too

import fsspec.config
from etils import epath

for _protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


def _forget_filesystems_after_fork() -> None:
    # epath caches one fsspec filesystem per protocol for the process's life; gcsfs's event
    # loop does not survive a fork, so a forked worker (prepare's) must make its own.
    from etils.epath import backend
    backend.fsspec_backend._get_filesystem.cache_clear()


os.register_at_fork(after_in_child=_forget_filesystems_after_fork)

Path = epath.Path
PathLike = str | os.PathLike
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


def files_under(directory: PathLike) -> list[str]:
    """Paths of every file under `directory` (recursively), relative to it, sorted."""
    text = as_str(directory)
    if is_remote(text):
        fs = _fsspec(text)
        root = text.split("://", 1)[1].rstrip("/") + "/"
        return sorted(p[len(root):] for p in fs.find(text) if p.startswith(root))
    return sorted(os.path.relpath(os.path.join(folder, name), text)
                  for folder, _, names in os.walk(text) for name in names)


def copy_tree(src: PathLike, dst: PathLike) -> None:
    """Copy every file under directory `src` into directory `dst`, local or remote either way."""
    src, dst = as_path(src), as_path(dst)
    for relative in files_under(src):
        target = dst / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((src / relative).read_bytes())


def move(src: PathLike, dst: PathLike) -> None:
    """Move a file or a directory tree to `dst` (its parent is created). Object storage has no
    rename: there it is a copy, then a delete."""
    src, dst = as_path(src), as_path(dst)
    if not is_remote(src) and not is_remote(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(os.fspath(src), os.fspath(dst))
    elif src.is_dir():
        copy_tree(src, dst)
        src.rmtree()
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        src.unlink()


def local_copy(path: PathLike, names: tuple[str, ...] | None = None) -> str:
    """A local path holding what `path` holds (a file, or a directory tree; only the files in
    `names` when given): the path itself when local, else a download into a temporary directory
    that lives as long as the process. For libraries that open local files only, possibly long
    after loading (a sentencepiece model is copied again when its tokenizer is saved)."""
    if not is_remote(path):
        return as_str(path)
    global _downloads
    if _downloads is None:
        _downloads = tempfile.mkdtemp(prefix="roberta_jax_")
        atexit.register(shutil.rmtree, _downloads, ignore_errors=True)
    source = as_path(path)
    local = tempfile.mkdtemp(dir=_downloads)
    if not source.is_dir():
        local = os.path.join(local, source.name)
        with open(local, "wb") as f:
            f.write(source.read_bytes())
        return local
    local = os.path.join(local, source.name)
    for relative in files_under(source):
        if names is None or relative in names:
            os.makedirs(os.path.dirname(os.path.join(local, relative)), exist_ok=True)
            with open(os.path.join(local, relative), "wb") as f:
                f.write((source / relative).read_bytes())
    os.makedirs(local, exist_ok=True)
    return local


_downloads: str | None = None


def _fsspec(path: str):
    from etils.epath import backend
    return backend.fsspec_backend.fs(path)
