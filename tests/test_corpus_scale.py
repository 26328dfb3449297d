"""Corpus-scale guarantees: tokenizer training sees the whole input (one document per line
included), opening a prepared corpus reads no shard data, a host reads only its rows, packed
rows carry document segment ids, the batch iterator never keeps a process alive, and held-out
or resumed data from another tokenizer is refused."""

import gzip
import json
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import roberta_jax as rj
from roberta_jax.data import PretrainingBatches, prepare, train_tokenizer
from roberta_jax.data import prepared as prepared_format
from roberta_jax.data.rows import IGNORED_LABEL
from roberta_jax.data.train_tokenizer import sample_sentences, split_sentences

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def texts(prepared_corpus):
    """Standard-library docstrings, as the session's corpus wrote them (parsing the standard
    library again would take seconds)."""
    text = (prepared_corpus[0].parent / "train.txt").read_text(encoding="utf-8")
    return [" ".join(p.split("\n")) for p in text.split("\n\n") if p.strip()]


def long_lines(texts, low=6000, high=20000, seed=0):
    """Documents of `low` to 20k characters, one per line, as Wikipedia and C4 dumps come."""
    rng = np.random.default_rng(seed)
    lines, current = [], ""
    for text in texts:
        current += (" " if current else "") + text
        if len(current) > rng.integers(low, high):
            lines.append(current)
            current = ""
    return lines


@pytest.fixture(scope="module")
def corpus(prepared_corpus, texts, tmp_path_factory):
    """The session's tokenizer (conftest), and 600 documents prepared in several shards."""
    root = tmp_path_factory.mktemp("scale")
    texts = texts[:600]
    (root / "paragraphs.txt").write_text("\n\n".join(texts) + "\n")
    tokenizer_dir = prepared_corpus[2]
    prepare([str(root / "paragraphs.txt")], str(tokenizer_dir), str(root / "prepared"),
            doc_format="paragraphs", workers=1, seq_lens=(64,), unit_bytes=40_000,
            progress=False)
    (root / "spm").symlink_to(tokenizer_dir)
    return root, texts, rj.data.load_tokenizer(tokenizer_dir)


# ------------------------------------------------------------------------- tokenizer training

@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_tokenizer_trains_on_one_long_document_per_line_to_the_asked_size(texts, tmp_path, kind):
    lines = long_lines(texts[:500], low=9000)
    assert min(map(len, lines)) > 9000  # sentencepiece would skip every one of them whole
    (tmp_path / "long.txt").write_text("\n".join(lines) + "\n")
    tokenizer = train_tokenizer([str(tmp_path / "long.txt")], 1000, str(tmp_path / "tok"),
                                kind=kind)
    assert tokenizer.vocab_size == 1000


def test_split_sentences_cuts_at_sentence_ends_and_bounds_every_piece():
    text = "First one. Second one! Third? " + "word " * 900 + "end."
    pieces = split_sentences(text, max_chars=200)
    assert pieces[:3] == ["First one.", "Second one!", "Third?"]
    assert all(0 < len(p) <= 200 for p in pieces)
    assert " ".join(pieces).split() == text.split()  # nothing lost
    assert split_sentences("short. text.", max_chars=200) == ["short. text."]


def test_tokenizer_sample_is_uniform_over_the_whole_input_not_its_start(tmp_path):
    # First half and second half of the file use different words: a sample of the first lines
    # would see only the first.
    first = [f"alpha beta gamma {i} ." for i in range(3000)]
    second = [f"omega sigma kappa {i} ." for i in range(3000)]
    (tmp_path / "c.txt").write_text("\n".join(first + second) + "\n")
    for workers, unit_bytes in ((1, None), (2, 20_000)):
        sample = sample_sentences([str(tmp_path / "c.txt")], 600, workers=workers,
                                  unit_bytes=unit_bytes)
        assert len(sample.sentences) == 600 and sample.total_sentences == 6000
        from_second = sum(s.startswith("omega") for s in sample.sentences) / 600
        assert 0.4 < from_second < 0.6, from_second
        assert min(sample.spread(5)) > 0.12  # every fifth of the file contributes
        assert len(set(sample.sentences)) == 600  # without replacement
    again = sample_sentences([str(tmp_path / "c.txt")], 600, unit_bytes=20_000, workers=2)
    assert again.sentences == sample.sentences  # the sample is a function of (seed, input)


