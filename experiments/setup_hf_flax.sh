#!/usr/bin/env bash
# The Hugging Face Flax peer for bench_train.py: transformers removed its Flax models in v5, so
# they live in their own interpreter, .venv-hf-flax (transformers 4.57.6 with this jax).
#   bash experiments/setup_hf_flax.sh && python experiments/bench_train.py
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-hf-flax
.venv-hf-flax/bin/pip install -q "transformers==4.57.6" "jax==$(python3 -c 'import jax; print(jax.__version__)' 2>/dev/null || echo 0.10.2)" flax optax
