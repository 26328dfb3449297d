"""The RoBERTa encoder and its task heads as pure flax linen modules.

Parameter names mirror Hugging Face's PyTorch module tree (`roberta/encoder/layer/3/attention/
self/query/kernel` is `roberta.encoder.layer.3.attention.self.query.weight` transposed), so
conversion is a mechanical renaming. Every parameter carries logical axis names (`embed`,
`mlp`, `joined_kv`, `vocab`, `positions`, `token_types`, `norm`, `labels`, and `layers` when
scanned), and the large activations are constrained by name (`batch`, `length`, `embed`,
`mlp`, `vocab`); the pretraining config's `mesh.logical_rules` map these onto a mesh, and
without rules and a mesh they do nothing. No I/O, no training policy, no global state here.

Packed rows: every model also takes `segment_ids` [b, l] (0 = padding, 1, 2, ... =
the examples sharing the row, each contiguous) in place of `attention_mask`. Attention is then
block-diagonal, positions restart at pad_token_id + 1 for each example, and the heads that read
one vector per sequence read it at `segment_starts` [b, k] (each example's `<s>`), giving one
output per slot: a row holding one example computes exactly what the unpacked model does.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax.config import RobertaConfig

Dtype = Any


@jax.custom_vjp
def gelu(x):
    """Exact (erf) GELU, as RoBERTa uses. Its gradient is written out so that the backward pass
    keeps only `x`: autodiff of the erf form also keeps the erf and exp terms, two more tensors
    of the FFN's width per layer (300 MB at roberta-base, batch 8 x 128), for no saved work."""
    return jax.nn.gelu(x, approximate=False)


def _gelu_forward(x):
    return gelu(x), x


def _gelu_backward(x, grad):
    # d/dx [x * Phi(x)] = Phi(x) + x * phi(x), computed in fp32 for half-precision inputs.
    x32 = x.astype(jnp.float32)
    cdf = 0.5 * (1.0 + jax.lax.erf(x32 * (2.0 ** -0.5)))
    pdf = jnp.exp(-0.5 * x32 * x32) * (2.0 * jnp.pi) ** -0.5
    return ((cdf + x32 * pdf) * grad.astype(jnp.float32)).astype(grad.dtype),


gelu.defvjp(_gelu_forward, _gelu_backward)

