"""Fine-tuning: GLUE (tfds `glue/*`), SQuAD v1.1 / v2.0, CoNLL-2003 NER, RACE, or local files.
Each task's published recipe is its default (roberta_jax/tasks.py): for GLUE fairseq's
README.glue (LR 1e-5, RTE and STS-B 2e-5; batch 32 for MNLI, QNLI, QQP, SST-2, else 16;
10 epochs, 6% warmup then linear decay, weight decay 0.1, Adam (0.9, 0.98, 1e-6)), and the
median over 5 seeds of the best dev score is reported, as the paper does. Local files have no
published recipe: theirs scales with the model (LR 2e-5 x (768 / hidden_size)^1.5, at most
1e-3; batch 16, 10 epochs, weight decay 0.01, one seed).

    roberta-jax finetune --config finetune --config.task=rte \
        --config.init=roberta.large/ --workdir runs/rte --config.tfds_data_dir=~/tensorflow_datasets
    roberta-jax finetune --config finetune --config.task=squad2 --config.init=roberta.base/ \
        --workdir runs/squad2 --config.seeds='(1,)'
    # local files: jsonl / tsv / csv with a header
    roberta-jax finetune --config finetune --config.task=local \
        --config.train_file=train.jsonl --config.eval_file=dev.jsonl --config.init=model/ \
        --workdir runs/mine
    roberta-jax finetune --config finetune --config.task=local --config.kind=tokens \
        --config.train_file=train.conll --config.eval_file=dev.conll --config.init=model/ \
        --workdir runs/ner

A workdir keeps the settings it was started with (finetune_config.json): re-running resumes
each seed from its last finished epoch, and other settings are refused (only seeds, progress,
tfds_data_dir and null_threshold may change).

Every field, with its meaning, is in roberta_jax/finetune_config.py; change them here or with
--config.FIELD=VALUE.
"""

from roberta_jax.finetune_config import default_config


def get_config():
    return default_config()   # each task's published recipe, GLUE's SST-2 unless --config.task
