"""Input: tokenizers, corpus preparation, training and fine-tuning batches."""

from roberta_jax.data.tokenizer import Tokenizer, load_tokenizer, pad_batch

__all__ = ["Tokenizer", "load_tokenizer", "pad_batch"]
