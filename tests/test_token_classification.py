"""Token classification (NER) data and entity metrics: words in, first-sub-token labels out,
predictions back per word, entities scored as conlleval / seqeval score them."""

import random

import numpy as np
import pytest
from conftest import small_bpe_tokenizer, tfds_records

from roberta_jax import metrics
from roberta_jax.data.rows import IGNORED_LABEL
from roberta_jax.data.tokenizer import Tokenizer
from roberta_jax.data.tokens import (
    TokenExamples,
    encode_words,
    read_conll,
    read_tfds_tokens,
    tag_ids,
    tag_vocabulary,
    token_batches,
    word_predictions,
)
from roberta_jax.errors import UserError

CORPUS = ["EU rejects German call to boycott British lamb .",
          "Peter Blackburn lives in Brussels and the cat sat on the mat .",
          "The European Commission said on Thursday it disagreed with German advice ."]
WORDS = ["EU", "rejects", "Zyzzyvaxq", "call", "Brussels", "Qwfpgjluy"]
TAGS = ["B-ORG", "O", "B-MISC", "O", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return small_bpe_tokenizer(CORPUS, tmp_path_factory.mktemp("bpe"))


def word_pieces(tokenizer, words):
    return [tokenizer.encode(" " + word) for word in words]


# ------------------------------------------------------------------------------ encoding

def test_only_the_first_sub_token_of_each_word_carries_its_tag(tokenizer):
    names = tag_vocabulary([TAGS])
    ids_of_tags = tag_ids([TAGS], names)[0]
    ids, labels, word_index = encode_words(tokenizer, WORDS, ids_of_tags, max_length=128)
    pieces = word_pieces(tokenizer, WORDS)
    assert max(len(p) for p in pieces) > 1, "the test needs words split into several pieces"
    assert ids == [tokenizer.bos_id, *[i for p in pieces for i in p], tokenizer.eos_id]
    position = 1
    for number, word_ids in enumerate(pieces):
        assert labels[position] == ids_of_tags[number]
        assert word_index[position] == number
        continuation = slice(position + 1, position + len(word_ids))
        assert set(labels[continuation]) <= {IGNORED_LABEL}
        assert set(word_index[continuation]) <= {-1}
        position += len(word_ids)
    assert labels[0] == labels[-1] == IGNORED_LABEL and word_index[0] == word_index[-1] == -1
    assert sum(label != IGNORED_LABEL for label in labels) == len(WORDS)


def test_without_tags_every_label_is_ignored(tokenizer):
    ids, labels, word_index = encode_words(tokenizer, WORDS)
    assert set(labels) == {IGNORED_LABEL}
    assert [w for w in word_index if w >= 0] == list(range(len(WORDS)))


@pytest.mark.parametrize("max_length", [2, 3, 4, 5, 6, 9])
def test_truncation_cuts_sub_tokens_and_drops_the_words_whose_first_one_is_cut(tokenizer,
                                                                                 max_length):
    pieces = word_pieces(tokenizer, WORDS)
    content = [i for p in pieces for i in p]
    assert len(content) > 9
    ids, labels, word_index = encode_words(tokenizer, WORDS, list(range(len(WORDS))), max_length)
    assert len(ids) == len(labels) == len(word_index) == max_length
    assert ids == [tokenizer.bos_id, *content[:max_length - 2], tokenizer.eos_id]
    starts = np.cumsum([0] + [len(p) for p in pieces])[:-1]
    kept = [n for n, start in enumerate(starts) if start < max_length - 2]
    assert [w for w in word_index if w >= 0] == kept
    assert [label for label in labels if label != IGNORED_LABEL] == kept


def test_max_length_must_hold_the_special_tokens(tokenizer):
    with pytest.raises(UserError, match="max_length"):
        encode_words(tokenizer, WORDS, max_length=1)


def test_tags_and_words_must_pair_up(tokenizer):
    with pytest.raises(UserError, match="6 words but 2 tags"):
        encode_words(tokenizer, WORDS, [0, 1])


def test_a_word_without_ids_becomes_unk():
    class Blank(Tokenizer):
        bos_id, pad_id, eos_id, unk_id, mask_id = 0, 1, 2, 3, 4

        def encode(self, text):
            return [] if text.strip() == "\u200b" else [7] * len(text.split()[0])

    ids, labels, word_index = encode_words(Blank(), ["ab", "\u200b", "c"], [5, 6, 7])
    assert ids == [0, 7, 7, 3, 7, 2]
    assert labels == [IGNORED_LABEL, 5, IGNORED_LABEL, 6, 7, IGNORED_LABEL]
    assert word_index == [-1, 0, -1, 1, 2, -1]


@pytest.mark.parametrize("max_length", [4, 128])
def test_word_predictions_read_back_each_words_tag(tokenizer, max_length):
    tag_of_word = [3, 0, 5, 0, 1, 2]
    ids, labels, word_index = encode_words(tokenizer, WORDS, tag_of_word, max_length)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(max_length + 3, 6))  # padded past the sequence
    for position, label in enumerate(labels):
        # continuation sub-tokens point elsewhere: only the first sub-token may count
        logits[position, label if label != IGNORED_LABEL else 4] += 10
    predicted = word_predictions(logits, word_index, len(WORDS), outside_id=0)
    kept = max(word_index) + 1
    assert predicted == tag_of_word[:kept] + [0] * (len(WORDS) - kept)


