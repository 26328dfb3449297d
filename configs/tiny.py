"""A tiny RoBERTa for CPUs and tests: 2 layers, width 64. Trains in minutes on a laptop.

    roberta-jax pretrain --config tiny --workdir /tmp/tiny \
        --config.data.path=prepared/ --config.train.steps=300
"""

from roberta_jax.train_config import default_config


def get_config():
    c = default_config()
    c.model.hidden_size = 64
    c.model.num_hidden_layers = 2
    c.model.num_attention_heads = 4
    c.model.intermediate_size = 128
    c.model.max_position_embeddings = 130   # 128 tokens + RoBERTa's position offset
    c.model.dtype = "float32"               # CPUs have no fast bf16 matmuls
    c.model.vocab_multiple = 8
    c.train.steps = 300
    c.train.batch_size = 16
    c.train.seq_len = 128
    c.train.lr = 3e-3                       # small models take a larger step
    c.train.warmup_steps = 30
    c.train.log_every = 10
    c.eval.every_steps = 100
    c.eval.batches = 4
    c.checkpoint.every_steps = 100
    return c
