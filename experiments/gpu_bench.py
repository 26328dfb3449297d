"""roberta-base at 512 tokens, bf16 compute with fp32 master weights, on one GPU: the best
attention implementation, remat policy, layer loop and batch found in a short sweep (stopped at a
time budget so the whole script stays under 8 minutes), with tokens/s and MFU (flops.py, against
the card's dense bf16 peak). Run through experiments/gpu_bench.sh; writes the "gpu" section of
BENCHMARKS.md. `--smoke` runs a tiny shape on any device and writes nothing (the test suite
uses it to keep this script working)."""

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import jax
from bench_train import synthetic_step, time_steps
from benchmarks_md import write_section

from roberta_jax.flops import peak_flops_per_device, train_flops_per_token

BASE = dict(title="roberta-base, 512 tokens", layers=12, hidden=768, heads=12, ffn=3072,
            vocab=50265, seq_len=512, steps=10, batches=(64, 128, 256), budget_s=330)
SMOKE = dict(title="smoke test, 2 x 64, 32 tokens", layers=2, hidden=64, heads=2, ffn=128,
             vocab=1000, seq_len=32, steps=2, batches=(2,), budget_s=60)
# (attention implementation, remat policy, nn.scan over layers), most promising first.
# jax.nn.dot_product_attention reaches cuDNN's fused kernel, which has no attention dropout:
# those settings train without it. The unrolled loop saves the scan's stacking of activations
# (zero fill + copies), at a longer compile.
SETTINGS = (("jax", "", True), ("jax", "dots_with_no_batch_dims_saveable", True),
            ("jax", "", False), ("eager", "", True), ("jax", "full", True))


def measure(shape: dict, batch: int, attention: str, remat: str, scan: bool,
            peak: float) -> dict:
    step, state, data, head_fraction = synthetic_step(
        shape["layers"], shape["hidden"], shape["heads"], shape["ffn"], shape["vocab"], batch,
        shape["seq_len"], dtype="bfloat16", scan_layers=scan, remat=remat, attention=attention,
        attention_dropout=0.1 if attention == "eager" else 0.0)
    compile_s, seconds = time_steps(step, state, data, shape["steps"])
    tokens = batch * shape["seq_len"] / seconds
    padded_vocab = -(-shape["vocab"] // 128) * 128
    flops = train_flops_per_token(shape["layers"], shape["hidden"], shape["ffn"],
                                  shape["seq_len"], padded_vocab, head_fraction) * tokens
    return {"batch": batch, "remat": remat or "none", "attention": attention,
            "layers": "scan" if scan else "unrolled", "step_s": seconds, "tokens_s": tokens,
            "mfu": flops / peak, "compile_s": compile_s}


def sweep(shape: dict, peak: float) -> list[dict]:
    results, started = [], time.perf_counter()
    for attention, remat, scan in SETTINGS:
        for batch in shape["batches"]:
            if time.perf_counter() - started > shape["budget_s"]:
                return results
            try:
                r = measure(shape, batch, attention, remat, scan, peak)
            except Exception as e:  # out of memory ends this setting's batch sweep
                print(f"attention={attention} remat={remat or 'none'} scan={scan} "
                      f"batch={batch}: {str(e).splitlines()[0][:120]}", flush=True)
                break
            results.append(r)
            print(f"attention={attention:5s} remat={r['remat']:34s} {r['layers']:8s} "
                  f"batch={batch:4d}: {r['tokens_s']:,.0f} tokens/s, MFU {100 * r['mfu']:.1f}%, "
                  f"step {r['step_s'] * 1e3:.0f} ms, compile {r['compile_s']:.0f} s", flush=True)
    return results


def report(results: list[dict], title: str, device_kind: str, peak_source: str) -> str:
    best = max(results, key=lambda r: r["tokens_s"])
    lines = [f"## {title}, bf16, one {device_kind} (`bash experiments/gpu_bench.sh`)", "",
             f"MFU against {peak_source} (flops.py, masked-slot LM head). Best: "
             f"attention `{best['attention']}`, remat `{best['remat']}`, {best['layers']} "
             f"layers, batch {best['batch']}: **{best['tokens_s']:,.0f} tokens/s, MFU "
             f"{100 * best['mfu']:.1f}%**.", "",
             "| attention | remat | layers | batch | tokens/s | MFU | step ms | compile s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['attention']} | {r['remat']} | {r['layers']} | {r['batch']} | "
              f"{r['tokens_s']:,.0f} | {100 * r['mfu']:.1f}% | {r['step_s'] * 1e3:.0f} | "
              f"{r['compile_s']:.0f} |" for r in results]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny shape on any device; prints, writes nothing")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} (jax {jax.__version__})", flush=True)
    shape = SMOKE if args.smoke else BASE
    peak, peak_source = peak_flops_per_device(device)
    results = sweep(shape, peak)
    if not results:
        sys.exit("gpu_bench: no setting ran; see the errors above")
    text = report(results, shape["title"], device.device_kind, peak_source)
    print(text)
    if not args.smoke:
        write_section("gpu", text)


if __name__ == "__main__":
    main()
