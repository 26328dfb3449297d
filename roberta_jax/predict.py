"""`roberta-jax predict --model DIR`: inputs from stdin or a file -> one JSON line per input.

What comes out depends on the model's head:

    sequence classification   {"label", "score", "scores"}  ({"score"} for a regressor)
    token classification      {"tokens", "tags", "entities": [{"type", "text", "start", "end"}]}
                              (start / end index the tokens, end exclusive)
    question answering        {"answer", "score", "start", "end"} (characters of the context;
                              answer "" when a SQuAD v2 model finds none)
    multiple choice           {"prediction", "choice", "scores"}
    masked LM                 {"masks": the top guesses for each <mask>}

Inputs: jsonl / tsv / csv records, or stdin lines that are either JSON objects or plain text
(a plain line is the text; for token classification it is split into words at white space). A
line that starts with `{` must be valid JSON: it is refused rather than taken as text.
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


def read_inputs(path: str | None) -> list[dict]:
    """Records of a jsonl / tsv / csv file, or of stdin's lines (JSON objects or plain text)."""
    if path is not None:
        return read_rows(pathlib.Path(path))
    records = []
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if line.lstrip().startswith("{"):  # meant as a JSON object: guessing would mislead
                raise UserError(f"stdin line {number}: starts like a JSON object but is not "
                                f"valid JSON ({e.msg} at column {e.colno})") from None
            record = None
        records.append(record if isinstance(record, dict) else {"text": line.rstrip("\n")})
    return records


def _field(record: dict, name: str, number: int):
    if name not in record:
        raise UserError(f"input {number}: no {name!r} field (it has {', '.join(record) or 'none'})")
    return record[name]


def predict(model_dir: str, records: list[dict], text_field: str = "text",
            pair_field: str | None = None, batch_size: int = 32, top_k: int = 5,
            allow_no_answer: bool = False, out=sys.stdout) -> None:
    import jax
    from roberta_jax.pretrained import from_pretrained, task_of
    tokenizer = load_tokenizer(model_dir)
    model, params = from_pretrained(model_dir)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"{model_dir}: the tokenizer has {tokenizer.vocab_size} ids but the "
                        f"model {model.config.vocab_size}; they do not belong together")
    head = task_of(model)
    if head == "base":
        raise UserError(f"{model_dir}: a bare encoder has no head to predict with; fine-tune it "
                        "or give a masked-LM / classifier / QA / multiple-choice model")
    apply = jax.jit(lambda ids, mask: model.apply({"params": params}, ids, attention_mask=mask))
    limit = model.config.max_sequence_length
    writers = {"sequence-classification": _classify, "masked-lm": _fill_masks,
               "token-classification": _tag, "question-answering": _answer,
               "multiple-choice": _choose}
    for start in range(0, len(records), batch_size):
        chunk = list(enumerate(records[start:start + batch_size], start + 1))
        options = dict(text_field=text_field, pair_field=pair_field, top_k=top_k,
                       allow_no_answer=allow_no_answer)
        for record in writers[head](apply, model.config, tokenizer, chunk, limit, **options):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _run(apply, sequences, limit, pad_id):
    length = min(bucket_length(max(len(s) for s in sequences), BUCKETS + (limit,)), limit)
    ids, mask = pad_batch(sequences, length, pad_id)
    return ids, apply(ids, mask)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _classify(apply, config, tokenizer, chunk, limit, text_field, pair_field, top_k,
              allow_no_answer):
    texts = [(str(_field(r, text_field, n)), str(_field(r, pair_field, n)) if pair_field
              else None) for n, r in chunk]
    _, output = _run(apply, [tokenizer(t, p, max_length=limit) for t, p in texts], limit,
                     tokenizer.pad_id)
    logits = np.asarray(output.logits, np.float32)
    for (text, _), row in zip(texts, logits):
        if config.num_labels == 1:
            yield {"text": text, "score": float(row[0])}
            continue
        probs = _softmax(row)
        best = int(probs.argmax())
        yield {"text": text, "label": config.labels[best], "score": float(probs[best]),
               "scores": {name: float(p) for name, p in zip(config.labels, probs)}}


