"""The filesystem layer: the same calls on local paths and on gs:// (a real GCS API, emulated)."""

import os

import numpy as np
import pytest

from roberta_jax import fs


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    bucket = request.getfixturevalue("gcs_bucket")
    return f"{bucket}/test_fs/{request.node.name.replace('[', '_').rstrip(']')}"


def test_write_list_read_and_ranged_reads(root):
    directory = fs.as_path(root) / "shards"
    directory.mkdir(parents=True, exist_ok=True)
    data = np.arange(10_000, dtype=np.int32)
    (directory / "a.bin").write_bytes(data.tobytes())
    (directory / "b.txt").write_text("two\n")
    assert fs.glob(f"{root}/shards/*.bin") == [os.fspath(directory / "a.bin")]
    assert sorted(p.name for p in directory.iterdir()) == ["a.bin", "b.txt"]
    assert fs.size(directory / "a.bin") == data.nbytes
    got = np.frombuffer(fs.read_range(directory / "a.bin", 4 * 1234, 4 * 10), np.int32)
    np.testing.assert_array_equal(got, data[1234:1244])
    assert fs.read_range(directory / "a.bin", data.nbytes - 4, 100) == data[-1:].tobytes()


def test_local_paths_are_made_absolute_and_compared_by_place(tmp_path, monkeypatch):
    (tmp_path / "prepared").mkdir()
    monkeypatch.chdir(tmp_path)
    assert fs.as_str("prepared/") == str(tmp_path / "prepared")
    assert fs.same_path("prepared", str(tmp_path / "prepared") + "/")
    assert not fs.same_path("prepared", "other")
    assert fs.as_str("gs://b/run/") == "gs://b/run"
    assert fs.same_path("gs://b/run", "gs://b/run/")


def test_gs_paths_never_become_local_folders(gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = fs.as_path(f"{gcs_bucket}/run/config.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    assert path.exists() and path.read_text() == "{}"
    assert not (tmp_path / "gs:").exists()


def test_trees_are_listed_copied_and_moved_between_local_and_remote(root, tmp_path):
    source = fs.as_path(root) / "tree"
    (source / "sub").mkdir(parents=True, exist_ok=True)
    (source / "a.txt").write_text("a")
    (source / "sub" / "b.bin").write_bytes(b"\x00\x01")
    assert fs.files_under(source) == ["a.txt", os.path.join("sub", "b.bin")]
    fs.copy_tree(source, tmp_path / "copy")                  # to a local folder
    assert (tmp_path / "copy" / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    fs.move(source, fs.as_path(root) / "aside" / "tree-1")   # parent created, source gone
    assert not source.exists()
    assert (fs.files_under(fs.as_path(root) / "aside" / "tree-1")
            == fs.files_under(tmp_path / "copy"))
    local = fs.local_copy(fs.as_path(root) / "aside" / "tree-1")
    assert open(os.path.join(local, "a.txt")).read() == "a"
    assert (local == fs.as_str(fs.as_path(root) / "aside" / "tree-1")) != fs.is_remote(root)
    only = fs.local_copy(fs.as_path(root) / "aside" / "tree-1", names=("a.txt",))
    assert fs.files_under(only) == (["a.txt"] if fs.is_remote(root) else fs.files_under(local))