ACTIVATION_FNS = {
    "gelu": gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def _mix32(x):
    """murmur3's 32-bit finaliser: a bijection of uint32 in which every input bit flips every
    output bit with probability close to 1/2."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _hashed_bits(key, lead: tuple[int, ...], width: int) -> jax.Array:
    """uint32 [*lead, width] from a counter hash of (key, leading index, column): elementwise
    integer arithmetic that XLA fuses into its consumer. jax.random.bits (threefry, 20 rounds
    in a loop per draw) doubled the compile time of a training step and took a tenth of its
    run time on CPU; dropout masks need independent fair bits, not a cipher."""
    k = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    rows = jnp.zeros((1,), jnp.uint32)
    if lead:  # one counter over all the leading dims, [*lead, 1]
        strides = np.cumprod((1,) + lead[::-1])[:-1][::-1]
        rows = sum(jax.lax.broadcasted_iota(jnp.uint32, (*lead, 1), d) * jnp.uint32(stride)
                   for d, stride in enumerate(strides))
    columns = jax.lax.iota(jnp.uint32, width) * jnp.uint32(0x9E3779B9) + k[-1]
    return _mix32(_mix32(_mix32(rows ^ k[0]) ^ columns))


class Dropout(nn.Module):
    """Inverted dropout, as nn.Dropout computes it, from cheap random bits: each 32-bit word of
    a keyed counter hash (_hashed_bits) decides two elements, 16 bits each, so the rate is
    exact to 1/65536. Random numbers are a visible share of a training step (attention
    probabilities alone are [b, h, l, l]) and of its compile time."""
    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        *lead, last = x.shape
        words = _hashed_bits(self.make_rng("dropout"), tuple(lead), -(-last // 2))
        halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*lead, -1)[..., :last]
        keep = halves >= jnp.uint16(round(self.rate * 65536))
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x)).astype(x.dtype)


# Logical names of activations, constrained at block boundaries so the compiler keeps the layout
# the sharding rules ask for.
BATCH_LENGTH_EMBED = ("batch", "length", "embed")


# ------------------------------------------------------------------------------------- outputs

@flax.struct.dataclass
class BaseOutput:
    last_hidden_state: jax.Array
    pooler_output: jax.Array | None = None


@flax.struct.dataclass
class MaskedLMOutput:
    logits: jax.Array
    last_hidden_state: jax.Array


@flax.struct.dataclass
class ClassifierOutput:
    """Sequence classification [b, labels], token classification [b, l, labels] or multiple
    choice [b, choices]."""
    logits: jax.Array
    last_hidden_state: jax.Array


@flax.struct.dataclass
class QuestionAnsweringOutput:
    start_logits: jax.Array
    end_logits: jax.Array
    last_hidden_state: jax.Array


# ---------------------------------------------------------------------------------- utilities

def position_ids_from_input_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """RoBERTa's positions: real tokens count up from pad_token_id + 1, pads sit at pad_token_id.

    Derived from the ids (not 0..L-1), which is why the table has 514 rows for 512 tokens.
    """
    is_token = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(is_token, axis=-1) * is_token + pad_token_id


def position_ids_from_segments(segment_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """RoBERTa's positions in a packed row: each segment counts from pad_token_id + 1 as if it
    were alone in the row; padding (segment 0) sits at pad_token_id. Segments are contiguous."""
    is_token = segment_ids > 0
    count = jnp.cumsum(is_token.astype(jnp.int32), axis=-1)  # tokens so far in the row
    previous = jnp.pad(segment_ids[..., :-1], [(0, 0)] * (segment_ids.ndim - 1) + [(1, 0)])
    first = is_token & (segment_ids != previous)
    # Tokens of the row before each one's segment: fixed at the segment's first token.
    before = jax.lax.cummax(jnp.where(first, count - 1, 0), axis=segment_ids.ndim - 1)
    return jnp.where(is_token, count - before, 0) + pad_token_id


def attention_bias(attention_mask=None, segment_ids=None) -> jax.Array:
    """The additive attention bias: 0 where a query may attend to a key, a large negative
    number elsewhere (not -inf, so a query that may attend nowhere gets a uniform softmax
    instead of NaN, as in Hugging Face). [b, 1, 1, k] from a padding mask; block-diagonal
    [b, 1, q, k] from segment ids (a token attends to its own segment only)."""
    if segment_ids is not None:
        allowed = ((segment_ids[:, :, None] == segment_ids[:, None, :])
                   & (segment_ids[:, None, :] > 0))[:, None]
    else:
        allowed = attention_mask[:, None, None, :] > 0
    return jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def _large_negative(dtype) -> float:
    """The masked-out bias of the fused kernels: the dtype's lowest in fp32; in half precision
    the values jax's own cuDNN path uses (cuDNN mishandles the difference of two values near
    the lowest, which a query that may attend nowhere produces)."""
    return {jnp.dtype(jnp.bfloat16): -2.0 ** 41, jnp.dtype(jnp.float16): -2.0 ** 15}.get(
        jnp.dtype(dtype), float(jnp.finfo(jnp.float32).min))


def _at(hidden: jax.Array, positions: jax.Array | None) -> jax.Array:
    """The vectors at `positions` [b, k] ([b, k, d]), or at position 0 ([b, d]) without them."""
    if positions is None:
        return hidden[:, 0]
    return jnp.take_along_axis(hidden, positions[..., None], axis=1)


def _normal(config: RobertaConfig):
    return nn.initializers.normal(stddev=config.initializer_range)


def _dense(config, features, names, dtype, param_dtype, name):
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(_normal(config), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[-1:]),
        name=name,
    )


def _layer_norm(config, dtype, param_dtype, name):
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def _embedding_init(config: RobertaConfig, zero_row: int | None):
    """Normal init, with the padding row zeroed as fairseq and Hugging Face do."""
    base = _normal(config)

    def init(key, shape, dtype=jnp.float32):
        table = base(key, shape, dtype)
        if zero_row is not None and zero_row < shape[0]:
            table = table.at[zero_row].set(0)
        return table

    return init


def _embed(config, num, names, zero_row, dtype, param_dtype, name):
    return nn.Embed(
        num,
        config.hidden_size,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(_embedding_init(config, zero_row), names),
        name=name,
    )


# ---------------------------------------------------------------------------------- the encoder

class RobertaEmbeddings(nn.Module):
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        self.word_embeddings = _embed(c, c.vocab_size, ("vocab", "embed"), c.pad_token_id,
                                      self.dtype, self.param_dtype, "word_embeddings")
        self.position_embeddings = _embed(c, c.max_position_embeddings, ("positions", "embed"),
                                          c.pad_token_id, self.dtype, self.param_dtype,
                                          "position_embeddings")
        self.token_type_embeddings = _embed(c, c.type_vocab_size, ("token_types", "embed"), None,
                                            self.dtype, self.param_dtype, "token_type_embeddings")
        self.LayerNorm = _layer_norm(c, self.dtype, self.param_dtype, "LayerNorm")
        self.dropout = Dropout(c.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        pad = self.config.pad_token_id

        def lookup(table, ids, frozen_row=None):
            vectors = table(ids)
            if frozen_row is not None:
                # The padding row gets no gradient, as torch's Embedding(padding_idx=...) in
                # fairseq and transformers: a head that reads padded positions (QA logits) would
                # otherwise move it, and fine-tuning would part from theirs.
                vectors = jnp.where((ids == frozen_row)[..., None],
                                    jax.lax.stop_gradient(vectors), vectors)
            return nn.with_logical_constraint(vectors, BATCH_LENGTH_EMBED)
        x = (lookup(self.word_embeddings, input_ids, pad)
             + lookup(self.position_embeddings, position_ids, pad)
             + lookup(self.token_type_embeddings, token_type_ids))
        x = self.LayerNorm(x)
        return self.dropout(x, deterministic=deterministic)

    def attend(self, hidden):
        """Logits against the word embedding: the MLM decoder is tied to it."""
        table = self.word_embeddings.embedding
        # Gather the table's FSDP shards first, as FSDP does for any weight it uses: left to
        # itself, XLA's partitioner produced wrong gradients for this product on a
        # data x fsdp x tensor mesh (jax 0.10), while the forward pass was right.
        table = nn.with_logical_constraint(table, ("vocab", None))
        return jnp.einsum("...d,vd->...v", hidden.astype(self.dtype), table.astype(self.dtype))


class RobertaSelfAttention(nn.Module):
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_bias, deterministic: bool):
        c = self.config
        heads, head_dim = c.num_attention_heads, c.head_dim

        def project(name):
            y = _dense(c, c.hidden_size, ("embed", "joined_kv"), self.dtype, self.param_dtype,
                       name)(x)
            return y.reshape(*y.shape[:-1], heads, head_dim)

        query, key, value = project("query"), project("key"), project("value")
        fused = c.attention_implementation != "eager" and (
            deterministic or c.attention_probs_dropout_prob == 0)
        if fused:
            # An additive bias rather than a boolean mask: a fully padded row then attends
            # uniformly, as the eager path does, instead of becoming zeros. Block-diagonal for
            # packed rows ([b, 1, q, k]); cuDNN takes it as is.
            bias = jnp.where(attention_bias == 0, 0, _large_negative(query.dtype)).astype(
                query.dtype)
            context = jax.nn.dot_product_attention(
                query, key, value, bias=bias,
                implementation=None if c.attention_implementation == "jax" else "cudnn")
            return context.reshape(*context.shape[:-2], c.hidden_size)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) * (head_dim ** -0.5)
        # Softmax in fp32 whatever the compute dtype: bf16 scores lose the small probabilities.
        probs = jax.nn.softmax(scores.astype(jnp.float32) + attention_bias, axis=-1)
        probs = Dropout(c.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), value)
        return context.reshape(*context.shape[:-2], c.hidden_size)


class RobertaAttention(nn.Module):
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_bias, deterministic: bool):
        c = self.config
        context = RobertaSelfAttention(c, self.dtype, self.param_dtype, name="self")(
            x, attention_bias, deterministic)
        # Hugging Face nests the output projection and the post-attention LayerNorm under
        # attention/output; the names follow so conversion stays a renaming.
        return RobertaResidualOutput(c, ("joined_kv", "embed"), self.dtype, self.param_dtype,
                                     name="output")(context, x, deterministic)


class RobertaResidualOutput(nn.Module):
    """Dense, dropout, residual add, LayerNorm: the tail of both sublayers (post-LN)."""
    config: RobertaConfig
    kernel_axes: tuple[str, str]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        c = self.config
        y = _dense(c, c.hidden_size, self.kernel_axes, self.dtype, self.param_dtype, "dense")(x)
        y = Dropout(c.hidden_dropout_prob)(y, deterministic=deterministic)
        return _layer_norm(c, self.dtype, self.param_dtype, "LayerNorm")(y + residual)


class RobertaIntermediate(nn.Module):
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        y = _dense(c, c.intermediate_size, ("embed", "mlp"), self.dtype, self.param_dtype,
                   "dense")(x)
        y = nn.with_logical_constraint(y, ("batch", "length", "mlp"))
        return ACTIVATION_FNS[c.hidden_act](y)


class RobertaLayer(nn.Module):
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_bias, deterministic: bool):
        c = self.config
        x = RobertaAttention(c, self.dtype, self.param_dtype, name="attention")(
            x, attention_bias, deterministic)
        y = RobertaIntermediate(c, self.dtype, self.param_dtype, name="intermediate")(x)
        x = RobertaResidualOutput(c, ("mlp", "embed"), self.dtype, self.param_dtype,
                                  name="output")(y, x, deterministic)
        return nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)


class _ScannedLayer(RobertaLayer):
    """RobertaLayer in the (carry, _) -> (carry, None) form nn.scan wants; same parameters."""

    def __call__(self, x, attention_bias, deterministic: bool):
        return super().__call__(x, attention_bias, deterministic), None


class RobertaEncoder(nn.Module):
    """The layer stack: a Python loop (params under layer/0, layer/1, ...) or, with scan_layers,
    one nn.scan (every parameter stacked on a leading 'layers' axis under layer/) that compiles
    one layer whatever the depth. remat_policy names a jax.checkpoint_policies entry, or "full"."""
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None

    @nn.compact
    def __call__(self, x, attention_bias, deterministic: bool):
        c = self.config
        if self.scan_layers:
            body = _ScannedLayer
            if self.remat_policy:
                body = nn.remat(body, policy=_checkpoint_policy(self.remat_policy),
                                static_argnums=(3,), prevent_cse=False)
            stack = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=c.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(c, self.dtype, self.param_dtype, name="layer")(
                x, attention_bias, deterministic)
            return x
        layer_cls = RobertaLayer
        if self.remat_policy:
            layer_cls = nn.remat(RobertaLayer, policy=_checkpoint_policy(self.remat_policy),
                                 static_argnums=(3,))
        return _LayerList(layer_cls, c, self.dtype, self.param_dtype, name="layer")(
            x, attention_bias, deterministic)


class _LayerList(nn.Module):
    """Holds layers named "0", "1", ... so the tree reads encoder/layer/i like Hugging Face's."""
    layer_cls: Any
    config: RobertaConfig
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, attention_bias, deterministic):
        for i in range(self.config.num_hidden_layers):
            x = self.layer_cls(self.config, self.dtype, self.param_dtype, name=str(i))(
                x, attention_bias, deterministic)
        return x


