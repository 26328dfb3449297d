"""Multiple-choice data: examples read from files and tfds, one `<s> context </s></s> question
choice </s>` row per choice with only the context cut, and [batch, choices, length] batches."""

import json

import numpy as np
import pytest
from conftest import small_bpe_tokenizer, tfds_records

from roberta_jax.data.choices import (
    ChoiceExamples,
    choice_batches,
    encode_choices,
    read_choices,
    with_choice,
)
from roberta_jax.data.tokenizer import Tokenizer
from roberta_jax.errors import UserError

CORPUS = ["The cat sat on the mat because it was warm .",
          "What did the cat do ? It sat on the mat .",
          "Peter went to the market to buy apples and bread ."]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return small_bpe_tokenizer(CORPUS, tmp_path_factory.mktemp("bpe"))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------- reading

def test_labels_may_be_an_index_a_letter_the_choice_text_or_digits(tmp_path):
    choices = ["sat", "ran", "slept"]
    source = write_jsonl(tmp_path / "train.jsonl", [
        {"context": "The cat sat.", "question": "What did the cat do?", "choices": choices,
         "label": 0, "id": "a"},
        {"context": "The cat ran.", "question": "The cat _ .", "choices": choices, "label": "B"},
        {"question": "What did the cat do?", "choices": choices, "label": "slept"},
        {"context": "The cat ran.", "choices": choices, "label": "1"}])
    examples = read_choices(source)
    assert examples.contexts == ["The cat sat.", "The cat ran.", "", "The cat ran."]
    assert examples.questions == ["What did the cat do?", "The cat _ .", "What did the cat do?",
                                  ""]
    assert examples.choices == [choices] * 4
    assert examples.labels.tolist() == [0, 1, 2, 1]
    assert examples.ids == ["a", 1, 2, 3]


def test_unlabelled_examples_have_no_labels(tmp_path):
    source = write_jsonl(tmp_path / "test.jsonl", [
        {"context": "c", "question": "q", "choices": ["a", "b"]},
        {"context": "c", "question": "q", "choices": ["a", "b"], "label": -1}])
    assert read_choices(source).labels is None


def test_choices_may_be_one_column_each(tmp_path):
    path = tmp_path / "swag.csv"
    path.write_text("sent1,sent2,ending0,ending1,ending2,label\n"
                    "The cat sat.,Then it,slept,ran,ate,2\n", encoding="utf-8")
    examples = read_choices(str(path), context_field="sent1", question_field="sent2",
                            choices_field=("ending0", "ending1", "ending2"))
    assert examples == ChoiceExamples(["The cat sat."], ["Then it"], [["slept", "ran", "ate"]],
                                      examples.labels, [0])
    assert examples.labels.tolist() == [2]


@pytest.mark.parametrize("records, message", [
    ([{"context": "c", "choices": ["a", "b"], "label": 0},
      {"context": "c", "choices": ["a", "b", "c"], "label": 0}],
     "example 2 has 3 choices, the first has 2; every example needs the same number"),
    ([{"context": "c", "choices": ["a", "b"], "label": "E"}],
     r"example 1: label 'E' is not a choice: give its index \(0-1\), its letter \(A-B\)"),
    ([{"context": "c", "choices": ["a", "b"], "label": 5}], "label 5 is not a choice"),
    ([{"context": "c", "choices": ["a", "b"], "label": 0}, {"context": "c", "choices": ["a", "b"]}],
     "example 2 has no 'label' while others have one"),
    ([{"context": "c", "options": ["a", "b"]}], "example 1 has no 'choices' field"),
    ([{"context": "c", "choices": "a b"}], "example 1: 'choices' is not a list"),
    ([{"context": "c", "choices": ["a"]}], "example 1 has 1 choice"),
    ([{"passage": "c", "choices": ["a", "b"]}], "neither a 'context' nor a 'question' field"),
    ([], "no examples"),
])
def test_bad_examples_are_refused_with_the_example_named(tmp_path, records, message):
    source = write_jsonl(tmp_path / "train.jsonl", records)
    with pytest.raises(UserError, match=message):
        read_choices(source)


# ----------------------------------------------------------------------------- encoding

@pytest.mark.parametrize("question, choice, second", [
    ("What did the cat do?", "sat", "What did the cat do? sat"),
    ("The cat _ on the mat.", "sat", "The cat sat on the mat."),
    ("The cat ___ because it was _ .", "sat", "The cat sat because it was sat ."),
    ("", "It sat.", "It sat."),
])
def test_the_choice_fills_the_blank_or_follows_the_question(question, choice, second):
    assert with_choice(question, choice) == second


def test_each_choice_is_paired_with_the_context(tokenizer):
    examples = ChoiceExamples(["The cat sat on the mat."], ["The cat _ ."], [["sat", "ran"]],
                              None, [0])
    encoded = encode_choices(tokenizer, examples, max_length=64)
    context = tokenizer.encode("The cat sat on the mat.")
    assert encoded == [[
        tokenizer.with_specials(context, tokenizer.encode("The cat sat .")),
        tokenizer.with_specials(context, tokenizer.encode("The cat ran ."))]]
    assert encoded[0][0] == tokenizer("The cat sat on the mat.", "The cat sat .")


