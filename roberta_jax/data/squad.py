"""Extractive question answering (SQuAD v1.1 / v2.0) inputs: examples read from tfds, the
official json or jsonl, and windowed features made of them.

A context longer than the model's input is cut into overlapping windows, each laid out as
`<s> question </s></s> context-window </s>`. A window is trained to point at the answer only when
the whole answer lies inside it; otherwise (and for unanswerable questions) it points at `<s>`,
position 0, which doubles as the "no answer" score at decoding time (task_kinds.decode_answers).
The official scores are metrics.squad_scores.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from roberta_jax.data.rows import read_utf8
from roberta_jax.data.tokenizer import Tokenizer
from roberta_jax.errors import UserError

NO_ANSWER = 0  # the `<s>` position: the label and score slot for "no answer in this window"

# Hugging Face run_qa's defaults, which the SQuAD recipe follows: fine-tuning's config starts
# from them (tests/test_structure.py holds it to that), and `predict` uses them.
MAX_LENGTH = 384        # tokens per window
STRIDE = 128            # context tokens that consecutive windows share (run_qa's doc_stride)
MAX_QUERY_LENGTH = 64   # question tokens kept
N_BEST = 20             # candidate starts and ends considered per window when decoding
MAX_ANSWER_LENGTH = 30  # tokens in an answer at most
SPECIALS_AROUND_PAIR = 4  # <s> q </s></s> c </s>


@dataclasses.dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[str]          # gold answer texts; [] = unanswerable (v2)
    answer_starts: list[int]    # char offsets in context, parallel to answers


@dataclasses.dataclass
class QAFeatures:
    """One row per window."""
    input_ids: np.ndarray         # int32 [n, max_length], padded with pad_id
    attention_mask: np.ndarray    # int32 [n, max_length]
    start_positions: np.ndarray   # int32 [n]; NO_ANSWER when the answer is not wholly inside
    end_positions: np.ndarray     # int32 [n]
    example_index: np.ndarray     # int32 [n] -> index into the examples list
    # Per window, per position (max_length of them): the token's (start, end) characters in the
    # context; None for question, special and pad tokens, so decoding never answers with them.
    offsets: list[list[tuple[int, int] | None]]
    # Answerable examples whose answer text was not found in their context (labelled NO_ANSWER).
    unlocated_answers: int = 0

    def __len__(self) -> int:
        return len(self.example_index)


# ------------------------------------------------------------------------------------ reading

def read_squad(source: str, split: str = "train",
               tfds_data_dir: str | None = None) -> list[QAExample]:
    """Examples from `tfds:squad/v1.1` / `tfds:squad/v2.0` (tfds split names), the official SQuAD
    json, or jsonl records in Hugging Face datasets' layout (`answers: {text, answer_start}`)."""
    if source.startswith("tfds:"):
        examples = _tfds_examples(source[5:], split, tfds_data_dir)
    else:
        examples = _file_examples(pathlib.Path(source))
    if not examples:
        raise UserError(f"{source}: no questions in it")
    return examples


def _file_examples(path: pathlib.Path) -> list[QAExample]:
    text = read_utf8(path)
    if not text.strip():
        raise UserError(f"{path}: empty file; give SQuAD json or jsonl records")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # several lines of records: jsonl
    if isinstance(whole, dict) and "data" in whole:
        return _official_examples(whole["data"], path)
    if isinstance(whole, list) or (isinstance(whole, dict) and "question" not in whole):
        raise UserError(f"{path}: not SQuAD data: the official json has a top-level 'data' list, "
                        "jsonl has one {id, question, context, answers} record per line")
    return _jsonl_examples(text, path)


def _official_examples(data, path) -> list[QAExample]:
    if not isinstance(data, list):
        raise UserError(f"{path}: 'data' should be a list of articles")
    examples = []
    for a, article in enumerate(data):
        for p, paragraph in enumerate(_field(article, "paragraphs", f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", where)
            for q, qa in enumerate(_field(paragraph, "qas", where)):
                where_qa = f"{where}.qas[{q}]"
                texts, starts = _answer_lists(_field(qa, "answers", where_qa), where_qa)
                examples.append(_example(qa, context, texts, starts, where_qa))
    return examples


def _jsonl_examples(text: str, path) -> list[QAExample]:
    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg})") from None
        texts, starts = _answer_lists(_field(record, "answers", where), where)
        examples.append(_example(record, _field(record, "context", where), texts, starts, where))
    return examples


def _field(record, name: str, where: str):
    if not isinstance(record, dict) or name not in record:
        raise UserError(f"{where}: no {name!r} field")
    return record[name]


