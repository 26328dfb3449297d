"""Extractive QA: SQuAD reading, windowed features whose labels point at the answer, span decoding
that recovers it, and the official SQuAD v1.1 / v2.0 scores, checked against hand-worked numbers."""

import json
import re

import numpy as np
import pytest

from roberta_jax import metrics
from roberta_jax.data import squad
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.errors import UserError
from roberta_jax.task_kinds import decode_answers

CONTEXT = (
    "The red fox lives in a quiet forest near the river. Every morning it walks along the bank "
    "and looks for small fish, beetles and berries. Farmers in the valley say the fox is older "
    "than any of their dogs, and children leave apples by the old stone bridge for it. In winter "
    "the river freezes and the fox crosses to the northern hills, where it sleeps in a hollow oak "
    "until the snow melts and the first green leaves return to the forest."
)
CORPUS = [CONTEXT, "Where does the fox live? What does it eat? Who leaves apples for it?",
          "Naïve café owners serve crème brûlée in Zürich. 日本語 🤗"] * 30


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, show_progress=False,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    directory = tmp_path_factory.mktemp("bpe")
    trainer.save_model(str(directory))  # vocab.json + merges.txt
    return load_tokenizer(directory)


def _words(text):
    return [(m.group(), m.start()) for m in re.finditer(r"[A-Za-z]+", text)]


def _answer_examples():
    """One question per answer of 1-3 words, starting at every fourth word of CONTEXT."""
    words = _words(CONTEXT)
    examples = []
    for i in range(0, len(words) - 3, 4):
        n = 1 + i % 3
        start = words[i][1]
        text = CONTEXT[start:words[i + n - 1][1] + len(words[i + n - 1][0])]
        examples.append(squad.QAExample(f"q{i}", f"What comes at word {i}?", CONTEXT, [text],
                                        [start]))
    return examples


# ------------------------------------------------------------------------------ tokenizer offsets

def test_bpe_offsets_map_every_token_back_to_the_characters_it_spells(tokenizer):
    text = "Naïve café — 日本語 🤗  résumé\tend"
    ids, offsets = tokenizer.encode_with_offsets(text)
    assert len(ids) == len(offsets)
    # Byte-level BPE may split a character into several byte tokens, and a token may end in the
    # middle of the next character: each token claims every character one of its bytes belongs
    # to. Tokens whose claims overlap form a group, and each group decodes to exactly the
    # characters it claims (white space trimmed).
    groups = []  # [start, end, ids]
    for i, (start, end) in zip(ids, offsets):
        assert 0 <= start < end <= len(text)
        if groups and start < groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], end)
            groups[-1][2].append(i)
        else:
            groups.append([start, end, [i]])
    pieces = [tokenizer.decode(group) for _, _, group in groups]
    assert "".join(pieces) == text
    for (start, end, _), piece in zip(groups, pieces):
        assert text[start:end] == piece.strip() or not piece.strip()
    assert any(len(group) > 1 for _, _, group in groups)  # the hard case did come up
    assert [s for s, _, _ in groups] == sorted(s for s, _, _ in groups)
    covered = {c for s, e, _ in groups for c in range(s, e)}
    assert covered >= {c for c, ch in enumerate(text) if not ch.isspace()}


# ------------------------------------------------------------------------------------- features

def _context_windows(features, w):
    return [o for o in features.offsets[w] if o is not None]


