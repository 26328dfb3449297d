"""A plan checked against reality on this CPU: `roberta-jax plan --topology cpu` compiles the
pretraining step for this host's own CPU devices, then `pretrain` runs the same config for a
few steps, and the plan's memory is compared with the run's measured peak RSS.

    python experiments/plan_vs_rss.py                        # roberta-base shape, 16 x 128, fp32
    python experiments/plan_vs_rss.py --config configs/tiny.py --batch 8 --steps 2   # a smoke run

Each side runs in its own process, with the same XLA flags (default optimizations, --devices
CPU devices). pretrain runs twice in a row with a persistent compilation cache: the first run
("cold") compiles, the second ("warm") loads its programs from the cache, so its memory is the
training's, not the XLA compiler's (reported beside it). From the warm run:
- overhead: its RSS just before the first train step (libraries, TensorFlow's input pipeline,
  the checkpointer, metrics writers: everything running) less the bytes of its train state
  arrays (summed from the live arrays);
- peak: its high-water RSS (VmHWM) when the first checkpoint save begins, i.e. after the
  training steps (the save copies the state to host memory: the checkpointer's, not the step's).
Predicted peak = overhead + the plan's total per device x devices (state, batch, temporaries,
program). Written to BENCHMARKS.md (section plan-vs-rss) with --write.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Runs pretrain, recording RSS where the module doc says; prints one JSON line.
_RUNNER = r"""
import json, sys
import tensorflow  # noqa: F401 - as the input pipeline will, before anything is measured
from roberta_jax import train, checkpoint
from roberta_jax.train_config import load_config

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
figures = {}
jit_train_step = train.jit_train_step
def recording_jit_train_step(*args, **kwargs):
    step = jit_train_step(*args, **kwargs)
    def first_call_recorded(state, batch):
        if "before_step" not in figures:
            import jax
            figures["before_step"] = status("VmRSS")
            figures["state_bytes"] = sum(x.nbytes for x in jax.tree.leaves(state))
        return step(state, batch)
    return first_call_recorded
train.jit_train_step = recording_jit_train_step
save = checkpoint.Checkpointer.save
def recording_save(self, *args, **kwargs):
    figures.setdefault("peak", status("VmHWM"))
    return save(self, *args, **kwargs)