def test_tag_vocabulary_puts_outside_first_and_unknown_tags_are_refused():
    names = tag_vocabulary([["B-PER", "O", "I-LOC"], ["B-LOC", "I-PER"]])
    assert names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert tag_ids([["O", "B-PER"]], names) == [[0, 3]]
    with pytest.raises(UserError, match="'B-ORG' is not one of the 5 tags"):
        tag_ids([["B-ORG"]], names)


def test_token_batches_pad_labels_with_ignored(tokenizer):
    encoded = [encode_words(tokenizer, WORDS[:n], list(range(n))) for n in (1, 2, 6)]
    assert [len(e[0]) for e in encoded] == [4, 8, 36]
    batches = list(token_batches([e[0] for e in encoded], [e[1] for e in encoded], 2,
                                 tokenizer.pad_id, (8, 64)))
    assert [b["input_ids"].shape for b in batches] == [(2, 8), (2, 64)]
    first, last = batches
    assert first["labels"].shape == (2, 8) and (first["labels"][0, 4:] == IGNORED_LABEL).all()
    assert list(first["labels"][1]) == encoded[1][1]
    assert list(last["weights"]) == [1, 0] and list(last["index"]) == [2, 2]
    assert (last["labels"][0, last["attention_mask"][0] == 0] == IGNORED_LABEL).all()


# ----------------------------------------------------------------------- entity metrics

def test_entity_scores_hand_worked():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]           # 3 entities
    predicted = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC"]]          # 2, one right
    scores = metrics.entity_scores(true, predicted)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(0.4)
    assert metrics.entity_scores([["O"]], [["O"]]) == {"precision": 0, "recall": 0, "f1": 0}


def test_a_partly_matching_entity_counts_as_wrong():
    scores = metrics.entity_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert scores == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


