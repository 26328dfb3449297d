"""Our dynamic masking against the two references, on the same real pretraining rows (the
prepared stdlib corpus, FULL-SENTENCES rows of `<s>` + sentences with `</s>` between
documents + padding):

- transformers' DataCollatorForLanguageModeling, run for real (as run_mlm uses it);
- fairseq's MaskTokensDataset, which cannot be installed here (its last release, 0.12.2, has
  no wheel for Python 3.11, only a source archive whose build did not complete here): its
  sampling rule is restated below from the source and run on the same rows.

Compared: the per-row number of predicted tokens, the shares of `<mask>` / random / kept, the
ids a random replacement can draw, and what happens to `<s>`, `</s>` and padding. Where we
differ from a reference, the test pins the difference that masking.py documents as deliberate.
"""

import dataclasses

import numpy as np
import pytest

from roberta_jax.data.masking import mask_batch
from roberta_jax.data.pipeline import PretrainingBatches

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SEQ_LEN, ROWS, P = 64, 2048, 0.15


def fairseq_mask_tokens(item: np.ndarray, rng: np.random.Generator, vocab_size: int,
                        mask_id: int, nspecial: int = 4, mask_prob: float = P,
                        leave_unmasked_prob: float = 0.1, random_token_prob: float = 0.1):
    """fairseq's token masking of one unpadded row, restated from
    facebookresearch/fairseq, fairseq/data/mask_tokens_dataset.py (MaskTokensDataset,
    __getitem_cached__; main as of 2025-09, defaults of fairseq/tasks/masked_lm.py: no whole
    words, mask_multiple_length 1, uniform replacement). The row is what masked_lm.py feeds it:
    PrependTokenDataset(<s>) over a TokenBlockDataset block, before any padding.

    -> (source, predicted): the model's input and where the target is not padding.
    """
    size = len(item)  # every position is a candidate, <s> and </s> included
    count = int(mask_prob * size + rng.random())          # randomised rounding
    predicted = np.zeros(size, bool)
    predicted[rng.choice(size, count, replace=False)] = True
    # Of the predicted: 20% are "random or unmasked", split evenly between the two.
    other = predicted & (rng.random(size) < random_token_prob + leave_unmasked_prob)
    keep_it = rng.random(size) < leave_unmasked_prob / (random_token_prob + leave_unmasked_prob)
    to_random = other & ~keep_it
    to_mask = predicted & ~(other & keep_it)
    source = item.copy()
    source[to_mask] = mask_id
    # Replacement ids: uniform over the dictionary, minus its first `nspecial` entries
    # (<s>, <pad>, </s>, <unk>); <mask> itself, the last entry, is not excluded.
    weights = np.ones(vocab_size)
    weights[:nspecial] = 0
    source[to_random] = rng.choice(vocab_size, int(to_random.sum()), p=weights / weights.sum())
    return source, predicted


