#!/usr/bin/env bash
# One GPU, under 8 minutes: roberta-base at 512 tokens in bf16, an attention x remat x layer loop
# x batch sweep, tokens/s and MFU against the card's dense bf16 peak. Writes the "gpu" section of
# BENCHMARKS.md.
#   bash experiments/gpu_bench.sh            (--smoke: a tiny shape on any device, writes nothing)
# It uses $PYTHON (default python3) when that already has a GPU jax, as on a prepared image, and
# otherwise makes a venv with jax[cuda12]. On a machine with no package index, put wheels of what
# that python lacks in .whl/ first (here: ml_collections, the one such images tend to miss):
#   python3 -m pip download --no-deps -d .whl ml_collections
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" != "--smoke" ] && ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  python3 -m venv /tmp/roberta-jax-gpu && . /tmp/roberta-jax-gpu/bin/activate
  pip install -q --upgrade pip && pip install -q -e . "jax[cuda12]"
  PY=python
fi
missing=$("$PY" - <<'PYEOF'
import importlib.util
wanted = {"ml_collections": "ml_collections", "flax": "flax", "optax": "optax",
          "orbax": "orbax-checkpoint", "safetensors": "safetensors", "numpy": "numpy"}
print(" ".join(pip for module, pip in wanted.items() if importlib.util.find_spec(module) is None))
PYEOF
)
if [ -n "$missing" ]; then
  echo "installing: $missing"
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/roberta-jax-site .whl/*.whl
    export PYTHONPATH=/tmp/roberta-jax-site
  else
    "$PY" -m pip install -q $missing
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 timeout 450 "$PY" experiments/gpu_bench.py "$@"