@pytest.mark.parametrize("tags, spans", [
    # IOB1: I- begins an entity, B- only splits two adjacent ones of one type
    (["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"],
     {("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 5, 6)}),
    # IOB2
    (["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"],
     {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6)}),
    # an I- of another type ends the open entity and begins its own
    (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),
    # IOBES and BILOU
    (["B-PER", "E-PER", "S-LOC", "U-LOC", "B-ORG", "I-ORG", "L-ORG", "I-ORG"],
     {("PER", 0, 2), ("LOC", 2, 3), ("LOC", 3, 4), ("ORG", 4, 7), ("ORG", 7, 8)}),
    ([], set()),
])
def test_entity_spans_follow_conlleval(tags, spans):
    assert metrics.entity_spans(tags) == spans


def test_an_unknown_tag_prefix_is_refused():
    with pytest.raises(UserError, match="X-PER"):
        metrics.entity_spans(["X-PER"])


@pytest.mark.parametrize("prefixes", ["BI", "BIES"])
def test_entity_metrics_agree_with_seqeval(prefixes):
    pytest.importorskip("seqeval")
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.metrics.sequence_labeling import get_entities
    rng = random.Random(len(prefixes))
    pool = ["O", "O"] + [f"{p}-{kind}" for p in prefixes for kind in ("PER", "LOC")]

    def sentences(n):
        return [[rng.choice(pool) for _ in range(rng.randint(1, 10))] for _ in range(n)]

    for tags in sentences(400):
        expected = {(kind, start, end + 1) for kind, start, end in get_entities(tags)}
        assert metrics.entity_spans(tags) == expected, tags
    for _ in range(40):
        true = sentences(8)
        predicted = [[rng.choice(pool) if rng.random() < 0.3 else tag for tag in sentence]
                     for sentence in true]
        ours = metrics.entity_scores(true, predicted)
        assert ours["precision"] == pytest.approx(precision_score(true, predicted))
        assert ours["recall"] == pytest.approx(recall_score(true, predicted))
        assert ours["f1"] == pytest.approx(f1_score(true, predicted))


# ---------------------------------------------------------------------------- reading

CONLL = ("-DOCSTART- -X- -X- O\n"
         "\n"
         "EU NNP B-NP I-ORG\n"
         "rejects VBZ B-VP O\n"
         "German\tJJ\tB-NP\tI-MISC\n"
         "\n"
         "\n"
         "-DOCSTART- -X- -X- O\n"
         "Peter NNP B-NP I-PER\n"
         "Blackburn NNP I-NP I-PER")  # no blank line at the end


def test_read_conll_splits_sentences_and_skips_docstart(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL, encoding="utf-8")
    examples = read_conll(path)
    assert examples.words == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert examples.tags == [["I-ORG", "O", "I-MISC"], ["I-PER", "I-PER"]]
    assert read_conll(path, column=1).tags == [["NNP", "VBZ", "JJ"], ["NNP", "NNP"]]


def test_a_file_of_words_alone_has_no_tags(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("EU\nrejects\n\nPeter\n", encoding="utf-8")
    assert read_conll(path) == TokenExamples([["EU", "rejects"], ["Peter"]], None)


@pytest.mark.parametrize("content, column, message", [
    (b"EU B-ORG\nrejects\n", -1, r"train.txt:2: only one column \('rejects'\)"),
    (b"EU B-ORG\n\n\xff O\n", -1, r"train.txt:3: not UTF-8"),
    (b"-DOCSTART- O\n\n\n", -1, "train.txt: no sentences"),
    (b"", -1, "train.txt: no sentences"),
    (b"EU NNP B-ORG\n", 5, r"train.txt:1: no column 5 \(the line has 3\)"),
    (b"EU NNP B-ORG\n", -3, "train.txt:1: column -3 is the word itself"),
])
def test_bad_conll_files_name_the_file_and_line(tmp_path, content, column, message):
    path = tmp_path / "train.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_conll(path, column=column)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(UserError, match="nothing.txt: no such file"):
        read_conll(tmp_path / "nothing.txt")


def test_read_jsonl_tags_as_strings_or_ids_with_names(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}\n\n'
                    '{"tokens": ["Peter"], "ner_tags": [1]}\n', encoding="utf-8")
    examples = read_conll(path, tag_names=["O", "B-PER"])
    assert examples.tags == [["B-ORG", "O"], ["B-PER"]]
    with pytest.raises(UserError, match="record 2: the tags are numbers; give the tag names"):
        read_conll(path)
    with pytest.raises(UserError, match=r"record 2: tags \[1\] are not all ids in 0..0"):
        read_conll(path, tag_names=["O"])
    path.write_text('{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG"]}\n', encoding="utf-8")
    with pytest.raises(UserError, match="record 1: 2 tokens but 1 tags"):
        read_conll(path)
    path.write_text('{"tokens": ["EU"]}\n', encoding="utf-8")
    assert read_conll(path) == TokenExamples([["EU"]], None)


# ------------------------------------------------------------------------------- tfds

def test_read_tfds_conll2003_names_tags_by_its_class_labels():
    tfds = pytest.importorskip("tensorflow_datasets")
    examples = [{"tokens": ["EU", "rejects", "German"], "ner": [3, 0, 7], "pos": [22, 42, 16],
                 "chunks": [11, 21, 11]},
                {"tokens": ["Peter"], "ner": [1], "pos": [22], "chunks": [11]}]
    with tfds.testing.mock_data(as_dataset_fn=tfds_records(examples)):
        read, names = read_tfds_tokens("conll2003", "train")
    assert names == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC",
                     "I-MISC"]
    assert read == TokenExamples([["EU", "rejects", "German"], ["Peter"]],
                                 [["B-ORG", "O", "B-MISC"], ["B-PER"]])
    with tfds.testing.mock_data(as_dataset_fn=tfds_records(examples)):
        with pytest.raises(UserError, match="no 'ner_tags' feature"):
            read_tfds_tokens("conll2003", "train", tags_field="ner_tags")