@pytest.fixture(scope="module")
def masked(prepared_corpus):
    """The same rows masked three ways: {name: (inputs, predicted)}, plus the rows and ids."""
    train_dir, _, tokenizer_dir = prepared_corpus
    batches = PretrainingBatches(train_dir, 256, SEQ_LEN, seed=0, mask_prob=P)
    info = batches.corpus.manifest["tokenizer"]
    ours_inputs, ours_predicted, rows = [], [], []
    for step in range(ROWS // 256):
        batch = batches.batch(step)
        rows.append(batches.corpus.rows(batch["block"]))
        ours_inputs.append(batch["input_ids"])
        ours_predicted.append(batch["labels"] != -100)
    rows = np.concatenate(rows)
    lengths = (rows != info["pad_id"]).sum(1)

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    assert (len(hf_tokenizer), hf_tokenizer.mask_token_id, hf_tokenizer.pad_token_id) == (
        info["vocab_size"], info["mask_id"], info["pad_id"])
    collator = transformers.DataCollatorForLanguageModeling(hf_tokenizer, mlm_probability=P,
                                                            seed=0)
    hf = collator([{"input_ids": row[:n].tolist()} for row, n in zip(rows, lengths)])
    hf_inputs = np.full_like(rows, info["pad_id"])
    hf_inputs[:, :hf["input_ids"].shape[1]] = hf["input_ids"].numpy()
    hf_predicted = np.zeros(rows.shape, bool)
    hf_predicted[:, :hf["labels"].shape[1]] = hf["labels"].numpy() != -100

    rng = np.random.default_rng(0)
    fs_inputs, fs_predicted = rows.copy(), np.zeros(rows.shape, bool)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        fs_inputs[i, :n], fs_predicted[i, :n] = fairseq_mask_tokens(
            row[:n], rng, info["vocab_size"], info["mask_id"])
    return {"ours": (np.concatenate(ours_inputs), np.concatenate(ours_predicted)),
            "transformers": (hf_inputs, hf_predicted),
            "fairseq": (fs_inputs, fs_predicted)}, rows, info, batches.spec


def _shares(inputs, predicted, rows, mask_id):
    """<mask> / random / kept among the predicted tokens (a random draw of the token itself
    counts as kept, the same for every side)."""
    at_mask = predicted & (inputs == mask_id)
    kept = predicted & (inputs == rows)
    total = predicted.sum()
    return np.array([at_mask.sum(), (predicted & ~at_mask & ~kept).sum(), kept.sum()]) / total


def test_predicted_tokens_per_row_match_the_references_expectation(masked):
    sides, rows, info, _ = masked
    specials = np.isin(rows, [info[k] for k in ("bos_id", "eos_id", "pad_id", "mask_id")])
    ordinary = (~specials).sum(1)
    unpadded = (rows != info["pad_id"]).sum(1)
    ours = sides["ours"][1].sum(1)
    hf = sides["transformers"][1].sum(1)
    fairseq = sides["fairseq"][1].sum(1)
    # Ours and fairseq: a fixed count per row, 15% of the candidates rounded up or down at
    # random (unbiased); transformers: an independent 15% coin per token (binomial count).
    assert np.all(np.abs(ours - P * ordinary) < 1)
    assert np.all(np.abs(fairseq - P * unpadded) < 1)
    assert abs(np.mean(ours - P * ordinary)) < 0.03
    assert abs(np.mean(hf - P * ordinary)) < 0.1
    binomial_sd = np.sqrt(np.mean(P * (1 - P) * ordinary))
    assert np.std(ours - P * ordinary) <= 0.5 < 0.8 * binomial_sd < np.std(hf - P * ordinary)
    # The same number of predictions per row as transformers on average; fairseq predicts
    # 15% more of a row's <s> and </s> on top (its candidates include them).
    assert abs(ours.mean() - hf.mean()) < 0.1
    np.testing.assert_allclose(fairseq.mean() - ours.mean(), P * (unpadded - ordinary).mean(),
                               atol=0.05)


def test_mask_random_kept_shares_are_80_10_10_as_in_both_references(masked):
    sides, rows, info, _ = masked
    for name, (inputs, predicted) in sides.items():
        shares = _shares(inputs, predicted, rows, info["mask_id"])
        np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.012, err_msg=name)
    ours = _shares(*sides["ours"], rows, info["mask_id"])
    for name in ("transformers", "fairseq"):
        np.testing.assert_allclose(ours, _shares(*sides[name], rows, info["mask_id"]),
                                   atol=0.015, err_msg=name)
    # Nothing that is not predicted is changed, on any side.
    for name, (inputs, predicted) in sides.items():
        assert np.array_equal(inputs[~predicted], rows[~predicted]), name


def _random_draws(inputs, predicted, rows, mask_id):
    return inputs[predicted & (inputs != rows) & (inputs != mask_id)]


def test_random_replacements_draw_every_ordinary_id_uniformly_and_never_a_special(masked):
    sides, rows, info, spec = masked
    vocab = info["vocab_size"]
    # Many draws: our real masking spec with every chosen token replaced at random.
    every = mask_batch(np.tile(rows[:512], (4, 1)), np.arange(2048), 0, dataclasses.replace(
        spec, mask_prob=0.5, replace_with_mask=0.0, replace_with_random=1.0))
    draws = every["input_ids"][every["labels"] != -100]
    counts = np.bincount(draws, minlength=vocab)
    assert sorted(spec.special_ids) == sorted(
        {info[k] for k in ("bos_id", "pad_id", "eos_id", "mask_id")})
    assert counts[list(spec.special_ids)].sum() == 0
    ordinary = np.setdiff1d(np.arange(vocab), spec.special_ids)
    assert info["unk_id"] in ordinary        # <unk> is an ordinary replacement for us
    expected = len(draws) / len(ordinary)
    assert np.all(np.abs(counts[ordinary] - expected) < 6 * np.sqrt(expected))  # uniform
    # The references differ, each in its own way: transformers draws from the whole
    # vocabulary (randint(len(tokenizer))), so <s>, <pad>, </s> and <mask> can come out;
    # fairseq from all but its first four entries (<s> <pad> </s> <unk>), <mask> included.
    specials = [info[k] for k in ("bos_id", "pad_id", "eos_id", "unk_id", "mask_id")]
    hf = _random_draws(*sides["transformers"], rows, info["mask_id"])
    assert np.isin(hf, specials[:3]).any()
    fairseq = _random_draws(*sides["fairseq"], rows, info["mask_id"])
    assert not np.isin(fairseq, specials[:4]).any()
    fs_draws, _ = fairseq_mask_tokens(np.full(20_000, 7), np.random.default_rng(1), vocab,
                                      info["mask_id"], mask_prob=0.5, random_token_prob=1.0,
                                      leave_unmasked_prob=0.0)
    assert info["mask_id"] in fs_draws


def test_bos_eos_and_padding_are_never_predicted_as_in_transformers_unlike_fairseq(masked):
    sides, rows, info, _ = masked
    for token in ("bos_id", "eos_id", "pad_id"):
        at = rows == info[token]
        assert at.any(), token
        assert not sides["ours"][1][at].any(), token
        assert not sides["transformers"][1][at].any(), token
    # fairseq picks <s> and </s> like any other position (padding comes after masking).
    for token in ("bos_id", "eos_id"):
        at = rows == info[token]
        assert abs(sides["fairseq"][1][at].mean() - P) < 0.03, token
    assert not sides["fairseq"][1][rows == info["pad_id"]].any()
