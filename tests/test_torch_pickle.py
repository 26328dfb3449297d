"""Tests for the code-free torch checkpoint reader; torch is needed only to write the files."""

import argparse
import collections
import io
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from roberta_jax.convert.torch_pickle import (  # noqa: E402
    OmegaConfStandIn,
    load_torch_checkpoint,
    to_plain,
)
from roberta_jax.errors import UnsafeFileError, UserError  # noqa: E402

FORMATS = ["zip", "legacy"]


def save(obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def as_numpy(t):
    """The expected numpy value of a tensor (bfloat16 via its bit pattern, which numpy lacks)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def assert_same(array, tensor):
    expected = as_numpy(tensor)
    assert isinstance(array, np.ndarray)
    assert array.dtype == expected.dtype
    assert array.shape == expected.shape
    np.testing.assert_array_equal(
        array.view(np.uint8) if array.dtype == np.bool_ else array,
        expected.view(np.uint8) if expected.dtype == np.bool_ else expected)


class Evil:
    """Pickles to a call of os.system, as a hostile checkpoint would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_of_every_common_dtype_round_trips_exactly(tmp_path, fmt):
    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict(
        f32=torch.randn(3, 4, generator=g),
        f16=torch.randn(5, generator=g).half(),
        bf16=torch.randn(2, 3, generator=g).bfloat16(),
        f64=torch.randn(2, generator=g).double(),
        i64=torch.arange(-3, 7),
        i32=torch.arange(4, dtype=torch.int32),
        i8=torch.tensor([-128, 0, 127], dtype=torch.int8),
        u8=torch.tensor([0, 255], dtype=torch.uint8),
        flag=torch.tensor([True, False, True]),
        scalar=torch.tensor(2.5),
        empty=torch.zeros(0, 3),
    )
    loaded = load_torch_checkpoint(save(sd, tmp_path / "sd.pt", fmt))
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == list(sd)
    for key, tensor in sd.items():
        assert_same(loaded[key], tensor)


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_offsets_and_shared_storage_keep_their_values(tmp_path, fmt):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {
        "transposed": base.t(),
        "row_slice": base[1:3],
        "column_slice": base[:, 2:5],
        "strided": base[::2, ::3],
        "same_storage": base,
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
    }
    loaded = load_torch_checkpoint(save(sd, tmp_path / "views.pt", fmt))
    for key, tensor in sd.items():
        assert_same(loaded[key], tensor)
    # Tensors that shared one storage in torch share memory here too.
    assert np.shares_memory(loaded["transposed"], loaded["same_storage"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_module_state_dict_and_parameters_load_as_arrays(tmp_path, fmt):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    obj = {"state": model.state_dict(), "param": torch.nn.Parameter(torch.ones(2, 2))}
    loaded = load_torch_checkpoint(save(obj, tmp_path / "model.bin", fmt))
    for key, tensor in model.state_dict().items():
        assert_same(loaded["state"][key], tensor)
    assert_same(loaded["param"], torch.ones(2, 2))


@pytest.mark.parametrize("fmt", FORMATS)
def test_fairseq_style_checkpoint_exposes_args_and_extra_state(tmp_path, fmt):
    args = argparse.Namespace(encoder_layers=2, encoder_attention_heads=4, arch="roberta_base",
                              dropout=0.1, max_positions=512, tokens_per_sample=None)
    ckpt = {
        "model": collections.OrderedDict(
            [("encoder.sentence_encoder.embed_tokens.weight", torch.randn(10, 8))]),
        "args": args,
        "extra_state": {"epoch": 3, "val_loss": 1.25, "train_iterator": {"epoch": 3}},
        "optimizer_history": [{"criterion_name": "MaskedLmLoss", "num_updates": 100}],
        "misc": {"set": {1, 2}, "frozen": frozenset({"a"}), "tuple": (1, "x"), "bytes": b"\x00",
                 "complex": 1 + 2j, "np_scalar": np.float32(1.5), "np_int": np.int64(7),
                 "size": torch.Size([2, 3]), "dtype": torch.float16},
    }
    loaded = load_torch_checkpoint(save(ckpt, tmp_path / "model.pt", fmt))
    assert loaded["args"].encoder_attention_heads == 4
    assert vars(loaded["args"]) == vars(args)
    assert to_plain(loaded["args"])["encoder_layers"] == 2
    assert loaded["extra_state"] == ckpt["extra_state"]
    assert loaded["optimizer_history"] == ckpt["optimizer_history"]
    misc = loaded["misc"]
    assert (misc["set"] == {1, 2} and misc["frozen"] == frozenset({"a"})
            and misc["tuple"] == (1, "x"))
    assert misc["bytes"] == b"\x00" and misc["complex"] == 1 + 2j
    assert misc["np_scalar"] == np.float32(1.5) and misc["np_scalar"].dtype == np.float32
    assert misc["np_int"] == 7 and misc["size"] == (2, 3) and misc["dtype"] == "torch.float16"
    assert_same(loaded["model"]["encoder.sentence_encoder.embed_tokens.weight"],
                ckpt["model"]["encoder.sentence_encoder.embed_tokens.weight"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_omegaconf_cfg_becomes_inert_plain_data(tmp_path, fmt):
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({
        "model": {"encoder_attention_heads": 4, "arch": "roberta_base", "dropout": 0.1,
                  "untie": False, "layers_to_keep": None, "name": "${model.arch}"},
        "task": {"data": "???", "sizes": [1, 2, {"x": 3}]},
        "common": {"args": argparse.Namespace(seed=1)},
    }, flags={"allow_objects": True})  # fairseq keeps Namespaces in its cfg the same way
    loaded = load_torch_checkpoint(save({"cfg": cfg, "w": torch.ones(1)}, tmp_path / "c.pt", fmt))
    assert isinstance(loaded["cfg"], OmegaConfStandIn)
    assert loaded["cfg"].kind == "omegaconf.dictconfig.DictConfig"
    plain = to_plain(loaded["cfg"])
    assert plain["model"] == {"encoder_attention_heads": 4, "arch": "roberta_base", "dropout": 0.1,
                              "untie": False, "layers_to_keep": None, "name": "${model.arch}"}
    assert plain["task"] == {"data": "???", "sizes": [1, 2, {"x": 3}]}
    assert plain["common"] == {"args": {"seed": 1}}


def test_raw_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"weights": Evil(marker)}, protocol=2))
    with pytest.raises(UnsafeFileError, match=r"model\.pt: refusing to load: .*system") as info:
        load_torch_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_malicious_object_inside_torch_save_is_refused_without_running_it(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = save({"w": torch.ones(2), "payload": Evil(marker)}, tmp_path / "model.pt", fmt)
    with pytest.raises(UnsafeFileError, match="system, which could run code"):
        load_torch_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("dangerous", [
    ("builtins", "eval"), ("builtins", "getattr"), ("__builtin__", "exec"),
    ("subprocess", "Popen"), ("copyreg", "_reconstructor"), ("some_unknown_module", "Thing"),
])
def test_any_global_outside_the_allow_list_is_refused(tmp_path, dangerous):
    module, name = dangerous
    # GLOBAL, EMPTY_TUPLE, REDUCE, STOP: would call module.name() if the global were resolved.
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    path = tmp_path / "evil.bin"
    path.write_bytes(data)
    with pytest.raises(UnsafeFileError, match=f"calls {module}.{name},"):
        load_torch_checkpoint(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file_is_a_user_error(tmp_path, fmt):
    path = save({"w": torch.randn(64, 64)}, tmp_path / "full.pt", fmt)
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) - 100, len(data) - 1):
        cut_path = tmp_path / f"cut{cut}.pt"
        cut_path.write_bytes(data[:cut])
        with pytest.raises(UserError, match=f"cut{cut}.pt: ") as info:
            load_torch_checkpoint(cut_path)
        assert not isinstance(info.value, UnsafeFileError)
        assert "\n" not in str(info.value)


def test_storage_record_shorter_than_its_tensor_is_a_user_error(tmp_path):
    path = save({"w": torch.randn(8)}, tmp_path / "full.pt", "zip")
    short = tmp_path / "short.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(short, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:4] if info.filename.endswith("data/0") else data)
    with pytest.raises(UserError, match="shorter than a tensor needs"):
        load_torch_checkpoint(short)


def test_big_endian_zip_archive_is_byte_swapped(tmp_path):
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    path = save({"w": tensor}, tmp_path / "little.pt", "zip")
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif info.filename.endswith("data/0"):
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            dst.writestr(info.filename, data)
    assert_same(load_torch_checkpoint(big)["w"], tensor)


@pytest.mark.parametrize("content", [
    os.urandom(4096), b"", b"hello, this is a text file\n", b"\x80\x02K\x01.",
    b"PK\x03\x04" + os.urandom(100),
])
def test_files_that_are_not_torch_checkpoints_are_user_errors(tmp_path, content):
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"junk\.bin: ") as info:
        load_torch_checkpoint(path)
    assert not isinstance(info.value, UnsafeFileError)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.pt: no such file"):
        load_torch_checkpoint(tmp_path / "nope.pt")


def test_zip_checkpoint_from_an_in_memory_save_loads(tmp_path):
    # torch names the archive folder after the file; a BytesIO save uses "archive/".
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buffer)
    path = tmp_path / "renamed.bin"
    path.write_bytes(buffer.getvalue())
    assert_same(load_torch_checkpoint(path)["w"], torch.ones(3))


