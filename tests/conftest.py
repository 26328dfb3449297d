"""Shared test helpers: small random Hugging Face RoBERTa models built in the test (no download)."""

import os

# Tests run on the CPU with tiny models: skip XLA's heavier passes, compile time dominates there.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from roberta_jax import parity  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

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


def batch_for(task, config_name="odd", seed=0):
    config = HF_CONFIGS[config_name]
    return parity.padded_batch(config["vocab_size"], length=min(9, config["max_position_embeddings"] - 2),
                               choices=3 if task == "multiple-choice" else None, seed=seed)
