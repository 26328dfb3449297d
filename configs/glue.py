"""The fine-tuning config under the name earlier versions shipped: the same as
`--config finetune` (configs/finetune.py), which configures SQuAD, NER, RACE and local files too.

    roberta-jax finetune --config glue --config.task=rte --config.init=roberta.large/ \
        --workdir runs/rte
"""

from roberta_jax.finetune_config import default_config


def get_config():
    return default_config()