def test_windows_overlap_by_exactly_stride_and_cover_the_context(tokenizer):
    max_length, stride, max_query = 40, 6, 5
    long_question = "What does the fox do every morning along the river bank near the forest?"
    example = squad.QAExample("q", long_question, CONTEXT, [], [])
    features = squad.make_features(tokenizer, [example], max_length, stride, max_query)
    question = tokenizer.encode(long_question)[:max_query]
    assert len(question) == max_query  # the question really was cut
    _, full = tokenizer.encode_with_offsets(CONTEXT)
    assert len(set(full)) == len(full)  # ASCII context: offsets identify tokens
    assert len(features) >= 4
    spans = []  # [first, last + 1) context token of each window
    for w in range(len(features)):
        ids = features.input_ids[w]
        real = int(features.attention_mask[w].sum())
        mask = features.attention_mask[w]
        assert mask[:real].all() and not mask[real:].any()
        assert (ids[real:] == tokenizer.pad_id).all()
        head = [tokenizer.bos_id, *question, tokenizer.eos_id, tokenizer.eos_id]
        assert list(ids[:len(head)]) == head and ids[real - 1] == tokenizer.eos_id
        window = _context_windows(features, w)
        first = full.index(window[0])
        assert full[first:first + len(window)] == window  # a contiguous piece of the context
        assert len(window) == real - len(head) - 1  # context tokens are the ones with offsets
        spans.append((first, first + len(window)))
    assert spans[0][0] == 0 and spans[-1][1] == len(full)
    for (_, end), (next_start, _) in zip(spans, spans[1:]):
        assert end - next_start == stride
    assert all(features.attention_mask[w].all() for w in range(len(features) - 1))  # no room wasted
    assert (features.example_index == 0).all()


def test_labels_point_at_the_answer_only_in_windows_holding_all_of_it(tokenizer):
    examples = _answer_examples()
    features = squad.make_features(tokenizer, examples, max_length=40, stride=8,
                                   max_query_length=10)
    assert features.unlocated_answers == 0
    labelled, partial = set(), 0
    for w, index in enumerate(features.example_index):
        example = examples[index]
        a_start = example.answer_starts[0]
        a_end = a_start + len(example.answers[0])
        window = _context_windows(features, w)
        holds_all = window[0][0] <= a_start and a_end <= window[-1][1]
        overlaps = window[0][0] < a_end and a_start < window[-1][1]
        start, end = int(features.start_positions[w]), int(features.end_positions[w])
        if holds_all:
            offsets = features.offsets[w]
            assert CONTEXT[offsets[start][0]:offsets[end][1]] == example.answers[0]
            labelled.add(int(index))
        else:
            assert start == end == 0
            partial += overlaps
    assert labelled == set(range(len(examples)))
    assert partial > 0  # some answer straddled a window edge, and was labelled "not here"


def test_decoding_logits_that_peak_at_the_labels_gives_back_the_gold_answers(tokenizer):
    examples = _answer_examples() + [squad.QAExample("none", "Who owns the fox?", CONTEXT, [], [])]
    features = squad.make_features(tokenizer, examples, max_length=40, stride=8,
                                   max_query_length=10)
    start_logits = np.zeros(features.input_ids.shape, np.float32)
    end_logits = np.zeros(features.input_ids.shape, np.float32)
    rows = np.arange(len(features))
    start_logits[rows, features.start_positions] = 10.0
    end_logits[rows, features.end_positions] = 10.0
    decoded = decode_answers(examples, features, start_logits, end_logits, version_2=True)
    predictions = {e.id: decoded[e.id]["text"] for e in examples}
    assert predictions == {e.id: (e.answers[0] if e.answers else "") for e in examples}
    assert metrics.squad_scores(examples, predictions)["exact_match"] == 100.0


def test_an_answer_start_that_misses_falls_back_to_the_text_or_to_no_answer(tokenizer):
    moved = squad.QAExample("moved", "Where?", CONTEXT, ["stone bridge"], [3])
    absent = squad.QAExample("absent", "Where?", CONTEXT, ["golden tower"], [3])
    features = squad.make_features(tokenizer, [moved, absent], max_length=128, stride=16,
                                max_query_length=8)
    assert features.unlocated_answers == 1
    offsets = features.offsets[0]
    s, e = features.start_positions[0], features.end_positions[0]
    assert CONTEXT[offsets[s][0]:offsets[e][1]] == "stone bridge"
    assert not features.start_positions[features.example_index == 1].any()
    assert not features.end_positions[features.example_index == 1].any()