# remat_policy values: "full", or a jax.checkpoint_policies entry that is itself a policy (the
# others there build one from names or from two policies).
REMAT_POLICIES = ("full", "nothing_saveable", "everything_saveable", "dots_saveable",
                  "checkpoint_dots", "dots_with_no_batch_dims_saveable",
                  "checkpoint_dots_with_no_batch_dims")


def _checkpoint_policy(name: str):
    if name == "full":
        return None  # save nothing: recompute the whole layer in the backward pass
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}: use one of {', '.join(REMAT_POLICIES)}")
    return getattr(jax.checkpoint_policies, name)


class RobertaPooler(nn.Module):
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, first):
        """`first`: the `<s>` vectors [..., d]."""
        c = self.config
        return jnp.tanh(_dense(c, c.hidden_size, ("embed", "mlp"), self.dtype, self.param_dtype,
                               "dense")(first))


class RobertaModel(nn.Module):
    """The bare encoder (Hugging Face's RobertaModel): embeddings, layers, optional pooler.
    The task models wrap it under the name `roberta`."""
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    add_pooling_layer: bool = True
    scan_layers: bool = False
    remat_policy: str | None = None

    def setup(self):
        c = self.config
        self.embeddings = RobertaEmbeddings(c, self.dtype, self.param_dtype)
        self.encoder = RobertaEncoder(c, self.dtype, self.param_dtype, self.scan_layers,
                                      self.remat_policy)
        if self.add_pooling_layer:
            self.pooler = RobertaPooler(c, self.dtype, self.param_dtype)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, *, segment_ids=None, segment_starts=None):
        """With `segment_ids` (packed rows) the pooler reads each segment's first token at
        `segment_starts` [b, k] ([b, k, d] out); otherwise position 0 ([b, d])."""
        c = self.config
        if segment_ids is not None and attention_mask is not None:
            raise ValueError("give segment_ids (packed rows) or attention_mask, not both: "
                             "segment 0 is the padding")
        if segment_ids is None and attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = (position_ids_from_input_ids(input_ids, c.pad_token_id)
                            if segment_ids is None
                            else position_ids_from_segments(segment_ids, c.pad_token_id))
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        x = nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)
        x = self.encoder(x, attention_bias(attention_mask, segment_ids), deterministic)
        pooled = self.pooler(_at(x, segment_starts)) if self.add_pooling_layer else None
        return BaseOutput(last_hidden_state=x, pooler_output=pooled)

    def attend(self, hidden):
        return self.embeddings.attend(hidden)


