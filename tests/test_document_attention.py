"""Pretraining with document attention (`--config.model.document_attention=True`): in a packed
FULL-SENTENCES row each document attends only to itself and counts its positions from its own
start, so a masked token's prediction is what it would be with its document alone in the row."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_pretrain import tiny

from roberta_jax.data.pipeline import PretrainingBatches
from roberta_jax.errors import UserError
from roberta_jax.model import RobertaForMaskedLM
from roberta_jax.optim import make_optimizer
from roberta_jax.train import make_steps, model_config, pretrain, read_metrics, train_keys


def _row_with_two_documents(batches):
    """(batch, row, masked slot in the row's first document, positions of its second document)
    for the first row that holds two documents and a prediction in the first."""
    for step in range(200):
        batch = batches.batch(step)
        for row, segments in enumerate(batch["segment_ids"]):
            first = [i for i, p in enumerate(batch["masked_positions"][row])
                     if batch["masked_weights"][row][i] > 0 and segments[p] == 1]
            second = np.flatnonzero(segments == 2)
            if first and len(second) > 2:
                return batch, row, first[0], second
    raise AssertionError("the corpus has no row with two documents")


@pytest.mark.parametrize("documents", [True, False])
def test_a_document_s_predictions_ignore_the_other_documents_of_its_row(prepared_corpus,
                                                                         documents):
    config = tiny(prepared_corpus[0], model__document_attention=documents,
                  model__hidden_dropout_prob=0.0, model__attention_probs_dropout_prob=0.0)
    batches = PretrainingBatches(prepared_corpus[0], 8, 32, seed=0, segment_ids=True)
    batch, row, slot, second = _row_with_two_documents(batches)
    model = RobertaForMaskedLM(model_config(config, batches.corpus.manifest["tokenizer"][
        "vocab_size"]))
    keys = train_keys(config)
    assert ("segment_ids" in keys) == documents
    one = {k: jnp.asarray(batch[k][row:row + 1]) for k in keys}
    params = model.init(jax.random.key(0), one["input_ids"],
                        attention_mask=one["attention_mask"],
                        masked_positions=one["masked_positions"])["params"]
    _, eval_step = make_steps(model, make_optimizer(config.train), config, 1000)

    def first_document_loss(inputs):
        # Only the chosen slot of the first document counts.
        weights = np.zeros_like(batch["masked_weights"][row:row + 1])
        weights[0, slot] = 1.0
        return float(eval_step(params, {**inputs, "masked_weights": jnp.asarray(weights)})[
            "loss_sum"])

    before = first_document_loss(one)
    changed = np.array(one["input_ids"])
    changed[0, second[1:-1]] = (changed[0, second[1:-1]] + 7) % 900 + 10  # rewrite document 2
    after = first_document_loss({**one, "input_ids": jnp.asarray(changed)})
    # Masked-out keys get exactly zero weight, so the first document's loss is bit-identical;
    # a random-init model attends almost uniformly, so without the mask the change is small.
    assert (after == before) == documents, (before, after)


def test_pretraining_with_document_attention_trains_evaluates_and_resumes_only_so(
        prepared_corpus, tmp_path):
    train_dir = prepared_corpus[0]
    config = tiny(train_dir, model__document_attention=True, data__eval_path=str(train_dir))
    config.eval.every_steps, config.eval.batches = 3, 1
    pretrain(config, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert np.isfinite([r["eval_loss"] for r in records if "eval_loss" in r]).all()
    # The rows' attention is part of the experiment: a resume may not switch it off.
    off = tiny(train_dir, model__document_attention=False, data__eval_path=str(train_dir))
    off.train.steps = 4
    with pytest.raises(UserError, match="model.document_attention"):
        pretrain(off, tmp_path / "run")


def test_a_workdir_from_before_the_option_resumes_only_with_it_off(prepared_corpus, tmp_path):
    config = tiny(prepared_corpus[0], model__document_attention=False)
    pretrain(config, tmp_path / "run")
    saved = tmp_path / "run" / "config.json"
    older = json.loads(saved.read_text())
    del older["model"]["document_attention"]   # as written before the option existed
    saved.write_text(json.dumps(older))
    config.train.steps = 4
    today = tiny(prepared_corpus[0])   # the default is on now; that run attended across
    today.train.steps = 4
    with pytest.raises(UserError, match="model.document_attention=False"):
        pretrain(today, tmp_path / "run")
    pretrain(config, tmp_path / "run")
    assert max(r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r) == 4