def test_an_empty_context_still_gets_one_window(tokenizer):
    features = squad.make_features(tokenizer, [squad.QAExample("e", "Why?", "", [], [])], 16, 4, 4)
    assert len(features) == 1 and features.start_positions[0] == 0
    assert decode_answers([squad.QAExample("e", "Why?", "", [], [])], features,
                     np.zeros((1, 16)), np.zeros((1, 16)))["e"]["text"] == ""


def test_a_stride_that_leaves_no_progress_is_refused(tokenizer):
    example = squad.QAExample("q", "Where?", CONTEXT, [], [])
    squad.make_features(tokenizer, [example], max_length=40, stride=27, max_query_length=8)
    with pytest.raises(UserError, match="stride 28 .* = 28"):
        squad.make_features(tokenizer, [example], max_length=40, stride=28, max_query_length=8)


# ------------------------------------------------------------------------- decoding, by hand

WORDS = "alpha beta gamma delta epsilon zeta eta theta"
SPANS = [(m.start(), m.end()) for m in re.finditer(r"\S+", WORDS)]
LENGTH = 9  # <s> q </s></s> five context words </s>: context at positions 3-7


def _hand_features(windows):
    """windows: (example index, first word) -> five context words at positions 3..7."""
    offsets = [[None] * 3 + SPANS[first:first + 5] + [None] for _, first in windows]
    n = len(windows)
    return squad.QAFeatures(np.zeros((n, LENGTH), np.int32), np.ones((n, LENGTH), np.int32),
                         np.zeros(n, np.int32), np.zeros(n, np.int32),
                         np.asarray([i for i, _ in windows], np.int32), offsets)


def _logits(n, **peaks):
    """{"s0_4": 2.0} sets start logit 2.0 at window 0, position 4."""
    start, end = np.zeros((n, LENGTH), np.float32), np.zeros((n, LENGTH), np.float32)
    for key, value in peaks.items():
        w, position = map(int, key[1:].split("_"))
        (start if key[0] == "s" else end)[w, position] = value
    return start, end


EXAMPLE = [squad.QAExample("x", "which?", WORDS, ["zeta eta"], [SPANS[5][0]])]


def test_the_best_span_may_come_from_the_second_of_two_overlapping_windows():
    features = _hand_features([(0, 0), (0, 3)])  # words 0-4 and 3-7: delta, epsilon shared
    # window 0: "beta" scores 2 + 2 = 4; window 1: "zeta eta" (positions 5, 6) scores 3 + 3 = 6.
    start, end = _logits(2, s0_4=2.0, e0_4=2.0, s1_5=3.0, e1_6=3.0)
    result = decode_answers(EXAMPLE, features, start, end, n_best=5)["x"]
    assert result["text"] == "zeta eta" and result["score"] == 6.0
    nbest = result["nbest"]
    assert [c["text"] for c in nbest[:2]] == ["zeta eta", "beta"]
    assert nbest[0] == {"text": "zeta eta", "start": SPANS[5][0], "end": SPANS[6][1],
                        "start_logit": 3.0, "end_logit": 3.0, "score": 6.0}
    assert WORDS[nbest[0]["start"]:nbest[0]["end"]] == "zeta eta"
    assert len(nbest) == 5 and len({c["text"] for c in nbest}) == 5
    assert [c["score"] for c in nbest] == sorted((c["score"] for c in nbest), reverse=True)


def test_a_span_seen_by_two_windows_is_listed_once_with_its_best_score():
    features = _hand_features([(0, 0), (0, 3)])
    # "delta" is position 6 of window 0 and position 3 of window 1: scores 4 and 3.
    start, end = _logits(2, s0_6=2.0, e0_6=2.0, s1_3=1.5, e1_3=1.5)
    nbest = decode_answers(EXAMPLE, features, start, end)["x"]["nbest"]
    assert (nbest[0]["text"], nbest[0]["score"]) == ("delta", 4.0)
    assert [c["text"] for c in nbest].count("delta") == 1


