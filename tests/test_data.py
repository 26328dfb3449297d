"""The input pipeline's guarantees: preparation keeps every token, packing covers each block once
per epoch, masking has the right rates and never touches specials, and the batch of step n is a
pure function of (seed, n, data) whatever the number of processes."""

import gzip
import json

import numpy as np
import pytest

import roberta_jax as rj
from roberta_jax.data import PretrainingBatches, keyed_permutation, prepare, pretraining_batches
from roberta_jax.data.masking import MaskingSpec, mask_batch
from roberta_jax.data.packing import PACKINGS, pack_shard
from roberta_jax.data.rows import IGNORED_LABEL
from roberta_jax.data.train_tokenizer import train_tokenizer


def stdlib_documents():
    """Real English: 400 standard-library docstrings, each a list of paragraphs."""
    from roberta_jax.demo_corpus import stdlib_documents as documents
    return [d.text.split("\n") for d in documents()[:400]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    docs = stdlib_documents()
    (root / "lines.txt").write_text("\n".join(" ".join(d) for d in docs) + "\n")
    (root / "paragraphs.txt").write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
    tokenizer = train_tokenizer([str(root / "lines.txt")], 1200, str(root / "spm"),
                                character_coverage=1.0)
    return root, docs, tokenizer


@pytest.fixture(scope="module")
def prepared(corpus):
    root, _, _ = corpus
    prepare([str(root / "paragraphs.txt")], str(root / "spm"), str(root / "prepared"),
            doc_format="paragraphs", workers=1, progress=False)
    return root / "prepared"


# ------------------------------------------------------------------------------- preparation

def test_prepare_keeps_every_document_and_token(corpus, prepared):
    root, docs, tokenizer = corpus
    manifest = rj.data.load_manifest(prepared)
    tokens = np.load(prepared / "shard-00000.000.tokens.npy")
    ends = np.load(prepared / "shard-00000.000.documents.npy")
    assert manifest["totals"]["documents"] == len(docs) == len(ends)
    # Document 3, read back: its sentences' tokens, then the separator.
    start = ends[2]
    doc_ids = tokens[start:ends[3]]
    assert doc_ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(doc_ids[:-1]) == " ".join(docs[3])
    assert manifest["tokenizer"]["fingerprint"] == tokenizer.fingerprint()


def test_prepare_in_parallel_units_gives_the_same_tokens(corpus, prepared, tmp_path):
    root, _, _ = corpus
    prepare([str(root / "paragraphs.txt")], str(root / "spm"), str(tmp_path / "p"),
            doc_format="paragraphs", workers=2, unit_bytes=4096, progress=False)
    manifest = rj.data.load_manifest(tmp_path / "p")
    assert len(manifest["shards"]) > 3
    joined = np.concatenate([np.load(tmp_path / "p" / f"{s['name']}.tokens.npy")
                             for s in manifest["shards"]])
    np.testing.assert_array_equal(joined, np.load(prepared / "shard-00000.000.tokens.npy"))


def test_prepare_resumes_without_redoing_finished_shards(corpus, tmp_path, capsys):
    root, _, _ = corpus
    args = ([str(root / "lines.txt")], str(root / "spm"), str(tmp_path / "p"))
    prepare(*args, workers=1, unit_bytes=4096, progress=False)
    shard_file = tmp_path / "p" / "shard-00001.000.tokens.npy"
    (tmp_path / "p" / "unit-00002.json").unlink()  # as if killed while writing unit 2
    before = shard_file.stat().st_mtime_ns
    prepare(*args, workers=1, unit_bytes=4096, progress=False)
    assert "resuming" in capsys.readouterr().out
    assert shard_file.stat().st_mtime_ns == before
    assert (tmp_path / "p" / "unit-00002.json").is_file()


def test_prepare_reads_jsonl_gzip_and_globs(corpus, tmp_path):
    root, docs, _ = corpus
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        for d in docs[:10]:
            f.write(json.dumps({"body": "\n".join(d)}) + "\n")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"body": " ".join(d)}) + "\n"
                                              for d in docs[10:20]))
    manifest = prepare([str(tmp_path / "*.jsonl*")], str(root / "spm"), str(tmp_path / "p"),
                       text_field="body", workers=1, progress=False)
    assert manifest["totals"]["documents"] == 20
    assert len(manifest["sources"]) == 2


