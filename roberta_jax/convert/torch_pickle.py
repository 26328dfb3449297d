"""Read PyTorch checkpoints (`pytorch_model.bin`, fairseq `model.pt`) without torch or running code.

`torch.load` is `pickle.load`, and a pickle can call any importable function. This reader unpickles
with an explicit allow-list of globals; anything else raises `UnsafeFileError` before it is called.
Everything the allow-list hands the pickle is immutable or refuses `__setstate__`, so a file cannot
patch shared objects (a class, a dtype, a rebuild function) for later loads either.

What comes back:
- tensors and `nn.Parameter`s: numpy arrays with torch's dtype, shape, strides and offset. They are
  views onto the file's storage bytes, so tensors that shared a storage in torch share memory here.
- `collections.OrderedDict` stays an OrderedDict (torch hangs `_metadata` on state dicts).
- `argparse.Namespace` (fairseq's `args`) is a `Namespace`, an `argparse.Namespace` subclass:
  `ckpt["args"].encoder_attention_heads` and `vars(ckpt["args"])` work as in fairseq.
- omegaconf objects (fairseq's `cfg`) become `OmegaConfStandIn`s holding their pickled state;
  `to_plain(ckpt["cfg"])["model"]["encoder_attention_heads"]` reads them. Interpolations such as
  "${model.arch}" stay unresolved strings.
- torch dtypes stored as values become strings such as "torch.float16"; `typing.Any` becomes
  "typing.Any"; numpy scalars stay numpy scalars; `torch.Size` becomes a tuple.

Both formats torch.save writes are read: the zip archive (torch >= 1.6) and the legacy stream
(magic pickle, protocol pickle, sys_info pickle, main pickle, storage-key pickle, then per key an
8-byte little-endian element count and the raw little-endian bytes).
"""

import _compat_pickle
import argparse
import builtins
import collections
import io
import os
import pickle
import struct
import sys
import zipfile
import zlib

import ml_dtypes
import numpy as np

from roberta_jax.errors import UnsafeFileError, UserError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_DTYPES = {name: np.dtype(t) for name, t in {
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32, "int16": np.int16,
    "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
}.items()}
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}
_OMEGACONF = {
    "omegaconf.dictconfig": {"DictConfig"},
    "omegaconf.listconfig": {"ListConfig"},
    "omegaconf.base": {"Metadata", "ContainerMetadata"},
    "omegaconf.nodes": {"AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                        "BytesNode", "PathNode", "InterpolationResultNode"},
}


class _BadFile(Exception):
    """The file is malformed; the caller prefixes the file name."""


class _Sealed:
    """Base for objects handed to the pickle: BUILD (`__setstate__`) on them is refused."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _BadFile("the pickle tries to modify a built-in object; not a torch.save checkpoint")


class _Call(_Sealed):
    """An allow-listed function; the wrapper stops a pickle from patching e.g. its
    `__defaults__`."""

    __slots__ = ("_fn",)

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)


class _StorageType(_Sealed):
    """What a `torch.FloatStorage`-style global turns into: only its element dtype matters."""

    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype


class _Storage(_Sealed):
    """One torch storage: its dtype and raw bytes (legacy files fill `buf` after tensors view
    it)."""

    __slots__ = ("dtype", "buf")

    def __init__(self, dtype, buf):
        self.dtype, self.buf = dtype, buf


class _TorchDtype(str):
    """A torch dtype stored as a value, e.g. "torch.float16"; a str so it stays plain data."""

    __slots__ = ()
    __setstate__ = _Sealed.__setstate__


class Namespace(argparse.Namespace):
    """fairseq's pickled `args`: an `argparse.Namespace` a pickle can fill but not patch."""

    def __setstate__(self, state):
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise _BadFile("malformed argparse.Namespace")
        vars(self).update(state)


class OmegaConfStandIn:
    """Inert stand-in for a pickled omegaconf object; never imports or calls omegaconf.

    `kind` names the original class ("omegaconf.dictconfig.DictConfig"); `state` is its pickled
    state: containers keep children in `state["_content"]`, value nodes their value in
    `state["_val"]`. Use `to_plain` to turn a tree of these into dicts and lists.
    """

    kind = "omegaconf"

    def __init__(self, *args, **kwargs):
        self.state = None  # constructor arguments from the pickle are ignored on purpose

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self.kind} stand-in>"


