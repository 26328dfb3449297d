"""The plan table: configs/base.py, large.py and xlmr_base.py at their paper batch sizes
(8k x 512) on v4-128, v5e-256 and v5p-128, each searched with `roberta-jax plan --search`:
what fits, with which mesh / remat / accumulation, GiB per chip, estimated days for the
config's step count (the paper's 500k) at 40% MFU, and the compile time of each row's
setting on this machine (the search's other compiles are counted beside it).

    python experiments/plan_table.py                     # all nine rows; writes BENCHMARKS.md
    python experiments/plan_table.py --configs base --topologies v5p-128 --max-compiles 2
    python experiments/plan_table.py --json rows.jsonl     # keep the rows; --from-json rows.jsonl
                                                           # writes the section again from them

Needs libtpu (pip install '.[tpu]'); no TPU. Each compile of a paper-sized step takes minutes
on a laptop CPU, so the whole table takes a while: rows are printed as they finish.
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

CONFIGS = ("base", "large", "xlmr_base")
TOPOLOGIES = ("v4-128", "v5e-256", "v5p-128")
GiB = 1024 ** 3


def run_row(config_name: str, topology: str, max_compiles: int, mfu: float) -> dict:
    from roberta_jax import plan
    from roberta_jax.train_config import load_config
    path = ROOT / "configs" / f"{config_name}.py"
    config = load_config(str(path))
    target = plan.find_slice(topology)
    start = time.perf_counter()

    def progress(r):
        mesh = r["mesh"]
        print(f"  {config_name} on {topology}: data={mesh['data']} fsdp={mesh['fsdp']} "
              f"tensor={mesh['tensor']} remat={r['remat_policy'] or 'none'} "
              f"accum={r['grad_accum']}: {'fits' if r['fits'] else 'does not fit'}"
              + (f" ({r['compile_seconds']:.0f} s)" if r["compile_seconds"] else ""),
              file=sys.stderr, flush=True)

    results = plan.search(config, target, mfu=mfu, max_compiles=max_compiles,
                          config_name=f"configs/{config_name}.py", on_result=progress)
    return {"config": config_name, "topology": topology, "best": results[0] if results else None,
            "tried": len(results), "compiles": sum(r["compile_seconds"] is not None
                                                   for r in results),
            "search_seconds": time.perf_counter() - start}


def row_text(row: dict) -> str:
    best = row["best"]
    name = f"`configs/{row['config']}.py`"
    if best is None or not best["fits"]:
        why = best["reason"] if best else "nothing tried"
        return (f"| {name} | {row['topology']} | no | - | - | - | - | - | - | "
                f"{row['compiles']} compiles, {row['search_seconds']:,.0f} s: {why} |")
    mesh = best["mesh"]
    m = best["memory"]
    return (f"| {name} | {row['topology']} ({best['chips']} chips) | yes | "
            f"{mesh['data']} / {mesh['fsdp']} / {mesh['tensor']} | "
            f"{best['remat_policy'] or 'none'} | {best['grad_accum']} | "
            f"{m['total'] / GiB:,.1f} of {m['usable'] / GiB:,.1f} | {best['days']:,.1f} | "
            f"{best['flops']['compiled_over_model']:.2f} | "
            f"{best['compile_seconds']:,.0f} s (search: {row['compiles']} compiles, "
            f"{row['search_seconds']:,.0f} s) |")


def write(rows: list[dict], mfu: float) -> None:
    import jax
    from benchmarks_md import write_section
    body = f"""## Plans for TPU slices (`python experiments/plan_table.py`)

`roberta-jax plan --search` for each config at its paper batch (8,192 x 512, 500k steps) on
three slices: the train step `pretrain` runs, compiled ahead of time by libtpu on this machine
(no TPU), for mesh shapes, remat policies and gradient accumulation in order of expected speed;
the fastest setting that fits is shown. GiB per chip: XLA's memory_analysis (arguments + outputs
not donated + temporaries + program) of the usable HBM XLA reports. Days: 500k steps at
{100 * mfu:.0f}% MFU of the chip's dense bf16 peak, FLOPs by flops.py. Compile time: that
setting's compile, and the whole search's, on this machine ({platform.machine()},
{os.cpu_count()} cores, jax {jax.__version__}); a shared, busy machine makes them slow and noisy.
Compiled / flops.py: XLA's FLOP count of the compiled step (every op, loops counted per trip) over
flops.py's matmul count; the excess is elementwise work (softmax, LayerNorm, GELU, dropout's
random bits, AdamW), and recomputation where remat is on.

| config | slice | fits | mesh data / fsdp / tensor | remat | grad_accum | GiB per chip | days \
| compiled / flops.py | compile |
|---|---|---|---|---|---:|---:|---:|---:|---|
""" + "\n".join(row_text(r) for r in rows) + "\n"
    write_section("plan", body)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--topologies", nargs="+", default=list(TOPOLOGIES))
    parser.add_argument("--max-compiles", type=int, default=6, help="per row's search")
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", help="also append each row as a JSON line to this file")
    parser.add_argument("--from-json", help="write the section from rows a run saved with --json "
                        "(no compiling)")
    args = parser.parse_args(argv)
    if args.from_json:
        rows = [json.loads(line) for line in open(args.from_json) if line.strip()]
        for row in rows:
            print(row_text(row))
        write(rows, args.mfu)
        return rows
    rows = []
    for config_name in args.configs:
        for topology in args.topologies:
            row = run_row(config_name, topology, args.max_compiles, args.mfu)
            rows.append(row)
            print(row_text(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if not args.no_write:   # after every row: a long run shows what it has so far
                write(rows, args.mfu)
    return rows


if __name__ == "__main__":
    main()
