"""On a GPU: packed rows through each attention implementation (eager, XLA's
jax.nn.dot_product_attention, cuDNN) give each example's own outputs and gradients in bf16,
and the real packed fine-tuning step for roberta-base runs (examples/s, packed against padded).
A check of packed rows on a GPU image: every attention implementation, cuDNN included.

    python experiments/gpu_packing_check.py          # about 3 minutes on an H200
"""

import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax.config import RobertaConfig
from roberta_jax.data import pack_examples as pack
from roberta_jax.data.tokenizer import pad_batch
from roberta_jax.model import RobertaForSequenceClassification


def environment():
    print(f"jax {jax.__version__}, devices {jax.devices()}, cpus {os.cpu_count()}, "
          f"python {sys.version.split()[0]}", flush=True)
    for name in ("flax", "optax", "orbax.checkpoint", "ml_collections", "torch", "transformers",
                 "tokenizers", "safetensors", "tensorflow", "sentencepiece"):
        try:
            module = importlib.import_module(name)
            print(f"  {name} {getattr(module, '__version__', '?')}", flush=True)
        except Exception as e:
            print(f"  {name}: missing ({type(e).__name__})", flush=True)


def attention_check():
    rng = np.random.default_rng(0)
    sequences = [[0] + list(rng.integers(4, 1000, n - 2)) + [2]
                 for n in rng.integers(3, 60, 24)]
    placement = pack.first_fit([len(s) for s in sequences], 128)
    rows = pack.rows_of(sequences, placement, placement.rows, 128, pack.slots_needed(placement), 1)
    alone_ids, alone_mask = pad_batch(sequences, 64, 1)
    config = RobertaConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=512,
                           max_position_embeddings=130, attention_probs_dropout_prob=0.0,
                           hidden_dropout_prob=0.0)
    eager = RobertaForSequenceClassification(config, dtype=jnp.bfloat16)
    params = eager.init(jax.random.key(0), alone_ids[:1])["params"]
    reference = np.asarray(eager.apply({"params": params}, alone_ids,
                                       attention_mask=alone_mask).logits, np.float32)

    def loss(p, model):
        out = model.apply({"params": p}, rows["input_ids"], segment_ids=rows["segment_ids"],
                          segment_starts=rows["segment_starts"])
        return jnp.sum(out.logits.astype(jnp.float32) ** 2), out.logits

    grads = {}
    for implementation in ("eager", "jax", "cudnn"):
        model = eager.clone(config=config.replace(attention_implementation=implementation))
        try:
            (_, logits), grads[implementation] = jax.jit(jax.value_and_grad(
                lambda p: loss(p, model), has_aux=True))(params)  # noqa: B023 (traced at once)
        except Exception as e:
            print(f"attention {implementation}: FAILED {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:300]}", flush=True)
            continue
        got = pack.unpack_slots(np.asarray(logits, np.float32), placement)
        flat = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.max(jnp.abs(
            a.astype(jnp.float32) - b.astype(jnp.float32))), grads[implementation],
            grads["eager"]))
        print(f"attention {implementation}: packed vs each example alone (eager, padded) max |d| "
              f"= {np.abs(got - reference).max():.4f} (logits up to {np.abs(reference).max():.2f})"
              f"; gradients vs packed eager max |d| = {max(float(x) for x in flat):.4f} (up to "
              f"{max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads['eager'])):.2f})",
              flush=True)


def finetune_steps():
    from roberta_jax.finetune import classification_train_step
    rng = np.random.default_rng(0)
    n = 32 * 40
    lengths = np.clip(rng.lognormal(np.log(24), 0.6, n).astype(int), 5, 128)  # GLUE-like
    sequences = [[0] + list(rng.integers(4, 50000, k - 2)) + [2] for k in lengths]
    labels = rng.integers(0, 2, n)
    print(f"roberta-base fine-tuning, bf16, batch 32, {n} examples of median "
          f"{int(np.median(lengths))} tokens (at most {lengths.max()})", flush=True)
    for packing, attention, dropout in (("on", "eager", None), ("off", "eager", None),
                                        ("on", "cudnn", 0.0)):
        try:
            started = time.perf_counter()
            step, params, opt_state, batches = classification_train_step(
                sequences, labels, 32, "roberta-base", "bfloat16", packing, attention, dropout)
            key = jax.random.key(0)
            params, opt_state, loss = step(params, opt_state, batches[0], key, np.int32(0))
            loss.block_until_ready()
            first = time.perf_counter() - started
            started = time.perf_counter()
            for i, batch in enumerate(batches[1:], 1):
                params, opt_state, loss = step(params, opt_state, batch, key, np.int32(i))
            loss.block_until_ready()
            rate = 32 * (len(batches) - 1) / (time.perf_counter() - started)
            tokens = sum(int(np.prod(b["input_ids"].shape)) for b in batches)
            print(f"packing={packing} attention={attention}: {rate:,.0f} examples/s, "
                  f"set-up + compile + first step {first:.1f} s, {tokens / len(batches):,.0f} "
                  f"positions a step, loss {float(loss):.3f}", flush=True)
        except Exception as e:
            print(f"packing={packing} attention={attention}: FAILED {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:300]}", flush=True)


if __name__ == "__main__":
    environment()
    attention_check()
    finetune_steps()