# ------------------------------------------------------------------------------------- heads

class _Head(nn.Module):
    """Shared fields of the task models; `roberta` is the encoder under Hugging Face's name."""
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None

    def _encoder(self, add_pooling_layer: bool):
        return RobertaModel(self.config, self.dtype, self.param_dtype, add_pooling_layer,
                             self.scan_layers, self.remat_policy, name="roberta")

    def _hidden(self, input_ids, attention_mask, token_type_ids, position_ids, deterministic,
                segment_ids):
        return self._encoder(add_pooling_layer=False)(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic,
            segment_ids=segment_ids).last_hidden_state

    @property
    def _classifier_dropout(self) -> float:
        c = self.config
        return c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout


class RobertaLMHead(nn.Module):
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden, attend):
        c = self.config
        x = _dense(c, c.hidden_size, ("embed", "mlp"), self.dtype, self.param_dtype,
                   "dense")(hidden)
        x = ACTIVATION_FNS["gelu"](x)
        x = _layer_norm(c, self.dtype, self.param_dtype, "layer_norm")(x)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               ("vocab",)),
                          (c.vocab_size,), self.param_dtype)
        return add_vocabulary_bias(attend(x), bias.astype(self.dtype))


@jax.custom_vjp
def add_vocabulary_bias(logits, bias):
    """logits + bias, whose gradient sums the logits' gradient over every position as a
    matrix-vector product: XLA's CPU backend (jax 0.10) hands a plain sum over the leading
    axis to YNNPACK, which took 449 ms for 1024 x 50265 positions against 8 ms this way."""
    return logits + bias