def test_tokenizer_reads_every_input_format_prepare_reads(texts, tmp_path, capsys):
    texts = texts[:80]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        for t in texts[:40]:
            f.write(json.dumps({"body": t}) + "\n")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[40:]))
    sample = sample_sentences([str(tmp_path / "*.jsonl*")], 10 ** 6, text_field="body")
    assert sample.files == 2
    assert sample.chars == pytest.approx(sum(map(len, texts)), rel=0.02)
    train_tokenizer([str(tmp_path / "*.jsonl*")], 300, str(tmp_path / "tok"), kind="bpe",
                    text_field="body", workers=1)
    out = capsys.readouterr().out
    assert "training on" in out and "of 2 inputs" in out


# ------------------------------------------------------------------------- prepared corpora

def test_opening_a_prepared_corpus_reads_no_shard_and_a_batch_only_its_rows(corpus,
                                                                             monkeypatch):
    root, _, _ = corpus
    touched = []
    real_array = prepared_format.read_array
    monkeypatch.setattr(prepared_format, "read_array",
                        lambda path, *a: touched.append(pathlib.Path(path).name)
                        or real_array(path, *a))
    read_rows = []
    real_read = prepared_format.Shards.read
    monkeypatch.setattr(
        prepared_format.Shards, "read",
        lambda self, s, a, b: read_rows.append((s, a, b)) or real_read(self, s, a, b))
    batches = PretrainingBatches(root / "prepared", batch_size=8, seq_len=64, seed=0,
                                 process_index=1, process_count=2, segment_ids=True)
    assert len(batches.corpus.shards.names) > 4
    assert touched == [] and read_rows == []
    batch = batches.batch(0)
    shards, starts, ends = read_rows[0]
    assert len(shards) == 4  # this host's rows only
    names = {batches.corpus.shards.names[s] for s in shards}
    assert touched and {re.match(r"shard-\d+\.\d+", n).group() for n in touched} <= names
    assert np.all(batch["attention_mask"].sum(1) == ends - starts + 1)


def test_older_prepared_directory_says_what_to_run(corpus, tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(
        {"format": "roberta_jax.prepared/1", "sources": ["/data/wiki.txt"]}))
    with pytest.raises(rj.UserError, match="prepare it again: roberta-jax prepare --input "
                       "/data/wiki.txt --tokenizer .*old/tokenizer --output NEW_DIR") as info:
        PretrainingBatches(tmp_path / "old", 8, 64, seed=0)
    assert "\n" not in str(info.value)


def test_block_index_built_on_first_use_equals_the_one_prepare_builds(corpus, tmp_path,
                                                                     capsys):
    root, _, _ = corpus
    prepare([str(root / "paragraphs.txt")], str(root / "spm"), str(tmp_path / "p"),
            doc_format="paragraphs", workers=2, seq_lens=(512,), unit_bytes=40_000,
            progress=False)
    capsys.readouterr()
    lazy = PretrainingBatches(tmp_path / "p", 8, 64, seed=3)
    assert "building the block index for seq_len 64" in capsys.readouterr().out
    again = PretrainingBatches(tmp_path / "p", 8, 64, seed=3)
    assert "building" not in capsys.readouterr().out  # saved the first time
    upfront = PretrainingBatches(root / "prepared", 8, 64, seed=3)
    np.testing.assert_array_equal(lazy.corpus.index.counts, upfront.corpus.index.counts)
    for step in (0, 7):
        a, b, c = lazy.batch(step), again.batch(step), upfront.batch(step)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])


