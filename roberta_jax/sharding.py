"""One mesh, named shardings.

Axes ('data', 'fsdp', 'tensor'): 'data' replicates parameters and splits the batch (what pmap
did), 'fsdp' splits the batch and shards parameters along `embed`, 'tensor' splits the
attention projections, FFN and vocabulary. Model code only names logical axes; the pretraining
config's `mesh.logical_rules` (train_config.py) map them onto the mesh, and
`check_logical_rules` refuses a rule whose logical axis the model never names.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roberta_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")



def logical_rules(config=None) -> tuple:
    """The (logical axis, mesh axes) rules of a pretraining config's `mesh.logical_rules` (the
    default config's when it has none, as a workdir's config from before the field), as
    tuples. Unlisted logical names are replicated."""
    mesh_config = config.get("mesh") if config is not None else None
    rules = mesh_config.get("logical_rules") if mesh_config is not None else None
    if rules is None:
        from roberta_jax.train_config import default_config
        rules = default_config().mesh.logical_rules
    # A config read back from json holds lists where the config file wrote tuples.
    return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
                 for name, axes in rules)


LOGICAL_RULES = logical_rules()  # the default config's rules, for callers without a config


def annotated_axes() -> frozenset[str]:
    """Every logical axis name model.py gives a parameter or an activation, over all heads
    (with scanned layers, which add `layers`): what a sharding rule may name. Found by tracing
    a tiny model of each head (no compute), recording the names its parameters carry and the
    names its `nn.with_logical_constraint` calls ask for."""
    return _annotated_axes()


@functools.cache
def _annotated_axes() -> frozenset[str]:
    from roberta_jax.config import RobertaConfig
    from roberta_jax.model import HEADS
    config = RobertaConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=16,
                           max_position_embeddings=12)
    ids = np.zeros((1, 1, 4), np.int32)
    names: set[str] = set()
    constrain = nn.with_logical_constraint

    def recording(x, logical_axis_resources, *args, **kwargs):
        names.update(a for a in jax.tree.leaves(logical_axis_resources) if isinstance(a, str))
        return constrain(x, logical_axis_resources, *args, **kwargs)

    nn.with_logical_constraint = recording  # the model calls it as nn.with_logical_constraint
    try:
        # Rules that name every mesh axis nowhere: constraints are looked up, nothing is placed.
        with nn.logical_axis_rules((("_", None),)):
            for head, (cls, _) in HEADS.items():
                inputs = ids if head == "multiple-choice" else ids[0]
                model = cls(config, scan_layers=True)
                # init runs the forward pass too, so its constraints are recorded as well.
                boxed = jax.eval_shape(lambda m=model, x=inputs: m.init(jax.random.key(0), x))
                for spec in jax.tree.leaves(nn.get_partition_spec(boxed),
                                            is_leaf=lambda x: isinstance(x, PartitionSpec)):
                    names.update(a for a in spec if isinstance(a, str))
    finally:
        nn.with_logical_constraint = constrain
    return frozenset(names)


def check_logical_rules(rules, key: str = "mesh.logical_rules") -> None:
    """One line when a rule is malformed, maps onto an axis the mesh lacks, or names a logical
    axis that no parameter or activation of the model carries (a rule that shards nothing)."""
    for rule in rules:
        if (not isinstance(rule, (tuple, list)) or len(rule) != 2
                or not isinstance(rule[0], str)):
            raise UserError(f"{key}: {rule!r} is not a (logical axis, mesh axes) pair")
        axes = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
        unknown = [a for a in axes if a is not None and a not in MESH_AXES]
        if unknown:
            raise UserError(f"{key}: rule {rule[0]!r} maps onto mesh axis {unknown[0]!r}; the "
                            f"mesh has {', '.join(MESH_AXES)}")
    known = annotated_axes()
    dead = [rule[0] for rule in rules if rule[0] not in known]
    if dead:
        raise UserError(f"{key}: no parameter or activation of the model is named "
                        f"{', '.join(map(repr, dead))}; the model's logical axes are "
                        f"{', '.join(sorted(known))}")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """Sizes of (data, fsdp, tensor); one of them may be -1 to take what the others leave."""
    sizes = [int(mesh_config.data), int(mesh_config.fsdp), int(mesh_config.tensor)]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise UserError("mesh: at most one of data, fsdp, tensor may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise UserError(f"mesh: {num_devices} devices cannot be split by {known}")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise UserError(f"mesh: data x fsdp x tensor = {math.prod(sizes)} but there are "
                        f"{num_devices} devices")
    return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
    """The mesh for `devices` (default: all). With mesh.dcn_data > 1 the data axis spans slices
    (TPU multislice / GPU nodes) and fsdp, tensor stay within one."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    dcn = int(mesh_config.get("dcn_data", 1))
    if dcn > 1:
        if shape[0] % dcn:
            raise UserError(f"mesh: data={shape[0]} is not divisible by dcn_data={dcn}")
        ici = (shape[0] // dcn, shape[1], shape[2])
        grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1), devices)
    else:
        try:
            grid = mesh_utils.create_device_mesh(shape, devices)
        except (ValueError, AssertionError, NotImplementedError):
            grid = np.asarray(devices).reshape(shape)  # no topology hints (e.g. CPU)
    return Mesh(grid, MESH_AXES)


def logical_shardings(boxed_tree, mesh: Mesh):
    """NamedShardings for a tree whose leaves carry logical names (flax LogicallyPartitioned),
    by the rules in force (`nn.logical_axis_rules(logical_rules(config))`); other leaves are
    replicated."""
    if not nn.get_logical_axis_rules():
        raise ValueError("logical_shardings needs rules: call it inside "
                         "nn.logical_axis_rules(sharding.logical_rules(config))")
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays split over the batch axes of the mesh."""
    sharding = batch_sharding(mesh)
    processes = jax.process_count()
    return {k: jax.make_array_from_process_local_data(
        sharding, v, (v.shape[0] * processes, *v.shape[1:])) for k, v in local.items()}


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
