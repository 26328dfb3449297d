"""A prepared directory, read lazily: what `prepare` wrote, local or on object storage.

Layout (format 2):

    manifest.json                       totals, tokenizer fingerprint, sources, one entry per shard
    plan.json, unit-00000.json, ...     prepare's own bookkeeping (resume)
    tokenizer/                          the tokenizer, so training and export find it
    shard-00000.000.tokens.npy          token ids; every document is followed by </s>
    shard-00000.000.documents.npy       end offset (exclusive) of every document, separator included
    shard-00000.000.sentences.npy       end offset of every sentence (a document's last sentence
                                        ends at its separator)
    blocks-511-full-sentences/          the packed blocks for one (capacity, packing):
        index.json                      blocks per shard (and checksums)
        shard-00000.000.npy             start offset of every block of the shard

Opening one costs the same whatever the corpus size: the manifest and a block index's counts
(a few numbers per shard). Everything else is read when a row needs it: a row's tokens are one
ranged read (a local `pread`, or an HTTP range request to the bucket); a shard's block starts
(under 0.5% of its tokens' bytes) are read whole on first use: locally from the directory,
remotely through a local cache checked against the SHA-256 recorded by `prepare`. Document and
sentence ends are read only to build a block index that prepare did not build.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pathlib
import threading

import numpy as np

from roberta_jax import fs
from roberta_jax.data.packing import INDEXED, block_starts
from roberta_jax.errors import UserError

FORMAT_VERSION = "roberta_jax.prepared/2"
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
INDEX_FILE = "index.json"
ARRAYS = ("tokens", "documents", "sentences")


def array_file(shard: str, kind: str) -> str:
    return f"{shard}.{kind}.npy"


def index_dir(capacity: int, packing: str) -> str:
    return f"blocks-{capacity}-{packing}"


def offset_dtype(num_tokens: int):
    """Offsets within a shard: 4 bytes each unless a shard is enormous."""
    return np.uint32 if num_tokens < np.iinfo(np.uint32).max else np.int64


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_json(path) -> dict:
    return json.loads(fs.as_path(path).read_text(encoding="utf-8"))


def load_manifest(prepared_dir: str | os.PathLike) -> dict:
    path = fs.as_path(prepared_dir) / MANIFEST
    try:
        manifest = _read_json(path)
    except FileNotFoundError:
        raise UserError(f"{fs.as_str(prepared_dir)}: not a prepared directory (no {MANIFEST}); "
                        "run `roberta-jax prepare` first, or finish an interrupted run") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); prepare the corpus again") from None
    if manifest.get("format") != FORMAT_VERSION:
        sources = manifest.get("sources") or ["YOUR_CORPUS"]
        inputs = " ".join(sources[:3]) + (" ..." if len(sources) > 3 else "")
        text_format = " --format paragraphs" if manifest.get("doc_format") == "paragraphs" \
            else ""
        raise UserError(
            f"{fs.as_str(prepared_dir)}: prepared in format {manifest.get('format')!r}, which "
            f"this version no longer reads ({FORMAT_VERSION}); prepare it again: roberta-jax "
            f"prepare --input {inputs}{text_format} --tokenizer "
            f"{fs.as_str(prepared_dir)}/{TOKENIZER_DIR} --output NEW_DIR")
    return manifest


def cache_root() -> pathlib.Path:
    """Where copies of remote shards' small arrays are kept (ROBERTA_JAX_CACHE overrides)."""
    return pathlib.Path(os.environ.get("ROBERTA_JAX_CACHE")
                        or os.path.join(os.path.expanduser("~"), ".cache", "roberta_jax"))


# --------------------------------------------------------------------------------- the shards

