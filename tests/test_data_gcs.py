"""The data side on a bucket (a real GCS API, emulated on 127.0.0.1): corpora read from gs://
(globs included), train-tokenizer and prepare writing to gs://, tokenizers loaded from gs://,
and batches read from prepared shards on the bucket without copying them: the same batches as
from a local copy, with only the rows' bytes fetched and the small arrays checked against the
SHA-256 prepare recorded."""

import gzip
import json

import numpy as np
import pytest

import roberta_jax as rj
from roberta_jax import fs
from roberta_jax.data import PretrainingBatches, load_tokenizer, prepare, train_tokenizer
from roberta_jax.data import prepared as prepared_format


@pytest.fixture(scope="module")
def local_and_bucket(gcs_bucket, prepared_corpus, tmp_path_factory):
    """The same corpus in a local folder and under gs://.../corpus/ (a plain file and a
    .jsonl.gz), a tokenizer trained from the bucket into the bucket, and both prepared."""
    local = tmp_path_factory.mktemp("gcs_local")
    text = (prepared_corpus[0].parent / "train.txt").read_text(encoding="utf-8")
    docs = [" ".join(p.split("\n")) for p in text.split("\n\n") if p.strip()][:300]
    (local / "a.txt").write_text("\n".join(docs[:150]) + "\n")
    with gzip.open(local / "b.jsonl.gz", "wt") as f:
        for d in docs[150:]:
            f.write(json.dumps({"text": d}) + "\n")
    bucket = f"{gcs_bucket}/test_data_gcs"
    for name in ("a.txt", "b.jsonl.gz"):
        fs.as_path(f"{bucket}/corpus/{name}").parent.mkdir(parents=True, exist_ok=True)
        fs.as_path(f"{bucket}/corpus/{name}").write_bytes((local / name).read_bytes())
    train_tokenizer([f"{bucket}/corpus/*"], 700, f"{bucket}/tok", workers=1)
    prepare([f"{bucket}/corpus/*"], f"{bucket}/tok", f"{bucket}/prepared", workers=2,
            unit_bytes=30_000, seq_lens=(64,), progress=False)
    prepare([str(local / "*")], f"{bucket}/tok", str(local / "prepared"), workers=1,
            unit_bytes=30_000, seq_lens=(64,), progress=False)
    return local, bucket


def test_tokenizer_trained_from_and_into_a_bucket_loads_from_it(local_and_bucket, tmp_path):
    local, bucket = local_and_bucket
    remote = load_tokenizer(f"{bucket}/tok")
    here = train_tokenizer([str(local / "*")], 700, str(tmp_path / "tok"), workers=1)
    assert remote.fingerprint() == here.fingerprint()  # same text read, same sample
    text = "Return the number of items in a container."
    assert remote.encode(text) == here.encode(text)


def test_prepare_on_a_bucket_writes_what_a_local_prepare_writes(local_and_bucket):
    local, bucket = local_and_bucket
    remote = rj.data.load_manifest(f"{bucket}/prepared")
    mine = rj.data.load_manifest(local / "prepared")
    assert remote["totals"] == mine["totals"]
    assert [s["tokens"] for s in remote["shards"]] == [s["tokens"] for s in mine["shards"]]
    assert remote["sources"] == [f"{bucket}/corpus/a.txt", f"{bucket}/corpus/b.jsonl.gz"]


def test_batches_from_the_bucket_equal_local_ones_and_fetch_only_their_rows(
        local_and_bucket, monkeypatch, tmp_path):
    local, bucket = local_and_bucket
    monkeypatch.setenv("ROBERTA_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fs, "RANGE_CONCURRENCY", 4)  # the emulator stalls with more
    fetched = []
    real = fs.read_ranges
    monkeypatch.setattr(fs, "read_ranges", lambda p, s, e: fetched.append(
        sum(b - a for a, b in zip(s, e))) or real(p, s, e))
    remote = PretrainingBatches(f"{bucket}/prepared", 16, 64, seed=0, segment_ids=True)
    mine = PretrainingBatches(local / "prepared", 16, 64, seed=0, segment_ids=True)
    for step in (0, 5):
        a, b = remote.batch(step), mine.batch(step)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        real_tokens = int(b["attention_mask"].sum()) - 16  # less each row's <s>
        assert fetched[-1] == 2 * real_tokens  # uint16: exactly the rows' bytes
    assert any((tmp_path / "cache" / "prepared").iterdir())  # small arrays kept locally


def test_a_changed_shard_on_the_bucket_is_refused_not_used(local_and_bucket, monkeypatch,
                                                           tmp_path):
    local, bucket = local_and_bucket
    monkeypatch.setenv("ROBERTA_JAX_CACHE", str(tmp_path / "fresh_cache"))
    manifest = rj.data.load_manifest(f"{bucket}/prepared")
    name = manifest["shards"][0]["name"]
    target = fs.as_path(f"{bucket}/prepared/blocks-63-full-sentences/{name}.npy")
    original = target.read_bytes()
    try:
        starts = np.load(local / "prepared" / "blocks-63-full-sentences" / f"{name}.npy")
        target.write_bytes(prepared_format.npy_bytes(starts[:-1]))  # a block lost
        batches = PretrainingBatches(f"{bucket}/prepared", 8, 64, seed=0)
        with pytest.raises(rj.UserError, match="differ from what prepare recorded"):
            batches.corpus.index.starts(0)
    finally:
        target.write_bytes(original)
