"""Kill test: a tiny pretraining run with frequent async checkpoints is killed with SIGKILL at
random moments (during start-up or restore, between steps, and while an async save is being
written) and restarted each time; at the end its parameters, optimizer state and loss history
must be bit-identical to an uninterrupted run.

    python experiments/kill_test.py [--kills 10] [--steps 200] [--seed 0] [--prepared DIR]

The first kill always lands during an async save (the moment the temporary directory of a save
after a committed one appears); the others at random. Exits non-zero if anything differs.
Prints one JSON line: how many kills of each kind, resumes and recomputed steps. CI runs a
trimmed version (tests/test_kill.py); the long one is a slow test.
"""

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
MOMENTS = ("start-up", "steps", "async save")


def _corpus(root: pathlib.Path) -> pathlib.Path:
    from roberta_jax import demo_corpus
    from roberta_jax.data import prepare, train_tokenizer
    demo_corpus.write_text(demo_corpus.stdlib_documents()[:600], root / "corpus.txt")
    train_tokenizer([str(root / "corpus.txt")], 800, str(root / "tokenizer"),
                    doc_format="paragraphs")
    prepare([str(root / "corpus.txt")], str(root / "tokenizer"), str(root / "prepared"),
            doc_format="paragraphs", workers=1, progress=False)
    return root / "prepared"


def _command(prepared, workdir, steps):
    return [sys.executable, "-m", "roberta_jax.cli", "pretrain", "--config",
            str(ROOT / "configs" / "tiny.py"), "--workdir", str(workdir),
            f"--config.data.path={prepared}", f"--config.train.steps={steps}",
            "--config.train.log_every=1", "--config.checkpoint.every_steps=2",
            "--config.checkpoint.keep=2", "--config.model.hidden_size=32",
            "--config.model.intermediate_size=64", "--config.train.batch_size=8",
            "--config.train.seq_len=64", "--config.model.max_position_embeddings=66",
            "--config.eval.every_steps=100000"]


def _logged_steps(workdir) -> int:
    """The highest step in metrics.jsonl (a killed process may leave a last line cut short)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    steps = [0]
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return max(steps)


def _saving(workdir) -> bool:
    """Whether an async save is being written (orbax writes into a temporary directory, then
    renames it)."""
    try:
        return any("orbax-checkpoint-tmp" in name
                   for name in os.listdir(pathlib.Path(workdir) / "checkpoints"))
    except OSError:
        return False


def _committed(workdir) -> list[int]:
    folder = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) \
        if folder.exists() else []


def _wait_for(proc, condition, timeout: float, poll: float) -> bool:
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", help="work directory (default: a new temporary one)")
    parser.add_argument("--prepared", help="a prepared corpus to use (default: prepare 600 "
                        "documents of the embedded corpus)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = pathlib.Path(args.root or tempfile.mkdtemp(prefix="kill_test_"))
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    prepared = args.prepared or _corpus(root)

    print("uninterrupted reference run ...", flush=True)
    reference = subprocess.run(_command(prepared, root / "reference", args.steps), env=env,
                               capture_output=True, text=True)
    if reference.returncode != 0:
        print(f"the reference run failed:\n{reference.stderr[-3000:]}", file=sys.stderr)
        return 1

    workdir = root / "killed"
    kills = {moment: 0 for moment in MOMENTS}
    resumes = recomputed = 0
    while True:
        checkpoints = _committed(workdir)
        before = checkpoints[-1] if checkpoints else None
        logged_before = _logged_steps(workdir)
        log_file = open(root / "last_run.log", "w")   # a file: a full pipe would stall it
        proc = subprocess.Popen(_command(prepared, workdir, args.steps), env=env,
                                stdout=subprocess.DEVNULL, stderr=log_file)
        if before is not None:
            resumes += 1
            # Steps logged after the restored checkpoint were done before and are done again.
            recomputed += max(0, logged_before - before)
        moment = None
        if sum(kills.values()) < args.kills:
            moment = "async save" if sum(kills.values()) == 0 else \
                rng.choices(MOMENTS, weights=(0.2, 0.4, 0.4))[0]
            if moment == "start-up":
                time.sleep(rng.uniform(0.5, 6.0))
            else:
                # B023: _wait_for polls the lambda only until it returns, in this iteration.
                _wait_for(proc, lambda: _logged_steps(workdir) > logged_before,  # noqa: B023
                          300, 0.05)
                if moment == "steps":
                    time.sleep(rng.uniform(0.0, 2.0))
                # During a save that would follow a committed one (so the rerun resumes).
                elif not (_wait_for(proc, lambda: _committed(workdir), 300, 0.01)
                          and _wait_for(proc, lambda: _saving(workdir), 120, 0.002)):
                    moment = "steps"        # it finished before another save began
        if moment is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            log_file.close()
            kills[moment] += 1
            print(f"kill {sum(kills.values())} ({moment}): after step {_logged_steps(workdir)}",
                  flush=True)
            continue
        proc.wait()
        log_file.close()
        if proc.returncode != 0:
            print("the restarted run failed:\n" + (root / "last_run.log").read_text()[-3000:],
                  file=sys.stderr)
            return 1
        break

    import jax
    import numpy as np

    from roberta_jax.export import load_workdir_state
    from roberta_jax.train import read_metrics
    a, *_ = load_workdir_state(root / "reference")
    b, *_ = load_workdir_state(workdir)
    same_state = all(np.array_equal(np.asarray(x), np.asarray(y))
                     for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    loss_a = [r["loss"] for r in read_metrics(root / "reference") if "loss" in r]
    loss_b = [r["loss"] for r in read_metrics(workdir) if "loss" in r]
    same_losses = loss_a == loss_b
    print(json.dumps({"kills": sum(kills.values()), "kills_by_moment": kills,
                      "resumes": resumes, "recomputed_steps": recomputed, "steps": args.steps,
                      "state_bit_identical": same_state,
                      "loss_history_identical": same_losses}))
    return 0 if same_state and same_losses else 1


if __name__ == "__main__":
    sys.exit(main())