class Shards:
    """The shards of a prepared directory, opened on demand (thread-safe)."""

    def __init__(self, directory: str | os.PathLike, manifest: dict):
        self.dir = fs.as_path(directory)
        self.remote = fs.is_remote(directory)
        self.entries = manifest["shards"]
        self.names = [s["name"] for s in self.entries]
        self.lengths = np.asarray([s["tokens"] for s in self.entries], np.int64)
        self._dtype = np.dtype(manifest["token_dtype"])
        self._lock = threading.Lock()
        self._arrays: dict[tuple[int, str], np.ndarray] = {}
        self._files: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._max_files = _open_file_budget()

    # ---- tokens: one ranged read per row
    def read(self, shards: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[np.ndarray]:
        """Tokens [start, end) of each (shard, start, end), as arrays of the stored dtype."""
        size = self._dtype.itemsize
        if self.remote:
            paths = [str(self.dir / array_file(self.names[s], "tokens")) for s in shards]
            offsets = [self.entries[s]["tokens_offset"] for s in shards]
            chunks = fs.read_ranges(paths, [o + a * size for o, a in zip(offsets, starts)],
                                    [o + b * size for o, b in zip(offsets, ends)])
        else:
            fds = {}
            try:
                for s in set(shards.tolist()):
                    fds[s] = self._dup_fd(s)
                chunks = [os.pread(fds[int(s)], int(b - a) * size,
                                   self.entries[s]["tokens_offset"] + int(a) * size)
                          for s, a, b in zip(shards, starts, ends)]
            finally:
                for fd in fds.values():
                    os.close(fd)
        out = [np.frombuffer(c, self._dtype) for c in chunks]
        for chunk, a, b, s in zip(out, starts, ends, shards):
            if len(chunk) != b - a:
                raise UserError(f"{self.dir / array_file(self.names[s], 'tokens')}: shorter "
                                "than the manifest says; prepare the corpus again")
        return out

    def _dup_fd(self, shard: int) -> int:
        """A duplicate of the shard's cached descriptor (the caller closes it): another thread
        may close the cached one, and the OS reuse its number, while the caller reads."""
        with self._lock:
            fd = self._files.get(shard)
            if fd is not None:
                self._files.move_to_end(shard)
                return os.dup(fd)
            path = os.fspath(self.dir / array_file(self.names[shard], "tokens"))
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise UserError(f"{path}: cannot open ({e.strerror}); prepare the corpus "
                                "again") from None
            self._files[shard] = fd
            while len(self._files) > self._max_files:
                os.close(self._files.popitem(last=False)[1])
            return os.dup(fd)

    def close(self) -> None:
        with self._lock:
            while self._files:
                os.close(self._files.popitem()[1])

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # ---- small arrays: read whole on first use
    def documents(self, shard: int, keep: bool = True) -> np.ndarray:
        return self.small_array(shard, array_file(self.names[shard], "documents"),
                                self.entries[shard]["sha256"]["documents"], keep)

    def sentences(self, shard: int) -> np.ndarray:
        """Only indexing needs these (the largest of the small arrays): never kept."""
        return self.small_array(shard, array_file(self.names[shard], "sentences"),
                                self.entries[shard]["sha256"]["sentences"], keep=False)

    def small_array(self, shard: int, relative: str, digest: str | None,
                    keep: bool = True) -> np.ndarray:
        key = (shard, relative)
        array = self._arrays.get(key)
        if array is None:
            array = read_array(self.dir / relative, digest, self.remote)
            if keep:
                with self._lock:
                    array = self._arrays.setdefault(key, array)
        return array


def read_array(path, digest: str | None, remote: bool) -> np.ndarray:
    """A whole .npy file: directly if local; if remote, through the local cache, whose copy
    must match `digest` (the SHA-256 prepare recorded)."""
    try:
        if not remote:
            return np.load(os.fspath(path), allow_pickle=False)
        cached = cache_root() / "prepared" / f"{digest}.npy" if digest else None
        if cached is not None and cached.is_file():
            return np.load(cached, allow_pickle=False)
        data = fs.as_path(path).read_bytes()
        if digest is not None:
            if sha256(data) != digest:
                raise UserError(f"{path}: its contents differ from what prepare recorded "
                                "(SHA-256); the directory was changed or damaged: prepare the "
                                "corpus again")
            cached.parent.mkdir(parents=True, exist_ok=True)
            fs.write_bytes(cached, data)
        return np.load(io.BytesIO(data), allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; prepare the corpus again") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); prepare the corpus again") from None


def _open_file_budget() -> int:
    """How many shard files may stay open at once: half the process's descriptor limit,
    raised to its hard limit first (a corpus can have thousands of shards)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else 65536
        if soft != resource.RLIM_INFINITY and soft < min(wanted, 65536):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 65536), hard))
            soft = min(wanted, 65536)
        return max(16, (min(soft, 65536) if soft != resource.RLIM_INFINITY else 65536) // 2)
    except (ImportError, ValueError, OSError):
        return 256


# ------------------------------------------------------------------------------ block indexes

class BlockIndex:
    """Blocks of a prepared corpus for one (capacity, packing): their number per shard, read
    at start-up, and their starts, read per shard when a row first needs them."""

    def __init__(self, shards: Shards, capacity: int, packing: str, counts: np.ndarray,
                 digests: list[str | None] | None, built: dict[int, np.ndarray] | None = None):
        self.shards, self.capacity, self.packing = shards, capacity, packing
        self.counts = np.asarray(counts, np.int64)
        self.first = np.concatenate([[0], np.cumsum(self.counts)])  # first block of each shard
        self._digests = digests
        self._built = built or {}

    def __len__(self) -> int:
        return int(self.first[-1])

    def locate(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (shard, start, end) of each global block number."""
        blocks = np.asarray(blocks, np.int64)
        shard = np.searchsorted(self.first, blocks, side="right") - 1
        local = blocks - self.first[shard]
        starts, ends = np.empty_like(blocks), np.empty_like(blocks)
        if self.packing == "none":
            starts = local * self.capacity
            return shard, starts, np.minimum(starts + self.capacity, self.shards.lengths[shard])
        # Row by row: a batch's rows mostly lie in as many different shards.
        for row, (s, i) in enumerate(zip(shard.tolist(), local.tolist())):
            block_start = self.starts(s)
            starts[row] = block_start[i]
            ends[row] = block_start[i + 1] if i + 1 < len(block_start) else self.shards.lengths[s]
        return shard, starts, ends

    def starts(self, shard: int) -> np.ndarray:
        if shard in self._built:
            return self._built[shard]
        name = self.shards.names[shard]
        return self.shards.small_array(
            shard, f"{index_dir(self.capacity, self.packing)}/{name}.npy",
            self._digests[shard] if self._digests else None)


def open_block_index(shards: Shards, capacity: int, packing: str,
                     progress: bool = True) -> BlockIndex:
    """The block index for (capacity, packing); built once (and saved into the prepared
    directory when it is writable) if prepare did not build it."""
    if packing not in INDEXED:
        counts = -(-shards.lengths // capacity)
        return BlockIndex(shards, capacity, packing, counts, None)
    where = shards.dir / index_dir(capacity, packing) / INDEX_FILE
    try:
        info = _read_json(where)
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: unreadable ({e}); delete it to have it built again") from None
    if info is not None:
        if info.get("shards") != shards.names:
            raise UserError(f"{where}: belongs to other shards; delete "
                            f"{shards.dir / index_dir(capacity, packing)} to have it built again")
        return BlockIndex(shards, capacity, packing, info["counts"], info["sha256"])
    return build_block_index(shards, capacity, packing, progress)


def shard_block_starts(shards: Shards, shard: int, capacity: int, packing: str) -> np.ndarray:
    starts = block_starts(int(shards.lengths[shard]), shards.sentences(shard),
                          shards.documents(shard, keep=False), capacity, packing)
    return starts.astype(offset_dtype(int(shards.lengths[shard])))


def build_block_index(shards: Shards, capacity: int, packing: str,
                      progress: bool = True) -> BlockIndex:
    from roberta_jax.progress import progress_bar
    folder = shards.dir / index_dir(capacity, packing)
    print(f"{fs.as_str(shards.dir)}: building the block index for seq_len {capacity + 1}, "
          f"{packing} packing (once; `roberta-jax prepare ... --seq-len {capacity + 1}` builds "
          "it up front)")
    bar = progress_bar(len(shards.names), 0, "shard", "index", enabled=progress, delay=1.0)
    built, counts, digests = {}, [], []
    for shard in range(len(shards.names)):
        starts = shard_block_starts(shards, shard, capacity, packing)
        built[shard] = starts
        counts.append(len(starts))
        data = npy_bytes(starts)
        digests.append(sha256(data))
        bar.update(1)
    bar.close()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for shard, name in enumerate(shards.names):
            fs.write_bytes(folder / f"{name}.npy", npy_bytes(built[shard]))
        write_json(folder / INDEX_FILE, {"capacity": capacity, "packing": packing,
                                         "shards": shards.names, "counts": counts,
                                         "sha256": digests})
    except OSError as e:
        print(f"warning: cannot save the block index in {fs.as_str(folder)} ({e}); it will be "
              "built again at the next start")
    return BlockIndex(shards, capacity, packing, counts, digests, built)


def write_json(path, data: dict) -> None:
    fs.write_bytes(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())