def test_a_span_longer_than_max_answer_length_is_rejected():
    features = _hand_features([(0, 0)])
    # alpha..epsilon (positions 3-7, five tokens) scores 5 + 5 = 10; alpha..beta scores 5 + 1.
    start, end = _logits(1, s0_3=5.0, e0_7=5.0, e0_4=1.0)
    assert decode_answers(EXAMPLE, features, start, end, max_answer_length=5)["x"]["text"] == \
        "alpha beta gamma delta epsilon"
    assert decode_answers(EXAMPLE, features, start, end, max_answer_length=4)["x"]["text"] == \
        "alpha beta"


def test_spans_touching_question_special_or_padding_tokens_are_rejected():
    features = _hand_features([(0, 0)])
    # Big logits at the question (1), <s> (0) and the closing </s> (8); "gamma" only 1 + 1.
    start, end = _logits(1, s0_0=9.0, e0_0=9.0, s0_1=9.0, e0_1=9.0, s0_8=9.0, e0_8=9.0,
                         s0_5=1.0, e0_5=1.0)
    result = decode_answers(EXAMPLE, features, start, end)["x"]
    assert result["text"] == "gamma" and result["score"] == 2.0
    assert all(c["text"] in WORDS for c in result["nbest"])


def test_version_2_answers_nothing_when_the_null_score_wins_by_more_than_the_threshold():
    features = _hand_features([(0, 0), (0, 3)])
    # Null scores per window: 2 + 2 = 4 and 1 + 1 = 2; the null score is the lower, 2.
    # Best span "gamma" 1.5 + 1.5 = 3 in window 0, so null - best = -1.
    start, end = _logits(2, s0_0=2.0, e0_0=2.0, s1_0=1.0, e1_0=1.0, s0_5=1.5, e0_5=1.5)
    for threshold, text in ((-1.5, ""), (-0.5, "gamma")):
        result = decode_answers(EXAMPLE, features, start, end, version_2=True,
                           null_threshold=threshold)["x"]
        assert result["text"] == text and result["null_score"] == 2.0
        assert result["score"] == (2.0 if text == "" else 3.0)
    assert decode_answers(EXAMPLE, features, start, end,
                          null_threshold=-1.5)["x"]["text"] == "gamma"


def test_decode_refuses_logits_of_the_wrong_shape():
    features = _hand_features([(0, 0)])
    with pytest.raises(UserError, match="logits"):
        decode_answers(EXAMPLE, features, np.zeros((2, LENGTH)), np.zeros((2, LENGTH)))


# ---------------------------------------------------------------------------------- scoring

def test_normalization_follows_the_official_script():
    assert metrics.normalize_answer("The  Quick, brown-fox!") == "quick brownfox"
    # whole words only
    assert metrics.normalize_answer("Banana an apple a day") == "banana apple day"


@pytest.mark.parametrize("prediction, gold, em, f1", [
    ("the Eiffel Tower", "Eiffel tower!", 1.0, 1.0),
    # "big red dog barked" vs "red dog": 2 shared; precision 2/4, recall 2/2 -> 2*.5*1/1.5 = 2/3.
    ("the big red dog barked", "a red dog", 0.0, 2 / 3),
    # shared tokens count once per gold occurrence: 1 shared; precision 1/3, recall 1 -> 1/2.
    ("dog dog dog", "dog", 0.0, 0.5),
    ("", "", 1.0, 1.0),
    ("The", "", 1.0, 1.0),  # both normalise to nothing
    ("", "Paris", 0.0, 0.0),
    ("Paris", "", 0.0, 0.0),
    ("London", "Paris", 0.0, 0.0),
])
def test_exact_match_and_f1_on_hand_worked_pairs(prediction, gold, em, f1):
    assert metrics.exact_match(prediction, gold) == em
    assert metrics.answer_f1(prediction, gold) == pytest.approx(f1)


def _ex(id, answers):
    return squad.QAExample(id, "?", "context", answers, [0] * len(answers))