def test_prepare_writes_bounded_shards_and_a_rerun_adds_indexes_for_new_lengths(corpus,
                                                                               tmp_path,
                                                                               capsys):
    root, _, _ = corpus
    args = ([str(root / "paragraphs.txt")], str(root / "spm"), str(tmp_path / "p"))
    one = prepare(*args, doc_format="paragraphs", workers=1, shard_tokens=5000)
    assert "tokens/s" in capsys.readouterr().err  # the progress bar (with an ETA)
    sizes = [s["tokens"] for s in one["shards"]]
    assert len(sizes) > 10 and max(sizes) < 5000 + 4000  # a shard ends at a document end
    joined = np.concatenate([np.load(tmp_path / "p" / f"{s['name']}.tokens.npy")
                             for s in one["shards"]])
    reference = np.concatenate([np.load(root / "prepared" / f"{s['name']}.tokens.npy")
                                for s in rj.data.load_manifest(root / "prepared")["shards"]])
    np.testing.assert_array_equal(joined, reference)
    assert not (tmp_path / "p" / "blocks-127-full-sentences").exists()
    prepare(*args, doc_format="paragraphs", workers=1, shard_tokens=5000, seq_lens=(128,),
            progress=False)
    index = json.loads((tmp_path / "p" / "blocks-127-full-sentences" / "index.json").read_text())
    assert len(index["counts"]) == len(sizes)


def test_prepare_treats_special_token_spellings_in_text_as_text(corpus, tmp_path):
    root, _, tokenizer = corpus
    (tmp_path / "c.txt").write_text("a line with </s> and <mask> inside\nanother <s> line\n")
    prepare([str(tmp_path / "c.txt")], str(root / "spm"), str(tmp_path / "p"), workers=1,
            progress=False)
    tokens = np.load(tmp_path / "p" / "shard-00000.000.tokens.npy")
    assert np.flatnonzero(tokens == tokenizer.eos_id).tolist() == [
        int(e) - 1 for e in np.load(tmp_path / "p" / "shard-00000.000.documents.npy")]
    assert not np.isin(tokens, [tokenizer.mask_id, tokenizer.bos_id]).any()


# ------------------------------------------------------------------------------ segment ids

@pytest.mark.parametrize("packing", ["full-sentences", "none", "doc-sentences"])
def test_segment_ids_number_the_documents_of_each_packed_row(corpus, packing):
    root, _, tokenizer = corpus
    batches = PretrainingBatches(root / "prepared", 32, 128, seed=1, packing=packing,
                                 segment_ids=True)
    shards = batches.corpus.shards
    rows_with_several = 0
    for step in range(3):
        b = batches.batch(step)
        ids = np.where(b["labels"] != IGNORED_LABEL, b["labels"], b["input_ids"])
        segments = b["segment_ids"]
        assert np.array_equal(segments == 0, ids == tokenizer.pad_id)
        assert np.all(segments[:, 0] == 1)  # <s> belongs to the first document
        # Expected from the document ends prepare recorded: a document that ends at offset d
        # inside the block [start, end) makes the token at d open the next one.
        for block, seg in zip(b["block"], segments):
            shard, start, end = (int(x[0]) for x in batches.corpus.blocks(np.array([block])))
            ends = np.load(root / "prepared" / f"{shards.names[shard]}.documents.npy")
            expected = np.zeros(128, np.int64)
            offsets = np.arange(start, end)
            expected[1:1 + end - start] = 1 + np.searchsorted(ends[ends > start], offsets,
                                                              side="right")
            expected[0] = 1
            np.testing.assert_array_equal(seg, expected)
            rows_with_several += int(seg.max() > 1)
            if packing == "doc-sentences":
                assert seg.max() == 1
    if packing != "doc-sentences":
        assert rows_with_several > 10


# ------------------------------------------------------------------------- exit, evaluation

