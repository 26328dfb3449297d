"""Packed rows: several examples sharing a row, kept apart by segment ids, compute
exactly what each computes alone, for every head and attention implementation; fine-tuning on
packed batches follows the padded trajectory, and evaluation gives the same metrics."""

import dataclasses
import itertools
import types

import jax
import ml_collections
import numpy as np
import pytest

import roberta_jax as rj
from roberta_jax import parity, task_kinds, tasks
from roberta_jax.data import pack_examples as pack
from roberta_jax.data.rows import IGNORED_LABEL
from roberta_jax.data.tokenizer import pad_batch
from roberta_jax.model import position_ids_from_segments

VOCAB, ROW = 99, 16
LENGTHS = [5, 9, 3, 12, 7, 4, 16, 2]  # one fills a row, one is only <s> </s>


def _sequences(seed=0, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    return [[0] + list(rng.integers(3, VOCAB, n - 2)) + [2] for n in lengths]


def _model(tmp_path, task, attention="eager"):
    parity.random_hf_model(task).save_pretrained(tmp_path)
    model, params = rj.from_pretrained(tmp_path, task=task)
    return model.clone(config=model.config.replace(attention_implementation=attention)), params


def _packed(sequences, row=ROW):
    placement = pack.first_fit([len(s) for s in sequences], row)
    rows = pack.rows_of(sequences, placement, placement.rows + 1,  # and a row of padding only
                        row, pack.slots_needed(placement) + 1, pad_id=1)
    return placement, rows


# ------------------------------------------------------------------------------------ model

def test_positions_restart_for_each_segment_and_padding_sits_at_the_pad_id():
    segments = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 2, 2, 2, 3, 0], [0, 0, 0, 0, 0, 0, 0]])
    want = [[2, 3, 4, 2, 3, 1, 1], [2, 3, 2, 3, 4, 2, 1], [1, 1, 1, 1, 1, 1, 1]]
    np.testing.assert_array_equal(position_ids_from_segments(segments, 1), want)


