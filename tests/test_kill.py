"""The kill test (slow: several minutes): SIGKILL at random moments, at least 10 times, and the
run still ends bit-identical to an uninterrupted one. Run with `pytest -m slow`."""

import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).parent.parent / "experiments" / "kill_test.py"


@pytest.mark.slow
def test_random_sigkills_lose_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--kills", "10", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=3600)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["kills"] >= 10 and summary["resumes"] >= 1
    assert summary["state_bit_identical"] and summary["loss_history_identical"]