def _fill_masks(apply, config, tokenizer, chunk, limit, text_field, pair_field, top_k,
                allow_no_answer):
    texts = [str(_field(r, text_field, n)) for n, r in chunk]
    ids, output = _run(apply, [tokenizer(t, max_length=limit) for t in texts], limit,
                       tokenizer.pad_id)
    logits = np.asarray(output.logits, np.float32)
    for text, row_ids, row in zip(texts, ids, logits):
        fills = []
        for position in np.flatnonzero(row_ids == tokenizer.mask_id):
            scores = row[position].copy()
            scores[list(tokenizer.special_ids)] = -np.inf
            fills.append([tokenizer.decode([int(t)]).strip() or tokenizer.id_to_token(int(t))
                          for t in np.argsort(-scores)[:top_k]])
        yield {"text": text, "masks": fills}


def _tag(apply, config, tokenizer, chunk, limit, text_field, pair_field, top_k,
         allow_no_answer):
    from roberta_jax.data import tokens as token_data
    from roberta_jax.metrics import entity_spans
    sentences = []
    for n, record in chunk:
        words = record.get("tokens")
        sentences.append([str(w) for w in words] if isinstance(words, list)
                         else str(_field(record, text_field, n)).split())
    encoded = [token_data.encode_words(tokenizer, words, None, limit) for words in sentences]
    _, output = _run(apply, [ids for ids, _, _ in encoded], limit, tokenizer.pad_id)
    logits = np.asarray(output.logits, np.float32)
    labels = list(config.labels)
    outside = labels.index(token_data.OUTSIDE) if token_data.OUTSIDE in labels else 0
    for words, (_, _, word_index), row in zip(sentences, encoded, logits):
        tags = [labels[t] for t in token_data.word_predictions(row, word_index, len(words),
                                                                outside)]
        entities = [{"type": kind, "text": " ".join(words[s:e]), "start": s, "end": e}
                    for kind, s, e in sorted(entity_spans(tags), key=lambda x: x[1])]
        yield {"tokens": words, "tags": tags, "entities": entities}


def _answer(apply, config, tokenizer, chunk, limit, text_field, pair_field, top_k,
            allow_no_answer):
    from roberta_jax import qa
    examples = [qa.QAExample(str(r.get("id", n)), str(_field(r, "question", n)),
                             str(_field(r, "context", n)), [], []) for n, r in chunk]
    length = min(limit, 384)
    features = qa.make_features(tokenizer, examples, max_length=length,
                                stride=min(128, length // 4), max_query_length=min(64, length // 4))
    starts, ends = [], []
    for first in range(0, len(features.example_index), 32):
        rows = slice(first, first + 32)
        output = apply(features.input_ids[rows], features.attention_mask[rows])
        starts.append(np.asarray(output.start_logits, np.float32))
        ends.append(np.asarray(output.end_logits, np.float32))
    # Only a model trained on SQuAD v2 has learnt to say "no answer" through the <s> logits.
    decoded = qa.decode(examples, features, np.concatenate(starts), np.concatenate(ends),
                        version_2=allow_no_answer)
    for example in examples:
        best = decoded[example.id]
        span = best["nbest"][0] if best["text"] and best["nbest"] else None
        yield {"id": example.id, "question": example.question, "answer": best["text"],
               "score": best["score"], "start": span["start"] if span else None,
               "end": span["end"] if span else None}


def _choose(apply, config, tokenizer, chunk, limit, text_field, pair_field, top_k,
            allow_no_answer):
    from roberta_jax.data import choices as choice_data
    examples = choice_data.ChoiceExamples(
        contexts=[str(r.get("context", "")) for _, r in chunk],
        questions=[str(r.get("question", "")) for _, r in chunk],
        choices=[[str(c) for c in _field(r, "choices", n)] for n, r in chunk],
        labels=None, ids=[r.get("id", n) for n, r in chunk])
    for number, choices in zip((n for n, _ in chunk), examples.choices):
        if len(choices) != len(examples.choices[0]):
            raise UserError(f"input {number}: {len(choices)} choices, but input "
                            f"{chunk[0][0]} has {len(examples.choices[0])}; give each batch "
                            "the same number (or --batch-size 1)")
    batch = next(choice_data.choice_batches(choice_data.encode_choices(tokenizer, examples, limit),
                                            None, len(chunk), tokenizer.pad_id,
                                            BUCKETS + (limit,)))
    scores = np.asarray(apply(batch["input_ids"], batch["attention_mask"]).logits, np.float32)
    for i, row in enumerate(scores):
        probs = _softmax(row)
        best = int(probs.argmax())
        yield {"id": examples.ids[i], "prediction": best, "choice": examples.choices[i][best],
               "scores": [float(p) for p in probs]}
