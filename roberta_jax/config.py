"""`RobertaConfig`: the architecture, with Hugging Face's field names, read from and written to
`config.json`.

Field names and meanings follow `transformers.RobertaConfig` so a user's existing `config.json`
reads as is. Our defaults are roberta-base's (514 positions, one token type, LayerNorm eps 1e-5);
Hugging Face's class defaults differ (512, 2, 1e-12) and `transformers` omits fields equal to its
defaults when it saves, so reading fills missing fields with *its* defaults, not ours.
"""

from __future__ import annotations

import dataclasses
import json
import os

from roberta_jax.errors import UserError

# model_type values whose checkpoints are exactly this architecture (post-LN, RoBERTa positions).
ROBERTA_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")

ATTENTION_IMPLEMENTATIONS = ("eager", "jax", "cudnn")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")

# transformers.RobertaConfig's defaults, used for fields a config.json leaves out.
_HF_DEFAULTS = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=2,
    initializer_range=0.02,
    layer_norm_eps=1e-12,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    classifier_dropout=None,
)


@dataclasses.dataclass(frozen=True)
class RobertaConfig:
    """Architecture hyperparameters. Frozen and hashable, so it can sit on a linen module."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    # None: the classification heads use hidden_dropout_prob.
    classifier_dropout: float | None = None
    # Label names, index = class id; their count is num_labels (1 means regression).
    labels: tuple[str, ...] = ("LABEL_0", "LABEL_1")
    # "roberta", "xlm-roberta" or "camembert": the same network, kept for the export.
    model_type: str = "roberta"
    # How attention is computed (not part of config.json; the weights are the same):
    # "eager": einsums and a softmax, written out; "jax": jax.nn.dot_product_attention, which
    # picks cuDNN's fused kernel on GPU where it can and XLA elsewhere; "cudnn": insist on it.
    # The fused kernels do not expose the probabilities, so attention dropout while training
    # falls back to "eager".
    attention_implementation: str = "eager"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise UserError(f"hidden_act {self.hidden_act!r} is not supported; "
                            f"use one of {ACTIVATIONS}")
        if not self.labels:
            raise UserError("num_labels must be at least 1")
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise UserError(f"attention_implementation {self.attention_implementation!r}: use "
                            f"one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
        if self.max_position_embeddings < self.pad_token_id + 2:
            raise UserError("max_position_embeddings must leave room for RoBERTa's offset "
                            "positions")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position table allows: positions start at pad_token_id + 1."""
        return self.max_position_embeddings - self.pad_token_id - 1

    def replace(self, **changes) -> RobertaConfig:
        """A copy with some fields changed; `num_labels=N` is accepted and names labels LABEL_i."""
        if "num_labels" in changes:
            n = changes.pop("num_labels")
            if n is not None and n != self.num_labels:
                changes.setdefault("labels", tuple(f"LABEL_{i}" for i in range(n)))
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- Hugging Face config.json

    @classmethod
    def from_hf_dict(cls, raw: dict, source: str = "config.json") -> RobertaConfig:
        model_type = raw.get("model_type")
        if model_type not in ROBERTA_MODEL_TYPES:
            raise UserError(
                f"{source}: model_type is {model_type!r}, not a RoBERTa model "
                f"(expected one of {', '.join(ROBERTA_MODEL_TYPES)})")
        values = {k: raw.get(k, default) for k, default in _HF_DEFAULTS.items()}
        if raw.get("tie_word_embeddings") is False:
            raise UserError(f"{source}: tie_word_embeddings is false; RoBERTa ties its LM decoder "
                            "to the word embedding and this project does too")
        if raw.get("is_decoder") or raw.get("add_cross_attention"):
            raise UserError(f"{source}: a decoder / cross-attention RoBERTa is not supported; "
                            "this project implements the encoder")
        if "id2label" in raw:
            id2label = {int(k): v for k, v in raw["id2label"].items()}
            labels = tuple(id2label[i] for i in range(len(id2label)))
        else:
            labels = tuple(f"LABEL_{i}" for i in range(raw.get("num_labels", 2)))
        try:
            return cls(**values, labels=labels, model_type=model_type)
        except TypeError as e:
            raise UserError(f"{source}: unreadable config ({e})") from None

    def to_hf_dict(self, architecture: str | None = None) -> dict:
        out = {"model_type": self.model_type}
        if architecture:
            out["architectures"] = [architecture]
        for name in _HF_DEFAULTS:
            out[name] = getattr(self, name)
        out["id2label"] = {str(i): name for i, name in enumerate(self.labels)}
        out["label2id"] = {name: i for i, name in enumerate(self.labels)}
        if self.num_labels == 1:
            out["problem_type"] = "regression"
        out["tie_word_embeddings"] = True
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RobertaConfig:
        from roberta_jax import fs
        try:
            with fs.as_path(path).open(encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: not a valid JSON config ({e})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: not a JSON object")
        return cls.from_hf_dict(raw, source=str(path))


PRESETS = {
    "roberta-base": RobertaConfig(),
    "roberta-large": RobertaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                   intermediate_size=4096),
    "distilroberta-base": RobertaConfig(num_hidden_layers=6),
    "xlm-roberta-base": RobertaConfig(vocab_size=250002, model_type="xlm-roberta"),
    "xlm-roberta-large": RobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24,
                                       num_attention_heads=16, intermediate_size=4096,
                                       model_type="xlm-roberta"),
}
