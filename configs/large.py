"""roberta-large (355M parameters) with the RoBERTa paper's recipe: 24 layers, width 1024,
16 heads, FFN 4096; peak LR 4e-4, 30k warmup steps, batch 8k x 512, 500k steps.

    roberta-jax pretrain --config large --workdir gs://bucket/roberta-large \
        --config.data.path=gs://bucket/prepared --config.mesh.fsdp=8

(the prepared data read from the bucket, or copied to every worker's disk)
"""

from roberta_jax.train_config import default_config


def get_config():
    c = default_config()
    c.model.hidden_size = 1024
    c.model.num_hidden_layers = 24
    c.model.num_attention_heads = 16
    c.model.intermediate_size = 4096
    c.train.lr = 4e-4
    c.train.warmup_steps = 30_000
    # 24 layers x 512 tokens of activations
    c.model.remat_policy = "dots_with_no_batch_dims_saveable"
    return c