checkpoint.Checkpointer.save = recording_save
config = load_config(sys.argv[1], sys.argv[3:])
train.pretrain(config, sys.argv[2])
print("FIGURES " + json.dumps(figures))
"""


def run_pretrain(config: str, workdir: pathlib.Path, overrides: list[str], env: dict) -> dict:
    ran = subprocess.run([sys.executable, "-c", _RUNNER, config, str(workdir), *overrides],
                         env=env, capture_output=True, text=True, check=False)
    lines = [line for line in ran.stdout.splitlines() if line.startswith("FIGURES ")]
    if ran.returncode or not lines:
        sys.exit(f"pretrain failed:\n{ran.stderr[-3000:]}")
    return json.loads(lines[-1][len("FIGURES "):])


def prepare_corpus(root: pathlib.Path, vocab_size: int) -> pathlib.Path:
    from roberta_jax import demo_corpus
    from roberta_jax.data import prepare, train_tokenizer
    prepared = root / "prepared"
    if (prepared / "manifest.json").exists():
        return prepared
    text = demo_corpus.write_text(demo_corpus.stdlib_documents(), root / "corpus.txt")
    train_tokenizer([str(text)], vocab_size, str(root / "tokenizer"))
    prepare([str(text)], str(root / "tokenizer"), str(prepared), doc_format="paragraphs",
            workers=1, progress=False)
    return prepared


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "base.py"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=8000, help="the corpus' tokenizer")
    parser.add_argument("--devices", type=int, default=1, help="CPU devices the mesh spans")
    parser.add_argument("--workdir", help="keep the corpus and run here (default: a temp dir)")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md's section")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        root = pathlib.Path(args.workdir or scratch)
        root.mkdir(parents=True, exist_ok=True)
        prepared = prepare_corpus(root, args.vocab_size)
        overrides = [f"--config.data.path={prepared}", f"--config.train.batch_size={args.batch}",
                     f"--config.train.seq_len={args.seq_len}",
                     f"--config.model.max_position_embeddings={args.seq_len + 2}",
                     f"--config.train.steps={args.steps}", "--config.train.log_every=1",
                     "--config.model.dtype=float32", "--config.checkpoint.async_save=false",
                     "--config.mesh.data=-1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1"]
        # Both sides with XLA's default optimizations on this many CPU devices, whatever the
        # caller's environment says (the tests' 8 devices and skipped passes are not a run's).
        env = {k: v for k, v in os.environ.items()
               if k not in ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS")}
        env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
        planned = subprocess.run(
            [sys.executable, "-m", "roberta_jax.cli", "plan", "--config", args.config,
             "--topology", "cpu", "--json", *overrides],
            env=env, capture_output=True, text=True, check=False)
        if planned.returncode not in (0, 3):
            sys.exit(f"plan failed:\n{planned.stderr[-3000:]}")
        report = json.loads(planned.stdout.strip().splitlines()[-1])
        cache = root / "xla_cache"
        cached = dict(env, JAX_COMPILATION_CACHE_DIR=str(cache),
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        import shutil
        for path in (root / "cold", root / "warm", cache):
            shutil.rmtree(path, ignore_errors=True)
        cold = run_pretrain(args.config, root / "cold", overrides, cached)
        measured = run_pretrain(args.config, root / "warm", overrides, cached)

    devices = report["chips"]
    per_device = report["memory"]["total"]
    planned = per_device * devices
    overhead = measured["before_step"] - measured["state_bytes"]
    predicted_peak = overhead + planned
    result = {
        "config": args.config, "batch": args.batch, "seq_len": args.seq_len,
        "devices": devices, "plan_total_per_device": per_device,
        "plan_memory": report["memory"], "rss_before_step": measured["before_step"],
        "state_bytes": measured["state_bytes"], "overhead_rss": overhead,
        "peak_rss": measured["peak"], "predicted_peak_rss": predicted_peak,
        "peak_error": predicted_peak / measured["peak"] - 1,
        "training_error": planned / (measured["peak"] - overhead) - 1,
        "cold_peak_rss": cold["peak"],
    }
    mb = 1e6
    print(f"{args.config}, batch {args.batch} x {args.seq_len}, fp32, {devices} CPU device(s)")
    print(f"  plan (memory_analysis x devices): {planned / mb:,.0f} MB (arguments "
          f"{report['memory']['arguments'] * devices / mb:,.0f}, temporaries "
          f"{report['memory']['temporaries'] * devices / mb:,.0f})")
    print(f"  warm run: RSS before the first step {measured['before_step'] / mb:,.0f} MB, of "
          f"which train state {measured['state_bytes'] / mb:,.0f} MB: overhead "
          f"{overhead / mb:,.0f} MB; peak RSS {measured['peak'] / mb:,.0f} MB")
    print(f"  cold run (compiling): peak RSS {cold['peak'] / mb:,.0f} MB")
    print(f"  predicted peak {predicted_peak / mb:,.0f} MB vs measured {measured['peak'] / mb:,.0f}"
          f" MB: {100 * result['peak_error']:+.1f}%; training memory planned "
          f"{planned / mb:,.0f} vs measured {(measured['peak'] - overhead) / mb:,.0f} MB: "
          f"{100 * result['training_error']:+.1f}%")
    if args.write:
        write(result)
    return result


def write(r: dict) -> None:
    from benchmarks_md import write_section
    mb = 1e6
    m = r["plan_memory"]
    body = f"""## The plan against a real run on this CPU \
(`python experiments/plan_vs_rss.py --write`)

`roberta-jax plan --topology cpu` compiles the pretraining step for this host's own CPU devices;
`pretrain` then runs the same config ({pathlib.Path(r['config']).name}, batch {r['batch']} x
{r['seq_len']}, fp32, vocabulary 8000, {r['devices']} device(s)) for a few steps in its own
process, twice: the second run loads its compiled programs from a persistent cache, so its
memory is the training's rather than the XLA compiler's. Overhead: the run's RSS just before
its first train step (libraries, input pipeline, checkpointer all running) less its train
state's bytes (summed from the live arrays); peak: its high-water RSS when the first checkpoint
save begins (after the steps). Predicted peak = overhead + the plan's total per device x
devices. Taken on a shared, busy machine.

| figure | MB |
|---|---:|
| plan: arguments (parameters, optimizer state, batch) | {m['arguments'] / mb:,.0f} |
| plan: temporaries | {m['temporaries'] / mb:,.0f} |
| plan: outputs not donated + program | {(m['outputs'] - m['aliased'] + m['program']) / mb:,.0f} |
| plan: total x devices | {r['plan_total_per_device'] * r['devices'] / mb:,.0f} |
| run: RSS before the first step | {r['rss_before_step'] / mb:,.0f} |
| run: train state (live arrays) | {r['state_bytes'] / mb:,.0f} |
| overhead (the difference) | {r['overhead_rss'] / mb:,.0f} |
| run: peak RSS (measured) | {r['peak_rss'] / mb:,.0f} |
| predicted peak RSS (overhead + plan) | {r['predicted_peak_rss'] / mb:,.0f} \
({100 * r['peak_error']:+.1f}%) |
| training memory (peak - overhead): plan vs measured | {100 * r['training_error']:+.1f}% |
| the first run, compiling: peak RSS | {r['cold_peak_rss'] / mb:,.0f} |
"""
    write_section("plan-vs-rss", body)


if __name__ == "__main__":
    main()