def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _unicode(text):
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


@pytest.mark.parametrize("target", [
    _global("argparse", "Namespace"),
    _global("torch", "bfloat16"),
    _global("torch", "FloatStorage"),
    _global("torch._utils", "_rebuild_tensor_v2"),
    _global("typing", "Any"),
    _global("omegaconf.dictconfig", "DictConfig"),
])
def test_a_pickle_cannot_patch_allow_listed_objects_for_later_loads(tmp_path, target):
    # PROTO 2, <target>, BUILD with slot state {"__defaults__": (True, True, True)}, STOP
    evil = (b"\x80\x02" + target + b"N}" + _unicode("__defaults__") + b"(\x88\x88\x88ts\x86b.")
    path = tmp_path / "patch.pt"
    path.write_bytes(evil)
    with pytest.raises(UserError, match=r"patch\.pt: "):
        load_torch_checkpoint(path)
    assert "__defaults__" not in vars(argparse.Namespace)
    sd = {"w": torch.ones(2, dtype=torch.bfloat16), "args": argparse.Namespace(a=1)}
    loaded = load_torch_checkpoint(save(sd, tmp_path / "after.pt", "zip"))
    assert_same(loaded["w"], sd["w"])
    assert loaded["args"].a == 1


@pytest.mark.parametrize("spec", ["bfloat16", "f4"])
def test_a_pickle_cannot_corrupt_numpy_dtypes_for_the_process(tmp_path, spec):
    # numpy.dtype(spec, False, False) returns numpy's shared singleton; a BUILD on it with this
    # state turns bfloat16 into ">V-1" (itemsize -1) for the whole process under plain pickle.
    evil = (b"\x80\x02" + _global("numpy", "dtype") + _unicode(spec) + b"\x89\x89\x87R"
            + b"(K\x03" + _unicode(">") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.")
    path = tmp_path / "dtype.pt"
    path.write_bytes(evil)
    with pytest.raises(UserError):
        load_torch_checkpoint(path)
    assert np.dtype(ml_dtypes.bfloat16).itemsize == 2
    assert np.dtype("f4").byteorder == "="


def test_legacy_checkpoint_saved_from_gpu_loads(tmp_path):
    # Old fairseq checkpoints name torch.cuda storages; the GLOBAL opcode is newline-delimited.
    path = save({"w": torch.arange(5, dtype=torch.float32)}, tmp_path / "cpu.pt", "legacy")
    gpu = tmp_path / "gpu.pt"
    data = path.read_bytes()
    assert b"ctorch\nFloatStorage\n" in data
    gpu.write_bytes(data.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n"))
    assert_same(load_torch_checkpoint(gpu)["w"], torch.arange(5, dtype=torch.float32))


def test_to_plain_refuses_cyclic_data_with_a_user_error():
    loop = []
    loop.append(loop)
    with pytest.raises(UserError, match="refers to itself"):
        to_plain({"cfg": loop})


def test_legacy_storage_views_from_old_torch_map_onto_their_root_storage(tmp_path):
    # torch < 1.0 could save storage views: ids carry (view_key, offset, numel) of a root storage.
    # Modern torch never writes them, so build such a stream by hand in the legacy layout.
    class Ref:
        def __init__(self, view):
            self.view = view

    class Tensor:
        def __init__(self, ref, offset, size, stride):
            self.args = (ref, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, self.args)

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Ref):
                return ("storage", torch.FloatStorage, "root", "cpu", 6, obj.view)
            return None

    values = np.arange(6, dtype="<f4")
    out = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    LegacyPickler(out, protocol=2).dump({
        "whole": Tensor(Ref(None), 0, (2, 3), (3, 1)),
        "view": Tensor(Ref(("view1", 2, 3)), 1, (2,), (1,)),  # elements 3 and 4 of the root
    })
    pickle.dump(["root"], out, protocol=2)
    out.write((6).to_bytes(8, "little") + values.tobytes())
    path = tmp_path / "old.pt"
    path.write_bytes(out.getvalue())

    loaded = load_torch_checkpoint(path)
    np.testing.assert_array_equal(loaded["whole"], values.reshape(2, 3))
    np.testing.assert_array_equal(loaded["view"], values[3:5])
