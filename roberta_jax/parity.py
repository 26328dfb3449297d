"""Check this install against Hugging Face's PyTorch RoBERTa: random models of every head are
built in `transformers`, saved, loaded here, and run on the same padded batch.

Needs the `torch` extra (torch + transformers); nothing is downloaded.
"""

from __future__ import annotations

import tempfile

import numpy as np

from roberta_jax.errors import UserError

HF_CLASSES = {
    "base": "RobertaModel",
    "masked-lm": "RobertaForMaskedLM",
    "sequence-classification": "RobertaForSequenceClassification",
    "token-classification": "RobertaForTokenClassification",
    "question-answering": "RobertaForQuestionAnswering",
    "multiple-choice": "RobertaForMultipleChoice",
}
OUTPUTS = {"base": ("last_hidden_state", "pooler_output"),
           "question-answering": ("start_logits", "end_logits")}
# A small config with odd sizes: nothing may rely on powers of two.
SMALL = dict(vocab_size=99, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
             intermediate_size=37, max_position_embeddings=40, type_vocab_size=1,
             layer_norm_eps=1e-5)


def _import_reference():
    try:
        import torch
        import transformers
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        raise UserError("the parity check needs torch and transformers: "
                        "pip install -e '.[torch]'") from None
    return torch, transformers


def random_hf_model(task: str, seed: int = 0, num_labels: int = 3, **config):
    """A transformers model of `task` whose every parameter, biases and LayerNorms included, is
    nonzero noise, so a misplaced bias or a transposed kernel cannot hide."""
    torch, transformers = _import_reference()
    torch.manual_seed(seed)
    hf_config = transformers.RobertaConfig(num_labels=2 if task == "question-answering"
                                           else num_labels, **{**SMALL, **config})
    model = getattr(transformers, HF_CLASSES[task])(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = name.endswith(("LayerNorm.weight", "layer_norm.weight"))
            p.copy_(torch.randn_like(p) * (0.5 if is_norm_scale else 0.1) + float(is_norm_scale))
    return model


def padded_batch(vocab_size: int, batch: int = 3, length: int = 9, choices: int | None = None,
                 pad_id: int = 1, seed: int = 0):
    """Random ids (never the pad id) starting with <s>, rows padded at the end to various
    lengths."""
    rng = np.random.default_rng(seed)
    shape = (batch, length) if choices is None else (batch, choices, length)
    ids = rng.integers(3, vocab_size, size=shape)
    mask = np.ones(shape, np.int64)
    lengths = rng.integers(2, length + 1, size=shape[:-1])
    lengths.reshape(-1)[0] = length  # at least one unpadded row
    for index in np.ndindex(*shape[:-1]):
        ids[index][lengths[index]:] = pad_id
        mask[index][lengths[index]:] = 0
    ids[..., 0] = 0
    return ids, mask


def hf_outputs(model, task, ids, mask) -> dict[str, np.ndarray]:
    torch, _ = _import_reference()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return {name: getattr(out, name).numpy() for name in OUTPUTS.get(task, ("logits",))}


def our_outputs(model, params, task, ids, mask) -> dict[str, np.ndarray]:
    out = model.apply({"params": params}, np.asarray(ids, np.int32),
                      attention_mask=np.asarray(mask, np.int32), deterministic=True)
    return {name: np.asarray(getattr(out, name), np.float32)
            for name in OUTPUTS.get(task, ("logits",))}


def check(seed: int = 0) -> dict[str, float]:
    """Max abs difference of every output of every head, ours vs transformers, in fp32."""
    from roberta_jax.pretrained import from_pretrained
    worst = {}
    for task in HF_CLASSES:
        reference = random_hf_model(task, seed=seed)
        ids, mask = padded_batch(SMALL["vocab_size"], seed=seed,
                                 choices=3 if task == "multiple-choice" else None)
        with tempfile.TemporaryDirectory() as folder:
            reference.save_pretrained(folder)
            model, params = from_pretrained(folder, task=task)
        want, got = hf_outputs(reference, task, ids, mask), our_outputs(model, params, task, ids,
                                                                         mask)
        for name in want:
            worst[f"{task}.{name}"] = float(np.max(np.abs(got[name] - want[name])))
    return worst
