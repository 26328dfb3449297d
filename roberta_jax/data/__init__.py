"""Input: tokenizers, corpus preparation, training and fine-tuning batches."""

from roberta_jax.data.pipeline import (
                                       PretrainingBatches,
                                       check_compatible,
                                       check_run_data,
                                       keyed_permutation,
                                       pretraining_batches,
)
from roberta_jax.data.prepare import load_manifest, prepare
from roberta_jax.data.tokenizer import Tokenizer, load_tokenizer, pad_batch
from roberta_jax.data.train_tokenizer import train_tokenizer

__all__ = ["PretrainingBatches", "Tokenizer", "check_compatible", "check_run_data",
           "keyed_permutation", "load_manifest", "load_tokenizer", "pad_batch", "prepare",
           "pretraining_batches", "train_tokenizer"]