@pytest.mark.parametrize("attention", ["eager", "jax"])
@pytest.mark.parametrize("task", list(rj.TASKS))
def test_a_packed_row_computes_what_each_example_computes_alone(tmp_path, task, attention):
    torch = pytest.importorskip("torch")
    model, params = _model(tmp_path, task, attention)
    sequences = _sequences()
    placement, rows = _packed(sequences)
    alone_ids, alone_mask = pad_batch(sequences, ROW, 1)
    inputs = {"segment_ids": rows["segment_ids"]}
    if task in ("sequence-classification", "multiple-choice"):
        inputs["segment_starts"] = rows["segment_starts"]
    packed = model.apply({"params": params}, rows["input_ids"], **inputs)
    if task == "multiple-choice":  # each sequence is a choice of its own: [n, 1, length]
        alone = model.apply({"params": params}, alone_ids[:, None],
                            attention_mask=alone_mask[:, None])
        with torch.no_grad():
            hf = parity.random_hf_model(task)(input_ids=torch.tensor(alone_ids[:, None]).long(),
                                              attention_mask=torch.tensor(alone_mask[:, None]))
        got = pack.unpack_slots(np.asarray(packed.logits), placement)
        np.testing.assert_allclose(got, np.asarray(alone.logits)[:, 0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got, hf.logits.numpy()[:, 0], atol=1e-5, rtol=0)
        return
    alone = model.apply({"params": params}, alone_ids, attention_mask=alone_mask)
    want = parity.hf_outputs(parity.random_hf_model(task), task, alone_ids, alone_mask)
    want["last_hidden_state"] = np.asarray(alone.last_hidden_state)
    real = alone_mask > 0  # padding positions exist only in the padded layout
    for name in want:
        if name == "pooler_output":
            continue  # the bare encoder pools only with segment_starts (the next test)
        ours = np.asarray(getattr(packed, name))
        if name == "logits" and task == "sequence-classification":
            np.testing.assert_allclose(pack.unpack_slots(ours, placement), want[name],
                                       atol=1e-5, rtol=0, err_msg=name)
        else:
            np.testing.assert_allclose(pack.unpack_tokens(ours, placement, ROW)[real],
                                       want[name][real], atol=1e-5, rtol=0, err_msg=name)


def test_the_bare_encoder_pools_each_segment_at_its_start(tmp_path):
    model, params = _model(tmp_path, "base")
    sequences = _sequences(1)
    placement, rows = _packed(sequences)
    packed = model.apply({"params": params}, rows["input_ids"], segment_ids=rows["segment_ids"],
                         segment_starts=rows["segment_starts"])
    alone_ids, alone_mask = pad_batch(sequences, ROW, 1)
    alone = model.apply({"params": params}, alone_ids, attention_mask=alone_mask)
    np.testing.assert_allclose(pack.unpack_slots(np.asarray(packed.pooler_output), placement),
                               np.asarray(alone.pooler_output), atol=1e-5, rtol=0)


def test_examples_in_one_row_cannot_see_each_other(tmp_path):
    model, params = _model(tmp_path, "base")
    sequences = _sequences(2, [6, 5, 4])
    placement, rows = _packed(sequences)
    before = np.asarray(model.apply({"params": params}, rows["input_ids"],
                                    segment_ids=rows["segment_ids"]).last_hidden_state)
    changed = rows["input_ids"].copy()
    changed[rows["segment_ids"] == 2] = 7  # another second example, same length
    after = np.asarray(model.apply({"params": params}, changed,
                                   segment_ids=rows["segment_ids"]).last_hidden_state)
    others = (rows["segment_ids"] != 2) & (rows["segment_ids"] > 0)
    np.testing.assert_array_equal(after[others], before[others])
    assert not np.allclose(after[rows["segment_ids"] == 2], before[rows["segment_ids"] == 2])


def test_segment_ids_and_an_attention_mask_together_are_refused(tmp_path):
    model, params = _model(tmp_path, "token-classification")
    _, rows = _packed(_sequences())
    with pytest.raises(ValueError, match="not both"):
        model.apply({"params": params}, rows["input_ids"], segment_ids=rows["segment_ids"],
                    attention_mask=rows["segment_ids"] > 0)


# ---------------------------------------------------------------------------------- layout

def test_first_fit_places_every_sequence_once_within_its_row():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(1, 20, rng.integers(1, 40))
        p = pack.first_fit(lengths, 20)
        covered = np.zeros((p.rows, 20), int)
        for r, s, n in zip(p.row, p.start, p.length):
            covered[r, s:s + n] += 1
        assert covered.max() == 1 and covered.sum() == lengths.sum()
        assert p.rows <= -(-lengths.sum() // 10) + 1  # first-fit: no two rows half empty
        for r in range(p.rows):  # slots number a row's segments in position order
            mine = np.flatnonzero(p.row == r)
            assert sorted(p.slot[mine]) == list(range(len(mine)))
            assert list(p.slot[mine][np.argsort(p.start[mine])]) == list(range(len(mine)))


def test_inference_rows_give_long_inputs_long_rows_and_fill_them_with_short_ones():
    rng = np.random.default_rng(2)
    buckets = (16, 32, 64, 128)
    for _ in range(30):
        lengths = np.concatenate([rng.integers(2, 9, rng.integers(1, 80)),
                                  rng.integers(17, 120, rng.integers(0, 6))])
        short = int(rng.choice(buckets[:3]))
        groups = pack.inference_groups(lengths, buckets, short, tokens_per_step=128)
        members = np.concatenate([g.members for g in groups])
        assert sorted(members) == list(range(len(lengths)))  # each sequence in one row
        short = min(short, pack.row_length(lengths.max(), buckets))  # no longer than needed
        for g in groups:
            assert g.rows % g.step == 0 and g.placement.rows <= g.rows
            assert (g.placement.length == lengths[g.members]).all()
            covered = np.zeros((g.rows, g.row_length), int)
            for r, s, n in zip(g.placement.row, g.placement.start, g.placement.length):
                covered[r, s:s + n] += 1
            assert covered.max() == 1
            need = [max(short, pack.row_length(n, buckets)) for n in lengths[g.members]]
            assert max(need) == g.row_length  # rows only as long as a member needs
            later = [h.members for h in groups[groups.index(g) + 1:]]
            if later:  # what went to shorter rows found no room in these (first-fit)
                free = g.row_length - covered.sum(1)
                assert free.max() < lengths[np.concatenate(later)].min()
        assert len({g.row_length for g in groups}) == len(groups)


def test_row_counts_are_the_cheapest_choice_of_at_most_three():
    rng = np.random.default_rng(1)
    for _ in range(30):
        needed = list(rng.integers(3, 15, rng.integers(1, 25)))
        multiple = int(rng.choice([1, 2, 4]))
        chosen = pack.choose_row_counts(needed, multiple)

        def cost(counts):  # used only within this iteration
            return sum(pack.fit_rows(n, counts, multiple) for n in needed)  # noqa: B023
        values = sorted({-(-n // multiple) * multiple for n in needed})
        best = min(cost(c + (values[-1],)) for k in range(3)
                   for c in itertools.combinations(values[:-1], k))
        assert len(chosen) <= 3 and max(chosen) == values[-1]
        assert all(c % multiple == 0 for c in chosen) and cost(chosen) == best


# ----------------------------------------------------------------------- fine-tuning steps

STEPS, BATCH, LENGTH, CHOICES = 3, 6, 12, 3


def _split(kind_name, rng):
    """A Split of the kind with random features (ids only; what the steps need)."""
    n = STEPS * BATCH
    lengths = rng.integers(3, LENGTH + 1, n)
    seqs = [[0] + list(rng.integers(5, VOCAB, k - 2)) + [2] for k in lengths]
    if kind_name == "classification":
        data = types.SimpleNamespace(labels=rng.integers(0, 3, n).astype(np.int32))
        return task_kinds.Split(data, seqs, n)
    if kind_name == "tokens":
        labels = [[IGNORED_LABEL] + list(np.where(rng.random(k - 2) < 0.3, IGNORED_LABEL,
                                                      rng.integers(0, 3, k - 2)))
                  + [IGNORED_LABEL] for k in lengths]
        features = types.SimpleNamespace(ids=seqs, labels=labels)
        return task_kinds.Split(types.SimpleNamespace(tags=True), features, n)
    if kind_name == "qa":
        ids, mask = pad_batch(seqs, LENGTH, 1)
        # An answer inside the window (between its <s> and </s>), or none (<s>, position 0).
        starts = np.where(rng.random(n) < 0.3, 0, rng.integers(1, lengths - 1)).astype(np.int32)
        ends = np.where(starts == 0, 0, np.minimum(starts + rng.integers(0, 2, n), lengths - 2))
        features = types.SimpleNamespace(**{
            "input_ids": ids, "attention_mask": mask, "start_positions": starts,
            "end_positions": ends.astype(np.int32)})
        return task_kinds.Split(None, features, n)
    choices = [seqs[i:i + CHOICES] for i in range(0, n, CHOICES)]
    data = types.SimpleNamespace(labels=rng.integers(0, CHOICES, len(choices)))
    return task_kinds.Split(data, choices, len(choices))


HEADS = {"classification": "sequence-classification", "tokens": "token-classification",
         "qa": "question-answering", "choice": "multiple-choice"}


@pytest.mark.parametrize("kind_name", ["classification", "tokens", "qa", "choice"])
def test_packed_batches_train_as_padded_ones_do(tmp_path, kind_name):
    """Same examples per step: the packed losses are the padded ones (QA: its softmax runs over
    each window's own tokens, so it is compared with that, from the padded model's logits)."""
    from roberta_jax.finetune import make_loss, make_steps, recipe
    from roberta_jax.optim import make_optimizer
    rng = np.random.default_rng(0)
    split = _split(kind_name, rng)
    config = ml_collections.ConfigDict(dict(
        lr=3e-3, warmup_ratio=0.1, b2=0.98, eps=1e-6, weight_decay=0.1, weight_decay_mask="hf",
        clip_norm=0.0, tfds_data_dir=""))
    task = tasks.Task("packing", kind_name, "unused")
    kind = task_kinds.for_task(task, config)
    head = HEADS[kind_name]
    model, params = _model(tmp_path, head)
    tx = make_optimizer(recipe(config, task, STEPS))
    train_step, _ = make_steps(model, tx, kind)
    loss_fn = make_loss(model, kind)
    train_step, loss_fn = jax.jit(train_step), jax.jit(loss_fn)
    order = rng.permutation(split.size if kind_name != "choice" else split.size)
    batch_size = BATCH if kind_name != "choice" else BATCH // CHOICES
    plan = pack.plan(kind, split, batch_size, order, (LENGTH,), lambda _: LENGTH)
    plan = dataclasses.replace(plan, row_counts=plan.row_counts[-1:])  # one compiled shape
    padded = list(kind.batches(split, batch_size, 1, (LENGTH,), order, drop_last=True))
    packed = list(pack.train_batches(kind, split, plan, batch_size, order, pad_id=1))
    assert len(padded) == len(packed) == STEPS
    assert max(int(b["segment_ids"].max()) for b in packed) > 1  # rows do hold several
    state = {"padded": (params, tx.init(params)), "packed": (params, tx.init(params))}
    for step, (a, b) in enumerate(zip(padded, packed)):
        if kind_name == "qa":
            want = _qa_loss_over_own_tokens(model, state["padded"][0], a)
            np.testing.assert_allclose(loss_fn(state["padded"][0], b, None), want, rtol=1e-5)
            continue
        losses = {}
        for name, batch in (("padded", a), ("packed", b)):
            p, o, losses[name] = train_step(*state[name], batch, None)
            state[name] = (p, o)
        np.testing.assert_allclose(losses["packed"], losses["padded"], rtol=1e-5,
                                   err_msg=f"step {step}")


def _qa_loss_over_own_tokens(model, params, batch):
    out = model.apply({"params": params}, batch["input_ids"],
                      attention_mask=batch["attention_mask"])
    total = 0.0
    for i in range(len(batch["input_ids"])):
        n = int(batch["attention_mask"][i].sum())
        for logits, label in ((out.start_logits, "start_positions"),
                              (out.end_logits, "end_positions")):
            row = np.asarray(logits[i, :n], np.float64)
            total += (np.log(np.exp(row - row.max()).sum()) + row.max()
                      - row[batch[label][i]]) / 2
    return total / len(batch["input_ids"])


# ------------------------------------------------------------------------------- evaluation

def _eval_split(kind_name, tokenizer):
    from roberta_jax.data import choices, classification, squad, tokens
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    rng = np.random.default_rng(3)
    sentences = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(21)]
    if kind_name == "classification":
        return classification.Examples(sentences, None, rng.integers(0, 3, 21), list(range(21)))
    if kind_name == "tokens":
        tags = ["O", "B-PER", "I-PER", "B-LOC"]
        split = [s.split() for s in sentences]
        return tokens.TokenExamples(split, [list(rng.choice(tags, len(w))) for w in split])
    if kind_name == "qa":
        return [squad.QAExample(str(i), sentences[i], " ".join(sentences[i + 1:i + 5]),
                                [sentences[i + 1]], [0]) for i in range(15)]
    return choices.ChoiceExamples(sentences[:7], sentences[7:14],
                                  [[a, b, c] for a, b, c in zip(sentences, sentences[5:],
                                                                sentences[9:])][:7],
                                  rng.integers(0, 3, 7), list(range(7)))


@pytest.mark.parametrize("kind_name", ["classification", "tokens", "qa", "choice"])
def test_packed_evaluation_gives_the_padded_outputs_and_identical_metrics(tmp_path, kind_name):
    from conftest import small_bpe_tokenizer

    from roberta_jax import sharding as shd
    from roberta_jax.finetune import _predict, make_steps
    tokenizer = small_bpe_tokenizer(["alpha beta gamma delta epsilon zeta eta theta"], tmp_path)
    config = ml_collections.ConfigDict(dict(tfds_data_dir="", stride=4, max_query_length=8,
                                            n_best=5, max_answer_length=6, null_threshold=0.0))
    kind = task_kinds.for_task(tasks.Task("packing", kind_name, "unused",
                                          metrics=tasks.DEFAULT_METRICS[kind_name]), config)
    labels = ["O", "B-PER", "I-PER", "B-LOC"] if kind_name == "tokens" else ["0", "1", "2"]
    split = kind.encode(tokenizer, _eval_split(kind_name, tokenizer), 32, labels)
    parity.random_hf_model(HEADS[kind_name], vocab_size=tokenizer.vocab_size,
                           num_labels=len(labels)).save_pretrained(tmp_path / "m")
    model, params = rj.from_pretrained(tmp_path / "m")
    predict_step = jax.jit(make_steps(model, None, kind)[1])
    mesh = shd.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
    buckets = (16, 32)
    order = np.arange(split.size)
    batch = 8
    plan = pack.plan(kind, split, batch, order, buckets, lambda _: 32, mesh.size)
    padded = _predict(predict_step, params, kind, split, batch, 1, buckets, 32, mesh)
    packed = _predict(predict_step, params, kind, split, batch, 1, buckets, 32, mesh, plan)
    assert packed.shape == padded.shape
    if kind.per_token:  # compare where the tokens are; padding is not computed when packed
        lengths = [len(s) for s in kind.feature_sequences(split, order)]
        real = np.arange(32)[None, :] < np.asarray(lengths)[:, None]
        np.testing.assert_allclose(packed[real], padded[real], atol=1e-5, rtol=0)
    else:
        np.testing.assert_allclose(packed, padded, atol=1e-5, rtol=0)
    assert kind.evaluate(split, packed, labels) == kind.evaluate(split, padded, labels)


@pytest.fixture
def lengths_used(monkeypatch):
    """The row lengths predict packs into, in the order it runs them."""
    used, inference_groups = [], pack.inference_groups

    def groups(*args, **kwargs):
        chosen = inference_groups(*args, **kwargs)
        used.extend(g.row_length for g in chosen)
        return chosen
    monkeypatch.setattr(pack, "inference_groups", groups)
    return used


@pytest.mark.parametrize("task", ["masked-lm", "sequence-classification"])
def test_predict_packs_its_inputs_and_answers_as_for_each_input_alone(tmp_path, task,
                                                                     lengths_used):
    from conftest import small_bpe_tokenizer

    from roberta_jax.predict import Predictor
    words = "alpha beta gamma delta epsilon zeta eta theta"
    (tmp_path / "m").mkdir()
    tokenizer = small_bpe_tokenizer([words], tmp_path / "m")
    parity.random_hf_model(task, vocab_size=tokenizer.vocab_size).save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words.split() + ["<mask>"], rng.integers(1, 9)))
             for _ in range(40)]
    for i in (5, 6, 7):  # longer than most (the model takes 38 tokens): rows of their own
        while len(tokenizer(texts[i])) < 35:
            texts[i] += " " + rng.choice(words.split() + ["<mask>"])
    texts[0] = "<mask> " + texts[0] + " <mask>"
    predictor = Predictor(str(tmp_path / "m"), batch_size=4)
    got = list(predictor([{"text": t} for t in texts], top_k=3))
    assert lengths_used == [38, 32]  # the long inputs' rows, then the others'
    ids = [tokenizer(t) for t in texts]
    alone_ids, alone_mask = pad_batch(ids, max(map(len, ids)), 1)  # padded: each input alone
    every = np.array(predictor.model.apply({"params": predictor.params}, alone_ids,
                                           attention_mask=alone_mask).logits)
    for text, sequence, answer, logits in zip(texts, ids, got, every):
        if task == "sequence-classification":
            probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            np.testing.assert_allclose(list(answer["scores"].values()), probs, atol=1e-5)
            continue
        logits[:, sorted(tokenizer.special_ids)] = -np.inf
        masks = [i for i, t in enumerate(sequence) if t == tokenizer.mask_id]
        assert len(answer["masks"]) == len(masks) == text.split().count("<mask>")
        for position, fills in zip(masks, answer["masks"]):
            best = np.argsort(-logits[position])[:3]
            assert fills == [tokenizer.decode([int(t)]).strip() or tokenizer.id_to_token(int(t))
                             for t in best]


def test_predict_maps_per_token_outputs_back_across_row_lengths(tmp_path, lengths_used):
    from conftest import small_bpe_tokenizer

    from roberta_jax.predict import Predictor
    (tmp_path / "m").mkdir()
    tokenizer = small_bpe_tokenizer(["alpha beta gamma delta"], tmp_path / "m")
    parity.random_hf_model("token-classification", vocab_size=max(tokenizer.vocab_size, VOCAB)
                           ).save_pretrained(tmp_path / "m")
    predictor = Predictor(str(tmp_path / "m"), batch_size=4)
    # Mostly short, two longer than rows of 32 hold (the model takes 38 tokens).
    sequences = _sequences(lengths=[5, 9, 3, 36, 7, 4, 33, 2, 12, 6, 8, 5])
    got = predictor.run(sequences, per_token=True, width=38)
    assert lengths_used == [38, 32]
    alone_ids, alone_mask = pad_batch(sequences, 38, 1)
    alone = np.asarray(predictor.model.apply({"params": predictor.params}, alone_ids,
                                             attention_mask=alone_mask).logits)
    real = alone_mask > 0
    np.testing.assert_allclose(got[real], alone[real], atol=1e-5, rtol=0)


def test_packed_pretraining_rows_predict_masked_words_per_document(tmp_path):
    """Documents packed into one row with the MLM head gathered at masked slots (what packed
    pretraining rows need) give each document's own logits there."""
    model, params = _model(tmp_path, "masked-lm")
    sequences = _sequences(4, [7, 5, 4])
    placement, rows = _packed(sequences)
    slots = np.array([[1, 8, 13, 0], [0, 0, 0, 0]], np.int32)  # one in each document, row 0
    packed = np.asarray(model.apply({"params": params}, rows["input_ids"],
                                    segment_ids=rows["segment_ids"],
                                    masked_positions=slots).logits)
    alone_ids, alone_mask = pad_batch(sequences, ROW, 1)
    alone = np.asarray(model.apply({"params": params}, alone_ids, attention_mask=alone_mask).logits)
    for slot, position in enumerate(slots[0][:3]):
        document = int(rows["segment_ids"][0, position]) - 1
        sequence = int(np.flatnonzero((placement.row == 0) & (placement.slot == document))[0])
        np.testing.assert_allclose(packed[0, slot],
                                   alone[sequence, position - placement.start[sequence]],
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("total_steps, step_seconds, expected", [
    (60, 0.1, (8,)),           # a short run: a second compile (10 s) is not won back
    (100_000, 0.1, (5, 6, 8)),  # a long one: every row saved counts
    (2_000, 0.1, (6, 8)),      # in between: 2000 * 10% of 0.1 s beats one more compile only
])
def test_a_run_compiles_more_row_counts_only_where_they_pay(total_steps, step_seconds, expected):
    plan = pack.Plan(64, 8, (5, 6, 8), 1, 16, 1000, 800,
                     options=(((8,), 1000), ((6, 8), 900), ((5, 6, 8), 880)))
    counts = pack.RowCounts(plan, total_steps)
    assert counts.row_counts == (8,) and counts.measuring
    for seconds in [10.0 + step_seconds] + [step_seconds] * (pack.RowCounts.PROBE - 1):
        counts.observe(seconds)
    assert not counts.measuring and counts.row_counts == expected


def test_the_benchmark_fine_tuning_step_trains_on_packed_rows():
    """finetune.classification_train_step, which GPU benchmarks call, is the run's real step."""
    from roberta_jax.config import RobertaConfig
    from roberta_jax.finetune import classification_train_step
    config = RobertaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=40)
    rng = np.random.default_rng(0)
    sequences = _sequences(5, rng.integers(3, 20, 64))
    step, params, opt_state, batches = classification_train_step(
        sequences, rng.integers(0, 2, 64), 16, config, "float32")
    assert len(batches) == 4 and "segment_ids" in batches[0]
    assert batches[0]["input_ids"].size < 16 * 32  # fewer positions than 16 padded rows
    before = jax.tree.map(np.array, params)
    for i, batch in enumerate(batches):
        params, opt_state, loss = step(params, opt_state, batch, jax.random.key(0), np.int32(i))
        assert np.isfinite(float(loss))
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), params, before)
    assert min(jax.tree.leaves(moved)) > 0  # every parameter trained
