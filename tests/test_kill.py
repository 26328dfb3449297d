"""The kill test (experiments/kill_test.py): SIGKILL at random moments, one of them while an
async save is being written, and the run still ends bit-identical to an uninterrupted one.
CI runs a trimmed version (2 kills, 12 steps); the long one (10 kills, 200 steps) is slow."""

import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).parent.parent / "experiments" / "kill_test.py"


def _kill_test(tmp_path, *args, timeout):
    done = subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=timeout)
    # The return code first: a failed run prints no summary, and its output says why.
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sigkills_at_random_moments_and_during_an_async_save_lose_nothing(
        prepared_corpus, tmp_path):
    summary = _kill_test(tmp_path, "--kills", "2", "--steps", "12", "--prepared",
                         str(prepared_corpus[0]), timeout=900)
    assert summary["kills"] == 2 and summary["resumes"] >= 1
    assert summary["kills_by_moment"]["async save"] >= 1
    assert summary["state_bit_identical"] and summary["loss_history_identical"]


@pytest.mark.slow
def test_ten_random_sigkills_lose_nothing(tmp_path):
    summary = _kill_test(tmp_path, "--kills", "10", timeout=3600)
    assert summary["kills"] >= 10 and summary["resumes"] >= 1
    assert summary["state_bit_identical"] and summary["loss_history_identical"]