V2_SET = [_ex("a", ["Denver Broncos", "the Broncos"]), _ex("b", ["1990"]), _ex("c", []),
          _ex("d", [])]


def test_v2_scores_split_into_answerable_and_unanswerable_questions():
    predictions = {"a": "Broncos", "b": "in 1990", "c": "", "d": "Paris"}
    # a: "broncos" equals the normalised "the Broncos": EM 1, F1 1.
    # b: "in 1990" vs "1990": EM 0; precision 1/2, recall 1 -> F1 2/3.
    # c: unanswerable, predicted "": EM 1, F1 1.   d: unanswerable, predicted "Paris": 0, 0.
    scores = metrics.squad_scores(V2_SET, predictions)
    expected = {"exact_match": 50.0, "f1": 100 * (1 + 2 / 3 + 1) / 4, "total": 4,
                "HasAns_exact": 50.0, "HasAns_f1": 100 * (1 + 2 / 3) / 2, "HasAns_total": 2,
                "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2}
    assert scores == pytest.approx(expected)


def test_v1_scores_take_the_best_gold_answer_and_have_no_splits():
    scores = metrics.squad_scores(V2_SET[:2], {"a": "Denver", "b": "1990"})
    # a: "denver" vs "denver broncos": precision 1, recall 1/2 -> 2/3 (vs "broncos": 0).
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 100 * (2 / 3 + 1) / 2, "total": 2})


def test_gold_answers_that_normalise_to_nothing_are_dropped_as_the_official_script_does():
    # Gold "The" is dropped, leaving "Paris": an empty prediction scores 0, not 100.
    assert metrics.squad_scores([_ex("e", ["The", "Paris"])], {"e": ""})["f1"] == 0.0


def test_scoring_without_a_prediction_for_every_question_is_refused():
    with pytest.raises(UserError, match="lack 1 of the 4"):
        metrics.squad_scores(V2_SET, {"a": "", "b": "", "c": ""})


def _decoded(null_score, best_text, best_score):
    return {"text": best_text, "score": best_score, "null_score": null_score,
            "nbest": [{"text": best_text, "start_logit": best_score / 2,
                       "end_logit": best_score / 2, "score": best_score}]}


def test_best_null_threshold_is_the_official_search_and_reproduces_its_f1():
    # null - best differences: a -2 (right answer), c 0.5 (span "x"), b 1 (wrong), d 3 (span "y").
    decoded = {"a": _decoded(0.0, "Broncos", 2.0), "b": _decoded(1.0, "1980", 0.0),
               "c": _decoded(1.5, "x", 1.0), "d": _decoded(4.0, "y", 1.0)}
    # All silent: c and d right -> 2. Let a answer: 3 (threshold -2). Then c: 2, b: 2, d: 1.
    best_f1, threshold = metrics.best_null_threshold(V2_SET, decoded)
    assert (best_f1, threshold) == (75.0, -2.0)
    predictions = {k: "" if v["null_score"] - v["nbest"][0]["score"] > threshold
                   else v["nbest"][0]["text"] for k, v in decoded.items()}
    assert metrics.squad_scores(V2_SET, predictions)["f1"] == best_f1


def test_best_null_threshold_switches_tied_questions_together():
    # a (right) and c (unanswerable, would say "x") tie at difference 0: together they gain
    # nothing, so the best is all silent, 50%, at a threshold below every difference.
    decoded = {"a": _decoded(2.0, "Broncos", 2.0), "b": _decoded(5.0, "1980", 0.0),
               "c": _decoded(1.0, "x", 1.0), "d": _decoded(4.0, "y", 1.0)}
    best_f1, threshold = metrics.best_null_threshold(V2_SET, decoded)
    assert best_f1 == 50.0 and threshold < 0.0


# ---------------------------------------------------------------------------------- reading

