#!/usr/bin/env bash
# One GPU, under 8 minutes: roberta-base at 512 tokens in bf16, an attention x remat x batch
# sweep, tokens/s and MFU against the card's dense bf16 peak. Writes the "gpu" section of
# BENCHMARKS.md.
#   bash experiments/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv /tmp/roberta-jax-gpu && . /tmp/roberta-jax-gpu/bin/activate
pip install -q --upgrade pip && pip install -q -e . "jax[cuda12]"
XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 timeout 450 python experiments/gpu_bench.py
