"""The benchmark scripts run end to end at tiny shapes, so they keep working between the
(GPU, or long CPU) runs that fill BENCHMARKS.md."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))


@pytest.mark.parametrize("side", ["scan+remat", "hf-torch"])
def test_bench_train_measures_each_side_in_its_own_process(side):
    if side == "hf-torch":
        pytest.importorskip("transformers")
    import bench_train
    result = bench_train.measure(side, "tiny", 1)
    assert result["step_seconds"] > 0 and result["first_step_seconds"] > 0
    assert result["peak_rss_mb"] > 50
    expected = 1.0 if side == "hf-torch" else (int(0.15 * 32) + 1) / 32
    assert result["head_fraction"] == pytest.approx(expected)


def test_gpu_bench_script_runs_its_sweep_on_a_tiny_shape(tmp_path):
    before = (ROOT / "BENCHMARKS.md").read_text()
    env = dict(os.environ, PYTHON=sys.executable, JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               JAX_PLATFORMS="cpu")
    out = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_bench.sh"), "--smoke"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    table = [line for line in out.stdout.splitlines()
             if line.startswith(("| jax", "| eager"))]
    assert len(table) == 5  # every attention x remat x layer-loop setting ran
    assert "Best: attention" in out.stdout
    assert (ROOT / "BENCHMARKS.md").read_text() == before  # a smoke run writes nothing


def test_bench_data_runs_every_measurement_on_a_tiny_corpus():
    before = (ROOT / "BENCHMARKS.md").read_text()
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_data.py"), "--smoke"],
                         capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    for heading in ("### Tokenizer training on one document per line", "tokens/s per core",
                    "### Start-up at seq_len 512", "from a bucket",
                    "### Extrapolation: RoBERTa's 40B tokens on 64 hosts"):
        assert heading in out.stdout, heading
    assert (ROOT / "BENCHMARKS.md").read_text() == before  # a smoke run writes nothing