def test_prepare_reports_undecodable_lines_and_skips_empty_documents(corpus, tmp_path, capsys):
    root, _, _ = corpus
    (tmp_path / "bad.txt").write_bytes(b"good line one\n\xff\xfe broken\n\n   \ngood line two\n")
    manifest = prepare([str(tmp_path / "bad.txt")], str(root / "spm"), str(tmp_path / "p"),
                       workers=1, progress=False)
    out = capsys.readouterr().out
    assert "bad.txt:2" in out and "not UTF-8" in out
    assert manifest["totals"]["documents"] == 2
    assert manifest["totals"]["empty_documents"] == 2
    assert manifest["totals"]["undecodable_lines"] == 1


def test_prepare_reads_a_tfds_dataset(corpus, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    root, _, _ = corpus
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        manifest = prepare(["tfds:imdb_reviews"], str(root / "spm"), str(tmp_path / "p"),
                           workers=1, progress=False)
    assert manifest["totals"]["documents"] == 12
    assert manifest["sources"] == ["tfds:imdb_reviews"]


# -------------------------------------------------------------------------- packing, shuffle

@pytest.mark.parametrize("packing", PACKINGS)
def test_packing_covers_the_stream_exactly_once_within_capacity(packing):
    rng = np.random.default_rng(0)
    sentence_lengths = rng.integers(1, 40, size=300)
    sentence_ends = np.cumsum(sentence_lengths)
    document_ends = sentence_ends[np.sort(rng.choice(299, 40, replace=False))]
    document_ends = np.append(document_ends, sentence_ends[-1])
    starts, ends = pack_shard(int(sentence_ends[-1]), sentence_ends, document_ends, 25, packing)
    assert starts[0] == 0 and ends[-1] == sentence_ends[-1]
    np.testing.assert_array_equal(starts[1:], ends[:-1])   # contiguous, no gaps or overlaps
    assert np.all(ends - starts <= 25) and np.all(ends > starts)
    if packing != "none":  # blocks end on sentence ends unless a sentence is longer than a block
        long_cut = ~np.isin(ends, sentence_ends)
        assert np.all(ends[long_cut] - starts[long_cut] == 25)
    if packing == "doc-sentences":
        for s, e in zip(starts, ends):
            assert not np.any((document_ends > s) & (document_ends < e))


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1000, 4099])
def test_keyed_permutation_is_a_permutation_that_depends_on_the_key(n):
    a = keyed_permutation(np.arange(n), n, key=1)
    assert sorted(a) == list(range(n))
    if n > 7:
        assert not np.array_equal(a, keyed_permutation(np.arange(n), n, key=2))
        assert not np.array_equal(a, np.arange(n))