def test_read_squad_reads_the_official_json_layout(tmp_path):
    official = {"version": "v2.0", "data": [{"title": "Fox", "paragraphs": [
        {"context": CONTEXT, "qas": [
            {"id": "q1", "question": "Where does the fox live?",
             "answers": [{"text": "a quiet forest", "answer_start": 21},
                         {"text": "forest", "answer_start": 29}]},
            {"id": "q2", "question": "Who owns the fox?", "answers": [], "is_impossible": True,
             "plausible_answers": [{"text": "Farmers", "answer_start": 140}]}]},
        {"context": "Short.", "qas": [
            {"id": "q3", "question": "How long?", "answers": [{"text": "Short",
                                                                "answer_start": 0}]}]}]}]}
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(official), encoding="utf-8")
    assert squad.read_squad(str(path)) == [
        squad.QAExample("q1", "Where does the fox live?", CONTEXT, ["a quiet forest", "forest"],
                     [21, 29]),
        squad.QAExample("q2", "Who owns the fox?", CONTEXT, [], []),
        squad.QAExample("q3", "How long?", "Short.", ["Short"], [0])]
    assert CONTEXT[21:21 + len("a quiet forest")] == "a quiet forest"


def test_read_squad_reads_jsonl_in_the_datasets_layout(tmp_path):
    records = [{"id": "1", "question": "Q?", "context": "Alpha beta.",
                "answers": {"text": ["beta"], "answer_start": [6]}},
               {"id": "2", "question": "R?", "context": "Gamma.",
                "answers": {"text": [], "answer_start": []}}]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    assert squad.read_squad(str(path)) == [squad.QAExample("1", "Q?", "Alpha beta.", ["beta"], [6]),
                                        squad.QAExample("2", "R?", "Gamma.", [], [])]


@pytest.mark.parametrize("name", ["squad/v1.1", "squad/v2.0"])
def test_read_squad_reads_tfds_and_survives_answer_starts_that_miss(name, tokenizer):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        examples = squad.read_squad(f"tfds:{name}", split="validation")
        raw = list(tfds.as_numpy(tfds.load(name, split="validation", download=False)))
    assert len(examples) == 6
    for example, row in zip(examples, raw):
        assert example.id == row["id"].decode() and example.context == row["context"].decode()
        assert example.question == row["question"].decode()
        if row.get("is_impossible", False):
            assert example.answers == [] and example.answer_starts == []
        else:
            assert example.answers == [t.decode() for t in row["answers"]["text"]]
            assert example.answer_starts == [int(s) for s in row["answers"]["answer_start"]]
    # Mock contexts are random letters: most answers are nowhere in them. That is counted.
    features = squad.make_features(tokenizer, examples, max_length=64, stride=16,
                                max_query_length=16)
    findable = sum(bool(e.answers) and e.answers[0] in e.context for e in examples)
    assert features.unlocated_answers == sum(bool(e.answers) for e in examples) - findable
    assert set(features.example_index) == set(range(6))


def test_read_squad_from_a_tfds_folder_without_the_data_says_so(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(UserError, match="tfds:squad/v1.1: cannot load"):
        squad.read_squad("tfds:squad/v1.1", tfds_data_dir=str(tmp_path))


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"  \n", "empty file"),
    (b'{"version": "1.1"}', "top-level 'data'"),
    (b'{"data": {}}', "'data' should be a list"),
    (b'{"data": []}', "no questions"),
    (b'{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "answers": []}]}]}]}',
     r"data\[0\].paragraphs\[0\].qas\[0\]: no 'question'"),
    (b'{"id": "1", "question": "q", "context": "c"}\n', ":1: no 'answers'"),
    (b'{"id": "1", "question": "q", "context": "c", "answers": {"text": ["c"], '
     b'"answer_start": []}}', "1 answer texts but 0"),
    (b'{"id": "1", "question": "q"\n{}\n', ":1: not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_bad_squad_files_raise_one_line_user_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as caught:
        squad.read_squad(str(path))
    assert "\n" not in str(caught.value)


def test_a_missing_squad_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        squad.read_squad(str(tmp_path / "nope.json"))
