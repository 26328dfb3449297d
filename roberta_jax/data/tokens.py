"""Token classification (NER) inputs: sentences as words with one tag each.

Words come from CoNLL-2003 style text, jsonl (`{"tokens": [...], "ner_tags": [...]}`) or tfds
(`conll2003`). RoBERTa reads sub-tokens while the task labels words, so each word is encoded on
its own with a leading space (as if it followed another word: Hugging Face's
`add_prefix_space=True`), only the first sub-token of a word carries its tag, and a word's
prediction is read back from that same sub-token.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from roberta_jax.data.rows import IGNORED_LABEL, batches, read_rows, read_utf8
from roberta_jax.data.tfds_records import read_tfds
from roberta_jax.data.tokenizer import Tokenizer
from roberta_jax.errors import UserError

OUTSIDE = "O"  # the tag of words outside every entity


@dataclasses.dataclass
class TokenExamples:
    words: list[list[str]]
    tags: list[list[str]] | None   # None when the data has no tags (prediction)


# ------------------------------------------------------------------------------------ reading

def read_conll(path, column: int = -1, tag_names: list[str] | None = None) -> TokenExamples:
    """CoNLL-2003 text (one `word ... tag` line per token, the tag in `column`; blank lines end
    sentences; `-DOCSTART-` lines are skipped), or `.jsonl` records with `tokens` and
    `ner_tags`. A text file with only words (one column everywhere) has no tags; numeric
    `ner_tags` need `tag_names` (the names in id order)."""
    path = pathlib.Path(path)
    if path.suffix in (".jsonl", ".json"):
        return _read_token_jsonl(path, tag_names)
    sentences, current = [], []
    for number, line in enumerate(read_utf8(path).splitlines(), 1):
        columns = line.split()
        if columns and columns[0] != "-DOCSTART-":
            current.append((number, columns))
        elif current:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    if not sentences:
        raise UserError(f"{path}: no sentences (CoNLL text has one 'word ... tag' line per "
                        "token and a blank line after each sentence)")
    words = [[columns[0] for _, columns in sentence] for sentence in sentences]
    if all(len(columns) == 1 for sentence in sentences for _, columns in sentence):
        return TokenExamples(words, None)
    tags = [[_tag_column(path, number, columns, column) for number, columns in sentence]
            for sentence in sentences]
    return TokenExamples(words, tags)


def _tag_column(path, number: int, columns: list[str], column: int) -> str:
    if len(columns) == 1:
        raise UserError(f"{path}:{number}: only one column ({columns[0]!r}); each line needs the "
                        "word and its tag, separated by spaces or tabs")
    index = column if column >= 0 else len(columns) + column
    if not 0 <= index < len(columns):
        raise UserError(f"{path}:{number}: no column {column} (the line has {len(columns)})")
    if index == 0:
        raise UserError(f"{path}:{number}: column {column} is the word itself; choose the column "
                        "that holds the tag")
    return columns[index]


def _read_token_jsonl(path: pathlib.Path, tag_names: list[str] | None) -> TokenExamples:
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: no sentences")
    words, tags = [], []
    has_tags = any("ner_tags" in row for row in rows)
    for number, row in enumerate(rows, 1):
        tokens = row.get("tokens")
        if not isinstance(tokens, list):
            raise UserError(f"{path}: record {number} has no 'tokens' list")
        words.append([str(token) for token in tokens])
        if has_tags:
            tags.append(_tag_strings(row.get("ner_tags"), len(tokens), tag_names,
                                     f"{path}: record {number}"))
    return TokenExamples(words, tags if has_tags else None)


def _tag_strings(raw, num_words: int, tag_names: list[str] | None, where: str) -> list[str]:
    if not isinstance(raw, list):
        raise UserError(f"{where}: no 'ner_tags' list (other records have one)")
    if len(raw) != num_words:
        raise UserError(f"{where}: {num_words} tokens but {len(raw)} tags")
    if all(isinstance(tag, str) for tag in raw):
        return raw
    if tag_names is None:
        raise UserError(f"{where}: the tags are numbers; give the tag names in id order "
                        "(for example O, B-PER, I-PER, ...)")
    if not all(isinstance(tag, int) and 0 <= tag < len(tag_names) for tag in raw):
        raise UserError(f"{where}: tags {raw} are not all ids in 0..{len(tag_names) - 1} "
                        f"(the {len(tag_names)} tag names)")
    return [tag_names[tag] for tag in raw]


def read_tfds_tokens(name: str, split: str, data_dir: str | None = None,
                     words_field: str = "tokens",
                     tags_field: str = "ner") -> tuple[TokenExamples, list[str]]:
    """-> (examples, tag names in id order) of a tfds set such as `conll2003` (whose `ner`
    feature is a sequence of ClassLabel; string tags work too)."""
    records, features = read_tfds(name, split, data_dir)
    if not records:
        raise UserError(f"tfds:{name}: split {split!r} has no examples")
    for field in (words_field, tags_field):
        if field not in records[0]:
            raise UserError(f"tfds:{name}: no {field!r} feature (it has "
                            f"{', '.join(records[0])}); choose the words / tags fields")
    names = getattr(getattr(features[tags_field], "feature", None), "names", None)
    words, tags = [], []
    for number, record in enumerate(records, 1):
        words.append(record[words_field])
        tags.append(_tag_strings(record[tags_field], len(record[words_field]), names,
                                 f"tfds:{name}: example {number}"))
    return TokenExamples(words, tags), names or tag_vocabulary(tags)


# ------------------------------------------------------------------------------- tag ids

def tag_vocabulary(tags: list[list[str]]) -> list[str]:
    """The tags seen, "O" first (id 0) and the others grouped by entity type."""
    seen = {tag for sentence in tags for tag in sentence} - {OUTSIDE}
    return [OUTSIDE] + sorted(seen, key=lambda tag: (tag.partition("-")[2], tag))


def tag_ids(tags: list[list[str]], names: list[str]) -> list[list[int]]:
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({tag for sentence in tags for tag in sentence} - set(index))
    if unknown:
        raise UserError(f"tag {unknown[0]!r} is not one of the {len(names)} tags the model knows "
                        f"({', '.join(names[:12])})")
    return [[index[tag] for tag in sentence] for sentence in tags]


# ------------------------------------------------------------------------------ encoding

def encode_words(tokenizer: Tokenizer, words: list[str], tag_ids: list[int] | None = None,
                 max_length: int = 512) -> tuple[list[int], list[int], list[int]]:
    """-> (ids, labels, word_index) of `<s> words </s>`: labels hold a word's tag id on its first
    sub-token and IGNORED_LABEL elsewhere; word_index holds the word's number there and -1
    elsewhere.
    Past max_length the sub-tokens are cut (a word whose first sub-token is cut is dropped)."""
    if max_length < 2:
        raise UserError("max_length is too small to hold the special tokens")
    if tag_ids is not None and len(tag_ids) != len(words):
        raise UserError(f"{len(words)} words but {len(tag_ids)} tags")
    ids, labels, word_index = [tokenizer.bos_id], [IGNORED_LABEL], [-1]
    pieces = tokenizer.encode_batch([" " + word for word in words])
    for number, word_ids in enumerate(pieces):
        for k, piece in enumerate(word_ids or [tokenizer.unk_id]):
            ids.append(piece)
            labels.append(tag_ids[number] if k == 0 and tag_ids is not None else IGNORED_LABEL)
            word_index.append(number if k == 0 else -1)
    del ids[max_length - 1:], labels[max_length - 1:], word_index[max_length - 1:]
    return ids + [tokenizer.eos_id], labels + [IGNORED_LABEL], word_index + [-1]


def word_predictions(token_logits: np.ndarray, word_index: list[int], num_words: int,
                     outside_id: int) -> list[int]:
    """Tag id per word, from the arg max at its first sub-token; words cut off by truncation are
    predicted `outside_id` (the "O" tag)."""
    best = np.asarray(token_logits).argmax(-1)
    predictions = [outside_id] * num_words
    for position, word in enumerate(word_index):
        if word >= 0:
            predictions[word] = int(best[position])
    return predictions


def token_batches(encoded: list[list[int]], labels: list[list[int]] | None, batch_size: int,
                  pad_id: int, buckets: tuple[int, ...], order: np.ndarray | None = None,
                  drop_last: bool = False):
    """Fixed-size batches as rows.batches makes them, with labels [batch, length]
    (IGNORED_LABEL on padding) in place of one label per row."""
    return batches(encoded, labels, batch_size, pad_id, buckets, order, drop_last,
                   label_pad=IGNORED_LABEL)
