"""Pods on one machine: local processes of one tiny pretraining run (jax.distributed on
127.0.0.1, CPU collectives over gloo), as tests/test_pods.py runs them.

    python experiments/bench_pods.py [--repeats 3] [--prepared DIR]

Measures the seconds from SIGTERM to the exit of every process of a 2-process run (SIGTERM to
process 1 only, and to both 0.5 s apart), and the largest difference between the losses of a
run resumed on another process count (2 processes x 2 devices -> 1 x 4, and back) and an
uninterrupted one; writes its section of BENCHMARKS.md. `LocalJob` is what the tests launch.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# A tiny model, steps of a few milliseconds: start-up and collectives dominate.
TINY = ["--config.model.hidden_size=32", "--config.model.num_hidden_layers=2",
        "--config.model.num_attention_heads=4", "--config.model.intermediate_size=64",
        "--config.model.max_position_embeddings=66", "--config.train.seq_len=32",
        "--config.train.batch_size=8", "--config.train.warmup_steps=2",
        "--config.train.log_every=1", "--config.eval.every_steps=100000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalJob:
    """`processes` local processes of one `roberta-jax pretrain` command, each with `devices`
    CPU devices and its own log file, under a hard time limit: `wait` kills a job that runs
    past it (a hang fails, it is not waited for).

    `stop_after`: each process leaves after that many steps with a checkpoint, as a preemption
    would. `extra`: more arguments for some processes ({process index: [args]}); `env`: more
    environment for some ({process index: {name: value}})."""

    def __init__(self, args: list[str], logs: pathlib.Path, processes: int = 2,
                 devices: int = 2, stop_after: int | None = None,
                 extra: dict[int, list[str]] | None = None,
                 env: dict[int, dict[str, str]] | None = None, limit_s: float = 600):
        logs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        code = ("import sys, roberta_jax.train as t, roberta_jax.cli as c; run = t.pretrain; "
                f"t.pretrain = lambda cfg, wd, **k: run(cfg, wd, stop_after={stop_after!r}, **k); "
                "sys.exit(c.main(sys.argv[1:]))")
        self.logs = [logs / f"process{i}.log" for i in range(processes)]
        self.procs = []
        for i in range(processes):
            flags = [] if processes == 1 else [
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                f"--config.distributed.num_processes={processes}",
                f"--config.distributed.process_id={i}"]
            environment = dict(os.environ, JAX_PLATFORMS="cpu",
                               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                               **(env or {}).get(i, {}))
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", code, "pretrain", *args, *flags,
                     *(extra or {}).get(i, [])], env=environment, stdout=log,
                    stderr=subprocess.STDOUT, cwd=logs))
        self.deadline = time.monotonic() + limit_s

    def signal(self, index: int, sig=signal.SIGTERM) -> None:
        self.procs[index].send_signal(sig)

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def wait(self) -> list[int]:
        """The return codes, once every process has exited."""
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise TimeoutError("processes still running at their time limit (a hang?):\n"
                                   + self.tails()) from None
        return [p.returncode for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def log(self, index: int) -> str:
        return self.logs[index].read_text(errors="replace")

    def tails(self, chars: int = 2500) -> str:
        return "\n".join(f"--- process {i}:\n{self.log(i)[-chars:]}"
                         for i in range(len(self.procs)))


def pretrain_args(workdir, prepared, steps: int, *overrides: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / "tiny.py"), "--workdir", str(workdir),
            f"--config.data.path={prepared}", f"--config.train.steps={steps}", *TINY,
            *overrides]


def logged_step(workdir) -> int:
    """The highest step in a local workdir's metrics.jsonl (0 if none yet)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    steps = [0]
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return max(steps)


def wait_for_step(workdir, step: int, job: LocalJob) -> None:
    while logged_step(workdir) < step:
        if not job.running() or time.monotonic() > job.deadline:
            job.kill()
            raise RuntimeError(f"the run never reached step {step}:\n{job.tails()}")
        time.sleep(0.1)


def losses(workdir) -> list[float]:
    from roberta_jax.train import read_metrics
    return [r["loss"] for r in read_metrics(workdir) if "loss" in r]