_STAND_INS = {}


def _stand_in(kind):
    """One subclass per omegaconf class so `kind` survives NEWOBJ, which only gets the class."""
    if kind not in _STAND_INS:
        _STAND_INS[kind] = type(kind.rsplit(".", 1)[1], (OmegaConfStandIn,), {"kind": kind})
    return _STAND_INS[kind]


def to_plain(obj, _path=()):
    """Turn omegaconf stand-ins and Namespaces (recursively) into plain dicts, lists and values."""
    if id(obj) in _path:  # a crafted pickle can build cycles; configs never have them
        raise UserError("the checkpoint's config refers to itself; it cannot be read as plain data")
    path = _path + (id(obj),)
    if isinstance(obj, OmegaConfStandIn):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "_content" in state:  # DictConfig/ListConfig; "_parent" points back up, never follow it
            return to_plain(state["_content"], path)
        if "_val" in state:
            return to_plain(state["_val"], path)
        return {k: to_plain(v, path) for k, v in state.items() if k != "_parent"}
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v, path) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: to_plain(v, path) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(to_plain(v, path) for v in obj)
    return obj


def _as_array(storage, dtype, offset, size, stride):
    """A numpy view of `storage` as torch would see it; bounds are checked as as_strided can't."""
    if not isinstance(storage, _Storage):
        raise _BadFile("a tensor is not backed by a storage; not a torch.save checkpoint")
    size, stride = tuple(size), tuple(stride)
    if (len(size) != len(stride)
            or not all(type(v) is int and v >= 0 for v in (offset, *size, *stride))):
        raise _BadFile("a tensor has an invalid shape, stride or offset")
    count = len(storage.buf) // dtype.itemsize
    if 0 in size:
        return np.zeros(size, dtype)
    end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if end > count:
        raise _BadFile(f"storage data is shorter than a tensor needs ({count} elements, need "
                       f"{end}); the file is truncated or corrupt")
    flat = np.frombuffer(storage.buf, dtype=dtype, count=count)
    return np.lib.stride_tricks.as_strided(flat[offset:], size,
                                           [s * dtype.itemsize for s in stride])


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if metadata:  # conj/neg bits would silently change values if ignored
        raise _BadFile("a tensor has lazy conj/neg metadata, which is not supported")
    return _as_array(storage, getattr(storage, "dtype", None), offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    # torch writes v3 for dtypes without a legacy storage class: untyped bytes plus the dtype
    if metadata or not isinstance(dtype, _TorchDtype) or dtype[6:] not in _DTYPES:
        raise _BadFile("a tensor has an unsupported dtype or metadata")
    return _as_array(storage, _DTYPES[dtype[6:]], offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data  # a Parameter is just its data once gradients don't matter


def _defaultdict(default_factory=None, *args):
    return dict(*args)  # the factory is behaviour, not data


def _codecs_encode(text, encoding="utf-8"):
    # numpy scalar pickles use latin1; other codec names could import arbitrary encodings modules
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "ascii"):
        raise _BadFile("unexpected text encoding in the pickle")
    return text.encode(encoding)


def _np_dtype(spec, align=False, copy=True):
    # Always a fresh copy: BUILD on numpy's shared dtype singletons would corrupt them process-wide.
    dtype = np.dtype(spec, bool(align), True) if isinstance(spec, str) else None
    if dtype is None or dtype.kind not in "biufc" or dtype.subdtype is not None:
        raise _BadFile("the pickle holds a numpy dtype other than a plain number type")
    return dtype


def _np_scalar(dtype, data):
    # Rebuild from the canonical dtype of the same name, so a tampered dtype cannot mislead numpy.
    canonical = (np.dtype(dtype.name) if isinstance(dtype, np.dtype) and dtype.kind in "biufc"
                 else None)
    if canonical is None or not isinstance(data, bytes) or len(data) != canonical.itemsize:
        raise _BadFile("the pickle holds a malformed numpy scalar")
    order = dtype.byteorder if dtype.byteorder in "<>" else "="
    return np.frombuffer(data, canonical.newbyteorder(order), 1)[0]


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _Call(_defaultdict),
    ("argparse", "Namespace"): Namespace,
    ("typing", "Any"): "typing.Any",
    ("numpy", "dtype"): _Call(_np_dtype),
    ("numpy.core.multiarray", "scalar"): _Call(_np_scalar),
    ("numpy._core.multiarray", "scalar"): _Call(_np_scalar),
    ("_codecs", "encode"): _Call(_codecs_encode),
    ("torch._utils", "_rebuild_tensor"): _Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v3"): _Call(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call(_rebuild_parameter),
    ("torch", "Size"): tuple,
    **{("builtins", n): getattr(builtins, n) for n in (
        "dict", "list", "tuple", "set", "frozenset", "slice", "complex", "int", "float", "str",
        "bytes", "bool")},
    **{("torch", n): _TorchDtype(f"torch.{n}") for n in _DTYPES},
    # GPU-saved storages (old fairseq checkpoints) name torch.cuda; the location is ignored anyway
    **{(m, n): _StorageType(_DTYPES[d]) for n, d in _STORAGE_DTYPES.items()
       for m in ("torch", "torch.cuda", "torch.storage")},
}