def test_only_the_context_is_cut_to_max_length(tokenizer):
    context = "Peter went to the market to buy apples and bread because it was warm ."
    examples = ChoiceExamples([context], ["What did Peter buy?"], [["apples", "a cat"]], None,
                              ["q1"])
    seconds = [tokenizer.encode(with_choice("What did Peter buy?", c)) for c in ("apples", "a cat")]
    max_length = max(len(s) for s in seconds) + 4 + 3
    rows = encode_choices(tokenizer, examples, max_length)[0]
    for row, second in zip(rows, seconds):
        assert len(row) <= max_length
        assert row[-len(second) - 1:-1] == second
        assert row == tokenizer(context, tokenizer.decode(second), max_length, "only_first")
    assert len(rows[np.argmax([len(s) for s in seconds])]) == max_length
    with pytest.raises(UserError, match="example 'q1': its question and a choice take"):
        encode_choices(tokenizer, examples, max_length=len(seconds[0]) + 3)


def test_without_a_context_a_choice_is_one_sentence(tokenizer):
    examples = ChoiceExamples(["", ""], ["The cat _ .", ""], [["sat", "ran"], ["a", "b"]],
                              None, [0, 1])
    encoded = encode_choices(tokenizer, examples, max_length=16)
    assert encoded[0][1] == tokenizer("The cat ran .")
    assert encoded[1][0] == tokenizer("a")


def test_choice_batches_are_batch_by_choice_by_length(tokenizer):
    encoded = [[[0, 5, 2], [0, 6, 6, 2], [0, 7, 2]],
               [[0, 8, 2], [0, 9, 2], [0] + [4] * 9 + [2]],
               [[0, 5, 2], [0, 5, 2], [0, 5, 2]]]
    labels = np.array([2, 0, 1], np.int32)
    batches = list(choice_batches(encoded, labels, 2, tokenizer.pad_id, (4, 16),
                                  order=np.array([2, 0, 1])))
    first, last = batches
    assert first["input_ids"].shape == first["attention_mask"].shape == (2, 3, 4)
    assert last["input_ids"].shape == (2, 3, 16)
    assert first["input_ids"][1, 1].tolist() == [0, 6, 6, 2]
    assert first["attention_mask"][0, 0].tolist() == [1, 1, 1, 0]
    assert first["input_ids"][0, 0, 3] == tokenizer.pad_id
    assert first["labels"].tolist() == [1, 2] and list(first["index"]) == [2, 0]
    assert last["weights"].tolist() == [1, 0] and last["labels"].tolist() == [0, 0]
    assert len(list(choice_batches(encoded, None, 2, 1, (16,), drop_last=True))) == 1
    assert "labels" not in next(choice_batches(encoded, None, 2, 1, (16,)))


# ------------------------------------------------------------------------------- tfds

def test_race_gives_one_example_per_question():
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf
    articles = [{"article": "The cat sat.", "example_id": "high1.txt",
                 "questions": ["The cat _ .", "Who sat?"],
                 "options": tf.ragged.constant([["sat", "ran", "ate", "hid"],
                                                ["a dog", "a cat", "a bird", "nobody"]]),
                 "answers": ["A", "B"]},
                {"article": "Peter ran.", "example_id": "high2.txt", "questions": ["Who ran?"],
                 "options": tf.ragged.constant([["Peter", "Paul", "Mary", "A"]]),
                 "answers": ["D"]}]
    with tfds.testing.mock_data(as_dataset_fn=tfds_records(articles)):
        examples = read_choices("tfds:race/high", split="test")
    assert examples.contexts == ["The cat sat.", "The cat sat.", "Peter ran."]
    assert examples.questions == ["The cat _ .", "Who sat?", "Who ran?"]
    assert examples.choices[1] == ["a dog", "a cat", "a bird", "nobody"]
    assert examples.labels.tolist() == [0, 1, 3]  # "D", though a choice reads "A"
    assert examples.ids == ["high1.txt/0", "high1.txt/1", "high2.txt/0"]


def test_other_tfds_multiple_choice_sets_use_their_own_fields():
    tfds = pytest.importorskip("tensorflow_datasets")
    sentences = [{"sentence": "The cat sat because _ was tired.", "option1": "the cat",
                  "option2": "the mat", "label": 0}]
    with tfds.testing.mock_data(as_dataset_fn=tfds_records(sentences)):
        examples = read_choices("tfds:winogrande", split="validation")
    assert examples == ChoiceExamples([""], [sentences[0]["sentence"]], [["the cat", "the mat"]],
                                      examples.labels, [0])
    assert examples.labels.tolist() == [0]
    endings = [{"context": "The cat", "endings": ["sat.", "flew.", "sang.", "swam."], "label": -1,
                "activity_label": "", "source_id": "", "split_type": ""}]
    with tfds.testing.mock_data(as_dataset_fn=tfds_records(endings)):
        examples = read_choices("tfds:hellaswag", split="test")
    assert examples.contexts == ["The cat"] and examples.questions == [""]
    assert examples.choices == [["sat.", "flew.", "sang.", "swam."]] and examples.labels is None
