"""Between Hugging Face state dicts (flat `name -> array`, PyTorch layouts) and our param trees.

Our tree mirrors Hugging Face's module names, so the map is mechanical: join the path with dots,
call the leaf `weight` (Dense kernels transposed: PyTorch keeps [out, in]). This file is the one
place that knows it; the readers for each file format only produce Hugging Face names.
"""

from __future__ import annotations

import logging
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax.config import RobertaConfig
from roberta_jax.errors import UserError
from roberta_jax.model import TASKS

log = logging.getLogger("roberta_jax")

ENCODER_PREFIX = "roberta."
# Buffers and tied copies that some files carry; not parameters of ours.
_TIED_OR_BUFFERS = ("embeddings.position_ids", "lm_head.decoder.weight", "lm_head.decoder.bias")
# Encoder parameters a checkpoint must have; anything else missing (pooler, heads) is initialised.
_NEWLY_INITIALISABLE = re.compile(r"^(pooler\.|lm_head\.|classifier\.|qa_outputs\.)")


def hf_key(path: tuple[str, ...]) -> tuple[str, bool]:
    """Our param path -> (Hugging Face name, whether the array is transposed between them)."""
    *modules, leaf = path
    name = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join([*modules, name]), leaf == "kernel"


def _encoder_relative(key: str) -> str:
    """Names without the `roberta.` prefix, so base models and task models compare directly."""
    return key[len(ENCODER_PREFIX):] if key.startswith(ENCODER_PREFIX) else key


# ------------------------------------------------------------------------ stacked (scanned) layers

def _is_layer_list(node) -> bool:
    return isinstance(node, dict) and node and all(k.isdigit() for k in node)


def stack_layers(params: dict) -> dict:
    """layer/{0..L-1}/... -> layer/... with a leading layers axis (the nn.scan layout)."""
    def visit(node):
        if not isinstance(node, dict):
            return node
        out = {}
        for key, child in node.items():
            if key == "layer" and _is_layer_list(child):
                layers = [child[str(i)] for i in range(len(child))]
                out[key] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
            else:
                out[key] = visit(child)
        return out
    return visit(params)


def unstack_layers(params: dict, num_layers: int) -> dict:
    """The inverse of stack_layers; a tree already per-layer comes back unchanged."""
    def visit(node, parent):
        if not isinstance(node, dict):
            return node
        out = {}
        for key, child in node.items():
            if key == "layer" and parent == "encoder" and not _is_layer_list(child):
                out[key] = {str(i): jax.tree.map(lambda x, i=i: x[i], child)
                            for i in range(num_layers)}
            else:
                out[key] = visit(child, key)
        return out
    return visit(params, None)


# ------------------------------------------------------------------------------ state -> params

def init_params(model, task: str, seed: int = 0) -> dict:
    """Freshly initialised params of `model` (a `task` model; plain arrays, no partitioning
    boxes), from a dummy input. The one place a model is initialised outside a pretraining
    state (train_state.build_state): fresh heads, models trained from scratch, shapes."""
    shape = (1, 1, 4) if task == "multiple-choice" else (1, 4)
    ids = jnp.full(shape, model.config.bos_token_id, jnp.int32)
    boxed = model.init({"params": jax.random.key(seed)}, ids)["params"]
    # The boxes' sharding constraints are not applied: they only make sense inside jit, and under
    # an active mesh (as when pretraining starts from model.init_from) they would fail on shapes.
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False)
                        if isinstance(x, nn.meta.AxisMetadata) else x, boxed,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def abstract_params(config: RobertaConfig, task: str, param_dtype=jnp.float32):
    """Shapes and dtypes of the per-layer param tree of `task`, without allocating."""
    model = TASKS[task][0](config, param_dtype=param_dtype)
    return jax.eval_shape(lambda: init_params(model, task))


