"""Extractive question answering (SQuAD v1.1 / v2.0): examples in, windowed features out, logits
back to answer text, and the official exact-match / F1 scores.

A context longer than the model's input is cut into overlapping windows, each laid out as
`<s> question </s></s> context-window </s>`. A window is trained to point at the answer only when
the whole answer lies inside it; otherwise (and for unanswerable questions) it points at `<s>`,
position 0, which doubles as the "no answer" score at decoding time.

Pure Python and numpy: the model hands over start / end logits, nothing here touches jax.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import re
import string

import numpy as np

from roberta_jax.data.tokenizer import Tokenizer
from roberta_jax.errors import UserError

NO_ANSWER = 0  # the `<s>` position: the label and score slot for "no answer in this window"
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
    from roberta_jax.data.rows import read_utf8
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

def make_features(tokenizer: Tokenizer, examples: list[QAExample], max_length: int = 384,
                  stride: int = 128, max_query_length: int = 64) -> QAFeatures:
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


# ----------------------------------------------------------------------------------- decoding

def decode(examples: list[QAExample], features: QAFeatures, start_logits, end_logits,
           n_best: int = 20, max_answer_length: int = 30, version_2: bool = False,
           null_threshold: float = 0.0) -> dict[str, dict]:
    """Per example id: {"text", "score", "null_score", "nbest"}.

    Candidates are the top `n_best` start and end positions among the context tokens of every
    window of the example, kept when end >= start and the span is at most `max_answer_length`
    tokens; score = start + end logit, equal texts from overlapping windows counted once. The
    null score is the lowest `<s>` score over the windows (the window most sure an answer is
    there). With `version_2`, "" is predicted when null_score - best score > null_threshold.
    The "score" of a "" prediction is the null score.
    """
    start_logits = np.asarray(start_logits, np.float32)
    end_logits = np.asarray(end_logits, np.float32)
    expected = features.input_ids.shape
    if start_logits.shape != expected or end_logits.shape != expected:
        raise UserError(f"QA logits have shapes {start_logits.shape} / {end_logits.shape}; the "
                        f"features need {expected} (one row per window, one logit per token)")
    if n_best < 1 or max_answer_length < 1:
        raise UserError("n_best and max_answer_length must be at least 1")
    windows_of = collections.defaultdict(list)
    for w, index in enumerate(features.example_index):
        windows_of[int(index)].append(w)
    decoded = {}
    for index, example in enumerate(examples):
        windows = windows_of[index]
        if not windows:
            raise UserError(f"example {example.id!r} has no windows in these features; decode "
                            "with the examples the features were made from")
        null_score = min(float(start_logits[w, NO_ANSWER] + end_logits[w, NO_ANSWER])
                         for w in windows)
        nbest = _nbest(example.context, features.offsets, start_logits, end_logits, windows,
                       n_best, max_answer_length)
        answer_null = not nbest or version_2 and null_score - nbest[0]["score"] > null_threshold
        decoded[example.id] = {
            "text": "" if answer_null else nbest[0]["text"],
            "score": null_score if answer_null else nbest[0]["score"],
            "null_score": null_score, "nbest": nbest}
    return decoded


def _nbest(context, offsets, start_logits, end_logits, windows, n_best, max_answer_length):
    candidates = []  # (score, window, start token, end token)
    for w in windows:
        in_context = np.array([o is not None for o in offsets[w]])
        # The n best among the context's tokens: what the model says at question, special or
        # padding tokens (which a packed row does not even compute) takes no candidate's place.
        top_starts = np.argsort(-np.where(in_context, start_logits[w], -np.inf),
                                kind="stable")[:n_best]
        top_ends = np.argsort(-np.where(in_context, end_logits[w], -np.inf),
                              kind="stable")[:n_best]
        s, e = top_starts[:, None], top_ends[None, :]
        valid = (in_context[s] & in_context[e] & (e >= s) & (e - s < max_answer_length))
        for i, j in zip(*np.nonzero(valid)):
            start, end = int(top_starts[i]), int(top_ends[j])
            candidates.append((float(start_logits[w, start] + end_logits[w, end]), w, start, end))
    candidates.sort(key=lambda c: -c[0])
    nbest, seen = [], set()
    for score, w, start, end in candidates:
        begin, finish = offsets[w][start][0], offsets[w][end][1]
        text = context[begin:finish]
        if text in seen:
            continue
        seen.add(text)
        nbest.append({"text": text, "start": begin, "end": finish,
                      "start_logit": float(start_logits[w, start]),
                      "end_logit": float(end_logits[w, end]), "score": score})
        if len(nbest) == n_best:
            break
    return nbest


# ------------------------------------------------------------------------------------ scoring
# The official SQuAD v1.1 / v2.0 evaluation: answers are compared after normalisation, each
# question scores its best match over the gold answers, and an unanswerable question's only gold
# answer is "".

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, without punctuation, articles (a, an, the) or extra white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall (tokens counted with multiplicity)."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not wanted:  # "no answer" is all or nothing
        return float(predicted == wanted)
    shared = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(wanted)
    return 2 * precision * recall / (precision + recall)


def _golds(example: QAExample) -> list[str]:
    # The official script drops gold answers that normalise to nothing.
    return [a for a in example.answers if normalize_answer(a)] or [""]


def _per_example(examples: list[QAExample], predictions: dict[str, str]):
    missing = [e.id for e in examples if e.id not in predictions]
    if missing:
        raise UserError(f"predictions lack {len(missing)} of the {len(examples)} questions "
                        f"(first: {missing[0]!r}); predict every question before scoring")
    exact = [max(exact_match(predictions[e.id], g) for g in _golds(e)) for e in examples]
    overlap = [max(f1(predictions[e.id], g) for g in _golds(e)) for e in examples]
    return exact, overlap


def evaluate(examples: list[QAExample], predictions: dict[str, str]) -> dict:
    """Official scores in percent: exact_match, f1 and total; with unanswerable questions also
    the HasAns_* / NoAns_* splits (a question is answerable when it has gold answers)."""
    if not examples:
        raise UserError("no questions to score")
    exact, overlap = _per_example(examples, predictions)

    def percent(values, keep):
        kept = [v for v, k in zip(values, keep) if k]
        return 100.0 * sum(kept) / len(kept) if kept else 0.0

    everyone = [True] * len(examples)
    result = {"exact_match": percent(exact, everyone), "f1": percent(overlap, everyone),
              "total": len(examples)}
    has_answer = [bool(e.answers) for e in examples]
    if not all(has_answer):
        no_answer = [not h for h in has_answer]
        result.update(HasAns_exact=percent(exact, has_answer),
                      HasAns_f1=percent(overlap, has_answer), HasAns_total=sum(has_answer),
                      NoAns_exact=percent(exact, no_answer), NoAns_f1=percent(overlap, no_answer),
                      NoAns_total=sum(no_answer))
    return result


def best_null_threshold(examples: list[QAExample], decoded: dict[str, dict]) -> tuple[float, float]:
    """(best F1 in percent, the null_threshold giving it): the v2 script's search over each
    question's null_score - best span score. Questions with equal differences switch together,
    so `decode(..., version_2=True, null_threshold=threshold)` reproduces the F1."""
    if not examples:
        raise UserError("no questions to tune the null threshold on")
    # Start from predicting "" everywhere (the threshold below every difference), then let the
    # questions answer with their best span one by one, in order of growing difference.
    margins, gains = {}, {}
    f1_sum = 0.0
    for example in examples:
        prediction = decoded[example.id]
        span = prediction["nbest"][0] if prediction["nbest"] else None
        margins[example.id] = prediction["null_score"] - span["score"] if span else float("inf")
        silent = max(f1("", g) for g in _golds(example))
        answered = max(f1(span["text"], g) for g in _golds(example)) if span else silent
        f1_sum += silent
        gains[example.id] = answered - silent
    order = sorted(examples, key=lambda e: margins[e.id])
    finite = [margins[e.id] for e in order if margins[e.id] != float("inf")]
    best_sum, best_threshold = f1_sum, (finite[0] - 1.0 if finite else 0.0)
    for k, example in enumerate(order):
        f1_sum += gains[example.id]
        margin = margins[example.id]
        tied_with_next = k + 1 < len(order) and margins[order[k + 1].id] == margin
        if not tied_with_next and f1_sum > best_sum:
            best_sum, best_threshold = f1_sum, margin
    return 100.0 * best_sum / len(examples), best_threshold