def _add_vocabulary_bias_forward(logits, bias):
    return logits + bias, None


def _add_vocabulary_bias_backward(_, grad):
    rows = grad.reshape(-1, grad.shape[-1])
    ones = jnp.ones((rows.shape[0],), rows.dtype)
    return grad, jnp.dot(ones, rows, preferred_element_type=jnp.float32).astype(grad.dtype)


add_vocabulary_bias.defvjp(_add_vocabulary_bias_forward, _add_vocabulary_bias_backward)


class RobertaForMaskedLM(_Head):
    """Masked LM. With `masked_positions` [b, p], logits are computed only at those positions
    ([b, p, V]), as fairseq does in training; otherwise at every position ([b, l, V])."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 masked_positions=None, deterministic: bool = True, *, segment_ids=None):
        roberta = self._encoder(add_pooling_layer=False)
        hidden = roberta(input_ids, attention_mask, token_type_ids, position_ids,
                         deterministic, segment_ids=segment_ids).last_hidden_state
        selected = hidden
        if masked_positions is not None:
            selected = jnp.take_along_axis(hidden, masked_positions[..., None], axis=1)
        logits = RobertaLMHead(self.config, self.dtype, self.param_dtype, name="lm_head")(
            selected, roberta.attend)
        return MaskedLMOutput(logits=logits, last_hidden_state=hidden)


class RobertaClassificationHead(nn.Module):
    config: RobertaConfig
    dropout_rate: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, first, deterministic: bool):
        """`first`: the `<s>` vectors [..., d] (this head does not use the pooler)."""
        c = self.config
        x = first
        x = Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = jnp.tanh(_dense(c, c.hidden_size, ("embed", "mlp"), self.dtype, self.param_dtype,
                            "dense")(x))
        x = Dropout(self.dropout_rate)(x, deterministic=deterministic)
        return _dense(c, c.num_labels, ("mlp", "labels"), self.dtype, self.param_dtype,
                      "out_proj")(x)


class RobertaForSequenceClassification(_Head):
    """Sentence (pair) classification, or regression when num_labels == 1 (STS-B). Logits are
    [b, labels], or [b, k, labels] for packed rows (one per segment start)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, *, segment_ids=None, segment_starts=None):
        _check_packed(segment_ids, segment_starts)
        hidden = self._hidden(input_ids, attention_mask, token_type_ids, position_ids,
                              deterministic, segment_ids)
        logits = RobertaClassificationHead(self.config, self._classifier_dropout, self.dtype,
                                           self.param_dtype, name="classifier")(
            _at(hidden, segment_starts), deterministic)
        return ClassifierOutput(logits=logits, last_hidden_state=hidden)


