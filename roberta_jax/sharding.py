"""One mesh, named shardings.

Axes ('data', 'fsdp', 'tensor'): 'data' replicates parameters and splits the batch (what pmap
did), 'fsdp' splits the batch and shards parameters along `embed`, 'tensor' splits heads, FFN
and vocabulary. Model code only names logical axes; the rules here map them onto the mesh.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roberta_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis (DESIGN B2). Unlisted names are replicated.
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("joined_kv", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", None),
    ("length", None),
    ("positions", None),
    ("token_types", None),
    ("labels", None),
)


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
    """NamedShardings for a tree whose leaves carry logical names (flax LogicallyPartitioned);
    other leaves are replicated."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


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