class _Unpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and torch storage references."""

    def __init__(self, file, name, load_storage=None):
        super().__init__(file, encoding="utf-8")
        self._name, self._load_storage = name, load_storage

    def find_class(self, module, name):
        # Protocol-2 pickles name Python 2 modules (__builtin__.long); map them as pickle would.
        mod, qual = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        if (mod, qual) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[mod, qual]
        if qual in _OMEGACONF.get(mod, ()):
            return _stand_in(f"{mod}.{qual}")
        what = ascii(f"{module}.{name}")[1:-1][:200]  # as the file spells it, on one line
        raise UnsafeFileError(f"{self._name}: refusing to load: the pickle calls {what}, which "
                              "could run code; only tensors and plain data are accepted")

    def persistent_load(self, pid):
        if self._load_storage is None or not (isinstance(pid, tuple) and pid[:1] == ("storage",)):
            raise _BadFile("unexpected persistent reference; not a torch.save checkpoint")
        stype, key, numel = pid[1], pid[2], pid[4]
        if (not isinstance(stype, _StorageType) or type(key) is not str
                or type(numel) is not int or numel < 0):
            raise _BadFile("malformed storage reference")
        return self._load_storage(stype.dtype, key, numel, *pid[5:])


def _unpickle(file, name, load_storage=None):
    try:
        return _Unpickler(file, name, load_storage).load()
    except UserError:
        raise
    except _BadFile as e:
        raise UserError(f"{name}: {e}") from None
    except Exception as e:
        # a malformed stream makes pickle or an allowed constructor raise anything
        detail = " ".join(str(e).split())[:200]
        raise UserError(f"{name}: truncated or corrupt pickle data "
                        f"({type(e).__name__}: {detail})") from None


# What zipfile raises for damaged archives (unsupported features and encryption included).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, struct.error, EOFError, OSError, ValueError,
               KeyError, NotImplementedError, RuntimeError)


def _load_zip(f, name):
    """The torch >= 1.6 format: `<dir>/data.pkl` plus one `<dir>/data/<key>` record per storage."""
    def read(record):
        try:
            return zf.read(record)
        except _ZIP_ERRORS as e:
            raise UserError(f"{name}: cannot read {record} from the zip archive ({e})") from None

    try:
        zf = zipfile.ZipFile(f)
        names = set(zf.namelist())
    except _ZIP_ERRORS as e:
        raise UserError(f"{name}: truncated or corrupt zip archive ({e})") from None
    pkls = sorted(n for n in names if n.count("/") == 1 and n.endswith("/data.pkl"))
    if not pkls:
        raise UserError(f"{name}: zip archive without data.pkl; not a torch.save checkpoint")
    prefix = pkls[0][: -len("data.pkl")]
    if prefix + "constants.pkl" in names:
        raise UserError(f"{name}: a TorchScript archive (torch.jit.save), not a torch.save "
                        "checkpoint")
    order = "little"  # torch's default for archives written before it recorded the byte order
    if prefix + "byteorder" in names:
        order = read(prefix + "byteorder").decode("ascii", "replace")
    if order not in ("little", "big"):
        raise UserError(f"{name}: unknown byteorder {order[:20]!r} in the archive")
    storages = {}

    def load_storage(dtype, key, numel):
        if key not in storages:
            buf = bytearray(read(f"{prefix}data/{key}"))
            if len(buf) < numel * dtype.itemsize:
                raise _BadFile(f"storage data is shorter than a tensor needs (data/{key}); "
                               "the file is truncated or corrupt")
            if order != sys.byteorder:
                np.frombuffer(buf, dtype, len(buf) // dtype.itemsize).byteswap(inplace=True)
            storages[key] = _Storage(dtype, buf)
        return storages[key]

    return _unpickle(io.BytesIO(read(prefix + "data.pkl")), name, load_storage)


def _load_legacy(f, name):
    """The torch < 1.6 stream; storage bytes follow the main pickle, so arrays are filled late."""
    file_size = os.fstat(f.fileno()).st_size
    magic = _unpickle(f, name)
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise UserError(f"{name}: not a PyTorch checkpoint (a pickle without torch's magic number)")
    if _unpickle(f, name) != _LEGACY_PROTOCOL:
        raise UserError(f"{name}: unsupported legacy torch.save protocol version")
    _unpickle(f, name)  # sys_info: torch writes legacy storage bytes little-endian on every host
    roots, views = {}, {}

    def load_storage(dtype, key, numel, view=None):
        if numel * dtype.itemsize > file_size:  # checked before allocating what a pickle claims
            raise _BadFile("storage data is shorter than a tensor needs; the file is truncated")
        if key not in roots:
            roots[key] = _Storage(dtype, bytearray(numel * dtype.itemsize))
        root = roots[key]
        if view is None:  # torch >= 1.0 always writes None; older files could save storage views
            return root
        view_key, offset, view_numel = view
        start, stop = offset * root.dtype.itemsize, (offset + view_numel) * root.dtype.itemsize
        if not 0 <= start <= stop <= len(root.buf):
            raise _BadFile("a storage view lies outside its storage")
        if view_key not in views:
            views[view_key] = _Storage(root.dtype, memoryview(root.buf)[start:stop])
        return views[view_key]

    result = _unpickle(f, name, load_storage)
    keys = _unpickle(f, name)
    if (not isinstance(keys, list) or not all(type(k) is str for k in keys)
            or len(keys) != len(roots) or set(keys) != set(roots)):
        raise UserError(f"{name}: the storage list does not match the tensors; the file is corrupt")
    for key in keys:
        root = roots[key]
        header = f.read(8)
        have = int.from_bytes(header, "little") * root.dtype.itemsize
        if (len(header) < 8 or not len(root.buf) <= have <= file_size
                or f.readinto(root.buf) != len(root.buf)):
            raise UserError(f"{name}: storage data is shorter than a tensor needs; "
                            "the file is truncated or corrupt")
        f.seek(have - len(root.buf), io.SEEK_CUR)
    return result


def load_torch_checkpoint(path):
    """Load a torch.save file as numpy arrays and plain data, refusing anything that could run code.

    Raises `UnsafeFileError` if the pickle references a global outside the allow-list, and
    `UserError` for a missing, truncated or non-torch file. The module docstring lists what
    tensors, Namespaces and omegaconf configs turn into.
    """
    from roberta_jax import fs
    name = os.fspath(path)
    try:
        f = fs.as_path(path).open("rb")
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except OSError as e:
        raise UserError(f"{name}: cannot open ({e.strerror or e})") from None
    with f:
        head = f.read(512)
        f.seek(0)
        if head.startswith(b"PK\x03\x04"):
            return _load_zip(f, name)
        if head[257:262] == b"ustar":
            raise UserError(f"{name}: a tar-format checkpoint from torch < 0.4; re-save it with a "
                            "newer torch")
        if head[:1] == b"\x80":  # a binary pickle; the legacy format starts with the magic number
            return _load_legacy(f, name)
        raise UserError(f"{name}: not a PyTorch checkpoint (expected a zip archive or a "
                        "torch.save pickle)")
