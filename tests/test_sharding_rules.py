"""The mesh's logical rules live in the pretraining config, are the ones a run applies, and each
names an axis the model really annotates (a rule naming nothing is refused before a run)."""

import json

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from roberta_jax import sharding as shd
from roberta_jax.config import RobertaConfig
from roberta_jax.errors import UserError
from roberta_jax.model import RobertaForMaskedLM
from roberta_jax.train_config import check_pretrain_config, default_config


def test_the_default_rules_pass_and_name_only_annotated_axes():
    config = default_config()
    check_pretrain_config(config)
    names = {name for name, _ in shd.logical_rules(config)}
    assert names <= shd.annotated_axes()
    assert not {"heads", "kv"} & names  # the dead rules are gone


def test_annotations_come_from_both_parameters_and_activations():
    found = shd.annotated_axes()
    # Parameters only: attention projections, scanned layers, classifier heads' outputs.
    assert {"joined_kv", "layers", "labels", "norm", "positions", "token_types"} <= found
    # Activations only (nn.with_logical_constraint in the forward pass).
    assert {"batch", "length"} <= found
    assert "heads" not in found and "kv" not in found


@pytest.mark.parametrize("rule, message", [
    (("heads", "tensor"), "no parameter or activation of the model is named 'heads'"),
    (("kv", None), "named 'kv'"),
    (("embed", "model"), "mesh axis 'model'"),
    (("embed",), "not a \\(logical axis, mesh axes\\) pair"),
])
def test_a_rule_that_names_nothing_is_refused_at_config_check(rule, message):
    config = default_config()
    config.mesh.logical_rules = config.mesh.logical_rules + (rule,)
    with pytest.raises(UserError, match=message):
        check_pretrain_config(config)


def test_a_workdir_config_without_rules_or_read_back_from_json_gets_tuples():
    old = default_config()
    del old.mesh["logical_rules"]
    assert shd.logical_rules(old) == shd.logical_rules(default_config()) == shd.LOGICAL_RULES
    round_trip = ml_collections.ConfigDict(json.loads(default_config().to_json()))
    assert shd.logical_rules(round_trip) == shd.LOGICAL_RULES
    check_pretrain_config(round_trip)


def test_the_config_rules_are_the_ones_that_place_parameters():
    model = RobertaForMaskedLM(RobertaConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=16,
                                             max_position_embeddings=12), scan_layers=True)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 4), np.int32)))
    mesh = shd.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))

    def word_embedding_spec(config):
        with nn.logical_axis_rules(shd.logical_rules(config)):
            shardings = shd.logical_shardings(boxed, mesh)
        return shardings["params"]["roberta"]["embeddings"]["word_embeddings"]["embedding"].spec

    assert tuple(word_embedding_spec(default_config())) == ("tensor", "fsdp")
    changed = default_config()
    changed.mesh.logical_rules = (("vocab", None), ("embed", "tensor"))
    assert tuple(word_embedding_spec(changed)) == (None, "tensor")


def test_shardings_without_rules_in_force_are_an_error_not_silent_replication():
    with pytest.raises(ValueError, match="needs rules"):
        shd.logical_shardings({}, shd.make_mesh(
            ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})))
