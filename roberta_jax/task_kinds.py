"""What differs between fine-tuning tasks, behind one interface the training loop drives.

A kind reads a split, turns it into model inputs ("features"), batches them to fixed shapes,
defines the loss on the head's outputs, and turns the outputs of a whole split back into
predictions, official metrics and prediction files. Each kind also lays its features out as
packed rows (`feature_sequences`, `packed_labels`; see data/pack_examples.py), several
sequences to a row, and its loss takes either layout:

    classification   a label (or a score) per sentence or pair         GLUE, local tsv/jsonl
    tokens           a tag per word, on the word's first sub-token     CoNLL-2003 NER
    qa               an answer span in a passage, or none (v2)         SQuAD v1.1 / v2.0
    choice           the right one of N candidate answers              RACE, local jsonl
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib

import jax.numpy as jnp
import numpy as np

from roberta_jax import metrics as metric_fns
from roberta_jax.data import choices as choice_data
from roberta_jax.data import classification as cls_data
from roberta_jax.data import pack_examples as pack
from roberta_jax.data import rows as row_data
from roberta_jax.data import squad
from roberta_jax.data import tokens as token_data
from roberta_jax.data.rows import IGNORED_LABEL
from roberta_jax.errors import UserError
from roberta_jax.losses import cross_entropy


def _cross_entropy(logits, labels):
    """Per-row cross entropy; rows labelled IGNORED_LABEL give 0."""
    return jnp.where(labels == IGNORED_LABEL, 0.0, cross_entropy(logits, labels))


def _weighted_mean(values, weights):
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _slot_weights(placement, rows, slots):
    return pack.per_slot(np.ones(len(placement.row), np.float32), placement, rows, slots)


@dataclasses.dataclass
class Split:
    """One split of a task, read and encoded."""
    data: object          # what the kind's reader returned
    features: object      # what the kind's encoder returned
    size: int             # feature rows (a SQuAD example may give several windows)


# ============================================================================ classification

class Classification:
    head = "sequence-classification"
    bucketed = True  # padded batches are as long as their longest row's bucket
    pools = True        # the head reads one vector per sequence (at segment_starts when packed)
    per_token = False   # its outputs are one per sequence

    def __init__(self, task, config):
        self.task, self.config = task, config

    def read(self, split: str, label_names):
        source, within = self.task.where(split)
        return cls_data.read_examples(
            source, self.task.text_field, self.task.pair_field, self.task.label_field,
            label_names=label_names, regression=self.task.regression, split=within,
            tfds_data_dir=self.config.tfds_data_dir or None)

    def initial_labels(self):
        return list(self.task.labels) if self.task.labels else None

    def has_labels(self, data) -> bool:
        return data.labels is not None

    def num_labels(self, label_names) -> int | None:
        return 1 if self.task.regression else len(label_names)

    def encode(self, tokenizer, data, max_length: int, label_names=None) -> Split:
        encoded = cls_data.encode(tokenizer, data, max_length)
        return Split(data, encoded, len(encoded))

    def batches(self, split: Split, batch_size, pad_id, buckets, order=None, drop_last=False):
        yield from row_data.batches(split.features, split.data.labels, batch_size, pad_id,
                                    buckets, order, drop_last)

    def feature_sequences(self, split: Split, index) -> list[list[int]]:
        return [split.features[i] for i in index]

    def packed_labels(self, split: Split, index, placement, rows, slots, length) -> dict:
        out = {"weights": _slot_weights(placement, rows, slots)}
        if split.data.labels is not None:
            out["labels"] = pack.per_slot(split.data.labels[index], placement, rows, slots)
        return out

    def from_sequences(self, split: Split, outputs):
        return outputs

    def loss(self, output, batch):
        # logits [batch, labels], or [rows, slots, labels] packed; labels and weights alike.
        logits = output.logits.astype(jnp.float32)
        if self.task.regression:
            per_example = (logits[..., 0] - batch["labels"]) ** 2
        else:
            per_example = _cross_entropy(logits, batch["labels"])
        return _weighted_mean(per_example, batch["weights"])

    def outputs(self, output):
        return output.logits.astype(jnp.float32)

    def predictions(self, split: Split, logits):
        return logits[:, 0] if self.task.regression else logits.argmax(-1)

    def evaluate(self, split: Split, outputs, label_names) -> dict:
        predicted = self.predictions(split, outputs)
        return {name: metric_fns.METRICS[name](split.data.labels, predicted)
                for name in self.task.metrics}

    def write_predictions(self, path: pathlib.Path, split: Split, outputs, label_names):
        # GLUE's submission format: index <tab> label name (or score for STS-B).
        lines = ["index\tprediction"]
        for i, p in zip(split.data.ids, self.predictions(split, outputs)):
            lines.append(f"{i}\t{float(p):.3f}" if self.task.regression
                         else f"{i}\t{label_names[int(p)]}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ==================================================================================== tokens

@dataclasses.dataclass
class _TokenFeatures:
    ids: list[list[int]]
    labels: list[list[int]]
    word_index: list[list[int]]


class Tokens:
    head = "token-classification"
    bucketed = True
    pools = False
    per_token = True

    def __init__(self, task, config):
        self.task, self.config = task, config

    def read(self, split: str, label_names):
        source, within = self.task.where(split)
        if source.startswith("tfds:"):
            examples, names = token_data.read_tfds_tokens(
                source[5:], within, self.config.tfds_data_dir or None,
                words_field=self.task.text_field, tags_field=self.task.label_field)
        else:
            examples, names = token_data.read_conll(source, tag_names=label_names), None
        if label_names is not None:
            if examples.tags is not None:
                token_data.tag_ids(examples.tags, label_names)  # an unknown tag is an error
            return examples, label_names
        if names is None and examples.tags is not None:
            names = token_data.tag_vocabulary(examples.tags)
        return examples, names

    def initial_labels(self):
        return None

    def has_labels(self, data) -> bool:
        return data.tags is not None

    def num_labels(self, label_names) -> int:
        return len(label_names)

    def encode(self, tokenizer, data, max_length: int, label_names=None) -> Split:
        tag_ids = (token_data.tag_ids(data.tags, label_names) if data.tags is not None
                   else [None] * len(data.words))
        encoded = [token_data.encode_words(tokenizer, words, tags, max_length)
                   for words, tags in zip(data.words, tag_ids)]
        return Split(data, _TokenFeatures(*map(list, zip(*encoded))) if encoded
                     else _TokenFeatures([], [], []), len(encoded))

    def batches(self, split: Split, batch_size, pad_id, buckets, order=None, drop_last=False):
        labels = split.features.labels if split.data.tags is not None else None
        yield from token_data.token_batches(split.features.ids, labels, batch_size, pad_id,
                                            buckets, order, drop_last)

    def feature_sequences(self, split: Split, index) -> list[list[int]]:
        return [split.features.ids[i] for i in index]

    def packed_labels(self, split: Split, index, placement, rows, slots, length) -> dict:
        out = {"weights": np.ones(rows, np.float32)}  # padding is unlabelled already
        if split.data.tags is not None:
            out["labels"] = pack.per_token([split.features.labels[i] for i in index], placement,
                                           rows, length, IGNORED_LABEL)
        return out

    def from_sequences(self, split: Split, outputs):
        return outputs

    def loss(self, output, batch):
        # The mean over every labelled token in the batch, as transformers computes it.
        labelled = (batch["labels"] != IGNORED_LABEL) * batch["weights"][:, None]
        return jnp.sum(_cross_entropy(output.logits, batch["labels"]) * labelled) / jnp.maximum(
            jnp.sum(labelled), 1.0)

    def outputs(self, output):
        return output.logits.astype(jnp.float32)

    def tag_predictions(self, split: Split, outputs, label_names) -> list[list[str]]:
        outside = label_names.index(token_data.OUTSIDE) if token_data.OUTSIDE in label_names \
            else 0
        return [[label_names[t] for t in token_data.word_predictions(
                    outputs[n], split.features.word_index[n], len(words), outside)]
                for n, words in enumerate(split.data.words)]

    def evaluate(self, split: Split, outputs, label_names) -> dict:
        scores = metric_fns.entity_scores(split.data.tags,
                                          self.tag_predictions(split, outputs, label_names))
        return {name: scores[name] for name in self.task.metrics}

    def write_predictions(self, path: pathlib.Path, split: Split, outputs, label_names):
        # CoNLL layout: word and predicted tag per line, a blank line after each sentence.
        with path.open("w", encoding="utf-8") as f:
            for words, tags in zip(split.data.words,
                                   self.tag_predictions(split, outputs, label_names)):
                f.writelines(f"{w} {t}\n" for w, t in zip(words, tags))
                f.write("\n")


# ======================================================================================== qa

class SpanQA:
    head = "question-answering"
    bucketed = False  # windows are always max_length long
    pools = False
    per_token = True

    def __init__(self, task, config):
        self.task, self.config = task, config
        self.version_2 = "v2" in task.source

    def read(self, split: str, label_names):
        source, within = self.task.where(split)
        examples = squad.read_squad(source, within, self.config.tfds_data_dir or None)
        if any(not e.answers for e in examples) and split == "train":
            self.version_2 = True  # unanswerable questions: decode with a no-answer option
        return examples, None

    def initial_labels(self):
        return None

    def has_labels(self, data) -> bool:
        return any(e.answers for e in data)   # a file of questions only is nothing to score

    def num_labels(self, label_names) -> int:
        return 2  # a start and an end logit per token

    def encode(self, tokenizer, data, max_length: int, label_names=None) -> Split:
        features = squad.make_features(tokenizer, data, max_length, self.config.stride,
                                    self.config.max_query_length)
        return Split(data, features, len(features.example_index))

    def batches(self, split: Split, batch_size, pad_id, buckets, order=None, drop_last=False):
        # Windows are already max_length long; no bucketing, so outputs stack across batches.
        f = split.features
        order = np.arange(split.size) if order is None else order
        for rows, weights in row_data.batch_rows(order, batch_size, drop_last):
            yield {"input_ids": f.input_ids[rows], "attention_mask": f.attention_mask[rows],
                   "start_positions": f.start_positions[rows],
                   "end_positions": f.end_positions[rows], "weights": weights, "index": rows}

    def feature_sequences(self, split: Split, index) -> list[np.ndarray]:
        f = split.features
        return [f.input_ids[i, :int(f.attention_mask[i].sum())] for i in index]

    def packed_labels(self, split: Split, index, placement, rows, slots, length) -> dict:
        # Positions within the row: a window's labels (NO_ANSWER = its <s>) moved to its start.
        f = split.features
        return {"start_positions": pack.per_slot(f.start_positions[index] + placement.start,
                                                 placement, rows, slots),
                "end_positions": pack.per_slot(f.end_positions[index] + placement.start,
                                               placement, rows, slots),
                "weights": _slot_weights(placement, rows, slots)}

    def from_sequences(self, split: Split, outputs):
        return outputs

    def loss(self, output, batch):
        start, end = output.start_logits, output.end_logits
        if "segment_ids" in batch:
            # Packed: each window's softmax runs over its own tokens, [rows, slots, length].
            slots = batch["start_positions"].shape[-1]
            own = batch["segment_ids"][:, None, :] == jnp.arange(1, slots + 1)[None, :, None]
            start = jnp.where(own, start[:, None, :].astype(jnp.float32), -1e9)
            end = jnp.where(own, end[:, None, :].astype(jnp.float32), -1e9)
        per_example = (_cross_entropy(start, batch["start_positions"])
                       + _cross_entropy(end, batch["end_positions"])) / 2
        return _weighted_mean(per_example, batch["weights"])

    def outputs(self, output):
        return jnp.stack([output.start_logits, output.end_logits], -1).astype(jnp.float32)

    def answers(self, split: Split, outputs) -> dict:
        return decode_answers(split.data, split.features, outputs[..., 0], outputs[..., 1],
                         n_best=self.config.n_best, max_answer_length=self.config.max_answer_length,
                         version_2=self.version_2, null_threshold=self.config.null_threshold)

    def evaluate(self, split: Split, outputs, label_names) -> dict:
        decoded = self.answers(split, outputs)
        scores = metric_fns.squad_scores(split.data, {k: v["text"] for k, v in decoded.items()})
        scores = {k: v for k, v in scores.items() if not k.endswith("_total")}
        if self.version_2:
            scores["best_f1"], scores["best_f1_threshold"] = metric_fns.best_null_threshold(
                split.data, decoded)
        return scores

    def write_predictions(self, path: pathlib.Path, split: Split, outputs, label_names):
        # The official evaluation script's input: {question id: answer text}; for v2 also the
        # no-answer odds it uses to pick a threshold.
        decoded = self.answers(split, outputs)
        path.write_text(json.dumps({k: v["text"] for k, v in decoded.items()},
                                   ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        if self.version_2:
            odds = {k: v["null_score"] - v["score"] for k, v in decoded.items()}
            path.with_name(path.stem + "_null_odds.json").write_text(json.dumps(odds) + "\n")


def decode_answers(examples: list[squad.QAExample], features: squad.QAFeatures, start_logits,
                   end_logits, n_best: int = squad.N_BEST,
                   max_answer_length: int = squad.MAX_ANSWER_LENGTH, version_2: bool = False,
                   null_threshold: float = 0.0) -> dict[str, dict]:
    """SQuAD answers from the start / end logits of every window ([windows, max_length] each).
    Per example id: {"text", "score", "null_score", "nbest"}.

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
        null_score = min(float(start_logits[w, squad.NO_ANSWER] + end_logits[w, squad.NO_ANSWER])
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


# ==================================================================================== choice

class Choice:
    head = "multiple-choice"
    bucketed = True
    pools = True
    per_token = False

    def __init__(self, task, config):
        self.task, self.config = task, config

    def read(self, split: str, label_names):
        source, within = self.task.where(split)
        parts = [choice_data.read_choices(
            part if part.startswith("tfds:") or not source.startswith("tfds:") else f"tfds:{part}",
            within, self.config.tfds_data_dir or None) for part in source.split("+")]
        return _concatenate_choices(parts), None

    def initial_labels(self):
        return None

    def has_labels(self, data) -> bool:
        return data.labels is not None

    def num_labels(self, label_names) -> None:
        return None  # one score per choice, whatever the number of choices

    def encode(self, tokenizer, data, max_length: int, label_names=None) -> Split:
        encoded = choice_data.encode_choices(tokenizer, data, max_length)
        return Split(data, encoded, len(encoded))

    def batches(self, split: Split, batch_size, pad_id, buckets, order=None, drop_last=False):
        yield from choice_data.choice_batches(split.features, split.data.labels, batch_size,
                                              pad_id, buckets, order, drop_last)

    def feature_sequences(self, split: Split, index) -> list[list[int]]:
        # Every choice is a sequence of its own: example e's choice c is number e * C + c.
        return [ids for i in index for ids in split.features[i]]

    def packed_labels(self, split: Split, index, placement, rows, slots, length) -> dict:
        # Where each example's choices landed, as indices into the flattened [rows * slots]
        # scores, so that the loss can line them up [batch, choices] again.
        choices = len(split.features[index[0]])
        out = {"choice_slots": (placement.row * slots + placement.slot).reshape(
                   len(index), choices).astype(np.int32),
               "weights": np.ones(len(index), np.float32)}
        if split.data.labels is not None:
            out["labels"] = split.data.labels[index]
        return out

    def from_sequences(self, split: Split, outputs):
        counts = [len(choices) for choices in split.features]
        if len(set(counts)) <= 1:
            return outputs.reshape(split.size, -1)  # [examples, choices]
        # Examples with their own numbers of choices (`predict`'s inputs): a list of [choices].
        return np.split(outputs.reshape(-1), np.cumsum(counts)[:-1])

    def loss(self, output, batch):
        scores = output.logits
        if "choice_slots" in batch:
            scores = scores.reshape(-1)[batch["choice_slots"]]
        return _weighted_mean(_cross_entropy(scores, batch["labels"]), batch["weights"])

    def outputs(self, output):
        return output.logits.astype(jnp.float32)

    def evaluate(self, split: Split, outputs, label_names) -> dict:
        return {"accuracy": metric_fns.accuracy(split.data.labels, outputs.argmax(-1))}

    def write_predictions(self, path: pathlib.Path, split: Split, outputs, label_names):
        with path.open("w", encoding="utf-8") as f:
            for i, scores in zip(split.data.ids, outputs):
                f.write(json.dumps({"id": i, "prediction": int(scores.argmax()),
                                    "scores": [float(s) for s in scores]}) + "\n")


def _concatenate_choices(parts):
    if len(parts) == 1:
        return parts[0]
    labels = [p.labels for p in parts]
    return choice_data.ChoiceExamples(
        contexts=[c for p in parts for c in p.contexts],
        questions=[q for p in parts for q in p.questions],
        choices=[c for p in parts for c in p.choices],
        labels=None if any(x is None for x in labels) else np.concatenate(labels),
        ids=[i for p in parts for i in p.ids])


# tasks.KINDS (the names a Task may give as its kind) -> the class that handles it.
KIND_CLASSES = {"classification": Classification, "tokens": Tokens, "qa": SpanQA,
                "choice": Choice}


def for_task(task, config):
    return KIND_CLASSES[task.kind](task, config)


def for_head(head: str, max_length: int, regression: bool = False):
    """The kind that serves a model head outside fine-tuning (`predict`), for inputs at most
    `max_length` tokens long: a task with no data of its own, SQuAD's windows and decoding
    defaults (data/squad.py). A model too short for the default question length and stride
    gets a quarter of max_length for each (fine-tuning refuses such a stride instead)."""
    import ml_collections

    from roberta_jax.tasks import Task
    name = next(name for name, cls in KIND_CLASSES.items() if cls.head == head)
    query = min(squad.MAX_QUERY_LENGTH, max_length // 4)
    stride = squad.STRIDE
    if stride >= max_length - query - squad.SPECIALS_AROUND_PAIR:
        stride = max_length // 4
    config = ml_collections.ConfigDict(dict(
        tfds_data_dir="", stride=stride, max_query_length=query, n_best=squad.N_BEST,
        max_answer_length=squad.MAX_ANSWER_LENGTH, null_threshold=0.0))
    return KIND_CLASSES[name](Task(head, name, "", labels=() if regression else None), config)