def test_every_token_is_seen_exactly_once_per_epoch_with_full_sentences(prepared):
    batches = PretrainingBatches(prepared, batch_size=8, seq_len=64, seed=3)
    n = len(batches.corpus)
    steps = -(-n // 8)
    seen = np.concatenate([batches.batch(s)["block"] for s in range(steps)])[:n]
    assert sorted(seen) == list(range(n))
    # And the blocks' contents are the whole corpus: every token once, in some order.
    tokens = np.load(prepared / "shard-00000.000.tokens.npy")
    _, starts, ends = batches.corpus.blocks(np.arange(n))
    assert (ends - starts).sum() == len(tokens)


# ------------------------------------------------------------------------------------ masking

def test_masking_rates_and_80_10_10_split_within_tolerance():
    vocab, rows, length = 1000, 400, 128
    ids = np.random.default_rng(0).integers(5, vocab, size=(rows, length))
    ids[:, 0], ids[:, -1] = 0, 2
    ids[::3, 100:] = 1  # padding on a third of the rows
    spec = MaskingSpec(vocab_size=vocab, special_ids=(0, 1, 2, 3, 4), mask_id=4, pad_id=1)
    out = mask_batch(ids, np.arange(rows), seed=0, spec=spec)
    chosen = out["labels"] != IGNORED_LABEL
    maskable = ~np.isin(ids, [0, 1, 2, 3, 4])
    rate = chosen.sum() / maskable.sum()
    assert abs(rate - 0.15) < 0.005, rate
    became_mask = (out["input_ids"] == 4)[chosen].mean()
    kept = (out["input_ids"] == ids)[chosen].mean()
    assert abs(became_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.015, (became_mask, kept)
    assert np.all(out["labels"][chosen] == ids[chosen])
    # Unchosen positions are untouched; specials and padding are never chosen.
    np.testing.assert_array_equal(out["input_ids"][~chosen], ids[~chosen])
    assert not chosen[~maskable].any()
    # The gather view agrees with the dense labels: chosen positions in order, then zeros.
    for row in range(rows):
        k = int(out["masked_weights"][row].sum())
        np.testing.assert_array_equal(out["masked_positions"][row, :k], np.flatnonzero(chosen[row]))
        np.testing.assert_array_equal(out["masked_labels"][row, :k], ids[row][chosen[row]])
        assert not out["masked_positions"][row, k:].any()
        assert not out["masked_weights"][row, k:].any()


def test_token_choice_takes_the_smallest_scores_and_breaks_ties_by_position():
    from roberta_jax.data.masking import _choose_tokens
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(300, 40)).astype(np.float64)  # many equal scores
    maskable = rng.random((300, 40)) < 0.8
    count = rng.integers(0, 12, size=300)
    count = np.minimum(count, maskable.sum(1))
    chosen = _choose_tokens(maskable, count, scores)
    for row in range(300):
        candidates = np.flatnonzero(maskable[row])
        expected = candidates[np.argsort(scores[row, candidates], kind="stable")[:count[row]]]
        np.testing.assert_array_equal(np.flatnonzero(chosen[row]), np.sort(expected))


def test_pipeline_never_masks_specials_or_padding(prepared):
    batches = PretrainingBatches(prepared, batch_size=16, seq_len=96, seed=0)
    info = batches.corpus.manifest["tokenizer"]
    for step in range(5):
        b = batches.batch(step)
        original = np.where(b["labels"] != IGNORED_LABEL, b["labels"], b["input_ids"])
        special = np.isin(original, [info["bos_id"], info["eos_id"], info["pad_id"]])
        assert not (b["labels"] != IGNORED_LABEL)[special].any()
        assert np.all(b["attention_mask"] == (original != info["pad_id"]))


@pytest.mark.parametrize("unit", ["word", "span"])
def test_whole_word_and_span_masking_keep_rates_and_specials(prepared, unit):
    batches = PretrainingBatches(prepared, batch_size=32, seq_len=128, seed=0, masking=unit)
    b = batches.batch(0)
    chosen = b["labels"] != IGNORED_LABEL
    maskable = (b["attention_mask"] == 1) & (np.isin(
        np.where(chosen, b["labels"], b["input_ids"]), [0, 1, 2], invert=True))
    assert not chosen[~maskable].any()
    assert 0.10 < chosen.sum() / maskable.sum() < 0.17
    if unit == "word":  # a chosen word is chosen whole: its next piece, if inside the word, too
        starts = batches.spec.word_starts[np.where(chosen, b["labels"], b["input_ids"])]
        inside = chosen[:, :-1] & ~starts[:, 1:] & maskable[:, 1:]
        assert np.all(chosen[:, 1:][inside])


def test_masks_differ_between_epochs(prepared):
    batches = PretrainingBatches(prepared, batch_size=8, seq_len=64, seed=0)
    n = len(batches.corpus)
    # The global example index n + i is block perm_1(i) in epoch 1; find block 0 in both.
    e0 = batches.batch(0)
    later = [batches.batch(s) for s in range(n // 8, n // 8 + n // 8 + 2)]
    block = e0["block"][0]
    again = [(b, r) for b in later for r in range(8)
             if b["block"][r] == block and b["epoch"][r] == 1]
    assert again, "block not found in epoch 1"
    b, r = again[0]
    original = np.where(e0["labels"][0] != IGNORED_LABEL, e0["labels"][0], e0["input_ids"][0])
    original_again = np.where(b["labels"][r] != IGNORED_LABEL, b["labels"][r], b["input_ids"][r])
    np.testing.assert_array_equal(original, original_again)  # same text
    assert not np.array_equal(e0["labels"][0], b["labels"][r])  # another mask


# ------------------------------------------------------------------------ step = pure function

def test_same_seed_same_batches_and_other_seed_other_batches(prepared):
    a = PretrainingBatches(prepared, 8, 64, seed=5).batch(2)
    b = PretrainingBatches(prepared, 8, 64, seed=5).batch(2)
    c = PretrainingBatches(prepared, 8, 64, seed=6).batch(2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["input_ids"], c["input_ids"])


def test_start_step_k_gives_the_batches_a_run_from_zero_gives_at_k(prepared):
    from_zero = list(pretraining_batches(prepared, 8, 64, seed=1, num_steps=6))
    resumed = list(pretraining_batches(prepared, 8, 64, seed=1, start_step=4, num_steps=2))
    for key in from_zero[4]:
        np.testing.assert_array_equal(from_zero[4][key], resumed[0][key])
        np.testing.assert_array_equal(from_zero[5][key], resumed[1][key])


def test_two_processes_rows_together_equal_the_one_process_batch(prepared):
    one = PretrainingBatches(prepared, 8, 64, seed=1).batch(3)
    halves = [PretrainingBatches(prepared, 8, 64, seed=1, process_index=p,
                                 process_count=2).batch(3) for p in range(2)]
    for key in one:
        assert halves[0][key].shape[0] == 4
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), one[key])


# --------------------------------------------------------------------------------- bad inputs

def test_bad_inputs_give_one_clear_error(corpus, prepared, tmp_path):
    root, _, tokenizer = corpus
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    # prepare's own mistakes (missing, empty, binary, not UTF-8 inputs; missing tokenizer) are
    # in the bad-input catalogue, tests/test_bad_inputs.py.
    cases = [
        (lambda: rj.data.check_compatible(prepared, tokenizer=_other_tokenizer(root, tmp_path)),
         "another tokenizer"),
        (lambda: rj.data.check_compatible(prepared, model_config=rj.RobertaConfig(
            vocab_size=1000)), "do not match"),
        (lambda: rj.data.check_compatible(prepared, model_config=rj.RobertaConfig(
            vocab_size=1200, max_position_embeddings=130), seq_len=256), "longer than"),
        (lambda: PretrainingBatches(tmp_path, 8, 64, seed=0), "not a prepared directory"),
        (lambda: PretrainingBatches(prepared, 9, 64, seed=0, process_count=2), "divisible"),
        (lambda: train_tokenizer([str(tmp_path / "empty.txt")], 100, str(tmp_path / "t")),
         "empty corpus"),
    ]
    for run, expected in cases:
        with pytest.raises(rj.UserError, match=expected) as info:
            run()
        assert "\n" not in str(info.value)


def _other_tokenizer(root, tmp_path):
    return train_tokenizer([str(root / "lines.txt")], 900, str(tmp_path / "other"))
