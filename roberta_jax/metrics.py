"""Evaluation metrics of the fine-tuning tasks, in numpy (tests check them against scikit-learn
and scipy, and SQuAD's against its official evaluation script's rules)."""

from __future__ import annotations

import collections
import re
import string

import numpy as np

from roberta_jax.errors import UserError


def accuracy(labels, predictions) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def f1_binary(labels, predictions, positive: int = 1) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    tp = np.sum((predictions == positive) & (labels == positive))
    fp = np.sum((predictions == positive) & (labels != positive))
    fn = np.sum((predictions != positive) & (labels == positive))
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def matthews_corrcoef(labels, predictions) -> float:
    """Multiclass MCC (Gorodkin's form, as scikit-learn computes it)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes = np.union1d(labels, predictions)
    confusion = np.array([[np.sum((labels == a) & (predictions == b)) for b in classes]
                          for a in classes], np.float64)
    t, p = confusion.sum(1), confusion.sum(0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denominator) if denominator else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denominator) if denominator else 0.0


def _ranks(x) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as scipy's rankdata."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return ranks


def spearman(x, y) -> float:
    return pearson(_ranks(x), _ranks(y))


METRICS = {"accuracy": accuracy, "f1": f1_binary, "mcc": matthews_corrcoef,
           "pearson": pearson, "spearman": spearman}


# ------------------------------------------------------------------- entities (NER) scores
# An entity counts as found only when its type and both ends match: conlleval's rule, which
# seqeval's default mode (what Hugging Face's examples report) follows too.

# BILOU's L/U and BMES's M are IOBES's E/S and I under other names.
_PREFIXES = {"B": "B", "I": "I", "M": "I", "E": "E", "L": "E", "S": "S", "U": "S"}


def _prefix_and_type(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, dash, kind = tag.partition("-")
    if not dash:
        return "I", tag  # a bare type: IO tagging
    if prefix not in _PREFIXES:
        raise UserError(f"tag {tag!r}: expected O or a B-, I-, E-, S- (or BILOU) prefix")
    return _PREFIXES[prefix], kind


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) of each entity, `end` exclusive. Reads IOB1 (CoNLL-2003's original
    tags, where I- may begin an entity and B- only splits two adjacent ones of one type), IOB2,
    IOBES and BILOU: an entity ends at O, at B-/S-, at a change of type and after E-/S-, and any
    other tag that is not O begins one when none is open."""
    spans, open_type, open_start = set(), None, 0
    for position, tag in enumerate(tags):
        prefix, kind = _prefix_and_type(tag)
        if open_type is not None and (prefix in ("O", "B", "S") or kind != open_type):
            spans.add((open_type, open_start, position))
            open_type = None
        if prefix != "O" and open_type is None:
            open_type, open_start = kind, position
        if prefix in ("E", "S"):
            spans.add((kind, open_start, position + 1))
            open_type = None
    if open_type is not None:
        spans.add((open_type, open_start, len(tags)))
    return spans


def entity_scores(true_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict:
    """Micro-averaged {"precision", "recall", "f1"} over the entities of all sentences (0 where
    a denominator is 0, as seqeval reports it)."""
    if len(true_tags) != len(predicted_tags) or any(
            len(t) != len(p) for t, p in zip(true_tags, predicted_tags)):
        raise ValueError("true and predicted tags differ in shape")
    true = {(i, *span) for i, tags in enumerate(true_tags) for span in entity_spans(tags)}
    predicted = {(i, *span) for i, tags in enumerate(predicted_tags)
                 for span in entity_spans(tags)}
    correct = len(true & predicted)
    precision = correct / len(predicted) if predicted else 0.0
    recall = correct / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ------------------------------------------------------------------ SQuAD answers' scores
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


def answer_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall (tokens counted with multiplicity)."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not wanted:  # "no answer" is all or nothing
        return float(predicted == wanted)
    shared = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(wanted)
    return 2 * precision * recall / (precision + recall)


def _golds(example) -> list[str]:
    # The official script drops gold answers that normalise to nothing.
    return [a for a in example.answers if normalize_answer(a)] or [""]


def _per_example(examples, predictions: dict[str, str]):
    missing = [e.id for e in examples if e.id not in predictions]
    if missing:
        raise UserError(f"predictions lack {len(missing)} of the {len(examples)} questions "
                        f"(first: {missing[0]!r}); predict every question before scoring")
    exact = [max(exact_match(predictions[e.id], g) for g in _golds(e)) for e in examples]
    overlap = [max(answer_f1(predictions[e.id], g) for g in _golds(e)) for e in examples]
    return exact, overlap


def squad_scores(examples, predictions: dict[str, str]) -> dict:
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


def best_null_threshold(examples, decoded: dict[str, dict]) -> tuple[float, float]:
    """(best F1 in percent, the null_threshold giving it): the v2 script's search over each
    question's null_score - best span score. Questions with equal differences switch together,
    so `task_kinds.decode_answers(..., version_2=True, null_threshold=threshold)` reproduces
    the F1."""
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
        silent = max(answer_f1("", g) for g in _golds(example))
        answered = max(answer_f1(span["text"], g) for g in _golds(example)) if span else silent
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
