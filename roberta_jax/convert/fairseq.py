"""fairseq RoBERTa checkpoints (`model.pt` + `dict.txt`) -> Hugging Face names.

Handles both key styles (`encoder.` and the older `decoder.` prefix, `layernorm_embedding` and
`emb_layer_norm`), fused `in_proj` attention weights, and classification heads. The pickle is
read by our restricted reader: `args` / `cfg` objects become plain data, nothing runs.

Vocabulary: fairseq ids are `<s> <pad> </s> <unk>`, then `dict.txt` in file order (by frequency),
then `<mask>`. The embedding rows keep that order, which is also the order of Hugging Face's
roberta vocab.json; for GPT-2 BPE models, vocab.json is rebuilt by mapping each dict.txt symbol
(a GPT-2 token id) through GPT-2's `encoder.json`. XLM-R style models keep their
`sentencepiece.bpe.model`, whose piece p is fairseq id p + 1.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np

from roberta_jax import fs
from roberta_jax.config import RobertaConfig
from roberta_jax.convert.torch_pickle import load_torch_checkpoint, to_plain
from roberta_jax.errors import UserError

log = logging.getLogger("roberta_jax")

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"

_LAYER_RENAMES = (
    ("self_attn.q_proj.", "attention.self.query."),
    ("self_attn.k_proj.", "attention.self.key."),
    ("self_attn.v_proj.", "attention.self.value."),
    ("self_attn.out_proj.", "attention.output.dense."),
    ("self_attn_layer_norm.", "attention.output.LayerNorm."),
    ("fc1.", "intermediate.dense."),
    ("fc2.", "output.dense."),
    ("final_layer_norm.", "output.LayerNorm."),
)
_EMBEDDING_RENAMES = {
    "embed_tokens.weight": "roberta.embeddings.word_embeddings.weight",
    "embed_positions.weight": "roberta.embeddings.position_embeddings.weight",
    "layernorm_embedding.weight": "roberta.embeddings.LayerNorm.weight",
    "layernorm_embedding.bias": "roberta.embeddings.LayerNorm.bias",
    "emb_layer_norm.weight": "roberta.embeddings.LayerNorm.weight",
    "emb_layer_norm.bias": "roberta.embeddings.LayerNorm.bias",
}
_LM_HEAD_RENAMES = {
    "dense.weight": "lm_head.dense.weight", "dense.bias": "lm_head.dense.bias",
    "layer_norm.weight": "lm_head.layer_norm.weight", "layer_norm.bias": "lm_head.layer_norm.bias",
    "weight": "lm_head.decoder.weight", "bias": "lm_head.bias",
}


def find_checkpoint(path: fs.PathLike) -> fs.Path | None:
    """A fairseq checkpoint file named by `path`, or `model.pt` inside the directory `path`."""
    path = fs.as_path(path)
    if path.is_file() and path.suffix == ".pt":
        return path
    if path.is_dir() and (path / "model.pt").is_file():
        return path / "model.pt"
    return None


def read_fairseq(checkpoint: fs.PathLike, head: str | None = None):
    """-> (config, state dict with Hugging Face names, {file name: bytes} of tokenizer files)."""
    checkpoint = fs.as_path(checkpoint)
    raw = load_torch_checkpoint(checkpoint)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise UserError(f"{checkpoint}: not a fairseq checkpoint (no 'model' state dict)")
    weights = raw["model"]
    state, heads = _rename(weights, checkpoint)
    labels = _pick_head(state, heads, head, checkpoint)
    hparams = _hyperparameters(raw)
    config = _config_from(state, hparams, labels, checkpoint)
    dictionary = _read_dictionary(checkpoint.parent / "dict.txt", config.vocab_size)
    tokenizer_files = _tokenizer_files(checkpoint.parent, dictionary, config)
    if config.model_type == "xlm-roberta" and "sentencepiece.bpe.model" not in tokenizer_files:
        log.warning("%s: no sentencepiece.bpe.model next to it; the export has no tokenizer",
                    checkpoint)
    # fairseq has no token types: Hugging Face's single row is all zeros.
    state["roberta.embeddings.token_type_embeddings.weight"] = np.zeros(
        (1, config.hidden_size), state["roberta.embeddings.word_embeddings.weight"].dtype)
    return config, state, tokenizer_files


def _rename(weights: dict, source) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    state, heads = {}, {}
    for key, value in weights.items():
        if not isinstance(value, np.ndarray):
            raise UserError(f"{source}: model entry {key} is not a tensor")
        m = re.match(r"^(?:encoder|decoder)\.sentence_encoder\.(.*)$", key)
        if m:
            rest = m.group(1)
            if rest in _EMBEDDING_RENAMES:
                state[_EMBEDDING_RENAMES[rest]] = value
                continue
            layer = re.match(r"^layers\.(\d+)\.(.*)$", rest)
            if layer:
                _rename_layer(int(layer.group(1)), layer.group(2), value, state)
                continue
            if rest.endswith(("version", "_float_tensor")):
                continue
            raise UserError(f"{source}: unexpected weight {key}; not a RoBERTa checkpoint?")
        m = re.match(r"^(?:encoder|decoder)\.lm_head\.(.*)$", key)
        if m and m.group(1) in _LM_HEAD_RENAMES:
            state[_LM_HEAD_RENAMES[m.group(1)]] = value
            continue
        m = re.match(r"^classification_heads\.([^.]+)\.(dense|out_proj)\.(weight|bias)$", key)
        if m:
            heads.setdefault(m.group(1), {})[f"classifier.{m.group(2)}.{m.group(3)}"] = value
            continue
        if key.endswith("version"):
            continue
        raise UserError(f"{source}: unexpected weight {key}; not a RoBERTa checkpoint?")
    if "roberta.embeddings.word_embeddings.weight" not in state:
        raise UserError(f"{source}: no sentence_encoder.embed_tokens; not a RoBERTa checkpoint")
    return state, heads


def _rename_layer(i: int, rest: str, value: np.ndarray, state: dict) -> None:
    prefix = f"roberta.encoder.layer.{i}."
    fused = re.match(r"^self_attn\.in_proj_(weight|bias)$", rest)
    if fused:
        # Older checkpoints fuse q, k, v into one [3H, H] projection, in that order.
        for name, part in zip(("query", "key", "value"), np.split(value, 3, axis=0)):
            state[f"{prefix}attention.self.{name}.{fused.group(1)}"] = part
        return
    for old, new in _LAYER_RENAMES:
        if rest.startswith(old):
            state[prefix + new + rest[len(old):]] = value
            return
    raise UserError(f"unexpected weight in layer {i}: {rest}; not a RoBERTa checkpoint?")


def _pick_head(state, heads, head, source) -> tuple[str, ...] | None:
    if head is None and len(heads) > 1:
        raise UserError(f"{source}: has classification heads {sorted(heads)}; choose one with "
                        "--head NAME")
    if head is not None and head not in heads:
        raise UserError(f"{source}: no classification head {head!r} (it has {sorted(heads)})")
    if not heads:
        return None
    chosen = heads[head or next(iter(heads))]
    state.update(chosen)
    num = chosen["classifier.out_proj.weight"].shape[0]
    return tuple(f"LABEL_{i}" for i in range(num))


def _hyperparameters(raw: dict) -> dict:
    """Model settings from `cfg.model` (newer fairseq) or `args` (older), as a plain dict."""
    cfg = to_plain(raw.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"]
    args = to_plain(raw.get("args"))
    return args if isinstance(args, dict) else {}


def _config_from(state, hparams, labels, source) -> RobertaConfig:
    vocab, hidden = state["roberta.embeddings.word_embeddings.weight"].shape
    positions = state["roberta.embeddings.position_embeddings.weight"].shape[0]
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("roberta.encoder.layer."))
    ffn = state["roberta.encoder.layer.0.intermediate.dense.weight"].shape[0]
    # Head count is not visible in the shapes; every published RoBERTa uses 64-wide heads.
    heads = int(hparams.get("encoder_attention_heads") or hidden // 64)
    activation = hparams.get("activation_fn", "gelu")
    if activation not in ("gelu", "relu"):
        raise UserError(f"{source}: activation_fn {activation!r} is not supported")
    is_spm = (hparams.get("bpe") == "sentencepiece"
              or (source.parent / "sentencepiece.bpe.model").is_file())
    fields = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=ffn, hidden_act=activation,
                  max_position_embeddings=positions,
                  hidden_dropout_prob=float(hparams.get("dropout", 0.1)),
                  attention_probs_dropout_prob=float(hparams.get("attention_dropout", 0.1)),
                  model_type="xlm-roberta" if is_spm else "roberta")
    if labels:
        fields["labels"] = labels
    return RobertaConfig(**fields)


def _read_dictionary(dict_file: fs.Path, vocab_size: int) -> list[str] | None:
    """fairseq's id -> symbol list (specials, dict.txt, <mask>), checked against the weights."""
    if not dict_file.is_file():
        log.warning("%s: not found; the export will have no tokenizer files", dict_file)
        return None
    symbols = list(FAIRSEQ_SPECIALS)
    try:
        lines = dict_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{dict_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for number, line in enumerate(lines, 1):
        parts = line.rstrip().rsplit(" ", 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UserError(f"{dict_file}:{number}: expected 'SYMBOL COUNT', got {line!r}")
        symbols.append(parts[0].replace(" #fairseq:overwrite", ""))
    symbols.append(MASK)
    if len(symbols) != vocab_size:
        raise UserError(f"{dict_file}: gives {len(symbols)} ids (4 specials + {len(lines)} "
                        f"entries + <mask>) but the embedding has {vocab_size} rows; "
                        "this dict.txt belongs to another model")
    return symbols


def _tokenizer_files(folder: fs.Path, symbols: list[str] | None, config) -> dict[str, bytes]:
    if symbols is None:
        return {}
    spm = folder / "sentencepiece.bpe.model"
    if spm.is_file():
        return {"sentencepiece.bpe.model": spm.read_bytes()}
    encoder, merges = folder / "encoder.json", folder / "vocab.bpe"
    if not (encoder.is_file() and merges.is_file()):
        log.warning("%s: no encoder.json + vocab.bpe (GPT-2 BPE) next to the checkpoint; the "
                    "export has no tokenizer files", folder)
        return {}
    gpt2 = {i: token for token, i in json.loads(encoder.read_text(encoding="utf-8")).items()}
    vocab = {}
    for fairseq_id, symbol in enumerate(symbols):
        token = gpt2.get(int(symbol)) if symbol.isdigit() else symbol
        if token is None:
            raise UserError(f"{folder / 'dict.txt'}: symbol {symbol} is not in {encoder}")
        vocab.setdefault(token, fairseq_id)
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False).encode("utf-8"),
            "merges.txt": merges.read_bytes()}
