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
(a plain line is the text; for token classification it is split into words at white space).
Inputs are packed several to a row (data/pack_examples.py), so short ones cost what their
tokens cost; the outputs are those of each input run alone.
A line that starts with `{` must be valid JSON: it is refused rather than taken as text.
The model, the input file and the output file may be local or on object storage (gs://).
Each head but the masked LM's is encoded and decoded by its fine-tuning kind (task_kinds.py);
SQuAD windows are 384 tokens sharing 128, as in fine-tuning (data/squad.py).
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np

from roberta_jax import fs
from roberta_jax.data import pack_examples as pack
from roberta_jax.data import squad
from roberta_jax.data.rows import read_rows
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.errors import UserError

BUCKETS = (32, 64, 128, 256, 512)


def read_inputs(path: str | None) -> list[dict]:
    """Records of a jsonl / tsv / csv file, or of stdin's lines (JSON objects or plain text)."""
    if path is not None:
        return read_rows(fs.as_path(path))
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


class Predictor:
    """A model loaded once, with its jitted forward pass over packed rows (several inputs to a
    row, kept apart by segment ids: no compute spent on padding): records in, one JSON-able
    dict per record out, whatever the head. Each head but the masked LM's is served by its
    fine-tuning kind (task_kinds.py): the same encoding, outputs and decoding as fine-tuning's
    evaluation, so that a setting such as SQuAD's stride lives in one place."""

    def __init__(self, model_dir: str, batch_size: int = 32):
        import jax

        from roberta_jax import task_kinds
        from roberta_jax.convert.hf import TOKENIZER_FILES
        from roberta_jax.pretrained import from_pretrained, task_of
        from roberta_jax.weights import tokenizer_source
        self.model, self.params = from_pretrained(model_dir)
        # A fine-tuning workdir's model is its median seed's best/: its tokenizer is there.
        self.tokenizer = load_tokenizer(fs.local_copy(tokenizer_source(model_dir),
                                                      TOKENIZER_FILES))
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise UserError(f"{model_dir}: the tokenizer has {self.tokenizer.vocab_size} ids but "
                            f"the model {self.model.config.vocab_size}; they do not belong "
                            "together")
        self.head = task_of(self.model)
        if self.head == "base":
            raise UserError(f"{model_dir}: a bare encoder has no head to predict with; fine-tune "
                            "it or give a masked-LM / classifier / QA / multiple-choice model")
        if batch_size < 1:
            raise UserError(f"batch size {batch_size}: it must be at least 1")
        self.batch_size = batch_size
        self.limit = self.model.config.max_sequence_length
        # QA windows are SQuAD's length (or the model's, if shorter); other inputs the model's.
        self.max_length = (min(self.limit, squad.MAX_LENGTH) if self.head == "question-answering"
                           else self.limit)
        self.kind = None if self.head == "masked-lm" else task_kinds.for_head(
            self.head, self.max_length, regression=self.model.config.num_labels == 1)
        self._forward = jax.jit(self._outputs, static_argnames="top_k")
        self._layout = None  # (short row length, tokens per step): see run

    def _outputs(self, params, rows, top_k=0):
        """What the host needs of the head's outputs, computed on the device."""
        import jax
        import jax.numpy as jnp
        inputs = {k: rows[k] for k in ("segment_ids", "segment_starts", "masked_positions")
                  if k in rows}
        out = self.model.apply({"params": params}, rows["input_ids"], **inputs)
        if self.kind is not None:
            return self.kind.outputs(out)
        # The masked LM: the top guesses at each <mask>, specials excluded.
        specials = jnp.zeros(out.logits.shape[-1], bool).at[
            jnp.asarray(sorted(self.tokenizer.special_ids))].set(True)
        return jax.lax.top_k(jnp.where(specials, -jnp.inf, out.logits.astype(jnp.float32)),
                             top_k)[1]

    def run(self, sequences: list, per_token: bool, masks: bool = False, top_k: int = 0,
            width: int | None = None):
        """Per-sequence outputs of the model on token sequences, packed into rows of a few
        lengths (pack.inference_groups): per token ([n, width (default: the longest), ...]) or
        one per sequence ([n, ...]); with `masks`, the top_k ids at each sequence's <mask>
        tokens (a list)."""
        lengths = np.asarray([len(s) for s in sequences])
        longest = int(lengths.max())
        if longest > self.limit:
            raise UserError(f"an input of {longest} tokens is longer than the model's "
                            f"{self.limit}")
        # QA windows are max_length long: rows of exactly that, not the next bucket.
        buckets = tuple(b for b in BUCKETS if b < self.max_length) + (self.max_length,)
        if self._layout is None:  # set by the first chunk and kept: the same compiled steps
            self._layout = (pack.short_row_length(lengths, buckets),
                            self.batch_size * max(1, int(lengths.mean())))  # batch_size inputs
        outputs = [None] * len(sequences)
        for group in pack.inference_groups(lengths, buckets, *self._layout):
            results = self._run_group([sequences[i] for i in group.members], group, per_token,
                                      masks, top_k, width or longest)
            for i, result in zip(group.members, results):
                outputs[i] = result
        return outputs if masks else np.stack(outputs)

    def _run_group(self, sequences, group, per_token, masks, top_k, width):
        placement = group.placement
        rows = pack.rows_of(sequences, placement, group.rows, group.row_length,
                            pack.power_of_two(pack.slots_needed(placement)), self.tokenizer.pad_id)
        if self.kind is None or not self.kind.pools:
            del rows["segment_starts"]
        if masks:
            found = [np.flatnonzero(r == self.tokenizer.mask_id) for r in rows["input_ids"]]
            most = pack.power_of_two(max(1, max(len(f) for f in found)))
            rows["masked_positions"] = np.stack([np.pad(f, (0, most - len(f)))
                                                 for f in found]).astype(np.int32)
        results = np.concatenate([
            np.asarray(self._forward(self.params, {k: v[first:first + group.step]
                                                   for k, v in rows.items()}, top_k=top_k))
            for first in range(0, group.rows, group.step)])
        if masks:  # a sequence's masks are those of its row that lie within it
            return [results[r, np.flatnonzero((found[r] >= s) & (found[r] < s + n))]
                    for r, s, n in zip(placement.row, placement.start, placement.length)]
        if per_token:
            return pack.unpack_tokens(results, placement, width)
        return pack.unpack_slots(results, placement)

    def _through_kind(self, data, label_names=None):
        """The kind's encoding of `data`, and its outputs for every feature, as fine-tuning's
        evaluation hands them to the kind's decoding."""
        split = self.kind.encode(self.tokenizer, data, self.max_length, label_names)
        sequences = self.kind.feature_sequences(split, np.arange(split.size))
        outputs = self.run(sequences, per_token=self.kind.per_token, width=self.max_length)
        return split, self.kind.from_sequences(split, outputs)

    def __call__(self, records: list[dict], text_field: str = "text",
                 pair_field: str | None = None, top_k: int = 5, allow_no_answer: bool = False):
        """One output dict per record, in order (records are numbered from 1 in errors)."""
        writers = {"sequence-classification": self._classify, "masked-lm": self._fill_masks,
                   "token-classification": self._tag, "question-answering": self._answer,
                   "multiple-choice": self._choose}
        # Packed a few hundred records at a time: output flows, memory stays bounded.
        chunk_size = 16 * self.batch_size
        for start in range(0, len(records), chunk_size):
            chunk = list(enumerate(records[start:start + chunk_size], start + 1))
            yield from writers[self.head](chunk, text_field=text_field, pair_field=pair_field,
                                          top_k=top_k, allow_no_answer=allow_no_answer)

    def _classify(self, chunk, text_field, pair_field, **_):
        from roberta_jax.data import classification as cls_data
        config = self.model.config
        texts = [str(_field(r, text_field, n)) for n, r in chunk]
        pairs = [str(_field(r, pair_field, n)) for n, r in chunk] if pair_field else None
        split, logits = self._through_kind(
            cls_data.Examples(texts, pairs, None, [n for n, _ in chunk]))
        for text, row, best in zip(texts, logits, self.kind.predictions(split, logits)):
            if config.num_labels == 1:
                yield {"text": text, "score": float(best)}
                continue
            probs = _softmax(row)
            yield {"text": text, "label": config.labels[int(best)],
                   "score": float(probs[int(best)]),
                   "scores": {name: float(p) for name, p in zip(config.labels, probs)}}

    def _fill_masks(self, chunk, text_field, top_k, **_):
        tokenizer = self.tokenizer
        texts = [str(_field(r, text_field, n)) for n, r in chunk]
        guesses = self.run([tokenizer(t, max_length=self.limit) for t in texts], per_token=False,
                           masks=True, top_k=min(top_k, self.model.config.vocab_size))
        for text, per_mask in zip(texts, guesses):
            fills = [[tokenizer.decode([int(t)]).strip() or tokenizer.id_to_token(int(t))
                      for t in ids] for ids in per_mask]
            yield {"text": text, "masks": fills}

    def _tag(self, chunk, text_field, **_):
        from roberta_jax.data import tokens as token_data
        from roberta_jax.metrics import entity_spans
        sentences = []
        for n, record in chunk:
            words = record.get("tokens")
            sentences.append([str(w) for w in words] if isinstance(words, list)
                             else str(_field(record, text_field, n)).split())
        labels = list(self.model.config.labels)
        split, logits = self._through_kind(token_data.TokenExamples(sentences, None), labels)
        for words, tags in zip(sentences, self.kind.tag_predictions(split, logits, labels)):
            entities = [{"type": kind, "text": " ".join(words[s:e]), "start": s, "end": e}
                        for kind, s, e in sorted(entity_spans(tags), key=lambda x: x[1])]
            yield {"tokens": words, "tags": tags, "entities": entities}

    def _answer(self, chunk, allow_no_answer, **_):
        examples = [squad.QAExample(str(r.get("id", n)), str(_field(r, "question", n)),
                                    str(_field(r, "context", n)), [], []) for n, r in chunk]
        # Only a model trained on SQuAD v2 has learnt to say "no answer" through the <s> logits.
        self.kind.version_2 = allow_no_answer
        split, logits = self._through_kind(examples)
        decoded = self.kind.answers(split, logits)
        for example in examples:
            best = decoded[example.id]
            span = best["nbest"][0] if best["text"] and best["nbest"] else None
            yield {"id": example.id, "question": example.question, "answer": best["text"],
                   "score": best["score"], "start": span["start"] if span else None,
                   "end": span["end"] if span else None}

    def _choose(self, chunk, **_):
        from roberta_jax.data import choices as choice_data
        examples = choice_data.ChoiceExamples(
            contexts=[str(r.get("context", "")) for _, r in chunk],
            questions=[str(r.get("question", "")) for _, r in chunk],
            choices=[[str(c) for c in _field(r, "choices", n)] for n, r in chunk],
            labels=None, ids=[r.get("id", n) for n, r in chunk])
        _, scores = self._through_kind(examples)  # each input may have its own number
        for i, options in enumerate(examples.choices):
            probs = _softmax(np.asarray(scores[i]))
            best = int(probs.argmax())
            yield {"id": examples.ids[i], "prediction": best, "choice": options[best],
                   "scores": [float(p) for p in probs]}


def predict(model_dir: str, records: list[dict], text_field: str = "text",
            pair_field: str | None = None, batch_size: int = 32, top_k: int = 5,
            allow_no_answer: bool = False, out=None, output: str | None = None) -> None:
    """One JSON line per record, to `out` (default: sys.stdout as it is at the call), or to the
    file `output` (written once complete)."""
    out = sys.stdout if out is None else out
    if output is not None:
        lines = io.StringIO()
        predict(model_dir, records, text_field, pair_field, batch_size, top_k, allow_no_answer,
                out=lines)
        target = fs.as_path(output)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(lines.getvalue(), encoding="utf-8")
        return
    predictor = Predictor(model_dir, batch_size)
    for record in predictor(records, text_field=text_field, pair_field=pair_field, top_k=top_k,
                            allow_no_answer=allow_no_answer):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