def preempt(workdir, prepared, logs, targets: tuple[int, ...], gap_s: float = 0.5,
            after_step: int = 5) -> dict:
    """A 2-process run; SIGTERM to `targets`, `gap_s` apart, once it logged `after_step`."""
    job = LocalJob(pretrain_args(workdir, prepared, 100_000,
                                 "--config.checkpoint.every_steps=100000"), logs)
    wait_for_step(workdir, logged_step(workdir) + after_step, job)
    sent = time.monotonic()
    for n, index in enumerate(targets):
        if n:
            time.sleep(gap_s)
        job.signal(index)
    codes = job.wait()
    seconds = time.monotonic() - sent
    saved = sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                   if p.name.isdigit())
    return {"codes": codes, "seconds": seconds, "saved_step": saved[-1] if saved else None,
            "job": job}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prepared", help="a prepared corpus (default: prepare 600 documents "
                        "of the embedded corpus)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write "
                        "BENCHMARKS.md")
    parser.add_argument("--label", default="", help="said of the machine in BENCHMARKS.md, "
                        "e.g. 'a shared, busy machine'")
    args = parser.parse_args()
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_pods_"))
    if args.prepared:
        prepared = args.prepared
    else:
        sys.path.insert(0, str(ROOT / "experiments"))
        from kill_test import _corpus
        prepared = _corpus(root)

    timings = {"SIGTERM to process 1 only": [], "SIGTERM to both, 0.5 s apart": []}
    for r in range(args.repeats):
        for name, targets in (("SIGTERM to process 1 only", (1,)),
                              ("SIGTERM to both, 0.5 s apart", (0, 1))):
            result = preempt(root / f"preempt{r}-{len(targets)}", prepared,
                             root / "logs" / f"preempt{r}-{len(targets)}", targets)
            if result["codes"] != [0, 0]:
                print(result["job"].tails(), file=sys.stderr)
                return 1
            timings[name].append(result["seconds"])
            print(f"{name}: every process exited 0 after {result['seconds']:.1f} s "
                  f"(saved step {result['saved_step']})", flush=True)

    steps = 6
    reference = root / "reference"
    LocalJob(pretrain_args(reference, prepared, 100_000), root / "logs" / "ref", processes=1,
             devices=4, stop_after=steps).wait()
    want = losses(reference)
    differences = {}
    for name, first, then in (("2 processes x 2 devices -> 1 x 4", (2, 2), (1, 4)),
                              ("1 process x 4 devices -> 2 x 2", (1, 4), (2, 2))):
        workdir = root / name.split(" ")[0]
        for n, (processes, devices) in enumerate((first, then)):
            codes = LocalJob(pretrain_args(workdir, prepared, 100_000),
                             root / "logs" / f"{processes}x{devices}-{n}", processes=processes,
                             devices=devices, stop_after=steps // 2).wait()
            if set(codes) != {0}:
                return 1
        got = losses(workdir)
        differences[name] = max(abs(a - b) for a, b in zip(got, want))
        print(f"{name}: resumed losses differ from an uninterrupted run's by at most "
              f"{differences[name]:.2e} over {len(got)} steps", flush=True)

    lines = ["## Pods on one machine (`python experiments/bench_pods.py`)", "",
             "Two local processes (jax.distributed on 127.0.0.1, CPU collectives over gloo), "
             "configs/tiny.py shrunk to width 32; they agree on a stop every "
             "`distributed.preemption_check_every` = 10 steps. Taken on "
             f"{os.cpu_count()} CPU cores{', ' + args.label if args.label else ''}.", "",
             "| preemption | seconds from SIGTERM to every process's exit (median, runs) |",
             "|---|---:|"]
    for name, values in timings.items():
        values = sorted(values)
        lines.append(f"| {name} | {values[len(values) // 2]:.1f} "
                     f"({', '.join(f'{v:.1f}' for v in values)}) |")
    lines += ["", f"| resumed on another process count ({steps} steps, the second half after "
              "the restart) | max abs loss difference to an uninterrupted run |", "|---|---:|"]
    lines += [f"| {name} | {value:.1e} |" for name, value in differences.items()]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        sys.path.insert(0, str(ROOT / "experiments"))
        from benchmarks_md import write_section
        write_section("pods", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
