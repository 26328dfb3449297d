"""Multiple-choice inputs (RACE, SWAG and the like): a context, a question and the same number of
candidate answers per example.

The model reads each candidate as `<s> context </s></s> question choice </s>` and scores it; the
highest-scoring one is the answer. Examples come from local jsonl (or csv / tsv with one column
per choice) or tfds (`tfds:race/high`, `tfds:race/middle`, and the sets in TFDS_FIELDS).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import string

import numpy as np

from roberta_jax.data.rows import batch_rows, bucket_length, read_rows
from roberta_jax.data.tfds_records import read_tfds
from roberta_jax.data.tokenizer import Tokenizer, pad_batch
from roberta_jax.errors import UserError


@dataclasses.dataclass
class ChoiceExamples:
    contexts: list[str]           # passage / first sentence ("" if none)
    questions: list[str]          # question / stem of the second sentence ("" if none)
    choices: list[list[str]]      # the same number of choices in every example
    labels: np.ndarray | None     # int index of the right choice, or None (test data)
    ids: list                     # example ids for prediction files (row index if absent)


# tfds sets with one example per record: (context, question, choices, label) features, None where
# the set has no such part. A tuple of choices names one feature per choice.
TFDS_FIELDS = {
    "hellaswag": ("context", None, "endings", "label"),
    "piqa": ("goal", None, ("sol1", "sol2"), "label"),
    "cosmos_qa": ("context", "question", ("answer0", "answer1", "answer2", "answer3"), "label"),
    "winogrande": (None, "sentence", ("option1", "option2"), "label"),  # "_" marks the blank
}

_MISSING_LABELS = (None, "", -1)   # test splits mark unknown answers so
_LETTER_INDEX = {letter: i for i, letter in enumerate(string.ascii_uppercase)}


def read_choices(source: str, split: str = "train", tfds_data_dir: str | None = None,
                 context_field: str | None = "context", question_field: str | None = "question",
                 choices_field: str | tuple[str, ...] = "choices", label_field: str = "label",
                 id_field: str = "id") -> ChoiceExamples:
    """Examples of a jsonl / csv / tsv file or `tfds:NAME`. `choices_field` is a field holding
    the list of choices or a tuple of fields, one per choice. A label is the choice's index, its
    text, its letter ("A" for the first) or its index as digits, tried in that order; context
    and question may be missing (""). tfds RACE and the TFDS_FIELDS sets use their own fields."""
    if source.startswith("tfds:"):
        name = source[5:]
        records, _ = read_tfds(name, split, tfds_data_dir)
        family = name.split("/")[0].split(":")[0]
        if family == "race":
            records = _race_questions(records)
            context_field, question_field, choices_field = "article", "question", "options"
            label_field, id_field = "answer", "id"
        elif family in TFDS_FIELDS:
            context_field, question_field, choices_field, label_field = TFDS_FIELDS[family]
    else:
        records = read_rows(pathlib.Path(source))
    if not records:
        raise UserError(f"{source}: no examples")
    if not any(field in record for record in records for field in (context_field, question_field)):
        raise UserError(f"{source}: neither a {context_field!r} nor a {question_field!r} field "
                        f"(it has {', '.join(records[0])}); choose the context / question fields")
    return _examples(records, source, context_field, question_field, choices_field,
                     label_field, id_field)


def _race_questions(articles: list[dict]) -> list[dict]:
    """RACE stores one article with all its questions; make one example per question."""
    rows = []
    for article in articles:
        for number, (question, options, answer) in enumerate(
                zip(article["questions"], article["options"], article["answers"])):
            rows.append({"article": article["article"], "question": question, "options": options,
                         "answer": _LETTER_INDEX.get(answer, answer),
                         "id": f"{article['example_id']}/{number}"})
    return rows


def _examples(records, source, context_field, question_field, choices_field, label_field,
              id_field) -> ChoiceExamples:
    contexts, questions, choices, raw_labels = [], [], [], []
    for number, record in enumerate(records):
        where = f"{source}: example {number + 1}"
        contexts.append(str(record.get(context_field) or ""))
        questions.append(str(record.get(question_field) or ""))
        choices.append(_choice_texts(record, choices_field, where))
        if len(choices[-1]) != len(choices[0]):
            raise UserError(f"{where} has {len(choices[-1])} choices, the first has "
                            f"{len(choices[0])}; every example needs the same number")
        raw_labels.append(record.get(label_field))
    ids = [record.get(id_field, i) for i, record in enumerate(records)]
    missing = [label in _MISSING_LABELS for label in raw_labels]
    if all(missing):
        return ChoiceExamples(contexts, questions, choices, None, ids)
    if any(missing):
        raise UserError(f"{source}: example {missing.index(True) + 1} has no {label_field!r} "
                        "while others have one")
    labels = [_choice_index(label, options, f"{source}: example {number + 1}")
              for number, (label, options) in enumerate(zip(raw_labels, choices))]
    return ChoiceExamples(contexts, questions, choices, np.asarray(labels, np.int32), ids)


def _choice_texts(record: dict, choices_field, where: str) -> list[str]:
    fields = (choices_field,) if isinstance(choices_field, str) else tuple(choices_field)
    absent = [field for field in fields if field not in record]
    if absent:
        raise UserError(f"{where} has no {absent[0]!r} field (it has {', '.join(record)}); "
                        "choose the choices field(s)")
    if isinstance(choices_field, str):
        texts = record[choices_field]
        if not isinstance(texts, list):
            raise UserError(f"{where}: {choices_field!r} is not a list of choices")
    else:
        texts = [record[field] for field in fields]
    if len(texts) < 2:
        raise UserError(f"{where} has {len(texts)} choice(s); multiple choice needs two or more")
    return [str(text) for text in texts]


def _choice_index(raw, choices: list[str], where: str) -> int:
    label = raw
    if isinstance(raw, str):
        if raw in choices:
            return choices.index(raw)
        label = _LETTER_INDEX.get(raw, int(raw) if raw.isdecimal() else raw)
    if isinstance(label, int) and 0 <= label < len(choices):
        return label
    last_letter = string.ascii_uppercase[len(choices) - 1]
    raise UserError(f"{where}: label {raw!r} is not a choice: give its index "
                    f"(0-{len(choices) - 1}), its letter (A-{last_letter}) or its text")


# ------------------------------------------------------------------------------- encoding

_BLANK = re.compile(r"_+")


def with_choice(question: str, choice: str) -> str:
    """The second sentence: the question with its blank ("_") filled by the choice, or the
    question followed by the choice (RACE's and SWAG's preprocessing)."""
    if _BLANK.search(question):
        return _BLANK.sub(lambda _: choice, question)
    return f"{question} {choice}" if question else choice


def encode_choices(tokenizer: Tokenizer, examples: ChoiceExamples,
                   max_length: int) -> list[list[list[int]]]:
    """Ids per example per choice: `<s> context </s></s> question+choice </s>`, or
    `<s> question+choice </s>` without a context. Only the context is cut to fit max_length:
    cutting the other part could cut off the choice being scored."""
    encoded = []
    for number, (context, question, options) in enumerate(
            zip(examples.contexts, examples.questions, examples.choices)):
        context_ids = tokenizer.encode(context) if context else None
        rows = []
        for second_ids in tokenizer.encode_batch([with_choice(question, c) for c in options]):
            budget = max_length - (2 if context_ids is None else 4)
            if len(second_ids) > budget:
                raise UserError(f"example {examples.ids[number]!r}: its question and a choice "
                                f"take {len(second_ids)} tokens, more than max_length "
                                f"{max_length} leaves them; raise max_length")
            if context_ids is None:
                rows.append(tokenizer.with_specials(second_ids))
            else:
                kept = context_ids[:budget - len(second_ids)]
                rows.append(tokenizer.with_specials(kept, second_ids))
        encoded.append(rows)
    return encoded


def choice_batches(encoded: list[list[list[int]]], labels, batch_size: int, pad_id: int,
                   buckets: tuple[int, ...], order: np.ndarray | None = None,
                   drop_last: bool = False):
    """Fixed-size batches as rows.batches makes them, with input_ids and
    attention_mask [batch, num_choices, length]; weights, labels and index stay [batch]."""
    order = np.arange(len(encoded)) if order is None else order
    for rows, weights in batch_rows(order, batch_size, drop_last):
        seqs = [ids for i in rows for ids in encoded[i]]
        length = bucket_length(max(len(s) for s in seqs), buckets)
        ids, mask = pad_batch(seqs, length, pad_id)
        shape = (batch_size, len(encoded[rows[0]]), length)
        batch = {"input_ids": ids.reshape(shape), "attention_mask": mask.reshape(shape),
                 "weights": weights, "index": rows}
        if labels is not None:
            batch["labels"] = labels[rows]
        yield batch