def _check_packed(segment_ids, segment_starts):
    if (segment_ids is None) != (segment_starts is None):
        raise ValueError("packed rows need both segment_ids and segment_starts (where each "
                         "segment's <s> is)")


class RobertaForTokenClassification(_Head):

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, *, segment_ids=None):
        c = self.config
        hidden = self._hidden(input_ids, attention_mask, token_type_ids, position_ids,
                              deterministic, segment_ids)
        x = Dropout(self._classifier_dropout)(hidden, deterministic=deterministic)
        logits = _dense(c, c.num_labels, ("embed", "labels"), self.dtype, self.param_dtype,
                        "classifier")(x)
        return ClassifierOutput(logits=logits, last_hidden_state=hidden)


class RobertaForQuestionAnswering(_Head):
    """Extractive QA: a start and an end logit per token (the config's two labels)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, *, segment_ids=None):
        c = self.config
        hidden = self._hidden(input_ids, attention_mask, token_type_ids, position_ids,
                              deterministic, segment_ids)
        logits = _dense(c, c.num_labels, ("embed", "labels"), self.dtype, self.param_dtype,
                        "qa_outputs")(hidden)
        return QuestionAnsweringOutput(start_logits=logits[..., 0], end_logits=logits[..., 1],
                                       last_hidden_state=hidden)


class RobertaForMultipleChoice(_Head):
    """Inputs are [batch, choices, length]; each choice is encoded on its own, scored from the
    pooler output, and the logits come back as [batch, choices]. Packed rows ([b, l] with
    segment_ids, each segment one choice of some example) give a score per segment start,
    [b, k]; the caller knows which example and choice each slot holds."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, *, segment_ids=None, segment_starts=None):
        c = self.config
        _check_packed(segment_ids, segment_starts)
        if segment_ids is not None:
            out = self._encoder(add_pooling_layer=True)(
                input_ids, attention_mask, token_type_ids, position_ids, deterministic,
                segment_ids=segment_ids, segment_starts=segment_starts)
            x = Dropout(c.hidden_dropout_prob)(out.pooler_output, deterministic=deterministic)
            scores = _dense(c, 1, ("embed", "labels"), self.dtype, self.param_dtype,
                            "classifier")(x)
            return ClassifierOutput(logits=scores[..., 0], last_hidden_state=out.last_hidden_state)
        batch, choices, length = input_ids.shape

        def flat(x):
            return None if x is None else x.reshape(batch * choices, length)

        out = self._encoder(add_pooling_layer=True)(
            flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
            deterministic)
        x = Dropout(c.hidden_dropout_prob)(out.pooler_output, deterministic=deterministic)
        scores = _dense(c, 1, ("embed", "labels"), self.dtype, self.param_dtype, "classifier")(x)
        return ClassifierOutput(logits=scores.reshape(batch, choices),
                                last_hidden_state=out.last_hidden_state.reshape(
                                    batch, choices, length, -1))


# Head name (the `task` of from_pretrained / export) -> (module class, Hugging Face
# architecture name). One source of truth for both. Fine-tuning datasets are tasks.NAMED_TASKS.
HEADS: dict[str, tuple[type[nn.Module], str]] = {
    "base": (RobertaModel, "RobertaModel"),
    "masked-lm": (RobertaForMaskedLM, "RobertaForMaskedLM"),
    "sequence-classification": (RobertaForSequenceClassification,
                                "RobertaForSequenceClassification"),
    "token-classification": (RobertaForTokenClassification, "RobertaForTokenClassification"),
    "question-answering": (RobertaForQuestionAnswering, "RobertaForQuestionAnswering"),
    "multiple-choice": (RobertaForMultipleChoice, "RobertaForMultipleChoice"),
}
TASKS = HEADS  # the name users know (roberta_jax.TASKS)
