"""`predict` and fine-tuning share their per-kind encoding and decoding (task_kinds.py), so a
setting such as SQuAD's stride has one value: the one the README and the recipe state."""

import pathlib

import numpy as np
import pytest

from roberta_jax import task_kinds, tasks
from roberta_jax.data import squad
from roberta_jax.train_config import load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_fine_tuning_config_starts_from_squads_settings():
    config = load_config(str(ROOT / "configs" / "glue.py"))
    assert (config.stride, config.max_query_length, config.n_best, config.max_answer_length) \
        == (squad.STRIDE, squad.MAX_QUERY_LENGTH, squad.N_BEST, squad.MAX_ANSWER_LENGTH) \
        == (128, 64, 20, 30)
    assert tasks.NAMED_TASKS["squad1"].max_length == squad.MAX_LENGTH == 384


@pytest.mark.parametrize("limit, stride, query", [
    (512, 128, 64),   # roberta-base: SQuAD's windows (predict once shared 96 tokens here)
    (384, 128, 64),
    (256, 128, 64),
    (128, 32, 32),    # too short for 64 + 128: a quarter of the length each
    (64, 16, 16),
])
def test_predict_windows_are_squads_unless_the_model_is_too_short(limit, stride, query):
    kind = task_kinds.for_head("question-answering", min(limit, squad.MAX_LENGTH))
    assert isinstance(kind, task_kinds.SpanQA)
    assert (kind.config.stride, kind.config.max_query_length) == (stride, query)
    assert (kind.config.n_best, kind.config.max_answer_length) == (20, 30)


def test_every_head_but_the_masked_lms_has_a_kind():
    heads = {cls.head for cls in task_kinds.KIND_CLASSES.values()}
    assert heads == {"sequence-classification", "token-classification", "question-answering",
                     "multiple-choice"}
    assert task_kinds.for_head("sequence-classification", 512, regression=True).task.regression
    assert not task_kinds.for_head("sequence-classification", 512).task.regression


def test_choice_outputs_keep_each_inputs_own_number_of_choices():
    kind = task_kinds.for_head("multiple-choice", 512)
    even = task_kinds.Split(None, [[[1]] * 3, [[1]] * 3], 2)
    assert kind.from_sequences(even, np.arange(6.0)).shape == (2, 3)
    ragged = task_kinds.Split(None, [[[1]] * 2, [[1]] * 4], 2)
    scores = kind.from_sequences(ragged, np.arange(6.0))
    assert [list(s) for s in scores] == [[0.0, 1.0], [2.0, 3.0, 4.0, 5.0]]


def test_task_kind_names_and_their_classes_agree():
    assert tuple(task_kinds.KIND_CLASSES) == tasks.KINDS
