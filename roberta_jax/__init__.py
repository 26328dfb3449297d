"""roberta_jax: RoBERTa in JAX/Flax.

    import roberta_jax as rj
    model, params = rj.from_pretrained("path/to/roberta-base", task="base")
    out = model.apply({"params": params}, input_ids, attention_mask=mask, deterministic=True)
    rj.save_pretrained(model, params, "exported/")
"""

from roberta_jax import data
from roberta_jax.config import PRESETS, RobertaConfig
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.errors import UserError
from roberta_jax.model import (
                               HEADS,
                               TASKS,
                               RobertaForMaskedLM,
                               RobertaForMultipleChoice,
                               RobertaForQuestionAnswering,
                               RobertaForSequenceClassification,
                               RobertaForTokenClassification,
                               RobertaModel,
)
from roberta_jax.pretrained import convert, from_pretrained, save_pretrained

__all__ = [
    "HEADS", "PRESETS", "RobertaConfig", "TASKS", "UserError", "convert", "data", "from_pretrained",
    "load_tokenizer", "save_pretrained", "RobertaModel", "RobertaForMaskedLM",
    "RobertaForSequenceClassification", "RobertaForTokenClassification",
    "RobertaForQuestionAnswering", "RobertaForMultipleChoice",
]
