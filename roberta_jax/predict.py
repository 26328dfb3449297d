"""`roberta-jax predict --model DIR`: text from stdin or a jsonl file -> JSON lines.

A sequence-classification model gives {"label", "score", "scores"} per input (a regression model
{"score"}); a masked LM fills each `<mask>` with its top guesses. Inputs are one text per line
on stdin, or jsonl records with a text field (and optionally a pair field).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from roberta_jax.data.classification import bucket_length, read_rows
from roberta_jax.data.tokenizer import load_tokenizer, pad_batch
from roberta_jax.errors import UserError

BUCKETS = (32, 64, 128, 256, 512)


def read_inputs(path: str | None, text_field: str, pair_field: str | None):
    """(text, pair) inputs: lines of stdin, or the records of a jsonl / tsv / csv file."""
    if path is None:
        return [(line.rstrip("\n"), None) for line in sys.stdin if line.strip()]
    rows = read_rows(pathlib.Path(path))
    for field in filter(None, (text_field, pair_field)):
        if rows and field not in rows[0]:
            raise UserError(f"{path}: no {field!r} field (it has {', '.join(rows[0])})")
    return [(str(r[text_field]), str(r[pair_field]) if pair_field else None) for r in rows]


def predict(model_dir: str, inputs, batch_size: int = 32, top_k: int = 5, out=sys.stdout):
    import jax
    from roberta_jax.pretrained import from_pretrained
    tokenizer = load_tokenizer(model_dir)
    model, params = from_pretrained(model_dir)
    task = type(model).__name__
    if task not in ("RobertaForSequenceClassification", "RobertaForMaskedLM"):
        raise UserError(f"{model_dir}: predict handles sequence-classification and masked-LM "
                        f"models; this one is {task}")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"{model_dir}: the tokenizer has {tokenizer.vocab_size} ids but the "
                        f"model {model.config.vocab_size}; they do not belong together")
    apply = jax.jit(lambda ids, mask: model.apply({"params": params}, ids,
                                                  attention_mask=mask).logits)
    limit = model.config.max_sequence_length
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        encoded = [tokenizer(text, pair, max_length=limit) for text, pair in chunk]
        length = bucket_length(max(len(e) for e in encoded), BUCKETS + (limit,))
        ids, mask = pad_batch(encoded, min(length, limit), tokenizer.pad_id)
        logits = np.asarray(apply(ids, mask), np.float32)
        for row, (text, _) in enumerate(chunk):
            if task == "RobertaForMaskedLM":
                record = {"text": text, "masks": _fill(logits[row], ids[row], tokenizer, top_k)}
            elif model.config.num_labels == 1:
                record = {"text": text, "score": float(logits[row, 0])}
            else:
                probs = np.exp(logits[row] - logits[row].max())
                probs /= probs.sum()
                best = int(probs.argmax())
                record = {"text": text, "label": model.config.labels[best],
                          "score": float(probs[best]),
                          "scores": {name: float(p) for name, p in
                                     zip(model.config.labels, probs)}}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _fill(logits, ids, tokenizer, top_k):
    fills = []
    for position in np.flatnonzero(ids == tokenizer.mask_id):
        scores = logits[position].copy()
        scores[list(tokenizer.special_ids)] = -np.inf
        top = np.argsort(-scores)[:top_k]
        fills.append([tokenizer.decode([int(t)]).strip() or tokenizer.id_to_token(int(t))
                      for t in top])
    return fills
