"""What a pretraining run's state is: its architecture (from the config, vocabulary padded),
its model, and the train state's layout, sharded over a mesh.

The trainer builds its state from this; the weights loader (weights.py) rebuilds the same
abstract state to restore a workdir's checkpoint. Both import this module, so the trainer
depends on the loader and never the other way round.
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from roberta_jax import sharding as shd
from roberta_jax.checkpoint import abstract_like
from roberta_jax.config import RobertaConfig
from roberta_jax.errors import UserError
from roberta_jax.model import RobertaForMaskedLM


@flax.struct.dataclass
class TrainState:
    step: jax.Array            # completed optimizer steps; also the data position
    params: dict
    opt_state: optax.OptState
    dropout_key: jax.Array     # raw key data; step keys are folded in from it
    loss_mean: jax.Array       # running loss statistics for the spike guard
    loss_sq_mean: jax.Array


def model_config(config, vocab_size: int) -> RobertaConfig:
    """The architecture trained: the config's, with the vocabulary padded for even sharding."""
    m = config.model
    real = vocab_size if m.vocab_size == -1 else m.vocab_size
    if real < vocab_size:
        raise UserError(f"model.vocab_size {real} is smaller than the data's tokenizer "
                        f"({vocab_size} ids)")
    padded = -(-real // m.vocab_multiple) * m.vocab_multiple
    return RobertaConfig(
        vocab_size=padded, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
        hidden_act=m.hidden_act, hidden_dropout_prob=m.hidden_dropout_prob,
        attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        max_position_embeddings=m.max_position_embeddings, layer_norm_eps=m.layer_norm_eps,
        attention_implementation=m.attention_implementation)


def make_model(config, model_cfg: RobertaConfig) -> RobertaForMaskedLM:
    """The model trained, with the config's compute dtype, scan and remat settings."""
    return RobertaForMaskedLM(model_cfg, dtype=jnp.dtype(config.model.dtype),
                              param_dtype=jnp.dtype(config.model.param_dtype),
                              scan_layers=config.model.scan_layers,
                              remat_policy=config.model.remat_policy or None)



def build_state(config, mesh, model: RobertaForMaskedLM, tx, example_batch):
    """-> (init function, abstract state with shardings, shardings): parameters and optimizer
    state are created directly in their sharded layout.

    Nothing runs here: the keys too are made inside the traced init, so this works for a mesh
    of devices that only exist for compiling (`roberta-jax plan`)."""
    seed = config.train.seed

    def init():
        params_key, dropout_key = jax.random.split(jax.random.key(seed))
        boxed = model.init({"params": params_key}, example_batch["input_ids"],
                           attention_mask=example_batch["attention_mask"],
                           masked_positions=example_batch["masked_positions"])["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=boxed,
                          opt_state=tx.init(boxed),
                          dropout_key=jax.random.key_data(dropout_key),
                          loss_mean=jnp.zeros(()), loss_sq_mean=jnp.zeros(()))

    boxed_abstract = jax.eval_shape(init)
    shardings = shd.logical_shardings(boxed_abstract, mesh)
    abstract = abstract_like(strip_boxes(boxed_abstract), shardings)
    init_sharded = jax.jit(lambda: nn.meta.unbox(init()), out_shardings=shardings)
    return init_sharded, abstract, shardings


def strip_boxes(tree):
    """The values inside flax's partitioning boxes, without applying their constraints (which
    only make sense inside jit)."""
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False)
                        if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