def test_a_script_that_takes_one_batch_exits_promptly(corpus):
    root, _, _ = corpus
    # The check registered first runs last at exit (atexit is last-in, first-out): by then no
    # data thread may be alive, or the runtime would end it inside numpy's C++ code, which
    # aborts the process now and then.
    script = textwrap.dedent(f"""
        import atexit, threading
        atexit.register(lambda: print("threads at exit:", sum(
            t.name.startswith("roberta_jax") and t.is_alive() for t in threading.enumerate())))
        import roberta_jax as rj
        it = rj.data.pretraining_batches({str(root / "prepared")!r}, batch_size=256,
                                         seq_len=64, seed=0)
        next(it)
        print("took a batch", flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = process.stdout.readline()  # imports and start-up: not timed
        assert line.strip() == "took a batch", process.stderr.read()
        started = time.monotonic()
        rest, errors = process.communicate(timeout=10)
    finally:
        process.kill()
    assert time.monotonic() - started < 10
    assert process.returncode == 0, errors
    assert rest.strip() == "threads at exit: 0"


def test_heldout_or_resumed_data_from_another_tokenizer_is_refused(corpus, tmp_path):
    root, _, _ = corpus
    other_tok = train_tokenizer([str(root / "paragraphs.txt")], 300, str(tmp_path / "tok"),
                                doc_format="paragraphs", kind="bpe", workers=1)
    prepare([str(root / "paragraphs.txt")], str(tmp_path / "tok"), str(tmp_path / "other"),
            doc_format="paragraphs", workers=1, progress=False)
    assert other_tok.fingerprint() != corpus[2].fingerprint()
    run = tmp_path / "run"
    rj.data.check_run_data(run, root / "prepared", root / "prepared")  # same tokenizer: fine
    with pytest.raises(rj.UserError, match="other.*another tokenizer.*training data") as held:
        rj.data.check_run_data(run, root / "prepared", tmp_path / "other")
    with pytest.raises(rj.UserError, match="another tokenizer.*than the data this run "
                       "started on") as resumed:
        rj.data.check_run_data(run, tmp_path / "other")
    for info in (held, resumed):
        assert "\n" not in str(info.value)


def test_pretraining_evaluates_with_its_own_masking_and_checks_the_tokenizers(corpus,
                                                                            tmp_path,
                                                                            monkeypatch):
    from roberta_jax import train as train_module
    from roberta_jax.cli import main
    root, _, _ = corpus
    maskings, checked = [], []
    real = train_module.PretrainingBatches
    monkeypatch.setattr(train_module, "PretrainingBatches", lambda *a, **k: maskings.append(
        k["masking"] if "masking" in k else a[8] if len(a) > 8 else "token") or real(*a, **k))
    real_check = train_module.check_run_data
    monkeypatch.setattr(train_module, "check_run_data", lambda *a, **k: checked.append(
        [str(x) for x in a]) or real_check(*a, **k))
    assert main(["pretrain", "--config", str(ROOT / "configs" / "tiny.py"),
                 "--workdir", str(tmp_path / "run"), f"--config.data.path={root / 'prepared'}",
                 f"--config.data.eval_path={root / 'prepared'}", "--config.data.masking=span",
                 "--config.train.steps=1", "--config.train.batch_size=8",
                 "--config.train.seq_len=32", "--config.eval.every_steps=1",
                 "--config.eval.batches=1", "--config.checkpoint.async_save=False"]) == 0
    assert maskings == ["span", "span"]  # training batches, then held-out batches
    # Held-out (and later resumed) data is checked against the training data's tokenizer
    # (what check_run_data refuses is tested above).
    assert checked == [[str(tmp_path / "run"), str(root / "prepared"), str(root / "prepared")]]


def test_prepare_with_workers_after_jax_started_spawns_and_matches(corpus, tmp_path):
    """In a session where JAX's runtime is up (a notebook that already trained), forking its
    threads can deadlock the workers: prepare spawns them, and they load the saved tokenizer."""
    root, _, _ = corpus
    script = textwrap.dedent(f"""
        import jax, numpy as np
        jax.devices()
        from roberta_jax.data import prepare
        from roberta_jax.data.corpus import process_context
        assert process_context().get_start_method() == "spawn"
        prepare([{str(root / "paragraphs.txt")!r}], {str(root / "spm")!r},
                {str(tmp_path / "p")!r}, doc_format="paragraphs", workers=2,
                unit_bytes=40_000, seq_lens=(512,), progress=False)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=ROOT)
    spawned = rj.data.load_manifest(tmp_path / "p")["shards"]
    reference = rj.data.load_manifest(root / "prepared")["shards"]
    joined = [np.concatenate([np.load(d / f"{s['name']}.tokens.npy") for s in shards])
              for d, shards in ((tmp_path / "p", spawned), (root / "prepared", reference))]
    np.testing.assert_array_equal(*joined)
