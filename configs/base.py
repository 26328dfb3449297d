"""roberta-base (125M parameters) with the RoBERTa paper's pretraining recipe (Table 9): batch
8k x 512, peak LR 6e-4, 24k warmup steps then linear decay over 500k steps, Adam (0.9, 0.98,
1e-6), weight decay 0.01, dropout 0.1, no clipping, 15% dynamic masking, FULL-SENTENCES
(with each document attending only to itself, our default; --config.model.document_attention=False
attends across documents as the paper did).

On a TPU pod every worker runs the same command (experiments/tpu_pod.sh). The workdir is on a
bucket; the prepared data can be too (each host reads only its rows, with ranged reads), or
copied to each worker's disk:
    roberta-jax pretrain --config base --workdir gs://bucket/roberta-base \
        --config.data.path=gs://bucket/prepared

fairseq's smaller base.yaml recipe: --config.train.batch_size=2048 --config.train.lr=5e-4
    --config.train.warmup_steps=10000 --config.train.steps=125000
"""

from roberta_jax.train_config import default_config


def get_config():
    return default_config()   # the defaults are roberta-base with the paper's recipe
