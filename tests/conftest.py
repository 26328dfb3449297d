"""Shared test helpers: small random Hugging Face RoBERTa models built in the test (no download)."""

import os

# Tests run on the CPU with tiny models: skip XLA's heavier passes, compile time dominates there.
# Set through the environment so the subprocesses that tests start compile the same way (and so
# compute bit-identical results).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
# Eight CPU devices stand in for a pod slice in the sharding tests (set before jax is imported).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import jax
import numpy as np
import pytest

from roberta_jax import parity

assert jax.config.read("jax_disable_most_optimizations")

HF_CLASSES = parity.HF_CLASSES
hf_outputs = parity.hf_outputs
our_outputs = parity.our_outputs

# Odd sizes on purpose: nothing may rely on powers of two or on heads dividing 64.
HF_CONFIGS = {
    "odd": parity.SMALL,
    "wider": dict(vocab_size=131, hidden_size=40, num_hidden_layers=3, num_attention_heads=5,
                  intermediate_size=72, max_position_embeddings=34, type_vocab_size=2,
                  layer_norm_eps=1e-12, hidden_act="gelu_new"),
}


def make_hf_model(task, config_name="odd", seed=0, num_labels=3, **overrides):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return parity.random_hf_model(task, seed=seed, num_labels=num_labels,
                                  **{**HF_CONFIGS[config_name], **overrides})


def torch_training_losses(model, batches, *, lr, warmup_steps, steps, b2, eps, weight_decay,
                          decay_mask="hf", grad_accum=1, b1=0.9):
    """Per-step losses and learning rates of a `transformers` PyTorch training loop: torch AdamW,
    get_linear_schedule_with_warmup, dropout off.

    `decay_mask` "hf" decays exactly what transformers' Trainer decays (its own
    get_decay_parameter_names: no biases, no LayerNorm parameters), "all" every parameter (as
    fairseq does). With `grad_accum` > 1 each batch is cut into that many micro-batches whose
    mean losses are weighted by their share of the step's predicted tokens (labels != -100):
    the step's loss and gradient are then the means over the whole batch, as one big batch
    gives.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # The method reads nothing from the trainer: call it unbound, so the rule is Trainer's own.
    decayed = set(transformers.Trainer.get_decay_parameter_names(None, model)) \
        if decay_mask == "hf" else {n for n, _ in model.named_parameters()}
    groups = [{"params": [p for n, p in model.named_parameters() if n in decayed],
               "weight_decay": weight_decay},
              {"params": [p for n, p in model.named_parameters() if n not in decayed],
               "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup_steps, steps)
    model.eval()  # dropout off
    losses, rates = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only contend on a busy machine
    try:
        for batch in batches:
            inputs = {k: torch.as_tensor(v).long() for k, v in batch.items() if k != "weights"}
            rows = len(next(iter(inputs.values())))
            micros = [{k: v[i:i + rows // grad_accum] for k, v in inputs.items()}
                      for i in range(0, rows, rows // grad_accum)]
            predicted = [int((m["labels"] != -100).sum()) if grad_accum > 1 else 1
                         for m in micros]
            step_loss = 0.0
            for micro, count in zip(micros, predicted):
                loss = model(**micro).loss * (count / sum(predicted))
                loss.backward()
                step_loss += loss.item()
            rates.append(schedule.get_last_lr()[0])
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(step_loss)
    finally:
        torch.set_num_threads(threads)
    return np.array(losses), np.array(rates)


def batch_for(task, config_name="odd", seed=0):
    config = HF_CONFIGS[config_name]
    return parity.padded_batch(config["vocab_size"],
                               length=min(9, config["max_position_embeddings"] - 2),
                               choices=3 if task == "multiple-choice" else None, seed=seed)


@pytest.fixture(scope="session")
def prepared_corpus(tmp_path_factory):
    """(train dir, held-out dir, tokenizer dir): the embedded corpus (standard-library
    docstrings), a 1000-id sentencepiece."""
    from roberta_jax import demo_corpus
    from roberta_jax.data import prepare, train_tokenizer
    root = tmp_path_factory.mktemp("corpus")
    train, held_out = demo_corpus.split_held_out(demo_corpus.stdlib_documents())
    for name, part in (("train", train), ("held_out", held_out)):
        demo_corpus.write_text(part, root / f"{name}.txt")
    train_tokenizer([str(root / "train.txt")], 1000, str(root / "tokenizer"))
    for name in ("train", "held_out"):
        prepare([str(root / f"{name}.txt")], str(root / "tokenizer"),
                str(root / f"{name}_prepared"), doc_format="paragraphs", workers=1,
                progress=False)
    return root / "train_prepared", root / "held_out_prepared", root / "tokenizer"


def save_small_model(prepared_corpus, directory, max_position_embeddings=130):
    """A random (not pretrained) small masked LM with the test corpus's tokenizer, saved as a
    Hugging Face directory."""
    import roberta_jax as rj
    tokenizer = rj.load_tokenizer(prepared_corpus[2])
    make_hf_model("masked-lm", vocab_size=tokenizer.vocab_size,
                  max_position_embeddings=max_position_embeddings).save_pretrained(directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="module")
def small_model(prepared_corpus, tmp_path_factory):
    return save_small_model(prepared_corpus, tmp_path_factory.mktemp("model") / "m")


def tfds_records(records):
    """A tfds.testing.mock_data hook: the data set's real features, carrying `records` (random
    mock data would not keep words and tags, or questions and options, in step)."""
    def as_dataset(builder, *args, **kwargs):
        import tensorflow as tf
        return tf.data.Dataset.from_generator(
            lambda: iter(records), output_signature=builder.info.features.get_tensor_spec())
    return as_dataset


def small_bpe_tokenizer(corpus, directory):
    """A byte-level BPE with RoBERTa's special tokens, trained on `corpus` (a few sentences)."""
    tokenizers = pytest.importorskip("tokenizers")
    from roberta_jax.data.tokenizer import load_tokenizer
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(corpus) * 10, vocab_size=320, min_frequency=1,
                            show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(directory))
    return load_tokenizer(directory)


@pytest.fixture(scope="session")
def gcs_bucket():
    """`gs://BUCKET` on a GCS emulator started on 127.0.0.1 for this test session (see
    tests/gcs_emulator.py); tests use their own prefix inside it."""
    import gcs_emulator
    with gcs_emulator.running() as bucket:
        yield bucket
