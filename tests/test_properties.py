"""Property tests on arbitrary unicode and bytes: tokenizers, preparation and masking never
crash and keep their invariants."""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import roberta_jax as rj  # noqa: E402
from roberta_jax.data.masking import MaskingSpec, mask_batch  # noqa: E402
from roberta_jax.data.rows import IGNORED_LABEL  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizers(prepared_corpus, tmp_path_factory):
    from roberta_jax import demo_corpus
    from roberta_jax.data.train_tokenizer import train_tokenizer
    root = tmp_path_factory.mktemp("prop")
    demo_corpus.write_text(demo_corpus.stdlib_documents()[:300], root / "c.txt")
    bpe = train_tokenizer([str(root / "c.txt")], 600, str(root / "bpe"), kind="bpe")
    return {"sentencepiece": rj.load_tokenizer(prepared_corpus[2]), "bpe": bpe}


@SETTINGS
@given(text=st.text(max_size=200))
@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_tokenizers_never_crash_and_stay_in_range(tokenizers, kind, text):
    tok = tokenizers[kind]
    ids = tok(text)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert all(0 <= i < tok.vocab_size for i in ids)
    decoded = tok.decode(ids)
    assert isinstance(decoded, str)


@SETTINGS
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_byte_level_bpe_round_trips_any_text(tokenizers, text):
    tok = tokenizers["bpe"]
    special = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")
    if any(s in text for s in special):
        return
    assert tok.decode(tok(text)) == text


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_prepare_on_arbitrary_bytes_succeeds_or_says_why(tokenizers, prepared_corpus, tmp_path,
                                                         data):
    import uuid
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    (folder / "in.txt").write_bytes(data)
    try:
        manifest = rj.data.prepare([str(folder / "in.txt")], str(prepared_corpus[2]),
                                   str(folder / "out"), workers=1, progress=False)
    except rj.UserError as e:
        assert "\n" not in str(e)
        assert not (folder / "out" / "manifest.json").exists()
        return
    assert manifest["totals"]["documents"] >= 1


@SETTINGS
@given(ids=st.lists(st.integers(0, 99), min_size=4, max_size=64), seed=st.integers(0, 2**31),
       prob=st.floats(0.01, 0.9))
def test_masking_never_touches_specials_or_padding(ids, seed, prob):
    row = np.asarray([0] + ids + [2, 1, 1], np.int64)[None]
    spec = MaskingSpec(vocab_size=100, special_ids=(0, 1, 2, 99), mask_id=99, pad_id=1,
                       mask_prob=prob)
    out = mask_batch(row, np.asarray([seed]), seed, spec)
    chosen = out["labels"] != IGNORED_LABEL
    assert not chosen[np.isin(row, [0, 1, 2, 99])].any()
    np.testing.assert_array_equal(out["input_ids"][~chosen], row[~chosen])
    assert chosen.sum() <= spec.max_masked(row.shape[1])
