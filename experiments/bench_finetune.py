"""Fine-tuning throughput on SST-2-shaped data: single sentences padded to 64 tokens, batch 32,
fp32, the real fine-tuning train step (finetune.make_steps with the classification kind, AdamW
with the GLUE recipe), dropout on. Prints examples/s for the tiny config and roberta-base, and
writes the "finetune" section of BENCHMARKS.md.

    python experiments/bench_finetune.py
"""

import os
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks_md import write_section  # noqa: E402
from roberta_jax import task_kinds, tasks  # noqa: E402
from roberta_jax.config import PRESETS, RobertaConfig  # noqa: E402
from roberta_jax.finetune import make_steps, recipe  # noqa: E402
from roberta_jax.model import RobertaForSequenceClassification  # noqa: E402
from roberta_jax.optim import make_optimizer  # noqa: E402

BATCH, LENGTH, STEPS = 32, 64, 6
MODELS = {
    "tiny (configs/tiny.py: 2 x 64, vocab 1000)": RobertaConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=130),
    "roberta-base (12 x 768, vocab 50265)": PRESETS["roberta-base"],
}


def examples_per_second(config: RobertaConfig) -> tuple[float, float]:
    task = tasks.TASKS["sst2"]
    finetune_config = ml_collections.ConfigDict(dict(
        lr=0.0, warmup_ratio=0.06, b2=0.98, eps=1e-6, weight_decay=-1.0,
        weight_decay_mask="hf", clip_norm=0.0, tfds_data_dir=""))
    kind = task_kinds.for_task(task, finetune_config)
    model = RobertaForSequenceClassification(config.replace(num_labels=2))
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    tx = make_optimizer(recipe(finetune_config, task, 1000))
    _, train_step, _ = make_steps(model, tx, kind)
    step = jax.jit(train_step, donate_argnums=(0, 1))
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, LENGTH, BATCH)  # SST-2 sentences are short and varied
    mask = (np.arange(LENGTH) < lengths[:, None]).astype(np.int32)
    batch = {"input_ids": np.where(mask, rng.integers(4, config.vocab_size, (BATCH, LENGTH)),
                                   1).astype(np.int32),
             "attention_mask": mask, "labels": rng.integers(0, 2, BATCH).astype(np.int32),
             "weights": np.ones(BATCH, np.float32)}
    opt_state = tx.init(params)
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, batch, jax.random.key(1))
    loss.block_until_ready()
    first = time.perf_counter() - start
    times = []
    for i in range(STEPS):
        start = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, batch, jax.random.key(2 + i))
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times), first


def main():
    lines = ["## Fine-tuning throughput on this CPU (`python experiments/bench_finetune.py`)", "",
             f"SST-2-shaped batches ({BATCH} sentences padded to {LENGTH} tokens), fp32, the "
             "fine-tuning train step with dropout and AdamW, median of "
             f"{STEPS} steps; {os.cpu_count()} cores, jax {jax.__version__}, Python "
             f"{platform.python_version()}.", "",
             "| model | examples/s | first step (compile) s |", "|---|---:|---:|"]
    for name, config in MODELS.items():
        rate, first = examples_per_second(config)
        print(f"{name}: {rate:,.1f} examples/s (first step {first:.1f} s)", flush=True)
        lines.append(f"| {name} | {rate:,.1f} | {first:.1f} |")
    write_section("finetune", "\n".join(lines))


if __name__ == "__main__":
    main()
