"""roberta-base at 512 tokens, bf16 compute with fp32 master weights, on one GPU: the best
remat policy and batch found in a short sweep, with tokens/s and MFU (DESIGN A5, against the
card's dense bf16 peak). Run through experiments/gpu_bench.sh; writes the "gpu" section of
BENCHMARKS.md."""

import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks_md import write_section  # noqa: E402
from roberta_jax.flops import peak_flops_per_device, train_flops_per_token  # noqa: E402
from roberta_jax.model import RobertaForMaskedLM  # noqa: E402
from roberta_jax.optim import make_optimizer  # noqa: E402
from roberta_jax.train import TrainState, make_steps, model_config, strip_boxes  # noqa: E402
from roberta_jax.train_config import default_config  # noqa: E402

SEQ, VOCAB, STEPS = 512, 50265, 10


def measure(batch: int, remat: str) -> dict:
    config = default_config()
    config.model.update(dtype="bfloat16", scan_layers=True, remat_policy=remat)
    config.train.update(seq_len=SEQ, batch_size=batch, steps=1000, warmup_steps=10)
    cfg = model_config(config, VOCAB)
    model = RobertaForMaskedLM(cfg, dtype=jnp.bfloat16, scan_layers=True,
                               remat_policy=remat or None)
    tx = make_optimizer(config.train)
    train_step, _ = make_steps(model, tx, config, VOCAB)
    slots = int(0.15 * SEQ) + 1
    rng = np.random.default_rng(0)
    data = jax.device_put({
        "input_ids": rng.integers(4, VOCAB, (batch, SEQ)).astype(np.int32),
        "attention_mask": np.ones((batch, SEQ), np.int32),
        "masked_positions": np.sort(rng.choice(SEQ, (batch, slots)), 1).astype(np.int32),
        "masked_labels": rng.integers(4, VOCAB, (batch, slots)).astype(np.int32),
        "masked_weights": np.ones((batch, slots), np.float32)})
    params = strip_boxes(model.init(jax.random.key(0), data["input_ids"][:1],
                                    masked_positions=data["masked_positions"][:1])["params"])
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       dropout_key=jax.random.key_data(jax.random.key(1)),
                       loss_mean=jnp.zeros(()), loss_sq_mean=jnp.zeros(()))
    step = jax.jit(train_step, donate_argnums=0)
    start = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = batch * SEQ / seconds
    flops = train_flops_per_token(12, 768, 3072, SEQ, cfg.vocab_size, slots / SEQ) * tokens
    peak, source = peak_flops_per_device(jax.devices()[0])
    return {"batch": batch, "remat": remat or "none", "step_s": seconds, "tokens_s": tokens,
            "mfu": flops / peak, "compile_s": compile_s, "peak_source": source}


def main():
    device = jax.devices()[0]
    print(f"device: {device.device_kind}", flush=True)
    results = []
    for remat in ("", "dots_with_no_batch_dims_saveable", "full"):
        for batch in (32, 64, 128, 192):
            try:
                r = measure(batch, remat)
            except Exception as e:  # out of memory ends this remat policy's batch sweep
                print(f"remat={remat or 'none'} batch={batch}: {str(e).splitlines()[0][:120]}")
                break
            results.append(r)
            print(f"remat={r['remat']:34s} batch={batch:4d}: {r['tokens_s']:,.0f} tokens/s, "
                  f"MFU {100 * r['mfu']:.1f}%, step {r['step_s'] * 1e3:.0f} ms, compile "
                  f"{r['compile_s']:.0f} s", flush=True)
    best = max(results, key=lambda r: r["tokens_s"])
    lines = [f"## roberta-base, 512 tokens, bf16, one {device.device_kind} "
             "(`bash experiments/gpu_bench.sh`)", "",
             f"MFU against {best['peak_source']} (DESIGN A5, masked-slot LM head). Best: remat "
             f"`{best['remat']}`, batch {best['batch']}: **{best['tokens_s']:,.0f} tokens/s, "
             f"MFU {100 * best['mfu']:.1f}%**.", "",
             "| remat | batch | tokens/s | MFU | step ms | compile s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['remat']} | {r['batch']} | {r['tokens_s']:,.0f} | {100 * r['mfu']:.1f}% | "
              f"{r['step_s'] * 1e3:.0f} | {r['compile_s']:.0f} |" for r in results]
    print("\n".join(lines))
    write_section("gpu", "\n".join(lines))


if __name__ == "__main__":
    main()
