"""Evaluation metrics of the fine-tuning tasks, in numpy (tests check them against scikit-learn
and scipy)."""

from __future__ import annotations

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