def params_from_hf_state(state: dict[str, np.ndarray], config: RobertaConfig, task: str, *,
                         source: str, param_dtype=jnp.float32, seed: int = 0) -> dict:
    """Fill `task`'s param tree from a Hugging Face state dict.

    Encoder weights must all be there with the right shapes; a pooler or task head the checkpoint
    lacks is freshly initialised (as `transformers` does) and named in a warning.
    """
    available = _normalise(state, source)
    target = flax.traverse_util.flatten_dict(abstract_params(config, task, param_dtype))
    params, missing = {}, []
    for path, spec in target.items():
        key, transposed = hf_key(path)
        rel = _encoder_relative(key)
        if rel not in available:
            missing.append(path)
            continue
        array = available.pop(rel)
        if transposed:
            array = array.T
        if array.shape != spec.shape:
            raise UserError(
                f"{source}: weight {key} has shape {list(array.shape)} but the config implies "
                f"{list(spec.shape)}; the config.json and the weights do not belong together")
        params[path] = np.asarray(array).astype(spec.dtype)

    essential = [hf_key(p)[0] for p in missing if not _NEWLY_INITIALISABLE.match(
        _encoder_relative(hf_key(p)[0]))]
    if essential:
        raise UserError(f"{source}: not a complete RoBERTa checkpoint: {len(essential)} encoder "
                        f"weights are missing, e.g. {', '.join(essential[:3])}")
    if missing:
        model = TASKS[task][0](config, param_dtype=param_dtype)
        fresh = flax.traverse_util.flatten_dict(init_params(model, task, seed))
        for path in missing:
            params[path] = np.asarray(fresh[path])
        log.warning("%s: newly initialised (not in the checkpoint): %s", source,
                    ", ".join(sorted({hf_key(p)[0].rsplit(".", 1)[0] for p in missing})))
    if available:
        log.info("%s: not used by a %s model: %s", source, task, ", ".join(sorted(available)))
    return flax.traverse_util.unflatten_dict(params)


def _normalise(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Drop the `roberta.` prefix, buffers and tied copies (after checking they are copies)."""
    out = {_encoder_relative(k): v for k, v in state.items()}
    decoder = out.get("lm_head.decoder.weight")
    embedding = out.get("embeddings.word_embeddings.weight")
    if decoder is not None and embedding is not None and not np.array_equal(decoder, embedding):
        raise UserError(f"{source}: lm_head.decoder.weight differs from the word embedding; "
                        "RoBERTa ties them and this project supports only tied decoders")
    if "lm_head.bias" not in out and "lm_head.decoder.bias" in out:
        out["lm_head.bias"] = out["lm_head.decoder.bias"]
    for key in _TIED_OR_BUFFERS:
        out.pop(key, None)
    return out


# ------------------------------------------------------------------------------ params -> state

def hf_state_from_params(params: dict, config: RobertaConfig) -> dict[str, np.ndarray]:
    """Our params (per-layer or stacked) -> a Hugging Face state dict with the names and layouts
    `transformers` saves (the tied LM decoder is not stored, as `transformers` does not)."""
    flat = flax.traverse_util.flatten_dict(
        unstack_layers(nn.meta.unbox(params), config.num_hidden_layers))
    state = {}
    for path, value in flat.items():
        key, transposed = hf_key(path)
        array = np.asarray(jax.device_get(value))
        state[key] = np.ascontiguousarray(array.T if transposed else array)
    return state


def task_of_hf_state(state: dict[str, np.ndarray]) -> str:
    """The task whose head a state dict carries (what `from_pretrained` loads by default)."""
    keys = set(state)
    if any(k.startswith("lm_head.") for k in keys):
        return "masked-lm"
    if any(k.startswith("qa_outputs.") for k in keys):
        return "question-answering"
    if any(k.startswith("classifier.out_proj.") for k in keys):
        return "sequence-classification"
    if "classifier.weight" in keys:
        out = state["classifier.weight"].shape[0]
        return "multiple-choice" if out == 1 and any("pooler" in k for k in keys) else \
            "token-classification"
    return "base"