def _answer_lists(answers, where: str) -> tuple[list[str], list[int]]:
    """Official layout: [{text, answer_start}, ...]; datasets: {text: [..], answer_start: [..]}."""
    if isinstance(answers, dict):
        texts, starts = _field(answers, "text", where), _field(answers, "answer_start", where)
    elif isinstance(answers, list):
        texts = [_field(a, "text", f"{where}.answers") for a in answers]
        starts = [_field(a, "answer_start", f"{where}.answers") for a in answers]
    else:
        raise UserError(f"{where}: 'answers' should be a list or a {{text, answer_start}} dict")
    if len(texts) != len(starts):
        raise UserError(f"{where}: {len(texts)} answer texts but {len(starts)} answer_start values")
    try:
        return [str(t) for t in texts], [int(s) for s in starts]
    except (TypeError, ValueError):
        raise UserError(f"{where}: answer_start values should be whole numbers") from None


def _example(record, context, texts, starts, where) -> QAExample:
    if record.get("is_impossible"):
        texts, starts = [], []  # v2 keeps "plausible" answers elsewhere; the gold is no answer
    return QAExample(id=str(_field(record, "id", where)),
                     question=str(_field(record, "question", where)),
                     context=str(context), answers=texts, answer_starts=starts)


def _tfds_examples(name: str, split: str, data_dir: str | None) -> list[QAExample]:
    from roberta_jax.data.tfds_records import read_tfds
    examples = []
    for row in read_tfds(name, split, data_dir)[0]:
        answers = row["answers"]  # a Sequence feature: {"text": [str], "answer_start": [int]}
        record = {"id": row["id"], "question": row["question"],
                  "is_impossible": bool(row.get("is_impossible", False))}
        examples.append(_example(record, row["context"], list(answers["text"]),
                                 [int(s) for s in answers["answer_start"]], f"tfds:{name}"))
    return examples


# ----------------------------------------------------------------------------------- features

def make_features(tokenizer: Tokenizer, examples: list[QAExample], max_length: int = MAX_LENGTH,
                  stride: int = STRIDE, max_query_length: int = MAX_QUERY_LENGTH) -> QAFeatures:
    """Windows over each example's context. `stride` is how many context tokens consecutive
    windows share (Hugging Face run_qa's doc_stride), so each window starts `room - stride`
    tokens after the last, `room` being what the question leaves of `max_length`."""
    least_room = max_length - max_query_length - SPECIALS_AROUND_PAIR
    if stride < 0 or stride >= least_room:
        raise UserError(f"stride {stride} must be at least 0 and below the room left for the "
                        f"context, max_length - max_query_length - 4 = {least_room}; lower "
                        "stride or max_query_length, or raise max_length")
    rows, starts, ends, owners, offsets = [], [], [], [], []
    unlocated = 0
    encoded_contexts: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    for index, example in enumerate(examples):
        question = tokenizer.encode(example.question)[:max_query_length]
        if example.context not in encoded_contexts:  # SQuAD asks several questions per context
            encoded_contexts[example.context] = tokenizer.encode_with_offsets(example.context)
        context_ids, context_offsets = encoded_contexts[example.context]
        answer = _answer_tokens(example, context_offsets)
        unlocated += bool(example.answers) and answer is None
        room = max_length - len(question) - SPECIALS_AROUND_PAIR
        first_context = len(question) + 3  # after <s> question </s></s>
        for begin in _window_starts(len(context_ids), room, stride):
            end = min(begin + room, len(context_ids))
            rows.append(tokenizer.with_specials(question, context_ids[begin:end]))
            start_label = end_label = NO_ANSWER
            if answer is not None and begin <= answer[0] and answer[1] < end:
                start_label = first_context + answer[0] - begin
                end_label = first_context + answer[1] - begin
            starts.append(start_label)
            ends.append(end_label)
            owners.append(index)
            window = [None] * first_context + context_offsets[begin:end]
            offsets.append(window + [None] * (max_length - len(window)))
    input_ids, attention_mask = _pad(rows, max_length, tokenizer.pad_id)
    return QAFeatures(input_ids, attention_mask, np.asarray(starts, np.int32),
                      np.asarray(ends, np.int32), np.asarray(owners, np.int32), offsets, unlocated)


def _window_starts(n_tokens: int, room: int, stride: int) -> list[int]:
    """First context token of each window; one window even for an empty context."""
    starts = [0]
    while starts[-1] + room < n_tokens:
        starts.append(starts[-1] + room - stride)
    return starts


def _answer_tokens(example: QAExample, offsets) -> tuple[int, int] | None:
    """(first, last) context token of the first gold answer, or None (no answer, or its text is
    nowhere in the context). Trusts answer_start only when the text is really there."""
    if not example.answers:
        return None
    text = example.answers[0]
    start = example.answer_starts[0] if example.answer_starts else -1
    if example.context[start:start + len(text)] != text:
        start = example.context.find(text)
    if not text.strip() or start < 0:
        return None
    end = start + len(text)
    covering = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    return (covering[0], covering[-1]) if covering else None


def _pad(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    return ids, mask
