"""roberta-base at 512 tokens, bf16 compute with fp32 master weights, on one GPU: the best
remat policy and batch found in a short sweep, with tokens/s and MFU (DESIGN A5, against the
card's dense bf16 peak). Run through experiments/gpu_bench.sh; writes the "gpu" section of
BENCHMARKS.md."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import jax  # noqa: E402

from bench_train import synthetic_step, time_steps  # noqa: E402
from benchmarks_md import write_section  # noqa: E402
from roberta_jax.flops import peak_flops_per_device, train_flops_per_token  # noqa: E402

SEQ, VOCAB, STEPS = 512, 50265, 10


def measure(batch: int, remat: str) -> dict:
    step, state, data, head_fraction = synthetic_step(12, 768, 12, 3072, VOCAB, batch, SEQ,
                                                      dtype="bfloat16", remat=remat)
    compile_s, seconds = time_steps(step, state, data, STEPS)
    tokens = batch * SEQ / seconds
    padded_vocab = -(-VOCAB // 128) * 128
    flops = train_flops_per_token(12, 768, 3072, SEQ, padded_vocab, head_fraction) * tokens
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
